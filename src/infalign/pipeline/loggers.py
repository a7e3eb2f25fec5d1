"""What a run sends to its logger besides Lightning's training curves (stage 4, and failures).

Any Lightning logger is one file in ``conf/logger/`` (a ``_target_`` and its arguments; the app
instantiates it, docs/architecture.md §6). Through the generic ``Logger`` interface every logger
gets: the resolved config (``log_hyperparams``, when the run starts), the training metrics
(Lightning), the finished run's flat summary :meth:`RunRecord.wandb_summary` (``log_metrics``) and
``finalize("success" | "failed")``. A logger that also implements :class:`RunLogger` gets the whole
record with the run's files, and closes its run itself: :class:`RunWandbLogger` (the W&B summary,
the samples table, the win-rate plot, ``finish(exit_code)``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import secrets
import warnings
from pathlib import Path
from typing import Protocol, runtime_checkable

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from infalign.infra.cache import atomic_path, atomic_write_json, atomic_write_text
from infalign.pipeline.record import LOGGED, group_file, logged_kinds
from infalign.pipeline.run_record import RunRecord
from infalign.pipeline.settings import wandb_mode


@runtime_checkable
class RunLogger(Protocol):
    """A logger with run-level extras (module docstring)."""

    def log_record(self, record: RunRecord, files: dict[str, Path]) -> None:
        """Log what ``log_metrics(record.wandb_summary())`` does not carry (tables, images, ...)."""

    def finish(self, exit_code: int) -> None:
        """Close the run: 0 finished, 1 failed."""


def start(logger: Logger, config: dict, resume_step: int | None = None, trains: bool = False) -> None:
    """Start the logger's run now -- so a run that fails in any later stage shows up (as failed) --
    and log the resolved config. ``resume_step``: the run resumes from a checkpoint at that logged
    step (RL steps: the batches trained, not the optimizer's global step, which PPO takes several of per
    batch), and its CSV history before it is kept -- Lightning's CSV writer deletes an existing
    ``metrics.csv`` when it starts, which erased the steps logged before the interruption; the rows of
    earlier steps are put back (those at or after ``resume_step`` are replayed by the resumed run) and
    the writer appends after them (rank 0, the one that writes). They are written to a file beside
    ``metrics.csv`` before the writer starts and renamed over it once it has: a failure or kill while
    they are written leaves the old history whole. ``trains``: training curves may follow from the first
    step (a start without a checkpoint). Either way a :class:`RunWandbLogger` is told before its run
    starts (:meth:`RunWandbLogger.begin_curves`)."""
    if isinstance(logger, RunWandbLogger) and (trains or resume_step is not None):
        logger.begin_curves(resumed=resume_step is not None)
    previous = _csv_history(logger, resume_step) if resume_step is not None and rank_zero_only.rank == 0 else None
    if previous is None:
        experiment = logger.experiment
    else:
        path, header, rows = previous
        # the kept rows are written beside the file first, and renamed over it right after the writer has
        # deleted it: a failure or kill while they are written leaves the whole old file
        with atomic_path(path) as tmp:
            with tmp.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=header)
                writer.writeheader()
                writer.writerows(rows)
            with warnings.catch_warnings():  # "previous log files ... will be deleted": the kept rows are put back
                warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
                experiment = logger.experiment
        experiment.metrics_keys = sorted(header)
    logger.log_hyperparams(config)
    if isinstance(logger, RunWandbLogger):
        logger.record_group()


def _csv_history(logger: Logger, before_step: int) -> tuple[Path, list[str], list[dict]] | None:
    """``(path, header, rows with step < before_step)`` of a :class:`CSVLogger`'s existing
    ``metrics.csv`` (None: not a CSV logger, or no history)."""
    if not isinstance(logger, CSVLogger):
        return None
    path = Path(logger.log_dir) / "metrics.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        # a row a kill cut mid-write (Lightning rewrites the file in place) lacks fields (None) or, cut
        # inside a number, holds a wrong one: only whole rows before the resumed step are kept
        rows = [r for r in reader if None not in r and None not in r.values()
                and (r.get("step") or "").isdigit() and int(r["step"]) < before_step]
        header = list(reader.fieldnames or [])
    return (path, header, rows) if header else None


def log_record(logger: Logger, record: RunRecord, files: dict[str, Path]) -> None:
    """The finished run's summary through ``log_metrics`` (for a CSV logger at the run's last training
    step: Lightning's CSV writer otherwise numbers it 0); a :class:`RunLogger` gets the rest."""
    step = record.steps if isinstance(logger, CSVLogger) and record.steps is not None else None
    logger.log_metrics(record.wandb_summary(), step=step)
    if isinstance(logger, RunLogger):
        logger.log_record(record, files)


