"""The run record (pipeline/run_record.py): one schema for what infalign-train writes and what
infalign-report reads, versioned; the W&B summary derives from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infalign.math.procedures import BestOfN
from infalign.pipeline.run_record import CI, SCHEMA_VERSION, Evaluation, RecordError, RunRecord


def _ci(mean: float) -> dict:
    return {"mean": mean, "low": mean - 0.1, "high": mean + 0.1, "n_prompts": 8}


def finished_json() -> dict:
    """A finished record as metrics.json holds it (what train.run writes)."""
    judges = {j: {"kl": _ci(0.3), "standard_win_rate": _ci(0.6), "bon1_win_rate": _ci(0.6),
                  "bon4_win_rate": _ci(0.7)} for j in ("reward_model", "gold")}
    return {
        "version": SCHEMA_VERSION, "run_name": "bon4-identity-b0.3", "status": "finished", "procedure": "bon4",
        "transform": "identity", "method": "identity",
        "method_info": {"algo": "rloo", "transform": "identity", "depends_on_n": False, "trained_n": 4},
        "algo": "rloo", "beta": 0.3, "kl_target": None, "steps": 10, "seed": 1,
        "eval": {"judges": judges, "ns": [1, 4], "procedure": "bon", "reference_pool_cache_hit": True,
                 "policy_pool_cache_hit": False,
                 "per_prompt": {"prompt_ids": ["a"], "reward_model": {"kl": [0.3]}},
                 "miscalibration": {"n_prompts": 8, "reward_model": {"std_cv": 0.3}, "log_std_corr": 0.5},
                 "samples": [["p", "r"]],
                 "responses": {"policy": {"response_len_mean": 9.5, "eos_rate": 0.75},
                               "reference": {"response_len_mean": 7.25, "eos_rate": 1.0}},
                 "theory": {"beta": 0.3, "kl": 0.4, "standard_win_rate": 0.65, "bon4_win_rate": 0.75,
                            "bon1_win_rate": 0.65,
                            "at_measured_kl": {"kl": 0.3, "reachable": True, "standard_win_rate": 0.62,
                                               "bon4_win_rate": 0.72, "bon1_win_rate": 0.62}},
                 "sampler": None, "reward_cut": {"reference": 0.0, "policy": 0.25}},
        "kl_ratio": 0.75, "timings": {"train_s": 2.0}, "cache": {"policy_hit": False},
        "resumed": {"checkpoint": "run/checkpoints/last.ckpt", "from_step": 4,
                    "changed": {"torch": {"checkpoint": "2.12.0", "run": "2.13.0"}}},
        "offline": {"pairs": 8, "n": 4, "cut_best": 0, "cut_worst": 2},
        "code": {"training": "0123456789abcdef", "evaluation": "fedcba9876543210"},
        "world": {"reward_val_accuracy": 0.9}, "data_reports": None, "overrides": ["seed=1"], "config": {"seed": 1},
    }


def test_finished_record_round_trips_exactly():
    data = finished_json()
    rec = RunRecord.from_json(json.loads(json.dumps(data)))
    assert rec.finished and rec.version == SCHEMA_VERSION and isinstance(rec.eval, Evaluation)
    assert rec.eval.ci("gold", "bon4_win_rate") == CI(0.7, 0.7 - 0.1, 0.7 + 0.1, 8)
    assert rec.eval.ci("gold", BestOfN(4).metric_key(1)).mean == 0.6 and rec.eval.ci("gold", "nope") is None
    assert rec.to_json() == data  # every field, nothing added: writer and reader are one definition


def test_unfinished_record_has_only_what_is_known():
    rec = RunRecord(run_name="x", status="failed", error="ValueError: boom", timings={"world_s": 1.0},
                    overrides=["seed=0"], config={"seed": 0}, beta=0.3)
    assert rec.to_json() == {"version": SCHEMA_VERSION, "run_name": "x", "status": "failed",
                             "error": "ValueError: boom", "timings": {"world_s": 1.0}, "overrides": ["seed=0"],
                             "config": {"seed": 0}}
    assert "error" not in RunRecord(run_name="y").to_json()


def test_version_0_records_load_with_missing_fields_as_none():
    """Records written before the schema: no version, some fields absent (method, kl_target,
    eval.per_prompt), sometimes keys this schema does not have."""
    data = finished_json()
    for key in ("version", "method", "method_info", "kl_target"):
        data.pop(key)
    data["eval"].pop("per_prompt")
    data["retired_field"] = 1
    rec = RunRecord.from_json(data)
    assert rec.version == 0 and rec.method is None and rec.kl_target is None and rec.eval.per_prompt is None
    assert rec.eval.ci("reward_model", "kl").mean == 0.3 and RunRecord.from_json({}).status == "finished"


def test_version_1_records_load_without_response_statistics():
    """Version 1 predates ``eval.responses``: it loads as None, and the report's columns are empty."""
    from infalign.report.collect import Job
    from infalign.report.tables import job_row

    data = finished_json()
    data["version"] = 1
    data["eval"].pop("responses")
    data.pop("resumed"), data.pop("overrides")  # (version 3)
    rec = RunRecord.from_json(data)
    assert rec.version == 1 and rec.eval.responses is None and rec.resumed is None and rec.overrides is None
    assert not any(k.startswith("eval/policy") for k in rec.wandb_summary())
    row = job_row(Job(job="0", path=Path("0"), status="finished", record=rec, config={}), ["reward_model"])
    assert row["policy_eos_rate"] is None and row["reference_response_len_mean"] is None


