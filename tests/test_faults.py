"""Fault injection: nothing lost, nothing silent.

Run dirs are unique and never overwritten, resume needs a checkpoint, every failed job (an invalid
config included) is recorded, a sweep with failures exits non-zero, config errors are one block
with exit code 2, Ctrl-C is recorded as interrupted, caches record and check their key, complete
cache entries are read without locks, files get umask modes, W&B follows WANDB_MODE and a resumed
run keeps its W&B id, Custom transforms run on the tensor's device. The slow tests run the console
script as a user would and kill it (SIGKILL) mid-run.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from forked_cli import BIN, ENV, finished, train_cli
from infalign.apps import train as train_app
from infalign.apps import train_stages
from infalign.apps.config import CONFIG_DIR, instantiate_callbacks, instantiate_logger, run_suffix
from infalign.apps.hydra_callbacks import FailedJobs, grid_mismatches, job_failure
from infalign.errors import ConfigError
from infalign.infra import cache
from infalign.math.transforms import Custom
from pipeline_helpers import TINY_RUN, TINY_WORLD, compose_train, seeded_cache

TINY = [*TINY_WORLD, *TINY_RUN]


def no_compute(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("compute started")

    monkeypatch.setattr(train_stages, "load_world", boom)


def world_only(monkeypatch, world_id: str, data_id: str = "d") -> None:
    """Runs load a stand-in world whose models are ``world_id`` (``world.stats["world_id"]``) and prompts
    ``data_id``, and stop at the first stage after it ("compute started")."""
    def boom(*a, **k):
        raise AssertionError("compute started")

    world = SimpleNamespace(reference_fingerprint="ref", reward_fingerprint="rm",
                            stats={"world_id": world_id, "data_id": data_id})
    monkeypatch.setattr(train_stages, "load_world", lambda *a, **k: world)
    monkeypatch.setattr(train_stages, "calibration_table", boom)
    monkeypatch.setattr(train_stages, "fit_policy", boom)


# ---------------------------------------------------------------- defect 1: run dirs


def hydra_run_dir(*overrides: str) -> str:
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    OmegaConf.set_readonly(cfg.hydra, False)
    cfg.hydra.job.name = "train"
    return str(cfg.hydra.run.dir)


@pytest.mark.slow
def test_run_dirs_of_the_same_second_differ(monkeypatch):
    for var in ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    dirs = {hydra_run_dir() for _ in range(5)}  # well within one second
    assert len(dirs) == 5
    assert all(re.search(r"/train/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_[0-9a-f]{6}$", d) for d in dirs)


def test_run_suffix_is_shared_by_the_ranks_of_one_torchrun(monkeypatch):
    for var in ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert run_suffix() == run_suffix() == "port29500"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-abc")
    assert run_suffix() == "job-abc"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun's default without --rdzv-id
    assert run_suffix() == "port29500"


def test_run_suffix_under_slurm(monkeypatch):
    """The job id (and array task); single-task runs in one allocation get apart by random digits,
    the ranks of one multi-task step share the step id."""
    import re

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    for var in ("SLURM_ARRAY_TASK_ID", "SLURM_NTASKS", "SLURM_STEP_ID", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    a, b = run_suffix(), run_suffix()
    assert re.fullmatch(r"4242_[0-9a-f]{4}", a) and re.fullmatch(r"4242_[0-9a-f]{4}", b)
    assert len({run_suffix() for _ in range(20)}) > 1  # two runs of one allocation: other dirs
    assert re.search(r"_4242_[0-9a-f]{4}$", hydra_run_dir())
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    assert run_suffix().startswith("4242_7_")
    monkeypatch.setenv("SLURM_NTASKS", "2")  # a 2-task allocation: its batch script's own commands
    assert run_suffix() != run_suffix()  # (two background runs in one second must not share a dir)
    monkeypatch.setenv("SLURM_STEP_ID", "3")  # one srun step: one distributed run, two ranks
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert run_suffix() == run_suffix() == "4242_7_s3"


def test_a_run_refuses_another_runs_dir(tmp_path, monkeypatch):
    no_compute(monkeypatch)
    record = {"status": "finished", "run_name": "the other run"}
    (tmp_path / "metrics.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"hydra\.run\.dir.*ckpt_path=last"):
        train_app.run(compose_train(tmp_path / "cache", tmp_path))
    assert json.loads((tmp_path / "metrics.json").read_text()) == record  # untouched


@pytest.mark.slow  # a tiny run end to end
def test_a_dir_whose_only_record_is_an_attempt_that_failed_before_training_is_free(tmp_path, tiny_cache):
    """A typo in a fixed run dir (walkthrough): the failed attempt wrote metrics.json, and the corrected
    run was refused for it -- then ``ckpt_path=last`` was refused for the missing checkpoint. An
    unfinished record with no checkpoint holds nothing to keep or resume: the next run takes the dir.
    A record with a checkpoint beside it, or one that cannot be read, still refuses it."""
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="algo.beta"):
        train_app.run(compose_train(tiny_cache, run_dir, "algo.beta=-1"))
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"
    metrics = train_app.run(compose_train(tiny_cache, run_dir))
    assert metrics["status"] == json.loads((run_dir / "metrics.json").read_text())["status"] == "finished"
    with pytest.raises(ConfigError, match=r"hydra\.run\.dir"):  # a finished run's dir stays refused
        train_app.run(compose_train(tiny_cache, run_dir, "seed=1"))
    with pytest.raises(ConfigError) as info:  # a bad value there is named first (a faults review), nothing written
        train_app.run(compose_train(tiny_cache, run_dir, "algo.beta=-1"))
    assert info.value.key == "algo.beta"
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "finished"
    failed = {"status": "failed", "error": "ValueError: x"}
    for name, other in (("checkpoints", None), ("metrics.json", "{not json")):
        other_dir = tmp_path / name.split(".")[0]
        other_dir.mkdir()
        (other_dir / "metrics.json").write_text(other or json.dumps(failed))
        if other is None:
            (other_dir / "checkpoints").mkdir()
            (other_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
        with pytest.raises(ConfigError, match=r"hydra\.run\.dir"):
            train_app.check_run_dir(compose_train(tiny_cache, other_dir), other_dir)


def test_a_new_run_in_a_dir_freed_from_an_unfinished_attempt_takes_none_of_its_files(tmp_path, monkeypatch):
    """Review findings: (1) an attempt interrupted before its first checkpoint leaves checkpoints/ with the
    settings it wrote before training, and the command it printed to continue (no ckpt_path) was refused for
    that dir; (2) a dir freed from an unfinished attempt kept the attempt's wandb/run_id, policy/ and csv/,
    so a new run of another config there continued the old W&B run, and a later kept re-run could take the
    old policy/ as its own. The new run now finds the dir free and the attempt's files set aside, whole."""
    from infalign.pipeline import loggers

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "run_settings.json").write_text("{}")
    (run_dir / "metrics.json").write_text(json.dumps({"status": "interrupted", "error": "KeyboardInterrupt"}))
    (run_dir / "policy").mkdir()
    (run_dir / "policy" / "model.safetensors").write_text("old weights")
    old_id = loggers.stored_run_id(run_dir)
    (run_dir / ".hydra").mkdir()  # Hydra's own files, written for this run: stay
    cfg = compose_train(tmp_path / "cache", run_dir, "transform.t=2")
    train_app.check_run_dir(cfg, run_dir)
    aside = run_dir / "previous_attempt-1"
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "previous_attempt-1"]
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoints", "metrics.json", "policy", "wandb"]
    assert (aside / "policy" / "model.safetensors").read_text() == "old weights"
    assert loggers.stored_run_id(run_dir) != old_id
    # a second unfinished attempt goes beside the first; a dir with a checkpoint stays refused
    (run_dir / "metrics.json").write_text(json.dumps({"status": "failed", "error": "ValueError: x"}))
    train_app.check_run_dir(cfg, run_dir)
    assert (run_dir / "previous_attempt-2" / "metrics.json").is_file() and (aside / "metrics.json").is_file()
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"hydra\.run\.dir"):
        train_app.check_run_dir(cfg, run_dir)
    # resuming (last / last_or_new) keeps the dir's files: they are the run's
    (run_dir / "checkpoints" / "last.ckpt").unlink()
    (run_dir / "metrics.json").write_text(json.dumps({"status": "interrupted", "error": "KeyboardInterrupt"}))
    train_app.check_run_dir(compose_train(tmp_path / "cache", run_dir, "ckpt_path=last_or_new"), run_dir)
    assert (run_dir / "metrics.json").is_file() and not (run_dir / "previous_attempt-3").exists()


