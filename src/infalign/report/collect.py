"""Collecting the jobs of a multirun dir: one :class:`Job` per job dir, never raising on a broken one.

A multirun dir holds one job dir per job (``<sweep dir>/<job num>/``), each with ``.hydra/``
(``config.yaml``, ``overrides.yaml``; written before the job runs, unless ``hydra.output_subdir=null``),
``train.log`` and, once the job has ended, ``metrics.json`` (a :class:`~infalign.pipeline.run_record.RunRecord`):
a dir with either is a job (:func:`find_job_dirs`). A job is

* ``finished``: its record says so and has evaluation results;
* ``failed``: the record says so (reason: the error's last line), or it is unreadable (not JSON,
  not a record, a newer schema version) or incomplete;
* ``missing``: no ``metrics.json`` (still running, killed, or crashed before writing it; reason:
  the exception line of the last traceback in ``train.log``), a status the report does not
  know, or no job dir at all for a job its sweep's ``multirun.yaml`` launches (:func:`never_started`);
* ``duplicate``: finished, and the same run as an earlier job (:func:`mark_duplicates`): counted once.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from infalign.errors import error_line
from infalign.infra.sweeps import not_started
from infalign.pipeline.policy_cache import OVERRIDES_FILE, continue_command_line, load_overrides
from infalign.pipeline.record import FAILED_ATTEMPT, read_record
from infalign.pipeline.run_record import RunRecord

JUDGES = ("reward_model", "gold")
STATUSES = ("finished", "failed", "interrupted", "missing", "duplicate")
_SKIP_DIRS = {"wandb", "checkpoints", "policy", "csv", "__pycache__"}


@dataclass
class Job:
    """One job dir of a multirun and what could be read from it."""

    job: str  # path relative to the multirun dir, e.g. "3"
    path: Path
    status: str  # finished | failed | interrupted | missing | duplicate
    reason: str = ""  # why failed / interrupted / missing: the error's last line
    overrides: list[str] = field(default_factory=list)
    record: RunRecord | None = None  # metrics.json (None when missing or unreadable)
    config: dict = field(default_factory=dict)  # resolved config: the record's, else .hydra/config.yaml's
    method_note: str = ""  # calibration settings unlike most runs' (naming.mark_odd_settings): part of its method
    eval_note: str = ""  # evaluation settings unlike most runs': another evaluation, compared apart


def find_job_dirs(root: Path, skip: Sequence[Path] = ()) -> list[Path]:
    """Every dir under ``root`` (``root`` included) that has a ``.hydra/`` child or a run's record
    (:func:`_holds_a_run_record`: a run launched with ``hydra.output_subdir=null`` writes no ``.hydra/``, and
    was left out of its sweep's report without a word), in natural order.

    Symlinked dirs are followed, so a dir of links to several sweep dirs (``bon/a -> paper_bon``,
    ``bon/b -> paper_bon_more``: seeds or methods added by a later sweep) is reported as one sweep,
    its jobs named ``a/3``, ``b/3``; a dir reached twice (a link loop, two links to one sweep) is
    walked once."""
    root = Path(root)
    found = [here for here in _walk(root, skip) if (here / ".hydra").is_dir() or _holds_a_run_record(here)]
    return sorted(found, key=lambda p: natural_key(_rel(p, root)))


def _walk(root: Path, skip: Sequence[Path] = ()) -> Iterable[Path]:
    """Every dir under ``root`` (``root`` included) a report reads: symlinks followed, each real dir once,
    hidden dirs, :data:`_SKIP_DIRS` and ``skip`` left out."""
    skip_resolved = {Path(s).resolve() for s in skip}
    seen = set()
    for dirpath, dirnames, _ in os.walk(root, followlinks=True):
        here = Path(dirpath)
        real = here.resolve()
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        yield here
        dirnames[:] = sorted((d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS
                              and (here / d).resolve() not in skip_resolved), key=natural_key)


def never_started(root: Path, skip: Sequence[Path] = ()) -> list[Job]:
    """A ``missing`` :class:`Job` for each job of a sweep's grid that has no job dir: a sweep killed halfway
    (or its jobs still queued) read as a smaller complete sweep, its report silent about the rest (robustness
    walkthrough: 3 jobs, killed in job 1, reported "2 jobs"). The grid is the one its ``multirun.yaml`` (Hydra's
    record of the sweep) launches (``infra/sweeps.sweep_jobs``: the basic sweeper; job dirs numbered
    ``${hydra.job.num}``, Hydra's default ``hydra.sweep.subdir``); other sweepers and layouts are not expanded."""
    from omegaconf import OmegaConf

    from infalign.infra.sweeps import sweep_jobs

    out = []
    for sweep in _walk(Path(root), skip):
        if not (sweep / "multirun.yaml").is_file():
            continue
        try:
            config = OmegaConf.load(sweep / "multirun.yaml")
            if OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir") != "${hydra.job.num}":
                continue
            jobs = sweep_jobs(config) or []
        except Exception:  # noqa: BLE001 - an unreadable or foreign multirun.yaml: its job dirs speak for it
            continue
        # none started: Hydra refused the sweep before its first job (a value no config holds leaves multirun.yaml
        # behind, sweep walkthrough), or it was killed before -- said, so a refused sweep is not read as lost jobs
        none = not any((sweep / str(num)).exists() for num in range(len(jobs)))
        why = (" -- none of its jobs has one: the sweep was refused before its first job (its command's error) or "
               f"stopped before it; delete {_rel(sweep / 'multirun.yaml', root)} if it was refused") if none else ""
        for num, overrides in enumerate(jobs):
            path = sweep / str(num)
            if not path.exists():
                out.append(Job(job=_rel(path, root), path=path, status="missing", overrides=list(overrides),
                               reason=f"never started: job {num} of the {len(jobs)} its sweep launches "
                                      f"({_rel(sweep / 'multirun.yaml', root)}) has no job dir{why}"))
    return out


def _holds_a_run_record(here: Path) -> bool:
    """Whether ``here`` holds an infalign-train record (``metrics.failed.json``, or a ``metrics.json`` with a
    ``status``: infalign-analyze writes a ``metrics.json`` of its own, which is no job)."""
    if (here / FAILED_ATTEMPT).is_file():
        return True
    try:
        data = json.loads((here / "metrics.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return (here / "metrics.json").is_file()  # an unreadable one: the report says so (load_job)
    return isinstance(data, dict) and "status" in data


def natural_key(text: str) -> tuple:
    """Sort key under which "2" < "10" (job numbers), component by component."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"[/\\]", text))


def _rel(path: Path, root: Path) -> str:
    rel = path.relative_to(root).as_posix()
    return rel if rel != "." else path.name


def collect(root: Path, skip: Sequence[Path] = ()) -> list[Job]:
    """A :class:`Job` for every job dir under ``root`` (``naming.mark_odd_settings`` applied); never raises
    on a broken job dir."""
    from infalign.report.naming import mark_odd_settings  # (naming reads Job: imported here, not at the top)

    jobs = [load_job(path, root) for path in find_job_dirs(root, skip)] + never_started(root, skip)
    jobs.sort(key=lambda job: natural_key(job.job))
    mark_duplicates(jobs)
    mark_odd_settings(jobs)
    return jobs


def same_run(record: RunRecord) -> str | None:
    """What makes two finished records one measurement: the training settings (seed and the effective beta
    included; ``policy_cache.training_settings``), the evaluation settings, the models and prompts
    (``world_id``, ``data_id``), the code, what the record says the run is (method, procedure, transform,
    algorithm, beta, steps, seed), and the results themselves (every judge's intervals: the same run
    drawn again from the caches gives them bit for bit; two trainings that differ in a last bit are two
    measurements) -- JSON, None for a record without a config."""
    from omegaconf import OmegaConf

    from infalign.pipeline.policy_cache import _as_json, evaluation_settings, training_settings

    if not isinstance(record.config, dict) or not record.config:
        return None
    config = OmegaConf.create(record.config)
    world = record.world or {}
    data = record.to_json()
    described = {k: data.get(k) for k in ("method", "method_info", "procedure", "transform", "algo", "beta", "steps",
                                          "kl_target", "seed")}  # (what the record says it is, as recorded)
    return json.dumps([_as_json(training_settings(config, None)), evaluation_settings(config), world.get("world_id"),
                       world.get("data_id"), record.code, described, (data.get("eval") or {}).get("judges")],
                      sort_keys=True, default=str)


def mark_duplicates(jobs: Sequence[Job]) -> None:
    """A finished job whose record is the same run as an earlier job's (:func:`same_run`) -- a baseline arm
    in two sweeps reported together, its policy and pools served from the cache the second time -- becomes
    ``duplicate``, its reason naming the first: counted twice, one measurement weighed double in the run
    counts, the matched-KL curves and the theory-gap medians (numbers audit)."""
    first: dict[str, str] = {}
    for job in jobs:
        if job.status != "finished" or (key := same_run(job.record)) is None:
            continue
        if key in first:
            job.status = "duplicate"
            job.reason = (f"the same run as {first[key]} (training and evaluation settings, seed, models, prompts "
                          "and code): counted once")
        else:
            first[key] = job.job


def load_job(path: Path, root: Path) -> Job:
    job = Job(job=_rel(path, root), path=path, status="missing", overrides=read_overrides(path))
    metrics_path = path / "metrics.json"
    if metrics_path.exists():
        try:
            record = read_record(metrics_path)
        except (OSError, ValueError, UnicodeDecodeError) as exc:  # RecordError is a ValueError
            job.status = "failed"
            job.reason = f"unreadable metrics.json ({type(exc).__name__}: {error_line(str(exc))})"
        else:
            job.record, job.status = record, record.status
            if record.finished:
                if record.eval is None or not record.eval.judges:
                    job.status, job.reason = "failed", "incomplete metrics.json (no eval.judges)"
                elif (why := _later_attempt(path)) is not None:  # the results stand: an earlier run's
                    job.reason = f"these results are an earlier finished run's; its latest attempt {why}"
            elif record.status == "failed":
                job.reason = (error_line(record.error or "") or log_error(path / "train.log")
                              or "failed (no error recorded)")
            elif record.status == "interrupted":  # Ctrl-C, SIGTERM: a resume continues it
                hint = _continue_hint(path, record.overrides)
                job.reason = f"{error_line(record.error or '') or 'interrupted'}; {hint}"
            else:  # a status this report does not know: no result to show
                job.status, job.reason = "missing", f"metrics.json has status={record.status!r}"
    elif (why := not_started(path)) is not None:  # a stopped parallel sweep's job (apps/sweep_stop.py)
        job.reason = f"{why}; {_continue_hint(path, job.overrides)}"
    else:
        job.reason = (log_error(path / "train.log")
                      or "no metrics.json (still running, killed, or crashed before writing it)")
        if (path / "train.log").exists() and job.reason and not job.reason.startswith("no metrics"):
            job.reason = f"train.log: {job.reason}"
        if (path / "checkpoints").is_dir():  # killed mid-training (a parallel launcher's abort SIGKILLs its jobs)
            job.reason += f"; {_continue_hint(path, job.overrides)}"
    job.overrides = run_overrides(path, job)
    config = job.record.config if job.record is not None else None
    job.config = config if config else read_hydra_config(path)
    return job


def _continue_hint(path: Path, overrides: Sequence[str] | None) -> str:
    """What continues the interrupted run in ``path``: its sweep again in the sweep's own dir (a job of a
    sweep inside the reported dir -- ``<dir>/more/0`` -- is continued by ``more``'s sweep, not the reported
    dir's), or a lone run's command in its dir, with ``ckpt_path=last`` only once it left a checkpoint
    (``last`` is refused without one) -- as ``apps/train.continue_command`` says when the run stops."""
    if (path.parent / "multirun.yaml").is_file():
        return (f"its sweep again (the same command, hydra.sweep.dir={path.parent}) with ckpt_path=last_or_new "
                "continues it")
    command, ckpt = continue_command_line(path, overrides)
    return f"{command} continues it" + ("" if ckpt else " (it stopped before its first checkpoint)")


def _later_attempt(path: Path) -> str | None:
    """How the job's latest attempt ended when it did not replace the finished record beside it
    (``metrics.failed.json``: a refused, failed or interrupted re-run -- e.g. a resume with more
    ``algo.steps`` stopped by a time limit), else None."""
    attempt = path / FAILED_ATTEMPT
    if not attempt.exists():
        return None
    try:
        rec = read_record(attempt)
    except (OSError, ValueError, UnicodeDecodeError):
        return "failed (its record is unreadable)"
    return f"{rec.status}: {error_line(rec.error or '') or 'no error recorded'}"


def flagged(job: Job) -> bool:
    """Whether the report lists ``job`` among the jobs to look at: not finished, or finished with a
    note (:func:`load_job`: a later attempt that failed beside its results)."""
    return job.status != "finished" or bool(job.reason)


def run_overrides(path: Path, job: Job) -> list[str]:
    """The command-line overrides of the run ``job`` records. Hydra rewrites ``.hydra/overrides.yaml``
    for every attempt in the dir -- one refused before it wrote anything included -- so the run's own
    record comes first: its ``overrides`` (records of schema 3 on), else those the run saved beside its
    checkpoints (``checkpoints/run_overrides.yaml``, when it trained), else, for a finished run a later
    attempt failed beside (``metrics.failed.json``), none; else ``.hydra``'s."""
    record = job.record.overrides if job.record is not None else None
    if record is not None:
        return [str(o) for o in record]
    if (path / "checkpoints" / OVERRIDES_FILE).exists():
        return load_overrides(path / "checkpoints") or []
    if job.status == "finished" and (path / FAILED_ATTEMPT).exists():
        return []
    return job.overrides


def read_overrides(path: Path) -> list[str]:
    """``.hydra/overrides.yaml`` as a list of strings ([] if absent or unreadable)."""
    try:
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(OmegaConf.load(path / ".hydra" / "overrides.yaml"))
        return [str(o) for o in data] if isinstance(data, list) else []
    except Exception:  # noqa: BLE001 - a broken job dir must not stop the report
        return []


def read_hydra_config(path: Path) -> dict:
    """The parts of ``.hydra/config.yaml`` the report uses, resolved node by node (best effort).

    The file is the composed config before the job ran; some nodes interpolate Hydra's runtime
    (``paths.run_dir``), so each top-level node is resolved on its own and dropped if it fails.
    """
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(path / ".hydra" / "config.yaml")
    except Exception:  # noqa: BLE001
        return {}
    out: dict = {}
    for key in ("transform", "procedure", "algo", "logger", "seed"):
        try:
            node = cfg[key]
            out[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        except Exception:  # noqa: BLE001
            continue
    return out


def log_error(log_path: Path, max_bytes: int = 200_000) -> str:
    """The exception line of the last traceback in a log (else its last ERROR line, else '')."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = text.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")]
    if starts:
        for ln in lines[starts[-1] + 1:]:
            if ln.strip() and not ln[:1].isspace():
                return ln.strip()
    errors = [ln.strip() for ln in lines if "[ERROR]" in ln or "Error:" in ln]
    return errors[-1] if errors else ""


def present_judges(jobs: Iterable[Job]) -> list[str]:
    """Judges found in the finished jobs' records, reward_model and gold first."""
    seen: list[str] = []
    for job in jobs:
        if job.status != "finished":
            continue
        for j in job.record.eval.judges:
            if j not in seen:
                seen.append(j)
    return sorted(seen, key=lambda j: (JUDGES.index(j) if j in JUDGES else len(JUDGES), j))


def swept_overrides(jobs: Sequence[Job]) -> dict[str, list[str]]:
    """Per job, the overrides not shared by every job that has any (the swept ones); all of them
    when fewer than two jobs have overrides."""
    known = [set(j.overrides) for j in jobs if j.overrides]
    if len(known) <= 1:
        return {j.job: list(j.overrides) for j in jobs}
    common = set.intersection(*known)
    return {j.job: [o for o in j.overrides if o not in common] for j in jobs}
