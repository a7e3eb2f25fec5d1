"""Expanding a sweep config's grid with Hydra's public API (no hydra._internal): the jobs Hydra's
basic sweeper would launch are the cartesian product of the swept keys' values."""

from __future__ import annotations

import itertools

from hydra.core.override_parser.overrides_parser import OverridesParser

from pipeline_helpers import compose_config


def compose_sweep(name: str, *overrides: str):
    """``train`` with ``+sweeps=<name>`` and the Hydra config (``hydra.mode``, the sweeper); a copy
    of the one compose per process (``pipeline_helpers.compose_config``)."""
    return compose_config("train", f"+sweeps={name}", *overrides, hydra=True)


def sweep_axes(cfg) -> dict[str, list[str]]:
    """``{key: [values]}`` of ``hydra.sweeper.params`` (a fixed value is a one-value axis); ``{}``
    for a search space (e.g. Optuna's ``interval``), which is not a grid."""
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    parsed = OverridesParser.create().parse_overrides(params)
    if any(o.is_sweep_override() and not o.is_discrete_sweep() for o in parsed):
        return {}
    return {o.get_key_element(): (list(o.sweep_string_iterator()) if o.is_sweep_override()
                                  else [o.get_value_element_as_str()]) for o in parsed}


def expand(cfg) -> list[list[str]]:
    """The job override lists of a grid sweep (``key=value`` per axis, cartesian product)."""
    axes = sweep_axes(cfg)
    return [[f"{k}={v}" for k, v in zip(axes, values)] for values in itertools.product(*axes.values())]
