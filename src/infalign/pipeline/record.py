"""Stage 4: the run record's files in the run dir (``metrics.json``, CSV, PNG) and the printed table.

The record itself, and the W&B summary derived from it, are :mod:`infalign.pipeline.run_record`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from infalign.infra.cache import aside_dir, atomic_write_csv, atomic_write_json
from infalign.math.procedures import STANDARD_WIN_RATE
from infalign.pipeline.run_plot import plot_win_rates
from infalign.pipeline.run_record import CI, RunRecord, constant_reward

log = logging.getLogger(__name__)


def run_name(procedure, transform, algo) -> str:
    """Dashboard-friendly run name: the procedure, then the algorithm's part (``Algorithm.run_label``),
    e.g. ``bon4-exp-t8-b0.05`` (RLOO), ``bon4-identity-kl0.4-ppo`` (beta from ``algo.kl_target``),
    ``bon4-bon_sft-n4-s60``. A transform label's parameters stay in it, ``name(k=v, ...)`` -> ``name-kv-...``
    (``exp(t=8)`` -> ``exp-t8``, a registered family's ``pow(t=2)`` -> ``pow-t2``: runs of one family at two
    parameters were named alike)."""
    m = re.fullmatch(r"([^()]*)\((.*)\)", transform.label)
    parts = [m.group(1), *(p.replace("=", "") for p in m.group(2).split(","))] if m else [transform.label]
    label = "-".join(filter(None, (re.sub(r"[^A-Za-z0-9.+-]+", "", p) for p in parts)))
    return f"{procedure.label}-{algo.run_label(label)}"


def logged_kinds(run_dir: Path) -> list[str]:
    """The loggers ``run_dir``'s :data:`LOGGED` names (``pipeline/loggers.mark_logged``); none when it is
    missing or unreadable (as if nothing had the record: logged again, not lost)."""
    try:
        kinds = json.loads((Path(run_dir) / LOGGED).read_text())
    except (OSError, ValueError):
        return []
    return [k for k in kinds if isinstance(k, str)] if isinstance(kinds, list) else []


def pooled_calibration(cfg, algo) -> bool:
    """Whether the run trains on a reward calibrated among all prompts' samples (``calibration.scope=pooled``):
    a transform-trained run only (an offline baseline ranks no reward) -- its method is ``<label>[pooled]``
    (:func:`method_info`), its run name ends ``-pooled`` (``apps/train.name_run``)."""
    return algo.trained_n is None and cfg.calibration.get("scope", "prompt") == "pooled"


def method_info(cfg, algo, transform, procedure) -> dict:
    """What was trained, as the report groups it: ``{"method", "algo", "kl_knob", "transform",
    "depends_on_n", "trained_n"}``.

    ``method`` is the algorithm's label (``Algorithm.method_label``): the transform's label for RLOO
    (``"expn(t=4)"``, ``"identity"``, ``"raw"``; ``"identity[pooled]"`` with
    ``calibration.scope=pooled``), ``"<label>+<algo>"`` for other RL algorithms, and the baseline's
    own name with its N for the offline baselines (``"bon_sft(N=4)"``, ``"ipo(N=4)"``), which never
    use the transform; ``[replica=r]`` follows with ``replica`` r > 0 (an independent re-training,
    :func:`~infalign.pipeline.settings.training_seed`). ``depends_on_n``: whether the trained policy
    depends on ``procedure.n`` (offline baselines, trained on N samples per prompt, and any
    transform or algo setting that interpolates ``procedure``, e.g. ``optimal`` or
    ``algo.beta=${bon_beta:${procedure.n}}``); a policy that does not is trained once and evaluated
    at every N (docs/method.md §8). ``kl_knob``: the config keys that move the algorithm's KL
    (``Algorithm.kl_knob_keys``): the settings a method's runs may differ in along its curve; the
    report takes a run that differs from most of its method's runs in any other ``algo`` setting for
    another method (``report/naming.mark_odd_settings``).
    """
    from omegaconf import OmegaConf

    info = {"method": algo.method_label(transform), "algo": algo.name, "kl_knob": list(algo.kl_knob_keys)}
    if pooled_calibration(cfg, algo):  # ranked among all prompts' samples
        info["method"] += "[pooled]"
    if int(cfg.get("replica", 0)):  # an independent re-training, the A/A control's second arm (any method)
        info["method"] += f"[replica={int(cfg.replica)}]"
    if algo.trained_n is not None:
        return info | {"transform": None, "depends_on_n": True, "trained_n": algo.trained_n}
    raw = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, ["transform", "algo"]), resolve=False)
    return info | {"transform": transform.label, "depends_on_n": "procedure." in raw, "trained_n": procedure.n}


def eval_rows(rec: RunRecord) -> list[dict]:
    """``eval_metrics.csv``: one row per judge and column, ``{judge, metric, mean, low, high, n_prompts}``."""
    return [{"judge": judge, "metric": name, **ci.to_json()}
            for judge, cols in rec.eval.judges.items() for name, ci in cols.items()]


FAILED_ATTEMPT = "metrics.failed.json"  # a failed attempt in the dir of a finished run (apps/train.write_failure)
LOGGED = "logged.json"  # the loggers that took the finished run's record (pipeline/loggers.mark_logged)


def group_file(run_dir: Path) -> Path:
    """``<run dir>/wandb/group``: where the run dir's W&B runs went -- group, project, entity
    (``pipeline/loggers.RunWandbLogger.record_group``), which the report's run joins (``report/wandb_run``)."""
    return run_dir / "wandb" / "group"