def logger_kind(logger: Logger) -> str | None:
    """What ``<run dir>/logged.json`` (``record.LOGGED``) names a logger by: its class (``RunWandbLogger``,
    ``CSVLogger``, a third-party one's); None for a W&B logger with ``mode=disabled``, which keeps nothing."""
    if getattr(logger, "mode", None) == "disabled":
        return None
    return type(logger).__name__


def logged_before(logger: Logger, run_dir: Path) -> bool:
    """Whether ``run_dir``'s finished run was logged to a logger of this kind to the end: its record
    went through it and it closed (:func:`mark_logged`). A W&B run dir alone does not say so -- wandb
    makes it before it reaches the server, and a failed or killed attempt leaves one -- so the mark is
    written only after success; a CSV logger's existing ``metrics.csv`` counts as logged, marked or not
    (never overwritten). A new record (a run trained further) drops the marks (``record.write_record``)."""
    kind = logger_kind(logger)
    if kind is None:
        return False
    # a CSV file of a run not marked (logged before marks existed, or its marking failed) is kept as it
    # is: Lightning's CSV writer would delete it on start, curves and all
    csv_file = isinstance(logger, CSVLogger) and (Path(logger.log_dir) / "metrics.csv").is_file()
    return csv_file or kind in logged_kinds(run_dir)


def mark_logged(logger: Logger, run_dir: Path) -> None:
    """Add this logger's kind to ``run_dir``'s ``logged.json`` (rank 0; atomic), after its record went
    through and it closed: :func:`log_kept` then leaves it alone."""
    kind = logger_kind(logger)
    if kind is None or rank_zero_only.rank != 0:
        return
    atomic_write_json(run_dir / LOGGED, sorted(set(logged_kinds(run_dir)) | {kind}))


def log_kept(logger: Logger, record: RunRecord, files: dict[str, Path], config: dict, run_dir: Path) -> bool:
    """A finished run kept as it is (``ckpt_path=last|last_or_new`` with nothing to re-run) still
    reaches a logger that has not recorded it -- e.g. a sweep first run with ``logger=none``, then
    again with ``logger=wandb`` for the dashboards: the logger's run is started with ``config``, gets
    the record's summary (and, a :class:`RunLogger`, its samples and plot; no training curves: they
    were not kept) and is closed, then marked (:func:`mark_logged`). A logger marked already gets
    nothing, so no W&B run or CSV gets the summary twice; one that fails is closed as failed, left
    unmarked (the next re-run tries again), and the error propagates. Whether it logged."""
    if logged_before(logger, run_dir):
        return False
    try:
        start(logger, config)
        log_record(logger, record, files)
    except BaseException:
        with contextlib.suppress(Exception):  # the logging error is the one to report
            close(logger, 1)
        raise
    close(logger, 0)
    mark_logged(logger, run_dir)
    return True


def close(logger: Logger | None, exit_code: int) -> None:
    """``finalize("success")`` (``exit_code`` 0) or ``finalize("failed")``; a :class:`RunLogger`
    then finishes its run with ``exit_code``."""
    if logger is None:
        return
    logger.finalize("success" if exit_code == 0 else "failed")
    if isinstance(logger, RunLogger):
        logger.finish(exit_code)


def stored_run_id(run_dir: Path, new: bool = False) -> str:
    """The W&B run id of ``run_dir`` (``<run dir>/wandb/run_id``), created on first use, so a
    resumed run (``ckpt_path=last``) continues the same W&B run instead of opening a new one;
    ``new``: a new id replaces the stored one."""
    path = run_dir / "wandb" / "run_id"
    if path.exists() and not new:
        return path.read_text().strip()
    run_id = secrets.token_hex(8)  # 16 characters of [0-9a-f], a valid W&B run id: 64 bits, so ids of a
    # project of 10,000 runs collide with odds ~3e-12 (8 characters: ~1 %, and resume="allow" merges a collision)
    if rank_zero_only.rank == 0:  # the only rank whose WandbLogger starts a run
        atomic_write_text(path, run_id + "\n")
    return run_id


