"""The toy world's build settings and their defaults: the one place they are defined.

``DEFAULTS`` is what :func:`infalign.toy.build.resolve_toy_config` merges a user config over (and
what the cache key of a built world covers); ``conf/data/toy.yaml`` takes the same values from
:func:`hydra_node` (registered in Hydra's config store by ``infalign.apps.config`` as
``toy/defaults``), so a command-line override such as ``data.toy.reference.size=tiny`` finds its
key and no default is written twice. The world's own parameters (``toy.world.*``) are
:class:`~infalign.toy.world.ToyWorld`'s arguments, with its signature's defaults (docs/method.md
§11).

Light on purpose (no torch, no Lightning): every app's config loading imports it.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

from infalign.toy.world import ToyWorld

WORLD_DEFAULTS: dict[str, Any] = {
    name: list(p.default) if isinstance(p.default, tuple) else p.default
    for name, p in inspect.signature(ToyWorld).parameters.items()
    if name != "seed"
}
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "world": WORLD_DEFAULTS,  # ToyWorld(...) arguments
    "reference": {
        "size": "small",  # tiny (~0.1M parameters) | small (~0.6M) | medium (~2.2M)
        "n_prompts": 4000,  # train prompts of the behaviour corpus
        "per_prompt": 4,  # behaviour responses per prompt
        "val_prompts": 200,  # val prompts (x 2 responses) for the reported val loss
        "max_steps": 400,
        "batch_size": 64,
        "lr": 3e-3,
        "warmup": 40,
        "weight_decay": 0.0,
    },
    "reward": {
        "init": "reference",  # 'reference': start from the reference LM's transformer; 'scratch'
        "size": None,  # None = the reference's size (required when init=reference)
        "n_prompts": 3000,  # train prompts, one sampled pair each
        "val_prompts": 400,  # val prompts, one sampled pair each
        "max_new_tokens": 20,
        "max_steps": 250,
        "batch_size": 32,  # pairs per step
        "lr": 1e-3,
        "warmup": 20,
        "weight_decay": 0.0,
    },
}
# Options that change how the build runs, not what world it builds (kept out of the cache key): the
# progress bar, and the thread count -- which changes float summation order, so a build at 1 thread and
# one at 2 differ in the last bits of their weights (the same world statistically; bit-reproducible
# only at a fixed thread count, as the first build in a cache serves every later run).
RUNTIME_DEFAULTS: dict[str, Any] = {"progress_bar": False, "num_threads": None}


def hydra_node() -> dict[str, Any]:
    """``data.toy`` as the config tree shows it: :data:`DEFAULTS` and :data:`RUNTIME_DEFAULTS`."""
    return {**copy.deepcopy(DEFAULTS), **RUNTIME_DEFAULTS}