def read_record(path: Path) -> RunRecord:
    """``metrics.json`` as a :class:`RunRecord` (``RecordError`` / ``OSError`` / ``ValueError`` when
    it cannot be read). A file without ``version`` (an older record, or ``infalign-analyze``'s
    metrics) reads as version 0; without ``status`` it counts as finished."""
    return RunRecord.from_json(json.loads(Path(path).read_text()))


def finished_record(path: Path) -> RunRecord | None:
    """The finished run ``path`` (a ``metrics.json``) records; None if it records none."""
    try:
        rec = read_record(path)
    except Exception:  # noqa: BLE001 - missing, unreadable or not a record: it runs in failure handlers
        return None
    return rec if rec.finished else None


def is_finished(path: Path) -> bool:
    """Whether ``path`` (a ``metrics.json``) records a finished run."""
    return finished_record(path) is not None


def run_files(out_dir: Path, existing: bool = True) -> dict[str, Path]:
    """The files a finished run writes in ``out_dir`` (:func:`write_files`): ``metrics``, ``csv``,
    ``plot``; with ``existing``, only those on disk (a kept run's, handed to a logger)."""
    paths = {"metrics": out_dir / "metrics.json", "csv": out_dir / "eval_metrics.csv",
             "plot": out_dir / "win_rates.png"}
    return {name: path for name, path in paths.items() if not existing or path.is_file()}


def write_files(out_dir: Path, rec: RunRecord, procedure) -> dict[str, Path]:
    """:func:`write_record`, then :func:`write_views`; returns the paths of the files written."""
    return {**write_record(out_dir, rec), **write_views(out_dir, rec, procedure)}


def write_record(out_dir: Path, rec: RunRecord) -> dict[str, Path]:
    """metrics.json (:meth:`RunRecord.to_json`), after removing the previous record's views
    (eval_metrics.csv, win_rates.png: a view that then fails to be written leaves none, never the
    previous run's beside this record) and its ``policy/`` (a run saves its own after this: a run
    continued to more steps and killed in evaluation had saved the new weights beside the old record);
    then a stale :data:`FAILED_ATTEMPT` and :data:`LOGGED` are removed. Returns ``{"metrics": path}``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = run_files(out_dir, existing=False)
    for name in ("csv", "plot"):
        if paths[name].is_file() or paths[name].is_symlink():
            paths[name].unlink()
    for policy in (out_dir / "policy", aside_dir(out_dir / "policy")):  # the previous record's weights
        if policy.is_dir() and not policy.is_symlink():
            shutil.rmtree(policy)
    atomic_write_json(paths["metrics"], rec.to_json())
    (out_dir / FAILED_ATTEMPT).unlink(missing_ok=True)
    (out_dir / LOGGED).unlink(missing_ok=True)  # a new record: no logger has it yet
    return {"metrics": paths["metrics"]}


def write_views(out_dir: Path, rec: RunRecord, procedure, only: tuple[str, ...] = ("csv", "plot")) -> dict[str, Path]:
    """eval_metrics.csv and win_rates.png (``only`` those of ``csv``, ``plot``), views of the record
    :func:`write_record` wrote; a failure (a full disk, a bad plot) is logged and loses nothing. Returns the
    paths of those written."""
    paths = run_files(out_dir, existing=False)
    written = {}
    for name, write in (("csv", lambda: atomic_write_csv(paths["csv"], eval_rows(rec))),
                        ("plot", lambda: plot_win_rates(rec, procedure, paths["plot"]))):
        if name not in only:
            continue
        try:
            write()
            written[name] = paths[name]
        except Exception as exc:  # noqa: BLE001 - the record is written; this file is a view of it
            log.error("the run is recorded in %s, but writing %s failed: %s: %s", paths["metrics"], paths[name],
                      type(exc).__name__, exc)
    return written


def restore_views(out_dir: Path, rec: RunRecord, procedure) -> dict[str, Path]:
    """A kept finished run's views as a complete run leaves them: the temp files a kill left while they were
    written (``.win_rates.png.<random>.png.tmp``) removed, and a missing eval_metrics.csv or win_rates.png
    written again from the record (a kill between metrics.json and the plot left the run without it for good:
    every re-run kept the record as it was). The caller holds the run dir's lock. Returns the paths written."""
    paths = run_files(out_dir, existing=False)
    for path in paths.values():
        for stale in out_dir.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
    missing = tuple(name for name in ("csv", "plot") if not paths[name].is_file())
    return write_views(out_dir, rec, procedure, only=missing) if missing else {}