def steps_file(run_dir: Path, run_id: str) -> Path:
    """``<run dir>/wandb/steps-<run id>``: the training steps sent to that W&B run, one line each."""
    return run_dir / "wandb" / f"steps-{run_id}"


# The summary keys a run record gives (RunRecord.wandb_summary): the ones a continued run's new record may lack
RECORD_SUMMARY_PREFIXES = ("eval/", "theory/", "world/", "reward_model/")


def summary_keys_file(run_dir: Path, run_id: str) -> Path:
    """``<run dir>/wandb/summary-keys-<run id>``: the record keys last sent to that W&B run's summary."""
    return run_dir / "wandb" / f"summary-keys-{run_id}"


def stale_summary_keys(run_dir: Path, run_id: str, held, summary: dict) -> list[str]:
    """The record keys W&B run ``run_id`` holds in its summary that ``summary`` (the new record's) lacks: those an
    earlier attempt sent (:func:`summary_keys_file`) and, online, those the resumed run's summary shows (``held``),
    under :data:`RECORD_SUMMARY_PREFIXES` -- training curves' keys are the trainer's, and stay."""
    try:
        sent = json.loads(summary_keys_file(run_dir, run_id).read_text())
    except (OSError, ValueError):
        sent = []
    try:
        shown = [str(k) for k in held.keys()]
    except Exception:  # noqa: BLE001 - a summary that cannot list its keys (offline: the local view only)
        shown = []
    keys = {str(k) for k in (sent if isinstance(sent, list) else [])} | set(shown)
    return sorted(k for k in keys if k.startswith(RECORD_SUMMARY_PREFIXES) and k not in summary)


def last_logged_step(run_dir: Path, run_id: str) -> int | None:
    """The highest training step ``run_dir``'s W&B run ``run_id`` was sent (:func:`steps_file`), None when it
    was sent none. Only whole lines count: a kill can cut the last one."""
    path = steps_file(run_dir, run_id)
    if not path.is_file():
        return None
    lines = path.read_text(errors="replace").split("\n")[:-1]  # (the last item: after the last newline)
    steps = [int(line) for line in lines if line.isdigit()]
    return max(steps) if steps else None