def test_a_rank_that_finds_the_attempts_record_moved_mid_check_takes_the_dir_as_free(tmp_path, monkeypatch):
    """Review finding (today's diff): under torchrun the other ranks check the run dir while rank 0 sets the
    unfinished attempt's files aside; a rank whose read of metrics.json came after the move refused the
    dir as another run's and tore the launch down. A record gone since it was seen is one set aside."""
    from infalign.pipeline import record

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"status": "interrupted", "error": "KeyboardInterrupt"}))
    monkeypatch.setenv("RANK", "1")  # this rank moves nothing
    real = record.read_record

    def moved_meanwhile(path):
        train_app.set_aside_attempt(run_dir)  # rank 0, between this rank's exists() and its read
        return real(path)

    monkeypatch.setattr(record, "read_record", moved_meanwhile)
    train_app.check_run_dir(compose_train(tmp_path / "cache", run_dir), run_dir)
    assert (run_dir / "previous_attempt-1" / "metrics.json").is_file()


@pytest.mark.slow  # a tiny run end to end
def test_a_short_offline_run_logs_its_training_curve_to_the_last_step(tmp_path, tiny_cache):
    """Review finding: with log_every_n_steps=5 (conf/train.yaml) a 4-step BoN-SFT run (kl_point=0) logged
    no training curve at all, and no 4/8/16/32/64-step run its last step: the interval is now at most a
    tenth of the steps and divides them (pipeline/trainer.logging_interval)."""
    import csv as csv_module

    run_dir = tmp_path / "run"
    train_app.run(compose_train(tiny_cache, run_dir, "method=bon_sft", "algo.steps=4", "logger=csv",
                                "policy_cache=false"))
    rows = list(csv_module.DictReader((run_dir / "csv" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows if r.get("train/loss")] == [0, 1, 2, 3]


@pytest.mark.slow  # two tiny runs end to end
def test_a_continued_ppo_runs_csv_has_each_step_once(tmp_path, tiny_cache):
    """Review finding: the CSV history a resume keeps was cut at the checkpoint's *optimizer* step, while
    the CSV numbers rows by RL step (batches). PPO takes ppo_epochs x minibatches optimizer steps per
    batch, so rows the resumed run logs again were kept too (steps 2, 3 twice here: the first run's
    summary row sat at step 2)."""
    import csv as csv_module

    run_dir = tmp_path / "run"
    tiny = ["algo=ppo", "logger=csv", "log_every_n_steps=1", "policy_cache=false"]
    train_app.run(compose_train(tiny_cache, run_dir, *tiny))
    train_app.run(compose_train(tiny_cache, run_dir, *tiny, "algo.steps=4", "ckpt_path=last"))
    rows = list(csv_module.DictReader((run_dir / "csv" / "metrics.csv").open()))
    trained = [int(r["step"]) for r in rows if r.get("train/loss")]
    summary = [int(r["step"]) for r in rows if r.get("eval/reward_model/kl")]
    assert trained == [0, 1, 2, 3] and summary == [4], [r["step"] for r in rows]


@pytest.mark.slow  # a tiny run end to end
def test_an_interrupt_while_the_views_are_written_is_not_a_failed_attempt(tmp_path, tiny_cache, monkeypatch):
    """Review finding: Ctrl-C or SIGTERM after metrics.json held this attempt's finished record (while
    the plot was drawn) wrote metrics.failed.json, and the sweep reported the job as interrupted with
    "metrics.json keeps the earlier finished run" -- its own, whole record."""
    from infalign.pipeline import record

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(record, "plot_win_rates", stopped)  # (eval_metrics.csv is written before it)
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_app.run(compose_train(tiny_cache, run_dir))
    assert record.is_finished(run_dir / "metrics.json")
    assert not (run_dir / record.FAILED_ATTEMPT).exists() and job_failure(run_dir) is None


# ---------------------------------------------------------------- defect 3: resume needs a checkpoint


def test_ckpt_path_last_without_a_checkpoint_is_an_error(tmp_path, monkeypatch):
    no_compute(monkeypatch)
    with pytest.raises(ConfigError, match=r"ckpt_path=.last.*last_or_new"):
        train_app.run(compose_train(tmp_path / "cache", tmp_path / "run", "ckpt_path=last"))
    cfg = compose_train(tmp_path / "cache", tmp_path / "run", "ckpt_path=last_or_new")
    assert train_app.resolve_ckpt(cfg, tmp_path / "run") is None  # explicitly: start fresh
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 1, "optimizer_states": [{}]}, tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert train_app.resolve_ckpt(cfg, tmp_path / "run") == str(tmp_path / "run" / "checkpoints" / "last.ckpt")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_checkpoint_is_a_clear_error_before_compute(tmp_path, monkeypatch, damage):
    no_compute(monkeypatch)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": {"w": torch.randn(256, 256)}, "global_step": 2}, ckpt)
    data = ckpt.read_bytes()
    ckpt.write_bytes(b"not a checkpoint" * 10 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"ckpt_path.*(corrupt|truncated)"):
        train_app.run(compose_train(tmp_path / "cache", tmp_path, "ckpt_path=last"))


# ---------------------------------------------------------------- defect 5: failed jobs are recorded


def test_invalid_config_is_recorded_as_failed(tmp_path, monkeypatch):
    no_compute(monkeypatch)
    with pytest.raises(ConfigError):
        train_app.run(compose_train(tmp_path / "cache", tmp_path, "algo.beta=0"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "algo.beta" in metrics["error"]
    assert metrics["config"]["algo"]["beta"] == 0


def fake_job(sweep: Path, num: int, metrics: dict | None) -> None:
    (sweep / str(num) / ".hydra").mkdir(parents=True)
    if metrics is not None:
        (sweep / str(num) / "metrics.json").write_text(json.dumps(metrics))


def test_multirun_end_lists_failed_jobs_and_exits_non_zero(tmp_path):
    fake_job(tmp_path, 0, {"status": "finished"})
    fake_job(tmp_path, 1, {"status": "failed", "error": "ConfigError: algo.beta=0 is not allowed"})
    fake_job(tmp_path, 2, None)  # killed before it recorded anything
    fake_job(tmp_path, 10, {"status": "interrupted", "error": "KeyboardInterrupt"})
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    with pytest.raises(SystemExit) as exit_info:
        FailedJobs().on_multirun_end(config=config)
    message = str(exit_info.value.code)
    assert message.startswith("3 of 4 jobs failed: 1: failed: ConfigError: algo.beta=0")
    assert "2: no metrics.json" in message and "10: interrupted" in message
    (tmp_path / "3").mkdir()  # not a job dir (no .hydra/): ignored
    for job in ("1", "2", "10"):
        (tmp_path / job / "metrics.json").write_text(json.dumps({"status": "finished"}))
    FailedJobs().on_multirun_end(config=config)  # all finished: no exit


@pytest.mark.slow  # the console script: a process start (imports) of ~10 s
def test_sweep_of_invalid_jobs_exits_non_zero_and_records_them(tmp_path):
    sweep = tmp_path / "sweep"
    code, out, err = finished(train_cli("-m", "algo.beta=0,-1", *TINY, f"paths.cache_dir={tmp_path / 'cache'}",
                                        f"hydra.sweep.dir={sweep}"))
    assert code == 1, err[-2000:]
    assert "2 of 2 jobs failed: 0: failed: ConfigError: algo.beta=0" in err
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["status"] == "failed" and "algo.beta" in metrics["error"]
    # the same sweep dir again, another grid: refused before any job starts (none of job 0's
    # files rewritten), not run into the old results and counted as finished
    before = (sweep / "0" / ".hydra" / "overrides.yaml").read_text()
    code, out, err = finished(train_cli("-m", "algo.beta=0.5,0.25", *TINY, f"paths.cache_dir={tmp_path / 'cache'}",
                                        f"hydra.sweep.dir={sweep}"))
    assert code == 2 and "hydra.sweep.dir" in err and "ckpt_path=last_or_new" in err, err[-2000:]
    assert (sweep / "0" / ".hydra" / "overrides.yaml").read_text() == before


@pytest.mark.slow  # the console script: a process start (imports) of ~10 s
def optuna_sweep(tmp_path, tiny_world, trials: int, t_interval: str) -> tuple[Path, int, str]:
    """``infalign-train -m +sweeps=optuna_t`` on the tiny world, t drawn from ``t_interval``:
    ``(sweep dir, exit code, stderr)`` (skipped without the Optuna plugin, the sweep extra)."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep, cache = tmp_path / "sweep", seeded_cache(tmp_path / "cache", tiny_world)
    code, out, err = finished(train_cli("-m", "+sweeps=optuna_t", f"hydra.sweeper.n_trials={trials}",
                                        f"transform.t={t_interval}", *TINY, "policy_cache=false",
                                        f"paths.cache_dir={cache}", f"hydra.sweep.dir={sweep}"))
    assert "setup plugin alembic" not in out + err  # Optuna's storage's own INFO chatter (a walkthrough)
    return sweep, code, err


@pytest.mark.slow
def test_an_optuna_study_records_failed_trials_and_goes_on(tmp_path, tiny_world):
    """A failed job returned NaN, and the Optuna sweeper's fallback ``tell(FAIL, values=[nan])`` raised
    ("Values were told"): the first failed trial ended the study, with no sweep summary. Here the
    sampler (seed 0) draws t both sides of 88.7 (beyond it exp(t u) overflows float32: a ConfigError):
    the failed trials are recorded and the study goes on to its best trial."""
    sweep, code, err = optuna_sweep(tmp_path, tiny_world, 3, "interval(60,120)")
    assert "Values were told" not in err and "Traceback" not in err, err[-3000:]
    status = {job: json.loads((sweep / job / "metrics.json").read_text()) for job in ("0", "1", "2")}
    failed = [j for j, m in status.items() if m["status"] == "failed"]
    assert failed and len(failed) < 3, {j: m["status"] for j, m in status.items()}
    assert all("transform.t" in status[j]["error"] for j in failed)
    assert code == 1 and f"{len(failed)} of 3 jobs failed" in err, err[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_params"]["transform.t"] <= 88.7


@pytest.mark.slow
def test_an_optuna_study_whose_every_trial_fails_lists_the_failures(tmp_path, tiny_world):
    """Every trial fails (t beyond 88.7 overflows float32: a ConfigError): Optuna then has no best
    trial and the plugin's ``study.best_trial`` raised "No trials are completed yet." -- a traceback
    after the failures, before the sweep's summary. infalign's sweeper
    (hydra_plugins/infalign_sweeps/optuna_sweeper.py) ends the study so the FailedJobs callback lists
    them, exit code 1."""
    _, code, err = optuna_sweep(tmp_path, tiny_world, 2, "interval(100,120)")
    assert "Traceback" not in err and "No trials are completed yet" not in err, err[-3000:]
    assert code == 1 and "2 of 2 jobs failed" in err and "transform.t" in err, err[-3000:]


def test_a_sweep_dir_with_results_is_refused_unless_resumed(tmp_path):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "ckpt_path": None})
    FailedJobs().on_multirun_start(config=config)  # empty: fine
    fake_job(tmp_path, 0, None)  # a job dir without results: fine (e.g. killed at start)
    FailedJobs().on_multirun_start(config=config)
    fake_job(tmp_path, 1, {"status": "finished"})
    with pytest.raises(SystemExit) as exit_info:
        FailedJobs().on_multirun_start(config=config)
    assert exit_info.value.code == 2
    config.ckpt_path = "last_or_new"  # resuming that sweep: its jobs continue in their own dirs
    FailedJobs().on_multirun_start(config=config)


def test_a_taken_sweep_dir_stops_the_sweep_with_full_errors_too(tmp_path, monkeypatch):
    """With ``-v`` / HYDRA_FULL_ERROR=1 the guard raised the ConfigError, which Hydra's callback runner
    turns into a warning -- the sweep then ran into the old results. It exits (code 2) either way."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "ckpt_path": None})
    fake_job(tmp_path, 1, {"status": "finished"})
    with pytest.raises(SystemExit) as exit_info:
        FailedJobs().on_multirun_start(config=config)
    assert exit_info.value.code == 2


def test_a_resumed_sweep_with_another_grid_is_refused_before_any_job(tmp_path, monkeypatch, capsys):
    """A walkthrough added a KL point by re-running its sweep with one more beta in the same dir and
    ckpt_path=last_or_new: Hydra numbered the new grid's jobs from 0, three of six ran into dirs holding
    other settings' runs (refused, failed), one setting trained twice (two job dirs), and the report
    counted it twice. The swept values every job dir records are now checked against this grid's job of
    the same number before any job starts; the same grid resumes, and the refusal says how to add runs."""
    basic = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"

    def config(*task: str, target: str = basic):
        return OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "sweeper": {"_target_": target},
                                           "overrides": {"task": list(task)}}, "ckpt_path": "last_or_new"})

    for job, (transform, beta) in enumerate([("identity", "0.15"), ("identity", "0.6"), ("expn_t4", "0.15")]):
        fake_job(tmp_path, job, {"status": "finished", "overrides": [f"transform={transform}", f"algo.beta={beta}"]})
    same = config("transform=identity,expn_t4", "algo.beta=0.15,0.6", "ckpt_path=last_or_new")
    assert grid_mismatches(same, tmp_path, ["0", "1", "2"]) == []
    FailedJobs().on_multirun_start(config=same)  # the same grid (and a new key fixed for all): resumes
    wider = config("transform=identity,expn_t4", "algo.beta=0.15,0.3,0.6", "ckpt_path=last_or_new")
    assert grid_mismatches(wider, tmp_path, ["0", "1", "2"]) == [
        "job 1: algo.beta=0.6, now algo.beta=0.3", "job 2: transform=expn_t4, algo.beta=0.15, now "
        "transform=identity, algo.beta=0.6"]
    with pytest.raises(SystemExit) as exit_info:
        FailedJobs().on_multirun_start(config=wider)
    assert exit_info.value.code == 2
    # with full errors asked for (-v) it stops too, and says why (it exited 2 with no message at all)
    assert "job 1: algo.beta=0.6, now algo.beta=0.3" in capsys.readouterr().err  # the one block
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(SystemExit) as exit_info:
        FailedJobs().on_multirun_start(config=wider)
    assert exit_info.value.code == 2 and "job 1: algo.beta=0.6, now algo.beta=0.3" in capsys.readouterr().err
    monkeypatch.delenv("HYDRA_FULL_ERROR")
    narrower = config("transform=identity", "algo.beta=0.15,0.6")
    assert grid_mismatches(narrower, tmp_path, ["0", "1", "2"]) == ["job 2: algo.beta=0.15, now no such job"]
    assert grid_mismatches(config("algo.beta=0.3", target="optuna"), tmp_path, ["0"]) == []  # not a grid


