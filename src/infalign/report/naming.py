"""What a job ran, as the report names and groups it: method, transform family and t, procedure.

Everything is read from the job's record and resolved config (never parsed back out of labels):
the method is the record's ``method`` (docs/method.md §8); the procedure is built from
``config.procedure`` and names its own evaluation keys
(:class:`~infalign.math.procedures.Procedure`); the transform family comes from the transform's
``_target_``.
"""

from __future__ import annotations

import math
from typing import Any

from infalign.errors import ConfigError
from infalign.math.procedures import Procedure, make_procedure
from infalign.report.collect import Job

# Records written before method_info existed: the algorithms that train without the transform
# their config still carries (newer records say so: method_info.transform is null).
LEGACY_NO_TRANSFORM_ALGOS = ("bon_sft", "ipo")


def number(x: Any) -> float | None:
    """``x`` as a finite float, else None (bools, strings, NaN and inf included)."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def transform_family(tcfg: Any, label: str | None = None) -> tuple[str, float | None]:
    """(family, t) from a ``config.transform`` node: ``Exp`` -> ``exp`` (``expn`` if normalised)
    with its ``t``; registered classes -> their registry name; ``Custom`` -> its ``name``;
    ``optimal_transform`` -> ``optimal``. Without a config node: the record's transform
    ``label`` as the family, ``t`` unknown."""
    if isinstance(tcfg, dict) and tcfg.get("_target_"):
        name = str(tcfg["_target_"]).rsplit(".", 1)[-1]
        t = number(tcfg.get("t"))
        if name == "Exp":
            return ("expn" if tcfg.get("normalized") else "exp"), t
        if name == "Custom":
            fam = tcfg.get("name") or str(tcfg.get("fn") or "custom").rsplit(".", 1)[-1]
            return str(fam), t
        if name == "optimal_transform":
            return "optimal", t
        from infalign.math.transforms import TRANSFORMS

        by_class = {cls.__name__: kind for kind, cls in TRANSFORMS.items()}
        return by_class.get(name, name.lower()), t
    return (str(label), None) if label else ("unknown", None)


def algo_of(job: Job) -> str | None:
    """The record's algorithm, else ``config.algo.name``."""
    algo_cfg = job.config.get("algo") if isinstance(job.config.get("algo"), dict) else {}
    return (job.record.algo if job.record is not None else None) or algo_cfg.get("name")


def uses_transform(job: Job) -> bool:
    """Whether the run trained on its transform: ``method_info.transform`` is set (null for the
    offline baselines); for records without ``method_info``, the algorithm is not one of
    :data:`LEGACY_NO_TRANSFORM_ALGOS`."""
    info = job.record.method_info if job.record is not None else None
    if isinstance(info, dict) and "transform" in info:
        return info["transform"] is not None
    return str(algo_of(job) or "rloo") not in LEGACY_NO_TRANSFORM_ALGOS


def pooled_calibration(job: Job) -> bool:
    """Whether the run calibrated its reward among all prompts' reference samples
    (``calibration.scope=pooled``, docs/method.md §2.4): the calibrated-space theory does not apply."""
    calibration = job.config.get("calibration") if isinstance(job.config, dict) else None
    return isinstance(calibration, dict) and calibration.get("scope") == "pooled"


def transform_label(job: Job) -> str:
    """The record's transform label, else ``family(t=...)`` / ``family`` from the config."""
    family, t = transform_family(job.config.get("transform"))
    recorded = job.record.transform if job.record is not None else None
    return recorded or (f"{family}(t={t:g})" if t is not None else family)


def method_of(job: Job) -> str:
    """The run's method, the one field the report groups methods by: the record's ``method``
    (e.g. ``expn(t=4)``, ``identity+ppo``, ``ipo(N=4)``); for records written before it existed,
    the transform label (``+<algo>`` when the algorithm is not rloo), or the algorithm's name
    alone for ``bon_sft`` / ``ipo`` (which use no transform). A run whose calibration settings differ
    from most runs' gets them appended (``expn(t=4) [calibration.K=64]``, ``Job.method_note``)."""
    note = f" [{job.method_note}]" if job.method_note else ""
    if job.record is not None and job.record.method:
        return job.record.method + note
    algo = str(algo_of(job) or "rloo")
    if not uses_transform(job):
        return algo + note
    label = transform_label(job)
    return (label if algo == "rloo" else f"{label}+{algo}") + note


def procedure_of(job: Job) -> Procedure | None:
    """The run's procedure from ``config.procedure`` (None when absent or not a known procedure)."""
    p = job.config.get("procedure") if isinstance(job.config, dict) else None
    if not isinstance(p, dict) or not p.get("name"):
        return None
    try:
        return make_procedure(str(p["name"]), int(p.get("n", 1)))
    except (ConfigError, TypeError, ValueError):
        return None


def world_keys(jobs) -> dict[str, str | None]:
    """``{job: the world its numbers come from}``, comparable across ``jobs``: ``metrics.json``'s
    ``world.world_id`` (for records written before it, the toy world's ``toy_key``; None when a record
    has neither) -- except when some toy-world record predates ``world_id``: then every toy run is
    keyed by its ``toy_key`` (which fixes its world: the models are built from it), so old and new
    records of one world are not told apart as two. A run evaluated unlike most runs
    (``Job.eval_note``: another sampling temperature, top-k, top-p or response length) has the note
    appended: another evaluation is compared apart, like another world."""
    worlds = {job.job: job.record.world if job.record is not None and isinstance(job.record.world, dict) else {}
              for job in jobs}
    notes = {job.job: job.eval_note for job in jobs}
    legacy = any(w.get("toy_key") and not w.get("world_id") for w in worlds.values())
    out = {}
    for job, w in worlds.items():
        value = w.get("toy_key") if legacy and w.get("toy_key") else (w.get("world_id") or w.get("toy_key"))
        out[job] = (str(value) + (f" [{notes[job]}]" if notes[job] else "")) if value else None
    return out


def comparison_worlds(jobs) -> tuple[dict[str, str], str]:
    """``({job: world key}, the main world)``: :func:`world_keys` with a record of no world (written
    before ``world_id``) counted in the main world -- the one most finished runs share -- (its eval
    note kept). Matched-KL comparisons, theory-gap entries and plot series never mix two keys."""
    keys = world_keys(jobs)
    known = [k for job in jobs if job.status == "finished" and (k := keys[job.job]) is not None]
    main = max(sorted(set(known)), key=known.count) if known else ""
    out = {}
    for job in jobs:
        key = keys[job.job]
        out[job.job] = key if key is not None else main + (f" [{job.eval_note}]" if job.eval_note else "")
    return out, main


def world_label(key: str, main: str) -> str:
    """What a series label adds for world ``key``: nothing for the main world, the evaluation note for
    another evaluation of it, ``[world <key>]`` for another world."""
    if key == main:
        return ""
    if main and key.startswith(main + " ["):
        return key[len(main) + 1:]
    return f"[world {key}]"