def test_response_statistics_reach_the_summary_and_the_report_row():
    from infalign.report.collect import Job
    from infalign.report.tables import columns, job_row

    rec = RunRecord.from_json(finished_json())
    summary = rec.wandb_summary()
    assert summary["eval/policy/response_len_mean"] == 9.5 and summary["eval/reference/eos_rate"] == 1.0
    row = job_row(Job(job="0", path=Path("0"), status="finished", record=rec, config={}), ["reward_model"])
    assert (row["policy_response_len_mean"], row["policy_eos_rate"]) == (9.5, 0.75)
    assert (row["reference_response_len_mean"], row["reference_eos_rate"]) == (7.25, 1.0)
    assert set(row) == set(columns(["reward_model"]))


@pytest.mark.parametrize("data, message", [
    ({**finished_json(), "version": SCHEMA_VERSION + 1},
     rf"version={SCHEMA_VERSION + 1}.*versions 0 to {SCHEMA_VERSION}"),
    ({**finished_json(), "version": "1"}, r"version='1'"),
    ({**finished_json(), "retired_field": 1}, r"unknown field\(s\) \['retired_field'\]"),
    ([1, 2], r"metrics.json: expected a JSON object, got list"),
    ({"eval": {"judges": {"gold": {"kl": {"mean": 0.1}}}}}, r"eval\.judges\.gold\.kl: missing \['low', 'high'\]"),
    ({"eval": {"judges": {"gold": {"kl": {"mean": "x", "low": 0, "high": 1}}}}}, r"eval\.judges\.gold\.kl\.mean"),
    ({"beta": "0.3"}, r"beta: expected a number"),
])
def test_records_this_version_cannot_read_fail_with_the_reason(data, message):
    with pytest.raises(RecordError, match=message):
        RunRecord.from_json(data)


def test_wandb_summary_keys_derive_from_the_record():
    summary = RunRecord.from_json(finished_json()).wandb_summary()
    judge_keys = {f"eval/{j}/{c}{s}" for j in ("reward_model", "gold")
                  for c in ("kl", "standard_win_rate", "bon1_win_rate", "bon4_win_rate") for s in ("", "_low", "_high")}
    assert set(summary) == judge_keys | {
        "theory/beta", "theory/kl", "theory/standard_win_rate", "theory/bon4_win_rate", "theory/bon1_win_rate",
        *(f"theory/at_measured_kl/{k}" for k in ("kl", "reachable", "standard_win_rate", "bon1_win_rate",
                                                 "bon4_win_rate")),
        "world/reward_model/std_cv", "world/log_std_corr",  # counts (n_prompts) are not summary numbers
        "reward_model/val_accuracy", "eval/kl_ratio_to_theory",
        *(f"eval/{pool}/{stat}" for pool in ("policy", "reference") for stat in ("response_len_mean", "eos_rate"))}
    assert summary["eval/gold/bon4_win_rate_high"] == pytest.approx(0.8) and summary["theory/kl"] == 0.4
    assert RunRecord(status="failed").wandb_summary() == {}


