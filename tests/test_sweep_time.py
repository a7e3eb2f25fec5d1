"""apps/hydra_callbacks.py: the sweep-time summary a multirun prints and writes (SweepTime), and how a
job's metrics.json is read (as a RunRecord) to tell finished from failed jobs."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from infalign.apps.config import CONFIG_DIR
from infalign.apps.hydra_callbacks import SweepTime, job_failure, sweep_time_summary


def job(sweep: Path, num: int, metrics: dict | None) -> None:
    (sweep / str(num) / ".hydra").mkdir(parents=True)
    if metrics is not None:
        (sweep / str(num) / "metrics.json").write_text(json.dumps(metrics))


def test_summary_sums_stage_times_and_counts_cache_hits(tmp_path):
    job(tmp_path, 0, {"status": "finished", "timings": {"train_s": 40.0, "eval_s": 10.0},
                      "cache": {"policy_hit": False}})
    job(tmp_path, 1, {"status": "finished", "timings": {"train_s": 0.5, "eval_s": 12.0},
                      "cache": {"policy_hit": True, "eval_policy_hit": True}})
    job(tmp_path, 2, {"status": "failed", "timings": {"world_s": 2.0}})
    job(tmp_path, 3, None)  # killed: counted as a job, nothing else
    (tmp_path / "notajob").mkdir()
    s = sweep_time_summary(tmp_path, wall_s=123.44)
    assert s == {"wall_s": 123.4, "jobs": 4, "finished": 2, "kept": 0, "policy_cache_hits": 1,
                 "eval_pool_hits": 1, "stage_s": {"eval": 22.0, "train": 40.5, "world": 2.0}}


def test_callback_writes_sweep_time_json(tmp_path):
    job(tmp_path, 0, {"status": "finished", "timings": {"train_s": 3.0}})
    cb = SweepTime()
    cb.on_multirun_start(config=None)
    cb.on_multirun_end(config=OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    written = json.loads((tmp_path / "sweep_time.json").read_text())
    assert written["jobs"] == 1 and written["stage_s"] == {"train": 3.0} and written["wall_s"] >= 0


def test_a_sweep_run_again_in_its_dir_keeps_its_earlier_wall_times(tmp_path):
    """A walkthrough's sweep continued in its dir (ckpt_path=last_or_new) overwrote sweep_time.json with the
    last invocation's wall time alone: the earlier ones are kept in ``earlier_wall_s`` (oldest first), and an
    unreadable earlier file is no history."""
    job(tmp_path, 0, {"status": "finished", "timings": {"train_s": 3.0}})
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    (tmp_path / "sweep_time.json").write_text(json.dumps({"wall_s": 100.0, "earlier_wall_s": [40.0]}))
    cb = SweepTime()
    cb.on_multirun_start(config=None)
    cb.on_multirun_end(config=config)
    written = json.loads((tmp_path / "sweep_time.json").read_text())
    assert written["earlier_wall_s"] == [40.0, 100.0] and written["wall_s"] < 100.0
    (tmp_path / "sweep_time.json").write_text("{half")
    cb.on_multirun_end(config=config)
    assert "earlier_wall_s" not in json.loads((tmp_path / "sweep_time.json").read_text())


def test_sweep_time_ends_before_failed_jobs_can_exit():
    """Hydra runs end hooks in reverse order of the config: sweep_time must come after failed_jobs."""
    callbacks = list(OmegaConf.load(Path(CONFIG_DIR) / "hydra" / "default.yaml").callbacks)
    assert callbacks.index("sweep_time") > callbacks.index("failed_jobs")


def test_job_metrics_are_read_as_run_records(tmp_path):
    """Through RunRecord.from_json: a record of a newer schema, or a file that is not a record, is
    unreadable (never counted finished); older records and infalign-analyze's metrics (no version,
    no status) are finished; a failed record gives its status and the error's last line."""
    job(tmp_path, 0, {"version": 99, "status": "finished"})
    job(tmp_path, 1, ["not", "a", "record"])
    job(tmp_path, 2, {"procedure": "bon4", "kl_budgets": [0.1], "best_t": []})  # infalign-analyze
    job(tmp_path, 3, {"version": 1, "status": "failed", "error": "Traceback...\nValueError: boom"})
    assert job_failure(tmp_path / "0") == "unreadable metrics.json (RecordError)"
    assert job_failure(tmp_path / "1") == "unreadable metrics.json (RecordError)"
    assert job_failure(tmp_path / "2") is None
    assert job_failure(tmp_path / "3") == "failed: ValueError: boom"
    assert sweep_time_summary(tmp_path, wall_s=1.0)["finished"] == 1  # the analyze job only


def test_a_sweep_run_again_says_which_figures_are_the_kept_jobs(tmp_path):
    """A sweep run again in its dir with ckpt_path=last_or_new keeps its finished jobs: the end-of-sweep line gave
    their cache hits and stage minutes as this invocation's beside this invocation's wall time (sweep walkthrough:
    "12 jobs ... in 0.5 min wall; ... train 0.7" for a re-run that trained nothing). Records written before the
    invocation started count as kept, and the line says so and adds the earlier invocations' wall time."""
    import os
    import time

    from infalign.apps.hydra_callbacks import sweep_time_line

    job(tmp_path, 0, {"status": "finished", "timings": {"train_s": 30.0}, "cache": {"policy_hit": True}})
    job(tmp_path, 1, {"status": "finished", "timings": {"train_s": 12.0}})
    old = time.time() - 3600
    os.utime(tmp_path / "0" / "metrics.json", (old, old))
    s = sweep_time_summary(tmp_path, wall_s=6.0, since=time.time() - 60)
    assert s["kept"] == 1 and s["finished"] == 2
    assert s["policy_cache_hits"] == 0  # (the kept job's hit was its first invocation's: review)
    assert sweep_time_summary(tmp_path, wall_s=6.0)["policy_cache_hits"] == 1  # (no start known: every record's)
    line = sweep_time_line({**s, "earlier_wall_s": [114.0]})
    assert "2 finished, 1 of them kept from an earlier invocation" in line
    assert "0.1 min wall (this invocation; 2.0 over its 2 invocations" in line
    assert "summed over every record, the kept ones' included: train 0.7" in line
    assert sweep_time_summary(tmp_path, wall_s=6.0)["kept"] == 0  # (no start known: none counted kept)
    plain = sweep_time_line(sweep_time_summary(tmp_path, wall_s=6.0))
    assert "kept" not in plain and "invocation" not in plain


def test_a_sweep_of_records_without_stages_says_no_cache_or_stage_figures():
    """An infalign-analyze multirun (a walkthrough): its line spoke of trained policies loaded from the cache and
    ended in "job stage minutes summed: " with nothing after it."""
    from infalign.apps.hydra_callbacks import sweep_time_line

    line = sweep_time_line({"wall_s": 6.0, "jobs": 3, "finished": 3, "kept": 0, "policy_cache_hits": 0,
                            "eval_pool_hits": 0, "stage_s": {}})
    assert line == "sweep: 3 jobs (3 finished) in 0.1 min wall"
