"""What a job ran, as the report names and groups it: method, transform family and t, procedure.

Everything is read from the job's record and resolved config (never parsed back out of labels):
the method is the record's ``method`` (docs/method.md §8); the procedure is built from
``config.procedure`` and names its own evaluation keys
(:class:`~infalign.math.procedures.Procedure`); the transform family comes from the transform's
``_target_``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from infalign.errors import ConfigError
from infalign.math.procedures import Procedure, make_procedure
from infalign.pipeline.run_record import constant_reward, missing_eos_penalty, other_eval_horizon
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
    (``calibration.scope=pooled``, docs/method.md (2.4)): the calibrated-space theory does not apply.
    A run that trains without a transform (:func:`uses_transform`: the offline baselines) ranks no
    reward, whatever its config's scope (as ``pipeline/record.pooled_calibration``)."""
    calibration = job.config.get("calibration") if isinstance(job.config, dict) else None
    return isinstance(calibration, dict) and calibration.get("scope") == "pooled" and uses_transform(job)


def eval_sampler(job: Job) -> str | None:
    """The modified sampler the run was evaluated with (``"eval.temperature=0.7"``), or None when its pools
    sampled the policy and the reference themselves: the record's ``eval.sampler`` (version 5), else read
    from the config's ``eval`` (:func:`~infalign.pipeline.settings.modified_sampler`; None when it cannot be
    read). Such a run's KL column is no KL and it has no calibrated-space theory (docs/method.md (7.3))."""
    ev = getattr(getattr(job, "record", None), "eval", None)  # (a job with no record, or a partial one)
    if getattr(ev, "sampler", None):
        return ev.sampler
    config = getattr(job, "config", None)
    ev = config.get("eval") if isinstance(config, dict) else None
    if not isinstance(ev, dict) or "temperature" not in ev:
        return None
    from omegaconf import OmegaConf

    from infalign.pipeline.settings import modified_sampler

    try:
        return modified_sampler(OmegaConf.create(ev), "eval")
    except (ConfigError, TypeError, ValueError):
        return None


def constant_reward_run(job: Job) -> bool:
    """Whether the run's reward tied in every within-prompt pair of its evaluation's reference pool
    (``pipeline/run_record.constant_reward``: its record carries no theory, and the report draws none)."""
    ev = job.record.eval if job.record is not None else None
    return ev is not None and constant_reward(ev.miscalibration)


def record_theory_applies(job: Job) -> bool:
    """Whether the theory a run's record carries (``eval.theory``, ``kl_ratio``) is one to read: not for pooled
    calibration, an evaluation with a modified sampler or at another horizon
    (``pipeline/run_record.other_eval_horizon``), a reward that tied everywhere (:func:`constant_reward_run`), nor
    a missing-EOS penalty (``run_record.missing_eos_penalty``), whose older records still carry one."""
    return (not pooled_calibration(job) and not eval_sampler(job) and not other_eval_horizon(job.config)
            and not constant_reward_run(job) and not missing_eos_penalty(job.config))


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
    (``Job.eval_note``: another sampling temperature, top-k, top-p, response length, held-out prompt set or
    precision: :data:`EVAL_SETTINGS`) has the note appended: another evaluation is compared apart, like another
    world."""
    notes = {job.job: job.eval_note for job in jobs}
    return {job: (value + (f" [{notes[job]}]" if notes[job] else "")) if value else None
            for job, value in _world_ids(jobs).items()}


def _world_ids(jobs) -> dict[str, str | None]:
    """:func:`world_keys` without the evaluation notes."""
    worlds = {job.job: job.record.world if job.record is not None and isinstance(job.record.world, dict) else {}
              for job in jobs}
    legacy = any(w.get("toy_key") and not w.get("world_id") for w in worlds.values())
    out = {}
    for job, w in worlds.items():
        value = w.get("toy_key") if legacy and w.get("toy_key") else (w.get("world_id") or w.get("toy_key"))
        out[job] = str(value) if value else None
    return out


def comparison_worlds(jobs) -> tuple[dict[str, str], str]:
    """``({job: world key}, the main world)``: :func:`world_keys` with a record of no world (written
    before ``world_id``) counted in the main world -- the one most finished runs share -- (its eval
    note kept). Matched-KL comparisons, theory-gap entries and plot series never mix two keys."""
    keys = world_keys(jobs)
    known = [k for job in jobs if job.status == "finished" and (k := keys[job.job]) is not None]
    # the most runs' world; of two as common, the one evaluated with the policy's own sampler (a sweep over
    # eval.temperature=1.0,0.7 notes both: the modified sampler's is no main world)
    modified = {j.job for j in jobs if eval_sampler(j)}
    own = {k: not any(j.job in modified for j in jobs if keys[j.job] == k) for k in set(known)}
    main = max(sorted(set(known)), key=lambda k: (known.count(k), own[k])) if known else ""
    out = {}
    for job in jobs:
        key = keys[job.job]
        out[job.job] = key if key is not None else main + (f" [{job.eval_note}]" if job.eval_note else "")
    return out, main


WORLD_GROUPS = ("reward", "policy", "data", "experiment")  # the overrides that choose a world's models and data


def world_names(jobs, worlds: dict[str, str], main: str) -> dict[str, str]:
    """``{world key: name}`` for the worlds other than ``main`` that the runs' own command-line overrides tell
    apart: the overrides of :data:`WORLD_GROUPS` (``reward=toy``, ``data.toy.seed=3``) every finished run of
    that world has and no run of the main world has -- a sweep over ``reward=length,toy`` names its second
    world ``reward=toy``, not by its hash. A world they do not tell apart is left out (named by its key)."""
    def own(job) -> set[str]:
        return {o for o in job.overrides or []
                if "=" in o and o.lstrip("+~").split("=", 1)[0].split(".")[0].split("@")[0] in WORLD_GROUPS}

    done = [j for j in jobs if j.status == "finished"]
    in_main = set().union(*(own(j) for j in done if worlds.get(j.job) == main))
    names = {}
    for key in {worlds[j.job] for j in done if worlds.get(j.job) not in (None, main)}:
        members = [own(j) for j in done if worlds[j.job] == key]
        shared = set.intersection(*members) - in_main if members else set()
        if shared:
            names[key] = ", ".join(sorted(shared))
    return names


def world_base(key: str) -> str:
    """A world key without its evaluation note (:func:`world_keys`): the models' and data's world."""
    return key.split(" [", 1)[0]


def other_evaluation(key: str, main: str) -> bool:
    """Whether world ``key`` is the main world's models and data evaluated otherwise (a note of its own)."""
    return bool(main) and key != world_base(key) and world_base(key) == world_base(main) and key != main