def test_the_pipeline_writes_what_the_report_reads(tmp_path):
    """record.write_files (infalign-train's stage 4) and report.collect.load_job (infalign-report)
    agree on the file: the job is finished and carries the same record."""
    from infalign.pipeline.record import write_files
    from infalign.report.collect import load_job

    rec = RunRecord.from_json(finished_json())
    job_dir = tmp_path / "0"
    (job_dir / ".hydra").mkdir(parents=True)
    paths = write_files(job_dir, rec, BestOfN(4))
    assert paths["metrics"].exists() and paths["plot"].exists()
    job = load_job(job_dir, tmp_path)
    assert job.status == "finished" and job.record == rec and job.config == {"seed": 1}
    assert (job_dir / "eval_metrics.csv").read_text().count("\n") == 1 + 2 * 4  # header + judges x columns


def test_the_printed_summary_shows_the_response_statistics(capsys):
    from infalign.pipeline.record import print_summary

    print_summary(RunRecord.from_json(finished_json()), BestOfN(4))
    out = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal width
    assert ("responses: policy mean length 9.5 tokens, EOS rate 0.75; reference mean length 7.2 tokens, "
            "EOS rate 1.00") in out
    assert "reward model read cut at reward.max_length" in out and "policy 25.0% of samples; reference 0.0%" in out
    uncut = finished_json()
    uncut["eval"]["reward_cut"] = {"reference": 0.0, "policy": 0.0}
    print_summary(RunRecord.from_json(uncut), BestOfN(4))
    assert "read cut" not in capsys.readouterr().out


def test_an_evaluation_with_a_modified_sampler_is_recorded_and_printed_as_one(capsys, monkeypatch):
    """eval.sampler (version 5): the printed table's KL column is headed as the E_q log-ratio it is, and a line
    says what was not measured; a version-4 record loads with it None and prints a KL column."""
    from infalign.pipeline.record import print_summary

    monkeypatch.setenv("COLUMNS", "200")  # (rich wraps a header in a narrower table)

    data = finished_json()
    data["eval"]["sampler"], data["eval"]["theory"] = "eval.temperature=0.7", None
    rec = RunRecord.from_json(data)
    assert rec.eval.sampler == "eval.temperature=0.7" and RunRecord.from_json(rec.to_json()) == rec
    print_summary(rec, BestOfN(4))
    out = " ".join(capsys.readouterr().out.split())
    assert "E_q log-ratio (nats)" in out and "KL (nats)" not in out
    assert "evaluation sampled with eval.temperature=0.7, not the policy's own distribution" in out
    old = finished_json()
    old["version"] = 4
    old["eval"].pop("sampler"), old["eval"].pop("reward_cut")
    rec = RunRecord.from_json(old)
    assert rec.version == 4 and rec.eval.sampler is None
    print_summary(rec, BestOfN(4))
    out = " ".join(capsys.readouterr().out.split())
    assert "KL (nats)" in out and "evaluation sampled with" not in out

def test_a_view_that_fails_after_the_record_is_written_loses_nothing(tmp_path, monkeypatch, caplog):
    """metrics.json is written first; a plot that cannot be written (here: a directory in its place) is
    logged and left out of the paths, the run stays finished, and a stale failed attempt is removed."""
    from infalign.pipeline import record

    rec = RunRecord.from_json(finished_json())
    (tmp_path / "win_rates.png").mkdir()  # what the plot's path holds
    (tmp_path / record.FAILED_ATTEMPT).write_text("{}")
    paths = record.write_files(tmp_path, rec, BestOfN(4))
    assert "plot" not in paths and paths["csv"].exists()
    assert record.is_finished(paths["metrics"]) and not (tmp_path / record.FAILED_ATTEMPT).exists()
    assert "writing" in caplog.text and "win_rates.png" in caplog.text