# ---------------------------------------------------------------- defect 6: one block, exit code 2


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True])
def test_config_error_is_one_block_with_exit_code_2(tmp_path, verbose):
    args = ["algo.beta=0", *TINY, f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    code, out, err = finished(train_cli(*args, *(["-v"] if verbose else [])))
    assert "key:     algo.beta" in err or verbose
    if verbose:  # the full traceback, as with HYDRA_FULL_ERROR=1
        assert code == 1 and "Traceback" in err and "ConfigError" in err
    else:
        assert code == 2, err
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 8, err
        assert re.search(r"value: +0\b", err) and "allowed:" in err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_config_error_raised_in_a_resolver_is_one_block_too(tmp_path):
    args = ["experiment=toy_bon_distill", "procedure.n=1", *TINY, f"paths.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    code, out, err = finished(train_cli(*args))
    assert code == 2 and "Traceback" not in err, err
    assert "key:     procedure.n" in err and "${bon_beta:N}" in err


@pytest.mark.slow  # the console script (forked from the zygote, which its first use starts)
@pytest.mark.parametrize("override, message", [("transform=nosuch", "Could not find 'transform/nosuch'"),
                                               ("algo.beta=[", "no viable alternative")])
def test_a_command_line_hydra_itself_refuses_exits_2_too(tmp_path, override, message):
    """An unknown group option or an unparsable override never reaches the app: Hydra prints its own
    message (with the options) and exited 1, where every other refused configuration exits 2."""
    code, out, err = finished(train_cli(override, f"hydra.run.dir={tmp_path / 'run'}"))
    assert code == 2 and message in out + err, (code, err[-2000:])
    assert not (tmp_path / "run").exists()  # refused before the run existed


# ---------------------------------------------------------------- defect 10: Ctrl-C


def lightning_style_interrupt(*a, **k):
    """What Lightning does on Ctrl-C inside ``fit``: handle the KeyboardInterrupt, then ``exit(1)``."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        sys.exit(1)


def test_ctrl_c_is_recorded_as_interrupted(tmp_path, monkeypatch):
    monkeypatch.setattr(train_stages, "load_world", lambda cfg, cache_dir: SimpleNamespace(
        stats={}, reference_fingerprint="ref", reward_fingerprint="rm", train_prompts=["p"]))
    monkeypatch.setattr(train_stages, "fit_policy", lightning_style_interrupt)
    with pytest.raises(SystemExit):
        train_app.run(compose_train(tmp_path / "cache", tmp_path, "transform=raw", "policy_cache=false"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and "KeyboardInterrupt" in metrics["error"]


def test_each_stage_logs_its_start_with_what_to_expect_and_its_end(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(train_stages, "load_world", lambda cfg, cache_dir: SimpleNamespace(
        stats={}, reference_fingerprint="ref", reward_fingerprint="rm", train_prompts=["p"]))
    monkeypatch.setattr(train_stages, "fit_policy", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    caplog.set_level("INFO", logger=train_app.__name__)
    with pytest.raises(RuntimeError, match="boom"):
        train_app.run(compose_train(tmp_path / "cache", tmp_path, "transform=raw", "policy_cache=false"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stage ")]
    assert lines[0].startswith("stage world: started (toy world:") and "first use builds it" in lines[0]
    assert re.fullmatch(r"stage world: done in \d+\.\ds", lines[1])
    assert lines[2].startswith("stage calibration: started (6 prompts x K=4")
    assert lines[4].startswith("stage train: started (2 rloo steps") and len(lines) == 5  # failed: no "done"
    timings = json.loads((tmp_path / "metrics.json").read_text())["timings"]
    assert set(timings) == {"world_s", "calibration_s"}


def test_progress_bar_has_no_negative_epoch_total(tmp_path):
    cfg = compose_train(tmp_path, tmp_path, "trainer.progress_bar=rich", "callbacks.model_checkpoint=null")
    (bar,) = instantiate_callbacks(cfg.callbacks)
    bar._trainer = SimpleNamespace(max_epochs=-1)  # what Trainer(max_steps=...) sets
    assert bar._get_train_description(0).strip() == "Epoch 0"
    bar._trainer = SimpleNamespace(max_epochs=3)
    assert bar._get_train_description(1).strip() == "Epoch 1/2"
    # the toy build's trainers too (a walkthrough's first build printed "Epoch 1/-2")
    from infalign.toy.build import _BatchShapes, _trainer
    from infalign.training.progress import StepsProgressBar

    toy = _trainer(5, True, _BatchShapes())
    assert isinstance(toy.progress_bar_callback, StepsProgressBar)
    toy.progress_bar_callback._trainer = SimpleNamespace(max_epochs=-1)  # what its fit (max_steps) sets
    assert toy.progress_bar_callback._get_train_description(1).strip() == "Epoch 1"
    assert _trainer(5, False, _BatchShapes()).progress_bar_callback is None


# ---------------------------------------------------------------- defects 4, 7: W&B


def wandb_init_kwargs(tmp_path, run_dir: Path) -> dict:
    cfg = compose_train(tmp_path / "cache", run_dir, "logger=wandb")
    return instantiate_logger(cfg.logger)._wandb_init


@pytest.mark.parametrize("env, mode", [("online", "online"), ("offline", "offline"), ("disabled", "disabled"),
                                       (None, "offline")])
def test_wandb_mode_follows_the_environment(tmp_path, monkeypatch, env, mode):
    if env is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env)
    assert wandb_init_kwargs(tmp_path, tmp_path / "run")["mode"] == mode


def test_wandb_mode_is_validated(tmp_path, monkeypatch):
    no_compute(monkeypatch)
    with pytest.raises(ConfigError, match=r"logger\.mode"):
        train_app.run(compose_train(tmp_path / "cache", tmp_path, "logger=wandb", "logger.mode=onlin"))


def test_resumed_run_keeps_its_wandb_run_id(tmp_path):
    first = wandb_init_kwargs(tmp_path, tmp_path / "run")
    again = wandb_init_kwargs(tmp_path, tmp_path / "run")
    other = wandb_init_kwargs(tmp_path, tmp_path / "other")
    assert first["id"] and first["id"] == again["id"] != other["id"]
    assert first["resume"] == "allow"
    assert (tmp_path / "run" / "wandb" / "run_id").read_text().strip() == first["id"]


# ---------------------------------------------------------------- defects 8, 9: cache files


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_and_dirs_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        cache.atomic_write_text(tmp_path / "a.txt", "x")
        cache.save_tensors(tmp_path / "t.pt", {"x": torch.zeros(2)})
        with cache.atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("y")
            # save_pretrained's weights: safetensors writes them 0600 whatever the umask (robustness walkthrough:
            # a cache shared read-only was unreadable to its other users)
            from safetensors.torch import save_file

            (d / "sub").mkdir()
            save_file({"w": torch.zeros(2)}, str(d / "sub" / "model.safetensors"))
    finally:
        os.umask(old)
    for name in ("a.txt", "t.pt", "d/f", "d/sub/model.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    for name in ("d", "d/sub"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o777 & ~umask, name


def test_cache_file_under_the_wrong_key_is_not_used(tmp_path):
    cache.save_tensors(tmp_path / "a.pt", {"x": torch.ones(3)}, key="aaaa")
    assert cache.load_tensors(tmp_path / "a.pt", "aaaa")[0]["x"].sum() == 3
    (tmp_path / "b.pt").write_bytes((tmp_path / "a.pt").read_bytes())  # copied to another key's name
    with pytest.raises(cache.CorruptCacheError, match="stored under key 'aaaa', expected 'bbbb'"):
        cache.load_tensors(tmp_path / "b.pt", "bbbb")
    value, hit = cache.cached(tmp_path / "b.pt", lambda: {"x": torch.zeros(3)},
                              lambda v, p: cache.save_tensors(p, v, key="bbbb"),
                              lambda p: cache.load_tensors(p, "bbbb")[0])
    assert not hit and value["x"].sum() == 0  # rebuilt, never silently used
    assert cache.load_tensors(tmp_path / "b.pt", "bbbb")[0]["x"].sum() == 0


def test_reference_pool_files_record_their_key(tmp_path):
    from infalign.pipeline import pools
    from test_pools import make_world

    world, prompts = make_world(tmp_path)
    gen = OmegaConf.create({"max_new_tokens": 4, "temperature": 1.0, "batch_size": 2})
    kw = functools.partial(L.Trainer, accelerator="cpu", devices=1, enable_progress_bar=False,
                               enable_model_summary=False)
    scorer = SimpleNamespace(score=lambda p, r: torch.tensor([float(len(x)) for x in r]))
    world.reward = scorer  # the reward model: keyed by its fingerprint

    def pool(seed):
        return pools.reference_pool(world, prompts, 2, {"reward": scorer}, gen, kw, seed, tmp_path, tag="t")

    pool(0)
    (a,) = (tmp_path / "pools").glob("t-*.pt")
    pool(1)
    (b,) = set((tmp_path / "pools").glob("t-*.pt")) - {a}
    b.write_bytes(a.read_bytes())  # seed 0's pool placed under seed 1's key
    _, hit = pool(1)
    assert not hit  # detected and rebuilt


def test_complete_cache_entry_is_read_without_a_lock(tmp_path, monkeypatch):
    path = tmp_path / "entry.pt"
    cache.save_tensors(path, {"x": torch.arange(3.0)}, key="k")

    def no_lock(p):
        raise PermissionError(f"read-only cache: cannot create {p}")

    monkeypatch.setattr(cache, "file_lock", no_lock)
    value, hit = cache.cached(path, lambda: pytest.fail("rebuilt"), lambda v, p: pytest.fail("written"),
                              lambda p: cache.load_tensors(p, "k")[0])
    assert hit and value["x"].tolist() == [0.0, 1.0, 2.0]
    assert not (tmp_path / "entry.pt.lock").exists()


# ---------------------------------------------------------------- defect 12: device-agnostic transforms


@pytest.mark.parametrize("fn", [np.sqrt, "numpy.sqrt", np.log1p])
def test_custom_numpy_transform_runs_on_the_tensors_device(fn):
    t = Custom(fn=fn)
    u = torch.tensor([0.04, 0.25, 0.81], dtype=torch.float32)
    out = t(u)
    ref = torch.from_numpy(t.fn(u.numpy().astype(np.float64))).float()
    assert out.dtype == torch.float32 and torch.allclose(out, ref, rtol=1e-6)  # float32 rounding
    meta = t(torch.empty(5, device="meta"))  # no host copy possible: must stay on the device
    assert meta.device.type == "meta" and meta.shape == (5,)


def test_custom_numpy_only_callable_gets_a_host_copy():
    t = Custom(fn=lambda a: np.asarray(a, dtype=np.float64) ** 2)  # not a ufunc
    out = t(torch.tensor([0.5, 0.25]))
    assert isinstance(out, torch.Tensor) and out.tolist() == [0.25, 0.0625]


# ---------------------------------------------------------------- slow: the console script under faults


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory, tiny_world):
    """A cache with the tiny toy world and its pools (one run), shared by the slow tests."""
    root = tmp_path_factory.mktemp("faults")
    metrics = train_app.run(compose_train(seeded_cache(root / "cache", tiny_world), root / "warm"))
    assert metrics["status"] == "finished"
    return root / "cache"


@pytest.fixture(scope="module")
def straight_six(tmp_path_factory, warm_cache) -> dict:
    """The judges of the uninterrupted 6-step run (``algo.steps=6 policy_cache=false`` on the warm
    cache) that the killed / terminated training runs are compared with, run once for the module."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    straight_run(warm_cache, run_dir, "algo.steps=6", "policy_cache=false")
    return judges(run_dir)


@pytest.mark.slow
def test_two_runs_started_together_get_distinct_dirs_and_both_finish(tmp_path, tiny_world):
    env = {"INFALIGN_ROOT": str(tmp_path)}  # default run dirs under tmp_path/outputs/train/
    seeded_cache(tmp_path / "outputs" / "cache", tiny_world)  # (building it is test_toy_world's)
    procs = [train_cli(*TINY, env=env) for _ in range(2)]  # same second
    for proc in procs:
        code, _, err = finished(proc)
        assert code == 0, err[-3000:]
    runs = sorted((tmp_path / "outputs" / "train").iterdir())
    assert len(runs) == 2
    stamps = {r.name.rsplit("_", 1)[0] for r in runs}
    for run in runs:
        assert json.loads((run / "metrics.json").read_text())["status"] == "finished"
    assert len(stamps) <= 2  # (usually one: the suffix is what keeps them apart)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 300, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` (SIGKILL) to ``proc`` as soon as ``ready()`` holds (polled every 50 ms)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "fault point never reached"
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait()


def judges(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    return metrics["eval"]["judges"]


def straight_run(cache_dir: Path, run_dir: Path, *overrides: str) -> dict:
    """The uninterrupted run a killed one is compared with, in this process: the CLI's config
    (TINY) on one thread, as the CLI runs under ENV's OMP_NUM_THREADS=1 -- the same computation,
    without a second interpreter start (~6 s: torch, Lightning). torch's and the BLAS pools'
    thread counts are restored afterwards (the run sets both)."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    try:
        with threadpool_limits(limits=None):  # restores the BLAS limits on exit
            metrics = train_app.run(compose_train(cache_dir, run_dir, *overrides, "threads=1"))
    finally:
        torch.set_num_threads(threads)
    assert metrics["status"] == "finished"
    return metrics


@pytest.mark.slow
def test_kill_9_during_training_then_resume_gives_the_same_metrics(tmp_path, warm_cache, straight_six):
    # policy_cache=false: the killed run must train, not load the straight run's policy
    args = [*TINY, "algo.steps=6", "policy_cache=false", f"paths.cache_dir={warm_cache}"]
    killed = tmp_path / "killed"
    ckpt_dir = killed / "checkpoints"
    proc = train_cli(*args, "logger=wandb", f"hydra.run.dir={killed}")
    kill_when(proc, lambda: (ckpt_dir / "last.ckpt").exists())  # after step 1 of 6, mid-training
    assert not (killed / "metrics.json").exists()
    step = torch.load(ckpt_dir / "last.ckpt", weights_only=False)["global_step"]
    assert 1 <= step < 6
    code, _, err = finished(train_cli(*args, "logger=wandb", f"hydra.run.dir={killed}", "ckpt_path=last"))
    assert code == 0, err[-3000:]
    assert judges(killed) == straight_six
    # one W&B run: the resumed process reopened the killed one's id (offline-run-<time>-<id>)
    run_id = (killed / "wandb" / "run_id").read_text().strip()
    runs = list((killed / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)


K_KILLED = 256


@pytest.mark.slow
def test_kill_9_during_calibration_then_rerun_gives_the_same_metrics(tmp_path, warm_cache):
    # K=256: a calibration pool the warm cache does not hold, so both runs have to draw it (the
    # straight run in its own copy of the cache, taken before the kill), and large enough that the
    # draw outlasts the 50 ms poll and the kill (at K=6 it could finish and be saved first)
    args = [*TINY, f"calibration.K={K_KILLED}", "policy_cache=false", f"paths.cache_dir={warm_cache}"]
    straight_cache = shutil.copytree(warm_cache, tmp_path / "straight_cache")
    log_file = tmp_path / "killed" / "train.log"
    proc = train_cli(*args, f"hydra.run.dir={tmp_path / 'killed'}")
    kill_when(proc, lambda: log_file.exists() and "drawing reference pool calibration" in log_file.read_text())
    assert not (tmp_path / "killed" / "checkpoints").exists()
    code, _, err = finished(train_cli(*args, f"hydra.run.dir={tmp_path / 'killed'}", "ckpt_path=last_or_new"))
    assert code == 0, err[-3000:]
    rerun = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert rerun["cache"]["calibration_hit"] is False  # the killed draw left nothing to reuse
    straight = straight_run(straight_cache, tmp_path / "straight", f"calibration.K={K_KILLED}", "policy_cache=false")
    assert straight["cache"]["calibration_hit"] is False
    assert judges(tmp_path / "killed") == judges(tmp_path / "straight")


@pytest.mark.slow
def test_read_only_complete_cache_run_succeeds(tmp_path, warm_cache, monkeypatch):
    before = {p: p.stat().st_mtime_ns for p in warm_cache.rglob("*")}

    def read_only(p):  # root ignores file modes, so a read-only mount is simulated at the lock
        raise PermissionError(f"read-only cache: cannot create {p}")

    monkeypatch.setattr(cache, "file_lock", read_only)
    metrics = train_app.run(compose_train(warm_cache, tmp_path / "run"))
    assert metrics["status"] == "finished"
    assert metrics["cache"] == {"toy_built": False, "calibration_hit": True, "policy_hit": True,
                                "eval_reference_hit": True, "eval_policy_hit": True}
    assert {p: p.stat().st_mtime_ns for p in warm_cache.rglob("*")} == before  # nothing written


@pytest.mark.slow
def test_sweep_with_an_invalid_and_a_crashing_job(tmp_path, warm_cache):
    sweep = tmp_path / "sweep"
    # (beta, policy): (0.2, toy) finishes; (0, *) invalid; (0.2, /nonexistent) fails when loaded
    code, out, err = finished(train_cli("-m", "algo.beta=0.2,0", "policy.name_or_path=null,/nonexistent/model",
                                        *TINY, f"paths.cache_dir={warm_cache}", f"hydra.sweep.dir={sweep}"))
    assert code == 1, err[-3000:]
    assert "3 of 4 jobs failed" in err
    statuses = {}
    for job in sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir()):
        metrics = json.loads((job / "metrics.json").read_text())
        cfg = metrics["config"]
        statuses[(cfg["algo"]["beta"], cfg["policy"]["name_or_path"])] = metrics["status"]
        if metrics["status"] == "failed":
            assert ("algo.beta" if cfg["algo"]["beta"] == 0 else "policy.name_or_path") in metrics["error"]
    assert statuses == {(0.2, None): "finished", (0, None): "failed", (0.2, "/nonexistent/model"): "failed",
                        (0, "/nonexistent/model"): "failed"}
    proc = subprocess.run([str(BIN / "infalign-report"), str(sweep), "--no-wandb"], capture_output=True,
                          text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = (sweep / "report" / "runs.csv").read_text().splitlines()
    assert sum(",failed," in r for r in rows) == 3 and sum(",finished," in r for r in rows) == 1


# ---------------------------------------------------------------- resumes refused before compute


def _trained_dir(run_dir: Path, cache: Path, *overrides: str) -> None:
    """``run_dir`` as a finished run with ``overrides`` leaves it: metrics.json, checkpoints/last.ckpt and
    the run_settings.json its training wrote (the world part is not compared before compute)."""
    import torch

    from infalign.pipeline.policy_cache import RESUME_FILE, _resume_training
    from infalign.training.algorithms import make_algorithm

    cfg = compose_train(cache, run_dir, *overrides)
    beta = make_algorithm(OmegaConf.to_container(cfg.algo, resolve=True)).beta
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 2, "optimizer_states": [{"state": {}}]}, run_dir / "checkpoints" / "last.ckpt")
    (run_dir / "checkpoints" / RESUME_FILE).write_text(json.dumps({"world": ["a", "b"],
                                                                    "training": _resume_training(cfg, beta)}))
    (run_dir / "metrics.json").write_text(json.dumps({"status": "finished", "run_name": "done"}))


@pytest.mark.parametrize("explicit", [False, True])
def test_a_resume_with_other_settings_is_refused_before_compute_and_keeps_the_run(tmp_path, monkeypatch, explicit):
    """ckpt_path=last in the run's dir, or ckpt_path=<file> of another run's checkpoint: other training
    settings are refused before the world is loaded and before the W&B run starts, and a finished run's
    record stays; the same settings get past the check (to the compute this test forbids)."""
    no_compute(monkeypatch)
    old, cache = tmp_path / "old", tmp_path / "cache"
    _trained_dir(old, cache, "transform.t=4")
    run_dir = tmp_path / "new" if explicit else old
    ckpt = [f"ckpt_path={old / 'checkpoints' / 'last.ckpt'}"] if explicit else ["ckpt_path=last"]
    with pytest.raises(ConfigError, match=r"ckpt_path.*training\.transform\.t"):
        train_app.run(compose_train(cache, run_dir, *ckpt, "transform.t=2", "logger=wandb"))
    assert json.loads((old / "metrics.json").read_text()) == {"status": "finished", "run_name": "done"}
    assert not list(run_dir.glob("wandb/offline-run-*")) and not list(run_dir.glob("wandb/wandb/offline-run-*"))
    if not explicit:
        assert json.loads((old / "metrics.failed.json").read_text())["status"] == "failed"
    with pytest.raises(AssertionError, match="compute started"):  # (a new dir: the refused attempt recorded in its own)
        train_app.run(compose_train(cache, tmp_path / "newer" if explicit else run_dir, *ckpt, "transform.t=4"))


@pytest.mark.slow
def test_a_launched_rank_without_a_named_run_dir_is_a_config_error(tmp_path):
    """Under torchrun / srun (WORLD_SIZE > 1) each rank's default run dir carries its own clock's second:
    a single run must name its dir (the ranks of tests/test_distributed.py's torchrun run do)."""
    args = [*TINY, f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_root={tmp_path / 'out'}"]
    code, out, err = finished(train_cli(*args, env={"WORLD_SIZE": "2", "RANK": "0"}))
    assert code == 2 and "key:     hydra.run.dir" in err, err


def test_a_setting_a_settings_file_from_another_code_version_lacks_resumes_at_its_default(tmp_path, monkeypatch):
    """A key this code added since the checkpoint was written (absent from its run_settings.json) stands
    for its default (docs/architecture.md §4: its value in the algorithm's conf/algo entry): the checkpoint
    resumes at that value and is refused at another, as is a key both have that differs."""
    from infalign.pipeline.policy_cache import RESUME_FILE

    no_compute(monkeypatch)
    old, cache = tmp_path / "old", tmp_path / "cache"
    _trained_dir(old, cache, "transform.t=4")
    path = old / "checkpoints" / RESUME_FILE
    stored = json.loads(path.read_text())
    del stored["training"]["algo"]["grad_clip"]
    path.write_text(json.dumps(stored))
    with pytest.raises(AssertionError, match="compute started"):
        train_app.run(compose_train(cache, old, "ckpt_path=last", "transform.t=4"))
    with pytest.raises(ConfigError, match=r"training\.algo\.grad_clip"):
        train_app.run(compose_train(cache, old, "ckpt_path=last", "transform.t=4", "algo.grad_clip=0.5"))
    with pytest.raises(ConfigError, match=r"training\.transform\.t"):
        train_app.run(compose_train(cache, old, "ckpt_path=last", "transform.t=2"))


def test_a_corrupt_or_weights_only_or_too_far_checkpoint_is_refused_before_compute(tmp_path, monkeypatch):
    """Flipped bytes inside a tensor (the zip still opens: the weights were used silently), a checkpoint
    without the optimizer state (it failed after world and calibration with a KeyError), and a resume
    asking for fewer steps than the checkpoint has trained (recorded as the shorter run) -- each a
    ConfigError before compute."""
    import torch

    no_compute(monkeypatch)
    cache = tmp_path / "cache"
    run_dir = tmp_path / "run"
    _trained_dir(run_dir, cache)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    torch.save({"global_step": 2, "optimizer_states": [{"state": {}}], "w": torch.arange(4096.0)}, ckpt)
    with pytest.raises(AssertionError, match="compute started"):  # intact: gets through
        train_app.run(compose_train(cache, run_dir, "ckpt_path=last"))
    data = bytearray(ckpt.read_bytes())
    start = data.find(bytes(torch.arange(4096.0).numpy().tobytes()[4000:4016]))
    assert start > 0
    data[start:start + 8] = b"\xff" * 8  # flipped bytes in the tensor's storage: the zip still opens
    ckpt.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"ckpt_path.*does not match its checksum"):
        train_app.run(compose_train(cache, run_dir, "ckpt_path=last"))
    torch.save({"global_step": 2, "state_dict": {}}, ckpt)  # save_weights_only
    with pytest.raises(ConfigError, match=r"ckpt_path.*optimizer state"):
        train_app.run(compose_train(cache, run_dir, "ckpt_path=last"))
    torch.save({"global_step": 40, "optimizer_states": [{"state": {}}]}, ckpt)  # TINY_RUN trains 2 steps
    with pytest.raises(ConfigError, match=r"algo\.steps=2.*at least the checkpoint's 40 steps"):
        train_app.run(compose_train(cache, run_dir, "ckpt_path=last"))
    # review finding: a settings file cut short (a machine crash before it reached the disk) raised a raw
    # JSONDecodeError; now a ConfigError naming ckpt_path, before compute
    torch.save({"global_step": 2, "optimizer_states": [{"state": {}}]}, ckpt)
    settings = run_dir / "checkpoints" / "run_settings.json"
    for text in (settings.read_text()[:20], "[]"):
        settings.write_text(text)
        with pytest.raises(ConfigError, match=r"ckpt_path.*run_settings\.json"):
            train_app.run(compose_train(cache, run_dir, "ckpt_path=last"))


def test_last_or_new_never_replaces_a_finished_run_of_another_configuration(tmp_path, monkeypatch):
    """A finished run with no checkpoint (its policy came from the policy cache): ``last_or_new`` with
    other training settings is refused -- it silently replaced the exp(t=4) run's record with an identity
    run's -- and, with the same ones, so are other evaluation settings (evaluating again replaced the
    run's results: review finding), while the same settings keep the run as it is, without compute past
    loading its world."""
    from infalign.pipeline.policy_cache import run_code

    no_compute(monkeypatch)
    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    cfg = compose_train(cache, run_dir, "transform.t=4")
    run_dir.mkdir()
    record = {"status": "finished", "run_name": "done", "eval": {"judges": {"gold": {}}}, "code": run_code(),
              "world": {"world_id": "w", "data_id": "d"}, "config": OmegaConf.to_container(cfg, resolve=True)}
    (run_dir / "metrics.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"ckpt_path.*training\.transform\.t"):
        train_app.run(compose_train(cache, run_dir, "transform.t=2", "ckpt_path=last_or_new"))
    assert json.loads((run_dir / "metrics.json").read_text())["run_name"] == "done"
    # beta and steps are training settings too (ipo takes beta, bon_sft steps from kl_point): a sweep re-run
    # into the dir with another kl_point list must not replace those records either
    for other in ("algo.beta=0.5", "algo.steps=3"):
        with pytest.raises(ConfigError, match=r"ckpt_path.*training\.algo\.(beta|steps)"):
            train_app.run(compose_train(cache, run_dir, "transform.t=4", other, "ckpt_path=last_or_new"))
    for other, key in (("eval.samples=5", r"eval\.samples"), ("procedure=won", r"procedure\.name"),
                       ("data.eval_prompts=4", r"data\.eval_prompts")):
        with pytest.raises(ConfigError, match=rf"ckpt_path.*evaluated with other values of \[.*{key}"):
            train_app.run(compose_train(cache, run_dir, "transform.t=4", other, "ckpt_path=last_or_new"))
    assert job_failure(run_dir).startswith("this attempt failed")  # the refused attempts, beside the record
    world_only(monkeypatch, "w")
    kept = train_app.run(compose_train(cache, run_dir, "transform.t=4", "ckpt_path=last_or_new"))
    assert kept["run_name"] == "done" and json.loads((run_dir / "metrics.json").read_text()) == record
    # review finding: the kept attempt left the refused one's metrics.failed.json, so the sweep still
    # listed the job as failed (and exited 1) after every later, correct re-run
    assert job_failure(run_dir) is None


def test_a_finished_run_is_kept_only_under_its_code_with_its_outputs_and_its_models(tmp_path, monkeypatch):
    """Review finding: the finished-run skip kept a record after the training or evaluation code changed
    (before it, a last_or_new re-run of a policy-cache run retrained under new training code and evaluated
    again: a sweep re-run after the offline baselines' sampled-ids fix kept the old bon_sft / ipo numbers),
    when the re-run asked for a policy/ dir the run never saved, and -- the skip running before the world is
    loaded -- after a local model dir's contents changed at the same path. metrics.json records the code
    (``code``: the training and the pool / evaluation digests, docs/architecture.md §2); the record is kept
    only under that code, with what the run asks for, once the loaded world is the record's (world_id);
    otherwise the run runs again."""
    from infalign.pipeline.policy_cache import run_code

    cache, run_dir = tmp_path / "cache", tmp_path / "run"
    cfg = compose_train(cache, run_dir, "transform.t=4")
    run_dir.mkdir()
    record = {"version": 4, "status": "finished", "run_name": "done", "eval": {"judges": {"gold": {}}},
              "code": run_code(), "world": {"world_id": "w", "data_id": "d"},
              "config": OmegaConf.to_container(cfg, resolve=True)}
    again = compose_train(cache, run_dir, "transform.t=4", "ckpt_path=last_or_new")
    for code in ({**run_code(), "training": "0" * 16}, {**run_code(), "evaluation": "0" * 16}, None):
        (run_dir / "metrics.json").write_text(json.dumps({**record, "code": code}))
        world_only(monkeypatch, "w")
        with pytest.raises(AssertionError, match="compute started"):
            train_app.run(again)
    (run_dir / "metrics.json").write_text(json.dumps(record))
    # ... and on the record's prompts (data_id: a data file edited at the same path is other prompts; a record
    # from before data_id runs again too)
    for world_id, data_id, extra in (("w", "d", ["save_policy=true"]), ("another model's", "d", []),
                                     ("w", "other prompts", []), ("w", None, [])):
        world_only(monkeypatch, world_id, data_id)
        with pytest.raises(AssertionError, match="compute started"):
            train_app.run(compose_train(cache, run_dir, "transform.t=4", "ckpt_path=last_or_new", *extra))
    (run_dir / "policy").mkdir()
    world_only(monkeypatch, "w")
    assert train_app.run(compose_train(cache, run_dir, "transform.t=4", "ckpt_path=last_or_new",
                                       "save_policy=true"))["run_name"] == "done"
    assert json.loads((run_dir / "metrics.json").read_text()) == record


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["training", "world"])
def test_sigterm_records_an_interrupted_run_exits_143_and_resumes(tmp_path, warm_cache, straight_six, stage):
    """A scheduler's time limit or preemption (SIGTERM) mid-training exited 0 with a record saying
    'failed' -- a shell, SLURM or a script read it as a success -- and during the world stage left no
    record at all. Now: metrics.json says interrupted (SIGTERM), the exit status is 143, and the run
    resumes (``ckpt_path=last_or_new``) to the uninterrupted run's metrics."""
    args = [*TINY, "algo.steps=6", "policy_cache=false", f"paths.cache_dir={warm_cache}"]
    run_dir = tmp_path / "termed"
    proc = train_cli(*args, f"hydra.run.dir={run_dir}")
    log_file = run_dir / "train.log"
    ready = ((lambda: (run_dir / "checkpoints" / "last.ckpt").exists()) if stage == "training"
             else (lambda: log_file.exists() and "stage world" in log_file.read_text()))
    kill_when(proc, ready, sig=signal.SIGTERM)
    out, err = proc.communicate()
    assert proc.returncode == 143, err[-3000:]
    rec = json.loads((run_dir / "metrics.json").read_text())
    assert rec["status"] == "interrupted" and "SIGTERM" in rec["error"], rec
    # the command that continues it is printed (a walkthrough followed "resume with ckpt_path=last_or_new"
    # without the run dir and started over in a new dir): run exactly that
    (hint,) = [line for line in (out + err).splitlines() if "continue with: " in line]
    command = shlex.split(hint.split("continue with: ", 1)[1])
    assert command[0] == "infalign-train" and f"hydra.run.dir={run_dir}" in command
    assert ("ckpt_path=last" in command) == (stage == "training")  # none to resume before the first checkpoint
    code, _, err = finished(train_cli(*command[1:]))
    assert code == 0, err[-3000:]
    assert judges(run_dir) == straight_six


def _sigterm_self() -> None:
    """Send this process SIGTERM and run bytecodes here: the handler runs in the caller's frame."""
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(10_000):
        pass


class _SignalledInFinalizer:
    """Takes SIGTERM in its ``__del__``, where Python drops exceptions."""

    def __del__(self):
        _sigterm_self()


def _signalled_in_generator_finally():
    """A generator whose ``finally`` (run when the unfinished generator is collected) takes SIGTERM."""
    try:
        yield 1
    finally:
        _sigterm_self()


@pytest.mark.parametrize("where", ["__del__", "generator finally"])
def test_a_sigterm_arriving_where_python_drops_exceptions_still_stops_the_run(where):
    """CI once saw a SIGTERM land in Lightning's ``Profiler.__del__``: Python printed the handler's
    Terminated as "Exception ignored", the run trained to the end and exited 0. A SIGTERM whose
    exception is dropped (``sys.unraisablehook``) is delivered again shortly after and stops the run
    mid-way (here: within the 2 s loop, not at its end)."""
    make = _SignalledInFinalizer if where == "__del__" else (lambda: next(_signalled_in_generator_finally()))
    before, hook, started = signal.getsignal(signal.SIGTERM), sys.unraisablehook, time.perf_counter()
    with pytest.raises(train_app.Terminated):
        with train_app.terminate_on_sigterm():
            make()  # its result dropped at once: the signal arrives where Python swallows exceptions
            for _ in range(200):
                time.sleep(0.01)
    assert time.perf_counter() - started < 1.5  # the retry (due after 0.05 s) stopped the 2 s loop mid-way
    assert signal.getsignal(signal.SIGTERM) is before and sys.unraisablehook is hook  # both restored


def test_a_sigterm_dropped_just_before_nested_blocks_end_is_not_lost():
    """``main()`` and ``run()`` each hold a :func:`terminate_on_sigterm` block. A SIGTERM dropped in a
    finaliser just before the inner block ends had its retry cancelled with that block, and the outer
    one never saw it (exit 0): the inner block now raises Terminated as it exits."""
    with pytest.raises(train_app.Terminated):
        with train_app.terminate_on_sigterm():
            with train_app.terminate_on_sigterm():
                _SignalledInFinalizer()
            time.sleep(1.0)  # (a lost signal would let the block end normally here)


def test_a_block_without_a_sigterm_ends_normally_and_other_unraisables_are_reported(monkeypatch):
    class Failing:
        def __del__(self):
            raise ValueError("an ordinary finaliser error")

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: seen.append(repr(info.exc_value)))
    with train_app.terminate_on_sigterm():
        Failing()
    assert seen == ["ValueError('an ordinary finaliser error')"]  # passed on to the hook it replaced


def test_a_run_dir_in_use_by_another_run_is_refused(tmp_path, monkeypatch):
    """Two runs on one dir interleaved their checkpoints (last.ckpt, last-v1.ckpt) and the second's record
    replaced the first's: a run holds ``<run dir>/.run.lock`` (flock) while it runs, and a second one is a
    ConfigError before it writes anything; once the first is done the dir is usable again."""
    import fcntl

    no_compute(monkeypatch)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with open(run_dir / train_app.RUN_LOCK, "w") as held:  # the first run, still running
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match=r"hydra\.run\.dir.*another infalign-train process is running"):
            train_app.run(compose_train(tmp_path / "cache", run_dir))
        assert sorted(p.name for p in run_dir.iterdir()) == [train_app.RUN_LOCK]  # nothing written
    with pytest.raises(AssertionError, match="compute started"):  # released: the dir is free
        train_app.run(compose_train(tmp_path / "cache", run_dir))


def test_sigterm_is_recognised_across_two_copies_of_the_app_module():
    """Under ``python -m infalign.apps.train`` the app module exists twice (``__main__`` and
    ``infalign.apps.train``, which the stages import): the SIGTERM handler raised one copy's class and the
    failure record checked the other's, so a SIGTERM was recorded as a Ctrl-C. The class lives in
    ``infalign.errors`` now."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_train_as_main", train_app.__file__)
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    assert copy.Terminated is train_app.Terminated
    record = train_app.failure_record(compose_train("/tmp/c", "/tmp/r"), "x", copy.Terminated("SIGTERM"), {})
    assert record["status"] == "interrupted" and "SIGTERM" in record["error"]


@pytest.mark.parametrize("stop, code", [(lightning_style_interrupt, 130), (KeyboardInterrupt, 130),
                                        (train_app.Terminated, 143), (RuntimeError, 1)],
                         ids=["lightning-ctrl-c", "ctrl-c", "sigterm", "failure"])
def test_the_exit_status_tells_ctrl_c_and_sigterm_from_a_failure(monkeypatch, capsys, stop, code):
    """Walkthrough finding: Ctrl-C exited 1 -- Lightning handles the KeyboardInterrupt and exits 1, the
    status of a failure -- where the shell reports 130 (128 + SIGINT) for a command Ctrl-C stopped;
    SIGTERM exits 143; a failure keeps its exception (Python's status 1)."""
    def hydra_main():
        if isinstance(stop, type):
            raise stop("stop")
        stop()

    monkeypatch.setattr(train_app, "hydra_main", hydra_main)
    monkeypatch.setattr(sys, "argv", ["infalign-train"])
    if code == 1:
        with pytest.raises(RuntimeError):
            train_app.main()
        return
    with pytest.raises(SystemExit) as exit_info:
        train_app.main()
    assert exit_info.value.code == code
    assert ("Ctrl-C" if code == 130 else "SIGTERM") in capsys.readouterr().err


@pytest.mark.parametrize("override, key, said", [
    ("callbacks.model_checkpoint.every_n_train_steps=-1", "callbacks.model_checkpoint", "every_n_train_steps=-1"),
    ("+logger.bogus=1", "logger", "bogus")])
def test_a_callback_or_logger_setting_its_class_refuses_is_a_config_error_naming_it(tmp_path, override, key, said):
    """A faults review: these gave Hydra's raw error (exit 1, the run recorded as failed) where the same mistake
    under trainer, transform or procedure gives the one block naming the group (exit 2)."""
    from pipeline_helpers import compose_train

    cfg = compose_train(tmp_path / "cache", tmp_path / "run", "logger=csv", override)
    with pytest.raises(ConfigError) as info:
        instantiate_callbacks(cfg.callbacks)
        instantiate_logger(cfg.logger)
    assert info.value.key == key and said in info.value.hint
