"""The report's W&B run: the runs, matched-KL and theory-gap tables and the PNGs, logged to a run
named ``report`` (``job_type=report``) in the sweep's group, offline when the jobs were."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from infalign.infra.sweeps import multirun_group
from infalign.pipeline.record import group_file, logged_kinds
from infalign.report.build import Report
from infalign.report.collect import Job
from infalign.report.matched import MATCHED_KL_COLUMNS
from infalign.report.plots import PLOTS
from infalign.report.tables import columns
from infalign.report.theory_gap import THEORY_GAP_COLUMNS


def _offline(logger_cfg: dict) -> bool:
    """A job logged offline: ``logger.mode`` (``${oc.env:WANDB_MODE,offline}``), or the older ``offline`` flag."""
    if "mode" in logger_cfg:
        return logger_cfg["mode"] != "online"
    return bool(logger_cfg.get("offline", True))


def logged_to_wandb(logger_cfg) -> bool:
    """Whether a job's recorded ``logger`` config is a W&B logger: its ``_target_`` is a class named
    ``...WandbLogger`` (Lightning's or infalign's ``RunWandbLogger``), or -- sweep dirs written
    before the logger group was instantiated by Hydra -- ``kind: wandb``."""
    if not isinstance(logger_cfg, dict):
        return False
    return str(logger_cfg.get("_target_", "")).endswith("WandbLogger") or logger_cfg.get("kind") == "wandb"


def _job_wandb(job: Job) -> dict | None:
    """The W&B logger settings a job's run went to: its recorded ``logger`` config, or -- a finished run
    kept as it is and logged to W&B by a later re-run (``logger=none``, then ``logger=wandb
    ckpt_path=last_or_new``: the record keeps the first run's config, ``logged.json`` names the W&B
    logger) -- the entry's defaults: project ``infalign``, the group the re-run's logger took
    (``sweep_name``, else one per multirun) and offline when the job dir holds an offline run."""
    logger = job.config.get("logger")
    if logged_to_wandb(logger):  # (a W&B logger disabled logged nothing: W&B review)
        return None if logger.get("mode") == "disabled" else logger
    if not any(k.endswith("WandbLogger") for k in logged_kinds(job.path)):
        return None
    # where the re-run's logger went (group, project, entity), else (logged before it was recorded) sweep_name or
    # wandb_settings' fallback
    where = recorded_wandb(job.path)
    return {"project": where.get("project") or "infalign", "entity": where.get("entity"),
            "group": where.get("group") or job.config.get("sweep_name"),
            "mode": "offline" if any((job.path / "wandb").glob("offline-run-*")) else "online"}


def recorded_wandb(run_dir: Path) -> dict:
    """``{"group", "project", "entity"}`` of :func:`~infalign.pipeline.record.group_file` (``RunWandbLogger.
    record_group``; a file written before it held JSON has the group alone), {} without one."""
    try:
        text = group_file(run_dir).read_text().strip()
    except OSError:
        return {}
    try:
        where = json.loads(text)
    except ValueError:
        return {"group": text} if text else {}
    return where if isinstance(where, dict) else {}


def wandb_settings(jobs: Sequence[Job], root: Path) -> dict | None:
    """project/entity/group/offline of the sweep's W&B runs (None if no job logged to W&B;
    :func:`_job_wandb`).

    ``group`` is the jobs' ``logger.group``, else what ``infalign-train`` used for a multirun
    (``infra/sweeps.multirun_group`` of the job dir's parent: its outermost sweep's -- a kept run logged from
    ``<sweep>/more`` went to ``multirun-more``, not its sweep's group) -- the most runs' group when they are in
    several (a report over a dir of sweeps), all of them in ``groups``, which the printed summary names."""
    wb = [(j, cfg) for j in jobs if (cfg := _job_wandb(j)) is not None]
    if not wb:
        return None
    groups = Counter(str(cfg.get("group") or multirun_group(j.path.parent)) for j, cfg in wb)
    lg = wb[0][1]
    return {"project": lg.get("project") or "infalign", "entity": lg.get("entity"),
            "group": groups.most_common(1)[0][0], "groups": sorted(groups),
            "offline": any(_offline(cfg) for _, cfg in wb)}


def report_run_name(report: Report) -> str:
    """``report`` for the default ``<sweep>/report``; else ``report:<out dir name>`` (``report_t``,
    ``report_baselines``, ...): the narrower reports of one sweep are told apart in its group."""
    name = Path(report.out_dir).name
    return "report" if name == "report" else f"report:{name}"


def report_run_id(report: Report, settings: dict) -> str:
    """The report run's W&B id: one per project, group and report dir, so a report built again updates its
    run (``resume="allow"``) instead of adding another run of the same name to the group."""
    key = f"{settings['project']}/{settings['group']}/{Path(report.out_dir).resolve()}"
    return "report-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def log_to_wandb(report: Report, settings: dict) -> dict:
    """Log the runs, matched-KL and theory-gap tables + plots to a ``report`` run
    (``job_type=report``) in the sweep's group; finish it.

    Offline when the jobs were offline or ``WANDB_MODE`` says so. Returns what was done."""
    import wandb

    env_mode = os.environ.get("WANDB_MODE", "").lower()
    mode = ("disabled" if env_mode == "disabled" else
            "offline" if settings.get("offline") or env_mode in ("offline", "dryrun") else "online")
    report.out_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=settings["project"], entity=settings.get("entity"), group=settings["group"],
                     job_type="report", name=report_run_name(report), dir=str(report.out_dir), mode=mode,
                     id=report_run_id(report, settings), resume="allow", reinit="create_new",
                     config={"multirun_dir": str(report.root), "judges": report.judges},
                     settings=wandb.Settings(console="off"))
    try:
        cols = columns(report.judges)
        table = wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in report.rows], allow_mixed_types=True)
        matched = wandb.Table(columns=MATCHED_KL_COLUMNS, allow_mixed_types=True,
                              data=[[r.get(c) for c in MATCHED_KL_COLUMNS] for r in report.matched_rows])
        gaps = wandb.Table(columns=THEORY_GAP_COLUMNS, allow_mixed_types=True,
                           data=[[r.get(c) for c in THEORY_GAP_COLUMNS] for r in report.gap_rows])
        run.log({"runs": table, "matched_kl": matched, "theory_gap": gaps,
                 "plots/gain_vs_kl": wandb.Image(str(report.paths["plot_gain"])),
                 **{f"plots/{Path(p).stem}": wandb.Image(str(report.paths[f"plot_{k}"])) for k, p in PLOTS.items()}})
        run.summary.update({f"jobs/{k}": v for k, v in report.summary["counts"].items()})
        run_dir = str(Path(run.dir).parent) if getattr(run, "dir", None) else None
        run.finish()
    except BaseException:
        run.finish(exit_code=1)
        raise
    return {"mode": mode, "project": settings["project"], "group": settings["group"], "run_dir": run_dir,
            "name": report_run_name(report), "groups": settings.get("groups") or [settings["group"]]}