def test_a_new_record_never_sits_beside_the_previous_runs_views(tmp_path, monkeypatch):
    """Review finding: a re-run whose views failed to be written left the previous run's
    eval_metrics.csv and win_rates.png beside its new metrics.json (and a kept re-run handed them to its
    logger as this run's). The old views go before the new record is written."""
    from infalign.pipeline import record

    rec = RunRecord.from_json(finished_json())
    record.write_files(tmp_path, rec, BestOfN(4))
    assert sorted(record.run_files(tmp_path)) == ["csv", "metrics", "plot"]

    def no_plot(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(record, "plot_win_rates", no_plot)
    monkeypatch.setattr(record, "atomic_write_csv", no_plot)
    paths = record.write_files(tmp_path, RunRecord.from_json({**finished_json(), "run_name": "again"}), BestOfN(4))
    assert sorted(paths) == sorted(record.run_files(tmp_path)) == ["metrics"]
    assert json.loads(paths["metrics"].read_text())["run_name"] == "again"


def test_a_failure_never_replaces_a_finished_record(tmp_path):
    """A refused resume in a finished run's dir (or a failure after the record): the finished results
    stay in metrics.json, the attempt's failure goes beside them, and a sweep lists the attempt as failed."""
    from infalign.apps.hydra_callbacks import job_failure
    from infalign.apps.train import write_failure
    from infalign.pipeline import record

    failed = RunRecord(run_name="x", status="failed", error="ConfigError: ckpt_path").to_json()
    assert write_failure(tmp_path, failed) == tmp_path / "metrics.json"  # nothing finished here: the record
    assert job_failure(tmp_path) == "failed: ConfigError: ckpt_path"
    (tmp_path / "metrics.json").write_text(json.dumps(finished_json()))
    assert job_failure(tmp_path) is None
    assert write_failure(tmp_path, failed) == tmp_path / record.FAILED_ATTEMPT
    assert json.loads((tmp_path / "metrics.json").read_text()) == finished_json()
    assert "this attempt failed: ConfigError: ckpt_path" in job_failure(tmp_path)
    odd = finished_json()
    odd["eval"]["ns"] = [[4]]  # a record the reader chokes on (TypeError): never raised from a failure handler
    (tmp_path / "metrics.json").write_text(json.dumps(odd))
    assert record.is_finished(tmp_path / "metrics.json") is False


def test_undefined_figures_are_written_as_json_null_and_read_back_as_missing(tmp_path):
    """A theory the grid cannot resolve (evaluate.theory_prediction: NaN), an undefined
    miscalibration statistic and an infinite one: metrics.json is strict JSON (no bare NaN /
    Infinity, which JavaScript, jq and most non-Python readers refuse) with ``null`` there, and the
    record read back leaves them out of the W&B summary and the report row instead of failing."""
    from infalign.pipeline.record import read_record, write_files
    from infalign.report.collect import Job
    from infalign.report.tables import job_row

    nan = float("nan")
    data = finished_json()
    theory = data["eval"]["theory"]
    theory.update(resolved=False, kl=nan, standard_win_rate=nan, bon4_win_rate=nan, bon1_win_rate=nan)
    data["eval"]["miscalibration"]["reward_model"]["std_cv"] = float("inf")
    data["eval"]["miscalibration"]["log_std_corr"] = nan
    data["world"]["reward_val_accuracy"] = nan
    data["kl_ratio"] = None
    paths = write_files(tmp_path, RunRecord.from_json(data), BestOfN(4))
    text = paths["metrics"].read_text()

    def refuse(constant: str):
        raise AssertionError(f"{constant} is not JSON")

    parsed = json.loads(text, parse_constant=refuse)  # what a strict reader sees
    assert parsed["eval"]["theory"]["kl"] is None and parsed["eval"]["theory"]["bon4_win_rate"] is None
    assert parsed["eval"]["miscalibration"]["reward_model"]["std_cv"] is None
    assert parsed["eval"]["theory"]["at_measured_kl"]["bon4_win_rate"] == 0.72  # finite values untouched
    rec = read_record(paths["metrics"])
    summary = rec.wandb_summary()
    assert "theory/kl" not in summary and "world/reward_model/std_cv" not in summary
    assert "world/log_std_corr" not in summary and "reward_model/val_accuracy" not in summary
    assert summary["theory/beta"] == 0.3 and summary["eval/gold/bon4_win_rate"] == 0.7
    row = job_row(Job(job="0", path=tmp_path, status="finished", record=rec, config={}), ["reward_model"])
    assert row["theory_kl_at_beta"] is None and row["kl_ratio"] is None


# ---------------------------------------------------------------- guards found by mutation testing


def test_wandb_summary_takes_each_bound_from_its_own_end_of_the_interval():
    """Pins ``eval/<judge>/<column>_low`` = ``ci.low`` and ``_high`` = ``ci.high`` (mutation testing: ``_low``
    was read from ``ci.high``; finished_json's symmetric intervals did not tell them apart for this
    check). Values are exact binary-representable floats: compared with ``==``."""
    rec = RunRecord(eval=Evaluation(judges={"rm": {"kl": CI(0.5, 0.25, 0.75)}}))
    summary = rec.wandb_summary()
    assert (summary["eval/rm/kl"], summary["eval/rm/kl_low"], summary["eval/rm/kl_high"]) == (0.5, 0.25, 0.75)


def test_a_boolean_is_not_a_number_in_a_record():
    """Pins ``_number``'s bool check: ``"beta": true`` (a bool is an int in Python) is a RecordError naming
    ``beta``, not beta = 1.0 (mutation testing: the ``isinstance(value, bool)`` test was dropped)."""
    with pytest.raises(RecordError, match=r"beta: expected a number, got True"):
        RunRecord.from_json({"version": SCHEMA_VERSION, "beta": True})


def test_kl_target_is_type_checked_like_beta():
    """Pins ``kl_target`` among the number fields from_json checks: a string ``"0.3"`` is a RecordError
    naming it (mutation testing: kl_target was left out of the checked keys and loaded as a str, which
    the report then compared with floats)."""
    with pytest.raises(RecordError, match=r"kl_target: expected a number, got '0\.3'"):
        RunRecord.from_json({"version": SCHEMA_VERSION, "kl_target": "0.3"})
    assert RunRecord.from_json({"version": SCHEMA_VERSION, "kl_target": 0.3}).kl_target == 0.3


def test_a_null_evaluation_field_reads_as_its_default():
    """Pins Evaluation.from_json dropping JSON ``null`` fields: ``"samples": null`` reads as the default
    ``[]`` (what a record cut by json_safe or written by hand may hold), not None, which a caller that
    slices or iterates the samples would choke on (mutation testing: the ``is not None`` filter was
    dropped)."""
    ev = Evaluation.from_json({"judges": {}, "samples": None, "ns": None})
    assert ev.samples == [] and ev.ns == [] and ev.judges == {}


def test_the_printed_miscalibration_line_names_a_custom_reward_as_such(capsys):
    """Numbers audit: a run on a custom reward (``reward=length``) printed "reward model across N prompts".
    The line names the entry's target; a reward model keeps its name."""
    from infalign.pipeline.record import print_summary

    data = finished_json()
    assert data["eval"]["miscalibration"]  # (the line is printed)
    print_summary(RunRecord.from_json(data), BestOfN(4))
    assert "reward model across" in " ".join(capsys.readouterr().out.split())
    data["config"] = {"reward": {"_target_": "length_scorer.LengthScorer"}}
    print_summary(RunRecord.from_json(data), BestOfN(4))
    out = " ".join(capsys.readouterr().out.split())
    assert "reward (length_scorer.LengthScorer) across" in out and "reward model across" not in out