def print_summary(rec: RunRecord, procedure) -> None:
    """The closing table: KL, standard and N win rates (reward model and gold) with CIs, theory; then
    the response statistics and the reward model's miscalibration, one line each."""
    from rich.table import Table

    from infalign.infra.console import console

    ev = rec.eval
    key = procedure.win_rate_key if procedure.uses_n else None
    n_prompts = next(iter(ev.judges.values()))[STANDARD_WIN_RATE].n_prompts
    table = Table(title=f"{rec.run_name or ''}: trained policy vs reference ({n_prompts} held-out prompts, 95% CI)")
    kl = "KL (nats)" if not ev.sampler else "E_q log-ratio (nats)"  # (a modified sampler q: not a KL, (7.3))
    for col in ("judge", kl, "standard win rate", f"{procedure.label} win rate" if key else ""):
        if col:
            table.add_column(col, justify="right")

    def fmt(c: CI) -> str:
        return f"{c.mean:.3f} [{c.low:.3f}, {c.high:.3f}]"

    for judge, cols in ev.judges.items():
        row = [judge, fmt(cols["kl"]), fmt(cols[STANDARD_WIN_RATE])]
        if key:
            row.append(fmt(cols[key]))
        table.add_row(*row)
    th = ev.theory
    if th:
        row = [f"theory (beta={th['beta']:g})", f"{th['kl']:.3f}", f"{th['standard_win_rate']:.3f}"]
        if key:
            row.append(f"{th[key]:.3f}")
        table.add_row(*row)
        if "at_measured_kl" in th:
            m = th["at_measured_kl"]
            row = ["theory (measured KL)", f"{m['kl']:.3f}", f"{m['standard_win_rate']:.3f}"]
            if key:
                row.append(f"{m[key]:.3f}")
            table.add_row(*row)
    out = console()
    out.print(table)
    if ev.sampler:
        out.print(sampler_line(ev.sampler))
    if ev.reward_cut and any(ev.reward_cut.values()):
        out.print(reward_cut_line(ev.reward_cut))
    if ev.responses:
        out.print(responses_line(ev.responses))
    mis = ev.miscalibration
    if mis:
        target = ((rec.config or {}).get("reward") or {}).get("_target_")  # a custom reward: no model
        out.print(miscalibration_line(mis, "reward model" if target is None else f"reward ({target})"))


def sampler_line(sampler: str) -> str:
    """What an evaluation with a modified sampler (``eval.sampler``) measured, and what it did not."""
    return (f"evaluation sampled with {sampler}, not the policy's own distribution: the KL column is "
            "E_q[log pi - log pi_ref] of those samples, not KL(pi || pi_ref), the win rates are the modified "
            "sampler's, and no calibrated-space theory is put beside them (docs/method.md (7.3))")


def reward_cut_line(cut: dict) -> str:
    """One line: the share of each evaluation pool's samples the reward model read cut (``eval.reward_cut``)."""
    return ("reward model read cut at reward.max_length (its score is of less than the whole conversation): "
            + "; ".join(f"{pool} {cut[pool]:.1%} of samples" for pool in ("policy", "reference") if pool in cut)
            + " -- a larger reward.max_length, up to the model's positions, reads them whole")


def responses_line(responses: dict) -> str:
    """One line: mean response length (tokens, stop token included) and EOS rate per evaluation pool."""
    return "responses: " + "; ".join(f"{pool} mean length {r['response_len_mean']:.1f} tokens, EOS rate "
                                     f"{r['eos_rate']:.2f}" for pool, r in responses.items())


def miscalibration_line(mis: dict, reward: str = "reward model") -> str:
    """One line on how miscalibrated the run's ``reward`` (its name in the line) is across the held-out prompts."""
    line = (f"{reward} across {mis['n_prompts']} prompts: per-prompt score spread CV "
            f"{mis['reward_model']['std_cv']:.2f}")
    if "gold" in mis:
        line += (f" (gold {mis['gold']['std_cv']:.2f}; corr of log spreads {mis['log_std_corr']:.2f}; "
                 f"within-prompt pairwise accuracy {mis['pairwise_accuracy']:.3f})")
    from infalign.math.calibration import TIE_WARN  # (not at import: math/calibration imports torch)

    ties = mis["reward_model"].get("tie_share")
    if constant_reward(mis):
        line += ("; every within-prompt sample pair ties: the calibrated reward is 1/2 for every response, so "
                 "training has no signal and there is no theory prediction (docs/method.md §2)")
    elif ties is not None and ties > TIE_WARN:  # (records before tie_share: none)
        line += (f"; {ties:.1%} of within-prompt sample pairs tie: the calibrated reward is not uniform, and the "
                 "calibrated-space theory holds only roughly (docs/method.md §2)")
    return line
