"""The embedded toy world: synthetic language, gold reward, and its cached reference/reward models.

``ToyWorld`` (text in, text out) lives in :mod:`infalign.toy.world`, the build settings and their
defaults in :mod:`infalign.toy.defaults`; ``build_toy_world`` trains and caches the reference LM
and reward model (:mod:`infalign.toy.build`, imported on first use: it needs Lightning and
transformers, which reading the defaults does not).
"""

from importlib import import_module
from typing import Any

from infalign.toy.defaults import DEFAULTS
from infalign.toy.world import (
    SEP,
    SPLITS,
    PreferencePairs,
    PromptParams,
    ToyWorld,
    make_preference_pairs,
)

_FROM_BUILD = ("CODE_VERSION", "ToyArtifacts", "build_toy_world", "resolve_toy_config", "sample_pairs")

__all__ = [
    "CODE_VERSION",
    "DEFAULTS",
    "SEP",
    "SPLITS",
    "PreferencePairs",
    "PromptParams",
    "ToyArtifacts",
    "ToyWorld",
    "build_toy_world",
    "make_preference_pairs",
    "resolve_toy_config",
    "sample_pairs",
]


def __getattr__(name: str) -> Any:
    """The build module's names, imported when first asked for (PEP 562)."""
    if name in _FROM_BUILD:
        return getattr(import_module("infalign.toy.build"), name)
    raise AttributeError(f"module 'infalign.toy' has no attribute {name!r}")