def world_label(key: str, main: str, names: dict[str, str] | None = None) -> str:
    """What a series label adds for world ``key``: nothing for the main world, the evaluation note for
    another evaluation of it, ``[<its overrides>]`` for another world :func:`world_names` names, else
    ``[world <key>]``."""
    if key == main:
        return ""
    if other_evaluation(key, main):  # its note
        return key[len(world_base(key)) + 1:]
    if names and key in names:
        return f"[{names[key]}]"
    return f"[world {key}]"


# Settings outside a run's method label and its KL knob that change what its numbers mean: the
# calibration (K, smoothing) is part of the method; the evaluation's sampler, and its held-out prompts (another
# number of them is another prompt set: the matched-KL table leaves such a run out, and its plotted curve must
# not join it to the others -- sweep walkthrough), make another evaluation.
METHOD_SETTINGS = ("calibration.K", "calibration.smoothing")
# The trainer's precision computes the evaluation's pools too (drawn, and cached, per precision: review).
EVAL_SETTINGS = ("eval.temperature", "eval.top_k", "eval.top_p", "eval.max_new_tokens", "data.eval_prompts",
                 "trainer.precision")
# How a method was trained, compared among the runs of one method: every setting of ``algo`` (steps,
# lr, group size, ...) but its name (the method names it) and the KL knob that moves a run along the
# method's curve (method_info.kl_knob: Algorithm.kl_knob_keys); and the training prompts.
TRAINING_NODE = "algo"
TRAINING_SETTINGS = ("data.train_prompts", "policy.train_dtype")
# The reward transform, compared the same way, leaf by leaf: a custom transform's label is its ``name``
# alone, so two parameter values of one callable (``fn: {_target_: scipy.stats.beta.cdf, a: 3}`` and
# ``a: 2``), or a custom entry named like a built-in one, would otherwise pool into one method. The
# optimal transform's ``beta`` reads ``algo.beta``, the KL knob that moves a run along its curve.
TRANSFORM_NODE = "transform"
TRANSFORM_KL_KNOBS = ("transform.beta",)
# Records written before method_info.kl_knob: the algorithms' knobs then (every other: beta / kl_target).
LEGACY_KL_KNOBS = {"bon_sft": ("algo.steps",), "ipo": ("algo.beta",)}
DEFAULT_KL_KNOB = ("algo.beta", "algo.kl_target")