class RunWandbLogger(WandbLogger):
    """Lightning's ``WandbLogger`` for one infalign run (``conf/logger/wandb.yaml``).

    ``mode`` is one of ``pipeline.settings.WANDB_MODES`` (a ConfigError naming ``logger.mode``
    otherwise: it follows the WANDB_MODE environment variable); ``id=None`` takes the run dir's stored id
    (:func:`stored_run_id`, ``save_dir`` being the run dir), so with ``resume="allow"`` a resumed
    run continues its W&B run. Every other argument goes to ``WandbLogger`` / ``wandb.init``."""

    def __init__(self, *, save_dir: str = ".", id: str | None = None, mode: str = "offline", **kwargs) -> None:
        wandb_mode(mode)
        super().__init__(save_dir=save_dir, id=id or kwargs.get("version") or stored_run_id(Path(save_dir)), mode=mode,
                         **kwargs)
        self.mode = mode  # (loggers.logger_kind: a disabled run keeps nothing)
        # (Lightning takes ``version`` as the id too; an empty id is none)
        self.run_dir, self.id_given = Path(save_dir), bool(id or kwargs.get("version"))
        self.logged_through: int | None = None  # steps up to this one the W&B run holds already: not sent again
        self.last_recorded: int | None = None  # the last step this attempt wrote to its steps file
        # Lightning always passes wandb.init an ``anonymous`` setting (None unless asked for), which
        # wandb deprecated and warns about on every run: an unset one is left out
        init = getattr(self, "_wandb_init", None)  # (Lightning's private dict: left alone if it changes)
        if isinstance(init, dict) and "anonymous" in init and init["anonymous"] is None:
            del init["anonymous"]

    def begin_curves(self, resumed: bool) -> None:
        """Before the run starts, when training curves may follow (:func:`start`), rank 0. Lightning's W&B
        logger plots against ``trainer/global_step``: steps the W&B run holds, sent again, drew the curve back.

        * ``resumed`` (from a checkpoint, whose settings the run checked): the W&B run continues, and a step at
          or before the last one it was sent (:func:`last_logged_step`, of this run's id) is not sent again --
          the resume trains those steps again with the checked settings, so their values are those the W&B
          run holds, up to the last bits where the code, a library or a nondeterministic kernel changed in
          between (the curve keeps the interrupted attempt's there; ``metrics.csv`` the new ones). A step the
          interrupted attempt trained but did not log (another ``log_every_n_steps``) is not sent either.
        * a start without a checkpoint in a run dir whose W&B run was sent steps (an attempt killed before its
          first checkpoint; a finished run run again under other code or data): nothing says this attempt
          trains what that one did (review: another ``algo.beta`` under ``ckpt_path=last_or_new`` continued the
          old curve), so it gets a new W&B run id; the old run keeps its curve. An attempt whose policy then
          comes from the policy cache logs no curve of its own: it is in the run of the attempt that trained
          it. A ``logger.id`` given is used as given, continued as on a resume.
        """
        if rank_zero_only.rank != 0 or self.mode == "disabled":
            return
        last = last_logged_step(self.run_dir, str(self._wandb_init["id"]))
        if resumed or self.id_given:
            self.logged_through = last
        elif last is not None and self._experiment is None:
            self._wandb_init["id"] = self._id = stored_run_id(self.run_dir, new=True)

    def record_group(self) -> None:
        """Write where this run went in :func:`group_file` (rank 0, a run that is not disabled): ``{"group",
        "project", "entity"}`` as JSON -- a kept run logged by a later re-run has no logger config of its own in its
        record, and the report's run joins its runs' group in their project (it had gone to ``infalign``, cut off
        from a sweep logged to ``logger.project=myproj``: W&B review); the path a sweep's group is named by may
        since have moved."""
        group = self._wandb_init.get("group")
        if rank_zero_only.rank == 0 and self.mode != "disabled" and group:
            where = {"group": str(group), "project": self._wandb_init.get("project"),
                     "entity": self._wandb_init.get("entity")}
            atomic_write_text(group_file(self.run_dir), json.dumps(where) + "\n")

    @rank_zero_only
    def log_metrics(self, metrics, step: int | None = None) -> None:
        """Lightning's, except a step the W&B run holds already (:meth:`begin_curves`); each step is
        appended to the run's :func:`steps_file` before it is sent (a kill in between leaves a step out,
        never one sent twice)."""
        if step is not None and self.logged_through is not None and step <= self.logged_through:
            return
        if step is not None and self.mode != "disabled" and (self.last_recorded is None or step > self.last_recorded):
            path = steps_file(self.run_dir, str(self._wandb_init["id"]))
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as handle:  # (a kill mid-line leaves a cut line: last_logged_step skips it)
                handle.write(f"{int(step)}\n")
            self.last_recorded = step
        super().log_metrics(metrics, step)

    def log_record(self, record: RunRecord, files: dict[str, Path]) -> None:
        """The summary also as the W&B run summary, the sample responses as a table, the win-rate plot. A continued
        run's W&B summary loses the record keys the new record lacks (:func:`stale_summary_keys`): W&B merges a
        summary update key by key, so a run continued with other ``eval.ns`` showed the earlier policy's ``bon8``
        columns beside the new numbers (W&B review)."""
        summary = record.wandb_summary()
        run, tracked = self.experiment, rank_zero_only.rank == 0 and self.mode != "disabled"
        run_id = str(self._wandb_init["id"])
        for key in stale_summary_keys(self.run_dir, run_id, run.summary, summary) if tracked else ():
            del run.summary[key]
        run.summary.update(summary)
        if tracked:
            atomic_write_text(summary_keys_file(self.run_dir, run_id), json.dumps(sorted(summary)) + "\n")
        samples = record.eval.samples if record.eval is not None else None
        if samples:
            self.log_table(key="eval/samples", columns=["prompt", "response"], data=[list(s) for s in samples])
        if files.get("plot") is not None:
            self.log_image(key="eval/win_rates", images=[str(files["plot"])])

    def finish(self, exit_code: int) -> None:
        """``wandb`` run finished with ``exit_code`` (1 shows it as failed); a no-op on ranks > 0
        and when the run never started."""
        if self._experiment is not None:
            self._experiment.finish(exit_code=exit_code)
