"""The run record: what one ``infalign-train`` run leaves in ``metrics.json``, defined once.

``infalign-train`` builds a :class:`RunRecord` and writes :meth:`RunRecord.to_json`;
``infalign-report`` reads every job's file back with :meth:`RunRecord.from_json`; the W&B run
summary is :meth:`RunRecord.wandb_summary`. No other code spells out the file's layout.

Layout (docs/architecture.md §2, "metrics.json"): ``version`` (:data:`SCHEMA_VERSION`), what ran
(``run_name``, ``status``, ``procedure`` label, ``transform`` label, ``method``, ``method_info``,
``algo``, ``beta``, ``kl_target``, ``steps``, ``seed``), ``eval`` (:class:`Evaluation`: per judge
and column a :class:`CI`; ``eval.per_prompt`` holds the per-prompt values behind them,
docs/method.md §7 and §10), ``kl_ratio``, ``timings``, ``cache``, ``world``, ``data_reports`` and
the resolved ``config``. A run that did not finish (``status`` ``failed`` / ``interrupted``)
records only ``run_name``, ``status``, ``error``, ``timings``, ``overrides`` and ``config``.

Versions: 0 = records written before this schema existed (no ``version`` key; the same fields,
some absent in the oldest ones, e.g. ``method``, ``kl_target``, ``eval.per_prompt``) -- they load,
missing fields as ``None``. 1 = this layout without ``eval.responses``. 2 = this layout (adds
``eval.responses``: response length and EOS rate of the policy and reference pools); version-1
records load with it ``None``. 3 = adds ``resumed`` (a run that continued a checkpoint: which, from
what step, and whether the code that trained it differs from the run's, ``pipeline/policy_cache.
check_resume``) and ``overrides`` (the run's own command-line overrides, also in a record of a run that
did not finish: Hydra rewrites ``.hydra/overrides.yaml`` for every later attempt in the dir, a refused
one included); older records load with them ``None``. 4 = adds ``offline`` (an offline baseline's
training data: pairs, N, and how many best / worst picks were cut at ``max_new_tokens``,
``pipeline/baselines.fit_offline``) and ``code`` (the digests of the code that produced the run's
results -- ``training``: ``pipeline/policy_cache.code_digest``; ``evaluation``:
``pipeline/evaluate.evaluation_code_digest`` -- a re-run keeps a finished record only under the same
code, ``pipeline/policy_cache.finished_record_to_keep``); older records load with them ``None``. 5 = adds
``eval.sampler`` (the settings of an evaluation that sampled another distribution than the policy's --
``eval.temperature`` != 1, ``eval.top_k``, ``eval.top_p`` < 1 -- whose ``kl`` column is then
``E_q[log pi - log pi_ref]`` and which gets no ``theory``; None when it sampled the policy itself);
older records load with it ``None`` (their config tells); and ``eval.reward_cut`` (the share of each evaluation
pool's samples the reward model read cut at ``reward.max_length``). A newer
version, or a file that is not a record, raises :class:`RecordError` with the reason.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

SCHEMA_VERSION = 5
FINISHED = "finished"


class RecordError(ValueError):
    """A ``metrics.json`` that is not a run record this version of infalign can read."""


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class CI:
    """A mean over held-out prompts with its 95 % percentile-bootstrap interval (docs/method.md §7)."""

    mean: float
    low: float
    high: float
    n_prompts: int | None = None

    def to_json(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n_prompts": self.n_prompts}

    @classmethod
    def from_json(cls, data: Any, where: str = "ci") -> CI:
        data = _mapping(data, where)
        missing = [k for k in ("mean", "low", "high") if k not in data]
        if missing:
            raise RecordError(f"{where}: missing {missing}")
        n = data.get("n_prompts")
        return cls(*(_number(data[k], f"{where}.{k}") for k in ("mean", "low", "high")),
                   n_prompts=int(n) if isinstance(n, int | float) and not isinstance(n, bool) else None)


def constant_reward(miscalibration: dict | None) -> bool:
    """Whether every within-prompt pair of the reference pool's reward-model scores ties (``eval.miscalibration``'s
    ``tie_share`` 1): the calibrated reward is then 1/2 for every response, training has no signal and the
    calibrated-space theory, which assumes a uniform ``C``, predicts nothing -- the run gets no theory (it printed
    KL 0.36 and a bon4 win rate of 0.82 beside a measured 0 and 1/2: robustness walkthrough). False for records
    before ``tie_share``."""
    return isinstance(miscalibration, dict) and (miscalibration.get("reward_model") or {}).get("tie_share") == 1.0


def _setting(config: Mapping | None, node: str, key: str) -> float | None:
    """``config[node][key]`` as a finite number (a run's config: a DictConfig, or a record's dict), else None."""
    section = config.get(node) if isinstance(config, Mapping) else None
    value = section.get(key) if isinstance(section, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def missing_eos_penalty(config: Mapping | None) -> float | None:
    """The run's ``algo.missing_eos_penalty`` when it is set and > 0 (docs/method.md (6.1b)): its target is the
    tilt of ``Phi(C) - p * 1{cut}``, which the calibrated-space theory does not describe -- the run gets no theory
    (``apps/train_stages.theory_target``; the report skips older records': ``report/naming``); else None."""
    return _setting(config, "algo", "missing_eos_penalty") or None


def other_eval_horizon(config: Mapping | None) -> tuple[int, int] | None:
    """``(eval.max_new_tokens, algo.max_new_tokens)`` when the run's evaluation samples another horizon than its
    training (and calibration, which is training's): both evaluation pools then come from other distributions than
    the ones the calibrated-space theory tilts -- the measured KL covers the first tokens only, the win rates are
    truncated policies' -- so, as for a modified sampler, no theory is put beside the run; else None."""
    evaluated, trained = _setting(config, "eval", "max_new_tokens"), _setting(config, "algo", "max_new_tokens")
    if evaluated is None or trained is None or evaluated == trained:
        return None
    return int(evaluated), int(trained)


@dataclass
class Evaluation:
    """``eval``: held-out evaluation of the trained policy against the reference (pipeline/evaluate.py).

    ``judges[judge][column]`` for the columns ``kl``, ``standard_win_rate`` and the procedure's
    win rate at every N (:meth:`infalign.math.procedures.Procedure.win_rate_key`); ``procedure``
    is the procedure's family name; ``per_prompt`` = ``{"prompt_ids": [...], judge: {column:
    [values]}}``; ``theory`` = the calibrated-space prediction (``beta``, ``kl``, win-rate keys,
    ``at_measured_kl``) or ``None``; ``responses`` = ``{"policy" | "reference": {"response_len_mean",
    "eos_rate"}}`` over each pool's samples (tokens per response incl. the stop token; share that
    emitted one before ``eval.max_new_tokens``), ``None`` in records before version 2; ``sampler`` =
    None when the pools sampled the policy and the reference themselves, else the modifying settings
    (``"eval.temperature=0.7"``, :func:`~infalign.pipeline.settings.modified_sampler`): the ``kl`` column
    is then ``E_q[log pi - log pi_ref]`` (docs/method.md (7.3)) and ``theory`` None; ``reward_cut`` =
    ``{"reference" | "policy": share}`` of each pool's samples the reward model read cut at
    ``reward.max_length`` (None for a custom scorer, and in records before version 5).
    """

    judges: dict[str, dict[str, CI]]
    ns: list[int] = field(default_factory=list)
    procedure: str | None = None
    reference_pool_cache_hit: bool | None = None
    policy_pool_cache_hit: bool | None = None  # None: drawn fresh (the policy had no cache key)
    per_prompt: dict | None = None
    miscalibration: dict | None = None
    samples: list = field(default_factory=list)
    theory: dict | None = None
    responses: dict | None = None
    sampler: str | None = None
    reward_cut: dict | None = None

    def ci(self, judge: str, column: str | None) -> CI | None:
        """The judge's column (``None`` when absent)."""
        return self.judges.get(judge, {}).get(column) if column else None

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["judges"] = {j: {k: c.to_json() for k, c in cols.items()} for j, cols in self.judges.items()}
        return out

    @classmethod
    def from_json(cls, data: Any) -> Evaluation:
        data = _mapping(data, "eval")
        judges = {
            str(j): {str(k): CI.from_json(c, f"eval.judges.{j}.{k}")
                     for k, c in _mapping(cols, f"eval.judges.{j}").items()}
            for j, cols in _mapping(data.get("judges") or {}, "eval.judges").items()
        }
        known = {f.name for f in dataclasses.fields(cls)} - {"judges"}
        rest = {k: v for k, v in data.items() if k in known and v is not None}
        rest["ns"] = [int(n) for n in rest.get("ns") or []]
        return cls(judges=judges, **rest)


@dataclass
class RunRecord:
    """One run's ``metrics.json`` (module docstring). Field order = the file's key order."""

    run_name: str | None = None
    status: str = FINISHED  # finished | failed | interrupted
    error: str | None = None  # runs that did not finish: the exception, "Type: message"
    procedure: str | None = None  # label, e.g. "bon4"
    transform: str | None = None  # label, e.g. "expn(t=4)"
    method: str | None = None  # docs/method.md §8, e.g. "expn(t=4)", "identity+ppo", "ipo(N=4)"
    method_info: dict | None = None  # {method, algo, kl_knob, transform, depends_on_n, trained_n}
    algo: str | None = None
    beta: float | None = None  # after algo.kl_target
    kl_target: float | None = None
    steps: int | None = None
    seed: int | None = None
    eval: Evaluation | None = None
    kl_ratio: float | None = None  # measured KL / theory KL at the training beta
    timings: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    # a run that continued a checkpoint: {checkpoint, from_step, changed: {code | <library>: {checkpoint, run}}}
    resumed: dict | None = None
    # an offline baseline's training data: {pairs, n, cut_best, cut_worst} (None: online, or an older record)
    offline: dict | None = None
    # the code that produced the results: {training: digest, evaluation: digest} (None: an older record)
    code: dict | None = None
    world: dict = field(default_factory=dict)
    data_reports: dict | None = None
    # the run's command-line overrides (Hydra's task overrides; None: not run by Hydra, or an older record)
    overrides: list[str] | None = None
    config: dict = field(default_factory=dict)
    version: int = SCHEMA_VERSION

    UNFINISHED_FIELDS: ClassVar[tuple[str, ...]] = ("version", "run_name", "status", "error", "timings",
                                                    "overrides", "config")

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    def to_json(self) -> dict:
        """The ``metrics.json`` object: every field of a finished run but ``error``; only
        :data:`UNFINISHED_FIELDS` of one that did not finish."""
        keep = ((lambda name: name != "error") if self.finished
                else (lambda name: name in self.UNFINISHED_FIELDS))
        out = {"version": self.version}
        for f in dataclasses.fields(self):
            if f.name != "version" and keep(f.name):
                value = getattr(self, f.name)
                out[f.name] = value.to_json() if isinstance(value, Evaluation) else value
        return out

    @classmethod
    def from_json(cls, data: Any) -> RunRecord:
        """A record from a parsed ``metrics.json`` (versions 0 to :data:`SCHEMA_VERSION`; module docstring)."""
        data = _mapping(data, "metrics.json")
        version = data.get("version", 0)
        if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= SCHEMA_VERSION:
            raise RecordError(f"version={version!r}: this infalign reads run records of versions 0 to "
                              f"{SCHEMA_VERSION} (written by a newer infalign? upgrade to read it)")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown and version > 0:  # version 0 predates the schema: extra keys are history, not errors
            raise RecordError(f"unknown field(s) {unknown} in a version-{version} record")
        values = {k: v for k, v in data.items() if k in names and v is not None}
        values["status"] = str(values.get("status") or FINISHED)
        values["version"] = version
        if "eval" in values:
            values["eval"] = Evaluation.from_json(values["eval"])
        for key in ("beta", "kl_target", "kl_ratio"):
            if key in values:
                values[key] = _number(values[key], key)
        return cls(**values)

    def wandb_summary(self) -> dict[str, float]:
        """The W&B run summary: ``eval/<judge>/<column>`` (+ ``_low`` / ``_high``), ``theory/<key>``
        for the prediction's numbers, ``eval/<policy|reference>/<response_len_mean|eos_rate>``,
        ``theory/at_measured_kl/<key>`` (the theory read at the measured KL),
        ``world/<judge>/<stat>`` (miscalibration, docs/method.md §11),
        ``reward_model/val_*`` (the reward model's held-out accuracy, loss and Bradley-Terry ceiling) and
        ``eval/kl_ratio_to_theory``. A figure with no value (``null`` in a ``metrics.json`` read
        back: infra/cache.json_safe) is left out."""
        out: dict[str, float] = {}
        ev = self.eval
        if ev is None:
            return out

        def put(key: str, value: Any) -> None:
            if isinstance(value, int | float):
                out[key] = float(value)

        for judge, cols in ev.judges.items():
            for name, ci in cols.items():
                put(f"eval/{judge}/{name}", ci.mean)
                put(f"eval/{judge}/{name}_low", ci.low)
                put(f"eval/{judge}/{name}_high", ci.high)
        for pool, stats in (ev.responses or {}).items():
            for k, v in stats.items():
                put(f"eval/{pool}/{k}", v)
        for k, v in (ev.theory or {}).items():
            if isinstance(v, dict):  # the theory read at the measured KL (runs.csv and the report use it)
                for kk, vv in v.items():
                    put(f"theory/{k}/{kk}", vv)
            else:
                put(f"theory/{k}", v)
        for judge, stats in (ev.miscalibration or {}).items():
            if isinstance(stats, dict):
                for k, v in stats.items():
                    put(f"world/{judge}/{k}", v)
            elif isinstance(stats, float):  # (the prompt and sample counts are not summary numbers)
                out[f"world/{judge}"] = stats
        for k in ("reward_val_accuracy", "reward_val_loss", "reward_val_gold_accuracy", "reward_val_bt_ceiling"):
            put(f"reward_model/{k.removeprefix('reward_')}", self.world.get(k))
        if self.kl_ratio is not None:
            out["eval/kl_ratio_to_theory"] = self.kl_ratio
        return out