def mark_odd_settings(jobs: Sequence[Job]) -> None:
    """Set ``job.method_note`` / ``job.eval_note`` (``"calibration.K=64"``, ...) on the finished jobs
    whose value of a :data:`METHOD_SETTINGS` / :data:`EVAL_SETTINGS` key differs from most finished
    jobs' (a tie for most: every job's value is noted, as none is the common one). The report then names such a
    run's method with the note (``expn(t=4) [calibration.K=64]``: another method) and keys its world with the
    evaluation note (compared apart from the others), instead of pooling it with runs it does not match. A key
    that some finished job's config lacks (a record written before the key existed) is not compared. Numbers
    compare by value (``1`` is ``1.0``); "most" is counted within each world (:func:`world_keys` before its
    evaluation notes), so runs of one world are not renamed by another's; the calibration settings are compared
    among runs that calibrate (not ``raw``, not the offline baselines, which never read them). How a run was
    trained (every ``algo`` setting but its name and its algorithm's KL knob, :func:`kl_knob_of`, and
    ``data.train_prompts``: :data:`TRAINING_SETTINGS`) is compared among the runs of one method in one world: a
    run trained for more steps or at another learning rate than most runs of its method is another method too
    (``identity [algo.steps=200]``), not a point on their curve (two sweeps of one method at different training
    settings, reported together from a dir of links, would otherwise make one curve of two trainings). So is a
    run whose reward transform differs from most runs' of its method, leaf by leaf (:func:`_transform_keys`: a
    custom transform's label is its ``name`` alone -- ``pow3 [transform.fn.a=2.0]``)."""
    done = [j for j in jobs if j.status == "finished" and isinstance(j.config, dict) and j.config]
    worlds = _world_ids(jobs)  # (without the evaluation notes being set here)
    for keys, attr in ((METHOD_SETTINGS, "method_note"), (EVAL_SETTINGS, "eval_note")):
        notes: dict[str, list[str]] = {j.job: [] for j in done}
        members = [j for j in done if attr == "eval_note" or _calibrates(j)]
        for world in sorted({worlds[j.job] for j in members}, key=str):
            _note_odd([j for j in members if worlds[j.job] == world], keys, notes)
        for job in done:
            setattr(job, attr, ", ".join(notes[job.job]))
    notes = {j.job: [] for j in done}
    groups: dict[tuple, list[Job]] = {}
    for job in done:  # (method_of before the training notes: its calibration note is part of the method)
        groups.setdefault((str(worlds[job.job]), method_of(job)), []).append(job)
    for key in sorted(groups):
        mine = groups[key]
        trained_on = [j for j in mine if uses_transform(j)]  # (an offline baseline never reads its transform)
        _note_odd(mine, sorted({*TRAINING_SETTINGS, *_training_keys(mine)}), notes)
        _note_odd(trained_on, sorted(_transform_keys(trained_on)), notes)
        _note_other_values(trained_on, notes)
    for job in done:
        job.method_note = ", ".join(filter(None, [job.method_note, *notes[job.job]]))


def _note_odd(mine: Sequence[Job], keys: Sequence[str], notes: dict[str, list[str]]) -> None:
    """Append ``key=value`` to ``notes[job]`` for each job of ``mine`` whose value of ``key`` differs from
    most jobs' of ``mine`` (keys some job lacks are skipped)."""
    for key in keys:
        values = [_dotted(j.config, key) for j in mine]
        if not values or any(v is _MISSING for v in values):
            continue
        if key == "trainer.precision":  # Lightning's short names are the same precision (pools key them as one)
            from infalign.pipeline.policy_cache import PRECISION_ALIASES

            values = [PRECISION_ALIASES.get(str(v), v) for v in values]
        compared = [json.dumps(_plain_number(v), sort_keys=True) for v in values]
        top = max(compared.count(v) for v in compared)
        # no one most common value (a tie): every job is noted -- unnoted, one side of the tie read as the
        # entry's own value (``tanh3`` for a run at fn.a=2 of an entry whose file says 3)
        common = None if sum(compared.count(v) == top for v in set(compared)) > 1 else \
            next(v for v in compared if compared.count(v) == top)
        for job, value, raw in zip(mine, compared, values):
            if value != common:
                notes[job.job].append(f"{key}={json.dumps(raw, sort_keys=True)}")


