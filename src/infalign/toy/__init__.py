"""The embedded toy world: synthetic language, gold reward, and its cached reference/reward models.

``ToyWorld`` (text in, text out) lives in :mod:`infalign.toy.world`; ``build_toy_world`` trains
and caches the reference LM and reward model (:mod:`infalign.toy.build`).
"""

from infalign.toy.build import (
    CODE_VERSION,
    DEFAULTS,
    ToyArtifacts,
    build_toy_world,
    resolve_toy_config,
    sample_pairs,
    toy_world_from_config,
)
from infalign.toy.world import (
    SEP,
    SPLITS,
    PreferencePairs,
    PromptParams,
    ToyWorld,
    make_preference_pairs,
)

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
    "toy_world_from_config",
]