def _note_other_values(mine: Sequence[Job], notes: dict[str, list[str]]) -> None:
    """Runs of one method whose recorded transform values ``Phi(u)`` (``method_info.transform_values``,
    ``policy_cache.same_transform_values``) differ are other transforms whatever their configs say: a leaf only
    some configs hold (``transform.fn.loc`` added to a custom entry's callable in a second sweep) is skipped by
    :func:`_note_odd`, and two sweeps trained u^3 and ((u + 1) / 2)^3 as one ``pow3`` curve with the first run's
    theory (extensibility walkthrough). A run outside the most common values (every run in a tie) that no
    transform note tells apart yet gets the leaves that differ between the value classes -- a missing one
    as ``<unset>`` -- and, when they do not tell it apart (the transform's code changed),
    ``transform_values=#<digest>``. Not compared: runs whose transform reads the KL knob (the optimal
    transform's ``beta``: its values move along its curve), and records without values."""
    from infalign.pipeline.policy_cache import TRANSFORM_VALUES, same_transform_values

    classes: list[tuple[list, list[Job]]] = []
    for job in mine:
        info = job.record.method_info if job.record is not None else None
        values = info.get(TRANSFORM_VALUES) if isinstance(info, dict) else None
        node = job.config.get(TRANSFORM_NODE)
        if not isinstance(values, list) or not isinstance(node, dict) or any(
                _dotted(job.config, k) is not _MISSING for k in TRANSFORM_KL_KNOBS):
            continue
        for ref, members in classes:
            if same_transform_values(ref, values):
                members.append(job)
                break
        else:
            classes.append((values, [job]))
    if len(classes) < 2:
        return
    top = max(len(m) for _, m in classes)
    common = None if sum(len(m) == top for _, m in classes) > 1 else next(m for _, m in classes if len(m) == top)
    keys = sorted(_transform_keys([j for _, members in classes for j in members]))

    def leaf(job: Job, key: str) -> str:
        value = _dotted(job.config, key)
        return "<unset>" if value is _MISSING else json.dumps(_plain_number(value), sort_keys=True, default=str)

    for values, members in classes:
        if members is common:
            continue
        others = [j for _, m in classes if m is not members for j in m]
        refs = [common[0]] if common is not None else [m[0] for _, m in classes if m is not members]
        for job in members:
            if any(n.startswith(f"{TRANSFORM_NODE}.") for n in notes[job.job]):
                continue  # (told apart already)
            told = [k for k in keys if any(leaf(job, k) != leaf(ref, k) for ref in refs)]
            notes[job.job].extend(f"{k}={leaf(job, k)}" for k in told)
            if not told or any(all(leaf(o, k) == leaf(job, k) for k in told) for o in others):
                notes[job.job].append(f"transform_values=#{_values_digest(values)}")  # (no leaf tells it apart)


def _values_digest(values: list) -> str:
    """Eight hex digits naming a run's transform values (:func:`_note_other_values`)."""
    import hashlib

    return hashlib.sha256(json.dumps([round(float(v), 9) for v in values]).encode()).hexdigest()[:8]


def _training_keys(jobs: Sequence[Job]) -> set[str]:
    """The dotted keys of every setting under :data:`TRAINING_NODE` in ``jobs``' configs, but its
    ``name`` and the KL knob of any of ``jobs`` (:func:`kl_knob_of`)."""
    keys, knobs = set(), {f"{TRAINING_NODE}.name"}
    for job in jobs:
        node = job.config.get(TRAINING_NODE)
        if isinstance(node, dict):
            keys |= {f"{TRAINING_NODE}.{k}" for k in node}
        knobs |= set(kl_knob_of(job))
    return keys - knobs


def _transform_keys(jobs: Sequence[Job]) -> set[str]:
    """The dotted keys of every leaf under :data:`TRANSFORM_NODE` in ``jobs``' configs (``transform.fn.a``),
    but :data:`TRANSFORM_KL_KNOBS`."""

    def leaves(node: dict, prefix: str) -> set[str]:
        out = set()
        for k, v in node.items():
            out |= leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}"}
        return out

    keys = set()
    for job in jobs:
        node = job.config.get(TRANSFORM_NODE)
        if isinstance(node, dict):
            keys |= leaves(node, f"{TRANSFORM_NODE}.")
    return keys - set(TRANSFORM_KL_KNOBS)


def kl_knob_of(job: Job) -> tuple[str, ...]:
    """The config keys that move the run's KL along its method's curve: the record's
    ``method_info.kl_knob``; for records written before it, :data:`LEGACY_KL_KNOBS` by algorithm
    (else ``algo.beta`` / ``algo.kl_target``)."""
    info = job.record.method_info if job.record is not None else None
    if isinstance(info, dict) and isinstance(info.get("kl_knob"), list):
        return tuple(str(k) for k in info["kl_knob"])
    return LEGACY_KL_KNOBS.get(str(algo_of(job)), DEFAULT_KL_KNOB)


def _plain_number(value):
    """A number as a float (``1`` and ``1.0`` alike); anything else (bools included) as it is."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _calibrates(job: Job) -> bool:
    """Whether the run ranked its rewards against a calibration table: it trained on its transform
    (:func:`uses_transform`) and that transform is not ``raw``."""
    return uses_transform(job) and transform_label(job) != "raw"


_MISSING = object()


def _dotted(cfg: dict, key: str):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node
