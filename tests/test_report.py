"""``infalign-report``: collecting a multirun dir (finished / failed / missing / broken jobs),
runs.csv / runs.md / summary.json contents, the theory overlay, the PNGs, W&B offline, and a
real tiny sweep end to end."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from forked_cli import BIN, ENV, finished, train_cli
from infalign.apps.report import main
from infalign.math import theory
from infalign.math.procedures import BestOfN
from infalign.math.transforms import Exp, Identity
from infalign.report import log_error, transform_family
from pipeline_helpers import TINY_RUN, TINY_WORLD

IDENTITY = {"_target_": "infalign.math.transforms.Identity"}
RAW = {"_target_": "infalign.math.transforms.Raw"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def exp_cfg(t: float, normalized: bool = False) -> dict:
    return {"_target_": "infalign.math.transforms.Exp", "t": t, "normalized": normalized}


def ci(mean: float, half: float) -> dict:
    return {"mean": mean, "low": mean - half, "high": mean + half, "n_prompts": 5}


def fake_metrics(tcfg: dict, label: str, beta: float, kl: float, std: float, win: float, *,
                 procedure: tuple[str, int] = ("bon", 4), logger: dict | None = None) -> dict:
    """A metrics.json as ``infalign-train`` writes it (finished run). Gold = reward model - 0.03."""
    name, n = procedure
    plabel = f"{name}{n}"
    judges = {}
    for judge, off in (("reward_model", 0.0), ("gold", -0.03)):
        judges[judge] = {"kl": ci(kl, 0.02), "standard_win_rate": ci(std + off, 0.1),
                         f"{name}1_win_rate": ci(std + off, 0.1), f"{name}2_win_rate": ci((std + win) / 2 + off, 0.1),
                         f"{plabel}_win_rate": ci(win + off, 0.15)}
    calibrated = tcfg["_target_"] != RAW["_target_"]
    th = {"beta": beta, "kl": 2 * kl, "standard_win_rate": 0.7, f"{plabel}_win_rate": 0.8,
          "at_measured_kl": {"kl": kl, "reachable": True, "standard_win_rate": 0.66, f"{plabel}_win_rate": 0.77}}
    family = label.split("(")[0]
    return {
        "run_name": f"{plabel}-{family}-b{beta:g}", "status": "finished", "procedure": plabel, "transform": label,
        "algo": "rloo", "beta": beta, "steps": 10, "seed": 0,
        "eval": {"judges": judges, "ns": [1, 2, n], "theory": th if calibrated else None,
                 "reference_pool_cache_hit": True, "samples": [["prompt", "response"]]},
        "kl_ratio": 0.5 if calibrated else None,
        "timings": {"world_s": 1.5, "calibration_s": 0.25, "train_s": 12.0, "eval_s": 3.0},
        "cache": {"toy_built": False, "calibration_hit": calibrated, "eval_reference_hit": True},
        "config": {"transform": tcfg, "seed": 0, "algo": {"name": "rloo", "beta": beta, "steps": 10},
                   "procedure": {"_target_": "infalign.math.procedures.make_procedure", "name": name, "n": n},
                   "logger": logger or {"kind": "none"}},
    }


def write_job(root: Path, job: str, overrides: list[str], metrics: dict | str | None = None,
              log: str | None = None) -> Path:
    d = root / job
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if isinstance(metrics, dict):
        (d / "metrics.json").write_text(json.dumps(metrics))
    elif isinstance(metrics, str):
        (d / "metrics.json").write_text(metrics)
    if log is not None:
        (d / "train.log").write_text(log)
    return d


TRACEBACK_LOG = """[2026-01-01 00:00:00,000][infalign.pipeline.pools][INFO] - drawing reference pool eval
[2026-01-01 00:00:01,000][infalign.apps.train][ERROR] - job failed; continuing the sweep
Traceback (most recent call last):
  File "/work/main/src/infalign/apps/train.py", line 229, in main
    metrics = run(cfg)
  File "/work/main/src/infalign/modules/ctrl.py", line 12, in training_step
    raise ValueError("boom at step 3")
ValueError: boom at step 3
"""


def make_sweep(root: Path, logger: dict | None = None) -> Path:
    common = ["eval.samples=4"]
    write_job(root, "0", ["transform=identity", "algo.beta=0.3", *common],
              fake_metrics(IDENTITY, "identity", 0.3, kl=0.25, std=0.62, win=0.70, logger=logger))
    write_job(root, "1", ["transform=identity", "algo.beta=0.1", *common],
              fake_metrics(IDENTITY, "identity", 0.1, kl=0.80, std=0.72, win=0.83, logger=logger))
    write_job(root, "2", ["transform=exp", "transform.t=2", "algo.beta=0.5", *common],
              fake_metrics(exp_cfg(2.0), "exp(t=2)", 0.5, kl=0.40, std=0.64, win=0.76, logger=logger))
    write_job(root, "3", ["transform=raw", "algo.beta=1.0", *common],
              fake_metrics(RAW, "raw", 1.0, kl=1.20, std=0.60, win=0.65, logger=logger))
    failed = {"run_name": "bon4-exp-t4-b0.2", "status": "failed", "timings": {"world_s": 1.0},
              "error": "RuntimeError: reward model diverged\nFloatingPointError: loss is nan at step 7",
              "config": fake_metrics(exp_cfg(4.0), "exp(t=4)", 0.2, 0, 0, 0)["config"]}
    write_job(root, "4", ["transform=exp", "transform.t=4", "algo.beta=0.2", *common], failed, log="ignored\n")
    write_job(root, "5", ["transform=exp", "transform.t=8", "algo.beta=0.2", *common], None, log=TRACEBACK_LOG)
    write_job(root, "6", ["transform=identity", "algo.beta=3", *common], '{"run_name": "bon4-ident')  # half-written
    (root / "7" / ".hydra").mkdir(parents=True)  # launched, nothing written yet
    return root


def run_main(*args: str) -> tuple[int, str]:
    buf = io.StringIO()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "250"  # rich tables unwrapped, so assertions see whole cells
    try:
        with contextlib.redirect_stdout(buf):
            rc = main([*args])
    finally:
        os.environ.pop("COLUMNS") if old is None else os.environ.__setitem__("COLUMNS", old)
    return rc, buf.getvalue()


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = make_sweep(tmp_path_factory.mktemp("multirun"))
    rc, out = run_main(str(root))
    assert rc == 0, out
    return root, root / "report", out


@pytest.mark.slow
def test_runs_csv_rows_values_and_statuses(sweep):
    root, out, _ = sweep
    rows = read_csv(out / "runs.csv")
    assert [r["job"] for r in rows] == [str(i) for i in range(8)]
    by = {r["job"]: r for r in rows}
    assert [by[j]["status"] for j in "01234567"] == ["finished"] * 4 + ["failed", "missing", "failed", "missing"]

    r0 = by["0"]
    assert (r0["family"], r0["t"], r0["transform"], r0["procedure"]) == ("identity", "", "identity", "bon4")
    assert float(r0["beta"]) == 0.3 and r0["algo"] == "rloo" and r0["inference_metric"] == "bon4_win_rate"
    assert float(r0["reward_model_kl"]) == 0.25
    assert float(r0["reward_model_kl_low"]) == pytest.approx(0.23)
    assert float(r0["reward_model_kl_high"]) == pytest.approx(0.27)
    assert float(r0["reward_model_standard_win_rate"]) == 0.62
    assert float(r0["reward_model_inference_win_rate"]) == 0.70
    assert float(r0["reward_model_inference_win_rate_low"]) == pytest.approx(0.55)
    assert float(r0["gold_inference_win_rate"]) == pytest.approx(0.67)
    assert float(r0["gold_standard_win_rate_high"]) == pytest.approx(0.69)
    assert float(r0["theory_inference_win_rate_at_measured_kl"]) == 0.77 and float(r0["kl_ratio"]) == 0.5
    assert float(r0["train_s"]) == 12.0 and r0["calibration_hit"] == "True" and r0["toy_built"] == "False"
    assert r0["overrides"] == "transform=identity algo.beta=0.3 eval.samples=4" and r0["error"] == ""

    assert (by["2"]["family"], float(by["2"]["t"]), by["2"]["transform"]) == ("exp", 2.0, "exp(t=2)")
    assert float(by["2"]["reward_model_kl"]) == 0.40 and float(by["2"]["reward_model_inference_win_rate"]) == 0.76
    assert by["3"]["family"] == "raw" and by["3"]["kl_ratio"] == "" and by["3"]["theory_kl_at_beta"] == ""

    # failed: the error's last line; family/t/beta from the config it recorded
    assert by["4"]["error"] == "FloatingPointError: loss is nan at step 7"
    assert (by["4"]["family"], float(by["4"]["t"]), float(by["4"]["beta"])) == ("exp", 4.0, 0.2)
    assert by["4"]["reward_model_kl"] == ""
    # missing: the exception line of train.log's traceback
    assert by["5"]["error"] == "train.log: ValueError: boom at step 3"
    assert by["5"]["overrides"].startswith("transform=exp transform.t=8")
    assert by["6"]["error"].startswith("unreadable metrics.json (JSONDecodeError")
    assert by["7"]["error"].startswith("no metrics.json") and by["7"]["overrides"] == ""


@pytest.mark.slow
def test_summary_lists_problems_and_theory_matches_the_engine(sweep):
    _, out, _ = sweep
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"finished": 4, "failed": 2, "interrupted": 0, "missing": 2, "duplicate": 0,
                                 "total": 8}
    assert summary["judges"] == ["reward_model", "gold"]
    problems = {p["job"]: p for p in summary["problems"]}
    assert set(problems) == {"4", "5", "6", "7"}
    assert problems["5"]["status"] == "missing" and "ValueError: boom at step 3" in problems["5"]["reason"]
    assert problems["5"]["overrides"] == ["transform=exp", "transform.t=8", "algo.beta=0.2", "eval.samples=4"]
    assert problems["4"]["reason"] == "FloatingPointError: loss is nan at step 7"
    assert summary["highest_inference_win_rate"]["reward_model"]["job"] == "1"
    # (runs at different KLs: the file says it is no comparison -- a walkthrough read it as one)
    assert "not a comparison" in summary["highest_inference_win_rate"]["reward_model"]["note"]
    assert summary["wandb"] is None and not (out / "wandb").exists()  # jobs used logger=none

    series = {s["label"]: s for s in summary["series"]}
    assert set(series) == {"identity", "exp(t=2)", "raw"}
    assert series["identity"]["jobs"] == ["0", "1"]
    assert [p["kl"] for p in series["identity"]["points"]["reward_model"]] == [0.25, 0.80]
    assert series["raw"]["theory"] == {"reward_model": None, "gold": None} and "raw" in series["raw"]["theory_note"]

    curve = series["identity"]["theory"]["reward_model"]
    kl = np.array(curve["kl"])
    assert len(kl) >= 20 and kl.min() <= 0.23 + 1e-12 and kl.max() >= 0.82 - 1e-12  # spans the measured KLs + CIs
    assert np.any(np.isclose(kl, 0.25)) and np.any(np.isclose(kl, 0.80))
    engine = theory.frontier(Identity(), BestOfN(4), kl)
    np.testing.assert_allclose(curve["win_rate"], engine.win_rate, rtol=1e-9)
    np.testing.assert_allclose(curve["standard_win_rate"], engine.standard_win_rate, rtol=1e-9)
    i = int(np.argmin(abs(kl - 0.25)))
    assert curve["win_rate"][i] == pytest.approx(theory.frontier(Identity(), BestOfN(4), [0.25]).win_rate[0], rel=1e-9)
    assert 0.5 < curve["win_rate"][0] < curve["win_rate"][-1] < 1  # increasing in KL

    assert series["identity"]["theory"]["gold"] is None  # the theory forecasts the reward model's win rates
    exp_curve = series["exp(t=2)"]["theory"]["reward_model"]
    np.testing.assert_allclose(exp_curve["win_rate"], theory.frontier(Exp(2.0), BestOfN(4), exp_curve["kl"]).win_rate,
                               rtol=1e-9)
    # at the same KL, exp(t=2) beats identity under best-of-4 (the point of InfAlign)
    assert np.interp(0.4, exp_curve["kl"], exp_curve["win_rate"]) > np.interp(0.4, kl, curve["win_rate"])


def test_plots_are_side_by_side_pngs(sweep):
    import matplotlib.image as mpimg

    _, out, _ = sweep
    for name in ("inference_win_rate_vs_kl.png", "standard_win_rate_vs_kl.png"):
        path = out / name
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert path.stat().st_size > 20_000
        img = mpimg.imread(path)
        assert img.shape[1] > 1.8 * img.shape[0]  # two judges side by side
        rgb = img[..., :3]
        assert rgb.std() > 0.05  # not blank
        # the series are drawn: identity in tab:blue, exp(t=2) in a red shade, raw in gray
        tab_blue = np.array([31, 119, 180]) / 255
        assert (np.abs(rgb - tab_blue).max(axis=-1) < 0.06).sum() > 300
        assert ((rgb[..., 0] > 0.6) & (rgb[..., 1] < 0.35) & (rgb[..., 2] < 0.35)).sum() > 100
    assert not list(out.glob(".*.tmp"))  # atomic writes left no temp files


def test_markdown_has_a_row_per_job_and_stdout_lists_problems(sweep):
    _, out, stdout = sweep
    md = (out / "runs.md").read_text()
    lines = md.splitlines()
    for job in "01234567":
        assert sum(ln.startswith(f"| {job} |") for ln in lines) == 1
    row0 = next(ln for ln in lines if ln.startswith("| 0 |"))
    assert "| finished |" in row0 and "0.250 [0.230, 0.270]" in row0 and "0.700 [0.550, 0.850]" in row0
    assert "FloatingPointError: loss is nan at step 7" in next(ln for ln in lines if ln.startswith("| 4 |"))
    assert "4 finished, 2 failed, 0 interrupted, 2 missing (8 jobs)" in md
    assert "failed, interrupted, missing and flagged jobs" in stdout and "ValueError: boom at step 3" in stdout
    assert "transform=exp transform.t=8 algo.beta=0.2 │" in stdout  # the missing job's swept overrides
    assert "eval.samples=4" not in stdout  # common to all jobs: not repeated in the table
    assert "reward_model: finished runs" in stdout and "gold: finished runs" in stdout
    assert str(out / "runs.csv") in stdout.replace("\n", "")


def test_judge_option_and_out_dir(tmp_path):
    root = make_sweep(tmp_path / "multirun")
    rc, _ = run_main(str(root), "--judge", "gold", "--out", str(tmp_path / "rep"), "--no-wandb")
    assert rc == 0 and not (root / "report").exists()
    rows = read_csv(tmp_path / "rep" / "runs.csv")
    assert "gold_kl" in rows[0] and "reward_model_kl" not in rows[0]
    assert float(rows[1]["gold_inference_win_rate"]) == pytest.approx(0.80)
    import matplotlib.image as mpimg

    img = mpimg.imread(tmp_path / "rep" / "inference_win_rate_vs_kl.png")
    assert img.shape[1] < 1.8 * img.shape[0]  # one subplot
    assert run_main(str(tmp_path / "nope"))[0] == 2
    (tmp_path / "empty").mkdir()
    assert run_main(str(tmp_path / "empty"))[0] == 2


def test_a_finished_job_whose_latest_attempt_failed_is_flagged(tmp_path):
    """Review finding: a job whose later attempt (a resume with more algo.steps, stopped by a time limit)
    failed beside its finished record was reported as finished with nothing said -- the sweep's own end
    (FailedJobs) listed it as failed. Its results stand (they are the earlier run's), flagged."""
    root = tmp_path / "multirun"
    write_job(root, "0", ["algo.beta=0.3"], fake_metrics(IDENTITY, "identity", 0.3, kl=0.25, std=0.62, win=0.70))
    d = write_job(root, "1", ["algo.beta=0.1"], fake_metrics(IDENTITY, "identity", 0.1, kl=0.8, std=0.72, win=0.83))
    (d / "metrics.failed.json").write_text(json.dumps({"status": "interrupted", "error": "Terminated: SIGTERM"}))
    rc, stdout = run_main(str(root), "--no-wandb")
    assert rc == 0
    rows = read_csv(root / "report" / "runs.csv")
    assert [r["status"] for r in rows] == ["finished", "finished"] and rows[0]["error"] == ""
    assert "earlier finished run" in rows[1]["error"] and "interrupted: Terminated: SIGTERM" in rows[1]["error"]
    problems = json.loads((root / "report" / "summary.json").read_text())["problems"]
    assert [p["job"] for p in problems] == ["1"]
    assert "flagged jobs" in (root / "report" / "runs.md").read_text() and "Terminated: SIGTERM" in stdout


def test_a_report_stopped_midway_leaves_none_of_the_previous_reports_files(tmp_path, monkeypatch):
    """Review finding: each file was written atomically but straight over the previous report's, so a
    report stopped in the bootstrap left the new runs table beside the old matched_kl.csv and summary.json
    (which infalign-paper's findings then read). The old files go first."""
    from infalign.report import build

    root = make_sweep(tmp_path / "multirun")
    assert run_main(str(root), "--no-wandb")[0] == 0
    out = root / "report"
    assert (out / "matched_kl.csv").is_file() and (out / "summary.json").is_file()
    (out / "notes.txt").write_text("the user's own")

    def stopped(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "compare_panels", stopped)
    with pytest.raises(KeyboardInterrupt):
        build.build_report(root, out)
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".png") == ["notes.txt", "runs.csv", "runs.md"]
    assert not (out / "gain_vs_kl.png").exists()


def test_points_keep_the_sign_of_a_value_that_rounds_to_zero():
    """Review finding: a seed interval's lower end of -0.00049 printed as "+0.0" ([+0.0, +5.5]: an interval
    that seemed to exclude 0, "not significant" beside it). Float noise stays +0.0."""
    from infalign.report.matched import points

    assert points(-0.0004) == "-0.0" and points(0.0004) == "+0.0" and points(-1e-12) == "+0.0"
    assert points(0.0) == points(-0.0) == "+0.0" and points(-0.021) == "-2.1" and points(None) == "–"


def test_transform_family_parsing():
    assert transform_family(IDENTITY) == ("identity", None)
    assert transform_family(RAW) == ("raw", None)
    assert transform_family(exp_cfg(8.0)) == ("exp", 8.0)
    assert transform_family(exp_cfg(-4.0, normalized=True)) == ("expn", -4.0)
    assert transform_family({"_target_": "infalign.math.transforms.Log", "floor": 1e-6}) == ("log", None)
    custom = {"_target_": "infalign.math.transforms.Custom", "fn": "numpy.sqrt", "name": "sqrt"}
    assert transform_family(custom) == ("sqrt", None)
    assert transform_family({"_target_": "infalign.math.theory.optimal_transform", "procedure": "bon", "n": 4,
                             "beta": 0.1}) == ("optimal", None)
    # without a config node the record's label is the family as is: labels are never parsed back
    assert transform_family(None, "expn(t=-2)") == ("expn(t=-2)", None)
    assert transform_family(None, "identity") == ("identity", None) and transform_family(None) == ("unknown", None)


def test_log_error_takes_the_last_traceback(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(TRACEBACK_LOG + "\nDuring handling of the above exception, another exception occurred:\n\n"
                   "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
                   "KeyError: 'eval'\n[2026][x][INFO] - after\n")
    assert log_error(log) == "KeyError: 'eval'"
    log.write_text("[2026][x][INFO] - fine\n")
    assert log_error(log) == ""
    assert log_error(tmp_path / "absent.log") == ""


@pytest.mark.slow  # W&B starts its service process
def test_wandb_offline_report_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    logger = {"kind": "wandb", "project": "infalign", "entity": None, "group": "sweep-a", "job_type": "train",
              "offline": True}
    root = tmp_path / "multirun"
    write_job(root, "0", ["transform=identity"],
              fake_metrics(IDENTITY, "identity", 0.3, 0.25, 0.62, 0.70, logger=logger))
    write_job(root, "1", ["transform=exp"], fake_metrics(exp_cfg(4.0), "exp(t=4)", 0.3, 0.5, 0.66, 0.8, logger=logger))
    rc, stdout = run_main(str(root))  # W&B on by default: the jobs used logger=wandb
    assert rc == 0
    runs = list((root / "report" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert not (tmp_path / "wandb_dir").exists() or not list((tmp_path / "wandb_dir").rglob("offline-run-*"))
    files = {p.relative_to(runs[0]).as_posix() for p in runs[0].rglob("*") if p.is_file()}
    assert any(f.endswith(".wandb") for f in files)
    assert any("media/table/runs" in f for f in files)  # the runs table
    assert sum("media/images/plots" in f and f.endswith(".png") for f in files) == 3  # win rates x2, gain vs KL
    assert any("media/table/matched_kl" in f for f in files) and any("media/table/theory_gap" in f for f in files)
    table = json.loads(next(runs[0].rglob("runs_*.table.json")).read_text())
    assert table["columns"][:3] == ["job", "status", "run_name"] and len(table["data"]) == 2
    summary = json.loads((root / "report" / "summary.json").read_text())
    assert summary["wandb"]["group"] == "sweep-a" and summary["wandb"]["mode"] == "offline"
    assert Path(summary["wandb"]["run_dir"]) == runs[0]
    # review finding (W&B): each report built again added another run named "report" to the group; it now
    # continues its own run (one id per report dir and group; the offline runs sync into one)
    assert run_main(str(root))[0] == 0
    again = sorted((root / "report" / "wandb").glob("offline-run-*"))
    assert len(again) == 2 and len({r.name.rsplit("-", 1)[1] for r in again}) == 1


@pytest.mark.slow
def test_real_tiny_sweep_end_to_end(tmp_path, tiny_cache):
    sweep_dir = tmp_path / "sweep"
    # the console script (forked from test_faults' pre-imported zygote: forked_cli), then the report's
    code, out, err = finished(train_cli("-m", "transform=identity,exp", "algo.beta=0.3", *TINY_WORLD, *TINY_RUN,
                                        f"paths.cache_dir={tiny_cache}", f"hydra.sweep.dir={sweep_dir}",
                                        cwd=tmp_path), timeout=900)
    assert code == 0, out[-3000:] + err[-3000:]
    rep = subprocess.run([str(BIN / "infalign-report"), str(sweep_dir)], capture_output=True, text=True, env=ENV,
                         timeout=300)
    assert rep.returncode == 0, rep.stdout[-3000:] + rep.stderr[-3000:]
    rows = read_csv(sweep_dir / "report" / "runs.csv")
    assert [(r["job"], r["status"]) for r in rows] == [("0", "finished"), ("1", "finished")]
    for r in rows:
        m = json.loads((sweep_dir / r["job"] / "metrics.json").read_text())
        assert r["run_name"] == m["run_name"] and r["transform"] == m["transform"]
        assert float(r["beta"]) == m["beta"] and r["procedure"] == m["procedure"] == "bon4"
        for judge in ("reward_model", "gold"):
            cols = m["eval"]["judges"][judge]
            assert float(r[f"{judge}_kl"]) == cols["kl"]["mean"]
            assert float(r[f"{judge}_kl_low"]) == cols["kl"]["low"]
            assert float(r[f"{judge}_standard_win_rate"]) == cols["standard_win_rate"]["mean"]
            assert float(r[f"{judge}_inference_win_rate"]) == cols["bon4_win_rate"]["mean"]
            assert float(r[f"{judge}_inference_win_rate_high"]) == cols["bon4_win_rate"]["high"]
    assert [r["family"] for r in rows] == ["identity", "exp"] and float(rows[1]["t"]) == 4.0
    summary = json.loads((sweep_dir / "report" / "summary.json").read_text())
    assert summary["counts"]["finished"] == 2 and summary["wandb"] is None
    for png in ("inference_win_rate_vs_kl.png", "standard_win_rate_vs_kl.png"):
        assert (sweep_dir / "report" / png).read_bytes()[:8] == PNG_MAGIC
    assert "finished runs" in rep.stdout


# ----------------------------------------------------------------------------------------------
# Matched KL end to end: records with eval.per_prompt (and one old record without)
# ----------------------------------------------------------------------------------------------

N_PROMPTS = 40
PROMPT_IDS = [f"prompt-{i}" for i in range(N_PROMPTS)]
GAIN_BON4 = 0.06  # expn(t=4) over identity on bon4, at every KL, under both judges


def per_prompt_metrics(method: str, info: dict, kl: float, beta: float, gain: dict[str, float], *,
                       ids=None, seed: int = 0) -> dict:
    """A finished run's metrics.json with ``eval.per_prompt`` (bon family, ns 1, 2, 4): per prompt
    ``k_p = kl (1 + z_p)`` and win rates ``0.55 + 0.2 k_p + gain[col] + d_p`` with zero-mean
    ``z``, ``d`` shared by every run (the same prompts), so each method's curve is the line
    ``0.55 + 0.2 KL + gain[col]``. Means, and CIs of +-0.05, are the per-prompt lists' means."""
    rng = np.random.default_rng(7)
    z, d = rng.normal(0, 0.1, N_PROMPTS), rng.normal(0, 0.1, N_PROMPTS)
    z, d = z - z.mean(), d - d.mean()
    kp = kl * (1 + z)
    judges, per_prompt = {}, {"prompt_ids": list(ids or PROMPT_IDS)}
    for judge in ("reward_model", "gold"):
        cols = {"kl": kp}
        for col in ("standard_win_rate", "bon1_win_rate", "bon2_win_rate", "bon4_win_rate"):
            cols[col] = 0.55 + 0.2 * kp + gain.get(col, 0.0) + d
        per_prompt[judge] = {k: v.tolist() for k, v in cols.items()}
        judges[judge] = {k: {"mean": float(v.mean()), "low": float(v.mean()) - 0.05, "high": float(v.mean()) + 0.05,
                             "n_prompts": N_PROMPTS} for k, v in cols.items()}
    tcfg = {"identity": IDENTITY, "raw": RAW}.get(method, exp_cfg(4.0, normalized=True))
    theory_at = {"kl": kl, "reachable": True, "standard_win_rate": 0.60, "bon2_win_rate": 0.65, "bon4_win_rate": 0.70}
    return {
        "run_name": f"bon4-{method}-b{beta:g}", "status": "finished", "procedure": "bon4",
        "transform": info["transform"] or "exp(t=4)", "algo": info["algo"], "beta": beta, "steps": 10, "seed": seed,
        "method": method, "method_info": info,
        "eval": {"procedure": "bon", "ns": [1, 2, 4], "judges": judges, "per_prompt": per_prompt,
                 "theory": None if method == "raw" else {"beta": beta, "kl": 2 * kl, "standard_win_rate": 0.7,
                                                         "bon4_win_rate": 0.8, "at_measured_kl": theory_at}},
        "config": {"transform": tcfg, "seed": seed, "algo": {"name": info["algo"], "beta": beta, "steps": 10},
                   "procedure": {"_target_": "infalign.math.procedures.make_procedure", "name": "bon", "n": 4},
                   "logger": {"kind": "none"}},
    }


def make_matched_sweep(root: Path) -> Path:
    def info(transform, depends_on_n=False, trained_n=4, algo="rloo"):
        return {"algo": algo, "transform": transform, "depends_on_n": depends_on_n, "trained_n": trained_n}

    job = 0
    specs = [("raw", info("raw"), [0.10, 0.40, 0.90], {"bon4_win_rate": -0.01}),
             ("identity", info("identity"), [0.15, 0.50, 1.00], {}),
             ("expn(t=4)", info("expn(t=4)"), [0.20, 0.60, 1.10], {"bon4_win_rate": GAIN_BON4}),
             ("optimal(N=2)", info("optimal(N=2)", True, 2), [0.10, 1.20], {"bon2_win_rate": 0.03})]
    for method, inf, kls, gain in specs:
        for kl in kls:
            beta = round(0.1 / kl, 3)
            write_job(root, str(job), [f"method={method}", f"algo.beta={beta}"],
                      per_prompt_metrics(method, inf, kl, beta, gain))
            job += 1
    old = fake_metrics(IDENTITY, "identity", 0.3, kl=0.3, std=0.6, win=0.7)  # recorded before per_prompt
    write_job(root, str(job), ["transform=identity", "algo.beta=0.3"], old)
    other = per_prompt_metrics("identity", info("identity"), 0.3, 0.33, {}, ids=[f"q{i}" for i in range(N_PROMPTS)])
    write_job(root, str(job + 1), ["transform=identity", "algo.beta=0.33"], other)  # another world's prompts
    return root


@pytest.fixture(scope="module")
def matched_sweep(tmp_path_factory):
    root = make_matched_sweep(tmp_path_factory.mktemp("matched"))
    rc, out = run_main(str(root), "--no-wandb")
    assert rc == 0, out
    return root, root / "report", out


@pytest.mark.slow
def test_matched_kl_csv_recovers_the_known_gains(matched_sweep):
    _, out, _ = matched_sweep
    rows = read_csv(out / "matched_kl.csv")
    panels = {(r["panel"], r["judge"]) for r in rows}
    assert panels == {(p, j) for p in ("standard", "bon2", "bon4") for j in ("reward_model", "gold")}
    bon4 = [r for r in rows if r["panel"] == "bon4" and r["judge"] == "reward_model"]
    kls = sorted({float(r["kl"]) for r in bon4})
    # common KLs: the intersection of raw [0.1, 0.9], identity [0.15, 1.0], expn [0.2, 1.1]
    np.testing.assert_allclose(kls, np.linspace(0.2, 0.9, 6))
    assert {r["method"] for r in bon4} == {"raw", "identity", "expn(t=4)"}  # optimal(N=2) trained for N=2 only
    gains = [r for r in bon4 if r["method"] == "expn(t=4)" and r["baseline"] == "identity"]
    assert len(gains) == 6
    for r in gains:  # noiseless lines with shared prompt difficulty: the paired CI collapses on the gain
        assert float(r["gain"]) == pytest.approx(GAIN_BON4, abs=1e-9)
        assert float(r["gain_low"]) == pytest.approx(GAIN_BON4, abs=1e-9) and r["prompt_significant"] == "True"
        assert r["significant"] == "False" and r["total_low"] == ""  # one seed per method: no verdict
        assert float(r["win_rate"]) == pytest.approx(0.55 + 0.2 * float(r["kl"]) + GAIN_BON4, abs=1e-9)
        assert r["n_seeds"] == "1" and r["n_runs"] == "3" and r["n_prompts"] == str(N_PROMPTS)
    ident_raw = [r for r in bon4 if r["method"] == "identity" and r["baseline"] == "raw"]
    assert all(float(r["gain"]) == pytest.approx(0.01, abs=1e-9) for r in ident_raw)
    assert not [r for r in bon4 if r["method"] == "raw" and r["baseline"] == "identity"]
    bon2 = [r for r in rows if r["panel"] == "bon2" and r["judge"] == "gold" and r["baseline"] == "identity"]
    assert {r["method"] for r in bon2} == {"expn(t=4)", "optimal(N=2)"}  # raw - identity: not computed
    assert all(float(r["gain"]) == pytest.approx(0.03, abs=1e-9) for r in bon2 if r["method"] == "optimal(N=2)")
    std = [r for r in rows if r["panel"] == "standard" and r["baseline"]]
    assert std and all(float(r["gain"]) == pytest.approx(0.0, abs=1e-9) and r["significant"] == "False" for r in std)


@pytest.mark.slow
def test_matched_kl_markdown_png_summary_and_notes(matched_sweep):
    import matplotlib.image as mpimg

    root, out, stdout = matched_sweep
    md = (out / "matched_kl.md").read_text()
    assert "## bon4 (reward_model): `bon4_win_rate`, 40 prompts" in md
    assert "job 11 (identity): no per-prompt statistics" in md  # the old record: shown, not compared
    assert "excluded job 12: identity: prompt_ids differ from the panel's 40 prompts" in md
    row = next(ln for ln in md.split("## bon4 (reward_model)")[1].splitlines() if ln.startswith("| 0.2 |"))
    cells = [c.strip() for c in row.strip("| ").split(" | ")]
    head = "| KL | expn(t=4) (n=3, seeds=1) | identity (n=3, seeds=1) | raw (n=3, seeds=1) |"
    assert md.count(head) == 2  # bon4 x 2 judges
    # a policy trained for N = 2 has a standard win rate too: it joins the standard panels
    standard = md.split("## standard (reward_model)")[1].split("## ")[0]
    header = next(ln for ln in standard.splitlines() if ln.startswith("| KL |"))
    assert "optimal(N=2)" in header and "optimal(N=2)" not in md.split("## bon4 (reward_model)")[1]
    # 1 seed: no `*`; the theory's gain where both methods have a calibrated-space theory (not raw's)
    assert cells[4:] == ["+7.0 [+7.0, +7.0]", "+1.0 [+1.0, +1.0]", "+6.0 [+6.0, +6.0] (theory +4.7)"]
    mean, low, high = (float(x) for x in cells[1].replace("[", "").replace("]", "").replace(",", "").split())
    # expn at KL 0.2: 0.55 + 0.04 + 0.06; its CI is the prompt difficulty's: +-1.96 * 0.1 / sqrt(40) = +-0.031
    assert mean == 0.650 and high - low == pytest.approx(2 * 1.96 * 0.1 / np.sqrt(N_PROMPTS), rel=0.2)
    flat = " ".join(stdout.split())
    bon4 = flat.split("bon4 (reward_model): 6 common KLs in [0.20, 0.90]; at KL 0.62:")[1].split("bon4 (gold)")[0]
    assert ("expn(t=4) is ahead of identity on these prompts: +6.0 [+6.0, +6.0] points (1 seed each: training "
            "noise not assessed, no verdict)") in bon4
    assert "identity is ahead of raw on these prompts: +1.0 [+1.0, +1.0] points" in bon4
    # a run left out of a panel is said on the console and in the summary, not only in matched_kl.md
    assert "identity: 1 run left out: prompt_ids differ from the panel's 40 prompts" in bon4
    std = flat.split("standard (gold): 6 common KLs in [0.20, 0.90]; at KL 0.62:")[1].split("bon2")[0]
    assert "identity does not clearly differ from raw on these prompts: +0.0 [+0.0, +0.0] points" in std
    lines = json.loads((out / "summary.json").read_text())["matched_kl"]["lines"]
    assert ("bon4 (gold): 6 common KLs in [0.20, 0.90]; at KL 0.62, identity is ahead of raw on these prompts: "
            "+1.0 [+1.0, +1.0] points (1 seed each: training noise not assessed, no verdict)") in lines
    assert "bon4 (gold): identity: 1 run left out: prompt_ids differ from the panel's 40 prompts" in lines
    img = mpimg.imread(out / "gain_vs_kl.png")
    assert 0.8 < img.shape[0] / img.shape[1] < 1.2 and img[..., :3].std() > 0.05  # 3 panel rows x 2 judges
    summary = json.loads((out / "summary.json").read_text())
    assert summary["matched_kl"]["lines"] and summary["matched_kl"]["notes"][0].startswith("job 11")
    assert {s["label"] for s in summary["series"]} == {"raw", "identity", "expn(t=4)", "optimal(N=2)"}
    runs = {r["job"]: r for r in read_csv(out / "runs.csv")}
    assert runs["3"]["method"] == "identity" and runs["11"]["method"] == "identity"


def test_theory_gap_table_and_median_per_method(matched_sweep):
    _, out, stdout = matched_sweep
    rows = read_csv(out / "theory_gap.csv")
    assert not [r for r in rows if r["method"] == "raw"]  # no calibrated-space theory for raw
    r = next(r for r in rows if r["job"] == "3" and r["metric"] == "bon4_win_rate")  # identity at KL 0.15
    measured = 0.55 + 0.2 * 0.15  # the line at the run's mean KL (d and z are zero-mean)
    assert float(r["measured"]) == pytest.approx(measured, abs=1e-9)
    assert float(r["gap"]) == pytest.approx(measured - 0.70, abs=1e-9)
    assert float(r["kl_ratio"]) == pytest.approx(0.5) and float(r["kl_theory_at_beta"]) == pytest.approx(0.3)
    assert {x["metric"] for x in rows if x["job"] == "3"} == {"standard_win_rate", "bon2_win_rate", "bon4_win_rate"}
    gap = json.loads((out / "summary.json").read_text())["theory_gap"]
    # identity's bon4 |gaps|: KL 0.15, 0.5, 1.0 -> |0.58 - 0.70|, |0.65 - 0.70|, |0.75 - 0.70|; the other
    # prompts' run at 0.3 -> |0.61 - 0.70|; the old record (fake_metrics) |0.70 - 0.77|: median 0.07
    assert gap["identity"]["median_abs_gap"]["bon4_win_rate"] == pytest.approx(0.07, abs=1e-9)
    assert gap["identity"]["runs"] == 5
    assert gap["identity"]["median_kl_ratio"] == pytest.approx(0.5)
    # KL ratio 0.5 < 0.9: the diagnosis names the runs as under-tilted, in summary, markdown and stdout
    assert "under_tilted" in gap["identity"]["limits"]
    md = (out / "theory_gap.md").read_text()
    assert "| identity | 5 |" in md and gap["identity"]["reading"] in md
    assert "distance from theory" in stdout and "under-tilted" in stdout


def test_pooled_runs_get_no_theory_curve_or_gap(tmp_path):
    """A pooled-calibration run (calibration.scope=pooled) is not uniform within a prompt, so the
    report neither draws the identity theory beside it nor measures its distance from that theory --
    also for records written while the run still carried one. Control: the same record per prompt."""
    from infalign.report.collect import collect
    from infalign.report.series import build_series
    from infalign.report.tables import job_row
    from infalign.report.theory_gap import theory_gap_rows

    info = {"algo": "rloo", "transform": "identity", "depends_on_n": False, "trained_n": 4}
    for scope in ("pooled", "prompt"):
        metrics = per_prompt_metrics("identity", info, 0.3, 0.3, {})
        metrics["config"]["calibration"] = {"scope": scope}
        write_job(tmp_path / scope, "0", ["method=identity"], metrics)
        jobs = collect(tmp_path / scope)
        rows, (series,) = theory_gap_rows(jobs), build_series(jobs, ["reward_model"])
        row = job_row(jobs[0], ["reward_model"])  # runs.csv's theory columns too (review finding)
        if scope == "pooled":
            assert rows == [] and series.theory == {"reward_model": None} and "pooled" in series.theory_note
            assert row["theory_kl_at_beta"] is None
        else:
            assert rows and series.theory["reward_model"] is not None and series.theory_note == ""
            assert row["theory_kl_at_beta"] is not None


@pytest.mark.parametrize("where", ["config", "record"])
def test_runs_evaluated_with_a_modified_sampler_get_no_theory_curve_gap_or_gain(tmp_path, where):
    """eval.temperature != 1 (or eval.top_k, eval.top_p < 1) samples another distribution q than the policy's:
    its KL column is E_q[log pi - log pi_ref] and its win rates are q's, so the report draws no theory beside
    it, measures no distance from theory and puts no theory gain beside its gains (docs/method.md (7.3)) --
    read from the record's eval.sampler (version 5) or, for older records that still carry a theory, from
    the config. Control: the same record evaluated at temperature 1."""
    from infalign.report.collect import collect
    from infalign.report.series import build_series, theory_transform
    from infalign.report.tables import job_row
    from infalign.report.theory_gap import theory_gap_rows

    info = {"algo": "rloo", "transform": "identity", "depends_on_n": False, "trained_n": 4}
    for temperature in (0.7, 1.0):
        metrics = per_prompt_metrics("identity", info, 0.3, 0.3, {})
        metrics["config"]["eval"] = {"temperature": temperature if where == "config" else 1.0, "top_k": None,
                                     "top_p": 1.0}
        if where == "record" and temperature != 1.0:
            metrics["eval"]["sampler"] = f"eval.temperature={temperature:g}"
        root = tmp_path / f"t{temperature}"
        write_job(root, "0", ["method=identity"], metrics)
        jobs = collect(root)
        rows, (series,) = theory_gap_rows(jobs), build_series(jobs, ["reward_model"])
        transform, why = theory_transform(jobs[0])
        row = job_row(jobs[0], ["reward_model"])
        if temperature != 1.0:
            assert rows == [] and series.theory == {"reward_model": None} and transform is None
            assert series.theory_note == why and "evaluated with eval.temperature=0.7" in why
            assert row["theory_kl_at_beta"] is None and row["kl_ratio"] is None  # runs.csv too (review finding)
        else:
            assert rows and series.theory["reward_model"] is not None and transform is not None and why == ""
            assert row["theory_kl_at_beta"] is not None

def test_a_run_evaluated_with_a_modified_sampler_is_named_as_such_and_no_pointer_of_the_report(tmp_path):
    """Custom-reward walkthrough: beside runs evaluated at temperature 1, a run at eval.temperature=0.7 was left out
    of the matched-KL comparison as "another world (world_id X [eval.temperature=0.7], the report's X)" -- the ids
    equal -- and summary.json's highest win rate pointed at it. It is "another evaluation", and the pointer names
    a run of the report's own world and evaluation."""
    from infalign.report.matched import panel_runs
    from infalign.report.tables import job_row, make_summary

    jobs = _eval_temperature_jobs(tmp_path, [(0.2, 1.0, 0.0), (0.4, 1.0, 0.0), (0.3, 0.7, 0.2)])
    _, notes = panel_runs(jobs, ["reward_model"])
    assert notes == ["job 2 (identity): another evaluation (eval.temperature=0.7; the report's runs are evaluated "
                     "otherwise): left out of the matched-KL comparison"]
    rows = [job_row(j, ["reward_model"]) for j in jobs]
    summary = make_summary(tmp_path, tmp_path / "report", ["reward_model"], jobs, rows, [], {})
    assert summary["highest_inference_win_rate"]["reward_model"]["job"] == "1"  # not job 2, the highest of all


def _eval_temperature_jobs(tmp_path, runs):
    """Finished identity runs of world w1, one per ``(kl, eval.temperature, bon4 gain)``, collected and noted."""
    from infalign.report.collect import collect
    from infalign.report.naming import mark_odd_settings

    info = {"algo": "rloo", "transform": "identity", "depends_on_n": False, "trained_n": 4}
    for job, (kl, temperature, gain) in enumerate(runs):
        metrics = per_prompt_metrics("identity", info, kl, 0.3, {"bon4_win_rate": gain})
        metrics["config"]["eval"] = {"temperature": temperature, "top_k": None, "top_p": 1.0}
        metrics["world"] = {"world_id": "w1"}
        write_job(tmp_path, str(job), [], metrics)
    jobs = collect(tmp_path)
    mark_odd_settings(jobs)
    return jobs


def test_a_sweep_over_two_eval_temperatures_keeps_the_policys_own_sampler_as_the_reports(tmp_path):
    """Review finding: with as many runs at eval.temperature 1.0 as at 0.7 both are noted, and the main world was
    the first key alphabetically -- the modified sampler's: the T = 1 runs were "another world" and the summary's
    pointer named a T = 0.7 run. The policy's own sampler wins the tie; the others are another evaluation."""
    from infalign.report.matched import panel_runs
    from infalign.report.naming import comparison_worlds
    from infalign.report.tables import job_row, make_summary

    jobs = _eval_temperature_jobs(tmp_path, [(0.2, 1.0, 0.0), (0.4, 1.0, 0.0), (0.2, 0.7, 0.2), (0.4, 0.7, 0.2)])
    _, main = comparison_worlds(jobs)
    assert main == "w1 [eval.temperature=1.0]"
    _, notes = panel_runs(jobs, ["reward_model"])
    assert [n.split(";")[0] for n in notes] == [f"job {j} (identity): another evaluation (eval.temperature=0.7"
                                                for j in (2, 3)]
    rows = [job_row(j, ["reward_model"]) for j in jobs]
    summary = make_summary(tmp_path, tmp_path / "report", ["reward_model"], jobs, rows, [], {})
    assert summary["highest_inference_win_rate"]["reward_model"]["job"] == "1"

def test_another_world_is_named_by_the_overrides_that_choose_it(tmp_path):
    """Custom-reward walkthrough: a sweep over reward=length_proxy,toy labelled the toy reward's runs "identity
    [world 68ce09f28e62080e]". A world the runs' own overrides of reward / policy / data / experiment tell apart
    is named by them, in series labels and the left-out note; one they do not tell apart keeps its key."""
    from infalign.report.collect import collect
    from infalign.report.matched import panel_runs
    from infalign.report.series import build_series

    info = {"algo": "rloo", "transform": "identity", "depends_on_n": False, "trained_n": 4}
    for job, (kl, reward, world) in enumerate([(0.2, "length", "A"), (0.4, "length", "A"), (0.3, "toy", "B"),
                                               (0.5, "toy", "B"), (0.3, "length", "C")]):
        metrics = per_prompt_metrics("identity", info, kl, 0.3, {})
        metrics["world"] = {"world_id": world}
        overrides = [f"reward={reward}", f"algo.kl_target={kl}"] + (["data.toy.seed=3"] if world == "C" else [])
        write_job(tmp_path, str(job), overrides, metrics)
    jobs = collect(tmp_path)
    labels = sorted(s.label for s in build_series(jobs, ["reward_model"]))
    assert labels == ["identity", "identity [data.toy.seed=3]", "identity [reward=toy]"]  # (reward=length: main's)
    _, notes = panel_runs(jobs, ["reward_model"])
    assert [n.split(" (world_id")[0] for n in notes] == ["job 2 (identity): another world (reward=toy)",
                                                         "job 3 (identity): another world (reward=toy)",
                                                         "job 4 (identity): another world (data.toy.seed=3)"]

def test_runs_of_another_world_are_left_out_of_the_matched_kl_comparison(tmp_path):
    """Toy prompts depend on the toy seed only, so runs of another world (other toy parameters or
    models) share prompt ids: the report compares the runs of the world most of them share and notes
    the others; records without a world id are kept."""
    from infalign.report.collect import collect
    from infalign.report.matched import panel_runs

    info = {"algo": "rloo", "transform": "identity", "depends_on_n": False, "trained_n": 4}
    for job, (kl, world) in enumerate([(0.1, "A"), (0.3, "A"), (0.5, "B"), (0.7, None)]):
        metrics = per_prompt_metrics("identity", info, kl, round(0.1 / kl, 3), {})
        if world is not None:
            metrics["world"] = {"world_id": world, "toy_key": "k" + world}
        write_job(tmp_path, str(job), ["method=identity"], metrics)
    panels, notes = panel_runs(collect(tmp_path), ["reward_model"])
    assert {r.label for runs in panels.values() for r in runs} == {"0", "1", "3"}
    assert len(notes) == 1 and notes[0].startswith("job 2 (identity): another world (world_id B")
    # a record of world A written before world_id existed (toy_key only) is world A, not a third world
    metrics = per_prompt_metrics("identity", info, 0.9, round(0.1 / 0.9, 3), {})
    metrics["world"] = {"toy_key": "kA"}
    write_job(tmp_path, "4", ["method=identity"], metrics)
    panels, notes = panel_runs(collect(tmp_path), ["reward_model"])
    assert {r.label for runs in panels.values() for r in runs} == {"0", "1", "3", "4"}
    assert len(notes) == 1 and notes[0].startswith("job 2 (identity): another world (world_id kB")


def test_one_policy_evaluated_in_two_sweeps_is_one_point_of_the_panels_they_share(tmp_path):
    """A procedure-free method (identity) trained once and evaluated in a bon sweep and again in a won sweep
    (its policy served from the cache) gives the standard panel the same per-prompt values twice: one
    measurement, kept once with a note -- not two points of its curve, nor a second run in its counts. A run
    of the same method at another KL is kept. Fails with the dedupe removed (three standard runs)."""
    from infalign.report.collect import collect
    from infalign.report.matched import panel_runs

    info = {"algo": "rloo", "transform": "identity", "depends_on_n": False, "trained_n": 4}
    bon = per_prompt_metrics("identity", info, 0.3, 0.1, {})
    won = json.loads(json.dumps(bon))
    won["procedure"], won["run_name"] = "won4", "won4-identity-b0.1"
    won["eval"]["procedure"] = "won"
    for judge in ("reward_model", "gold"):  # its won columns (other numbers); its standard ones the same
        cols = won["eval"]["per_prompt"][judge]
        for n in (1, 2, 4):
            cols[f"won{n}_win_rate"] = [v - 0.1 for v in cols.pop(f"bon{n}_win_rate")]
            won["eval"]["judges"][judge][f"won{n}_win_rate"] = won["eval"]["judges"][judge].pop(f"bon{n}_win_rate")
    won["config"]["procedure"]["name"] = "won"
    write_job(tmp_path, "bon/0", ["method=identity"], bon)
    write_job(tmp_path, "won/0", ["method=identity", "procedure=won"], won)
    other = per_prompt_metrics("identity", info, 0.6, 0.05, {})
    write_job(tmp_path, "bon/1", ["method=identity", "algo.beta=0.05"], other)
    panels, notes = panel_runs(collect(tmp_path), ["reward_model"])
    by_panel = {("standard" if p.is_standard else p.label): sorted(r.label for r in runs)
                for (p, judge), runs in panels.items()}
    assert by_panel["standard"] == ["bon/0", "bon/1"]
    assert by_panel["won4"] == ["won/0"] and by_panel["bon4"] == ["bon/0", "bon/1"]
    assert notes == ["job won/0 (identity): its standard panel values are job bon/0's to the bit (the same policy "
                     "evaluated again, e.g. in a sweep over another procedure): counted once there"]


def test_a_sweeps_jobs_that_never_started_are_listed_missing(tmp_path):
    """Robustness walkthrough: a 3-job sweep killed in job 1 was reported as "2 jobs: 1 finished, 1 missing" --
    job 2, which never got a dir, was not mentioned, and a sweep killed halfway read as a smaller complete one.
    Its multirun.yaml's grid lists it: missing, "never started", with its overrides. A sweep under the
    reported dir (``more/``) is expanded too; one with another job-dir layout is not."""
    from omegaconf import OmegaConf

    from infalign.report.collect import collect

    def sweep(root: Path, task: list[str], subdir: str = "${hydra.job.num}") -> None:
        root.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create({"hydra": {
            "sweep": {"dir": str(root), "subdir": subdir}, "overrides": {"task": task},
            "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": None}}}),
            root / "multirun.yaml")

    sweep(tmp_path, ["logger=none", "transform.t=2,4,8"])
    done = fake_metrics(exp_cfg(2.0), "exp(t=2)", 0.1, 0.3, 0.6, 0.7)
    write_job(tmp_path, "0", ["logger=none", "transform.t=2"], done)
    write_job(tmp_path, "1", ["logger=none", "transform.t=4"])  # killed: a dir, no record
    sweep(tmp_path / "more", ["seed=1,2"])
    sweep(tmp_path / "named", ["seed=1,2"], subdir="${hydra.job.override_dirname}")
    jobs = {j.job: j for j in collect(tmp_path)}
    assert sorted(jobs) == ["0", "1", "2", "more/0", "more/1"]
    assert [jobs[k].status for k in ("0", "1", "2")] == ["finished", "missing", "missing"]
    assert jobs["2"].overrides == ["logger=none", "transform.t=8"]
    assert jobs["2"].reason == "never started: job 2 of the 3 its sweep launches (multirun.yaml) has no job dir"
    assert jobs["more/1"].overrides == ["seed=2"] and "more/multirun.yaml" in jobs["more/1"].reason
    # a sweep none of whose jobs has a dir: refused by Hydra before its first job (a typo of a value leaves its
    # multirun.yaml behind, sweep walkthrough) or stopped before -- said, not read as lost jobs alone
    assert "none of its jobs has one: the sweep was refused before its first job" in jobs["more/1"].reason
    assert "delete more/multirun.yaml if it was refused" in jobs["more/1"].reason
    assert "none of its jobs" not in jobs["2"].reason  # (jobs 0 and 1 started)


def test_a_failing_theory_curve_says_why(tmp_path, monkeypatch):
    from infalign.math import theory
    from infalign.report.collect import collect
    from infalign.report.series import build_series

    def broken(*args, **kwargs):
        raise RuntimeError("grid exploded")

    monkeypatch.setattr(theory, "frontier", broken)
    info = {"algo": "rloo", "transform": "identity", "depends_on_n": False, "trained_n": 4}
    write_job(tmp_path, "0", ["method=identity"], per_prompt_metrics("identity", info, 0.3, 0.3, {}))
    (series,) = build_series(collect(tmp_path), ["reward_model"])
    assert series.theory == {"reward_model": None}
    assert series.theory_note == "theory failed: RuntimeError: grid exploded"


@pytest.mark.slow
def test_baseline_option_and_bad_options(tmp_path, capsys):
    root = make_matched_sweep(tmp_path / "multirun")
    rc, stdout = run_main(str(root), "--no-wandb", "--baseline", "expn(t=4)", "--num-kl", "3", "--bootstrap", "200")
    assert rc == 0, stdout
    rows = [r for r in read_csv(root / "report" / "matched_kl.csv") if r["panel"] == "bon4" and r["baseline"]]
    assert {(r["method"], r["baseline"]) for r in rows} == {("identity", "expn(t=4)"), ("raw", "expn(t=4)")}
    assert len({r["kl"] for r in rows}) == 3
    assert all(float(r["gain"]) == pytest.approx(-GAIN_BON4, abs=1e-9) for r in rows if r["method"] == "identity")
    rc, _ = run_main(str(root), "--no-wandb", "--num-kl", "0")
    assert rc == 2 and "--num-kl=0 is not allowed: an integer >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_method_fallback_for_records_without_a_method_field(tmp_path):
    """Old records have no ``method``: the transform label, ``+algo`` when not rloo, and the
    algorithm alone for ipo / bon_sft -- which never use the (default exp(t=4)) transform their
    config still carries, so they must not be grouped, coloured or given theory as exp(t=4)."""
    root = tmp_path / "multirun"
    write_job(root, "0", ["transform=exp"], fake_metrics(exp_cfg(4.0), "exp(t=4)", 0.3, 0.5, 0.66, 0.8))
    ipo = fake_metrics(exp_cfg(4.0), "exp(t=4)", 0.3, 0.4, 0.6, 0.7)
    ipo["algo"], ipo["config"]["algo"]["name"] = "ipo", "ipo"
    write_job(root, "1", ["algo=ipo"], ipo)
    ppo = fake_metrics(IDENTITY, "identity", 0.3, 0.4, 0.6, 0.7)
    ppo["algo"] = "ppo"
    write_job(root, "2", ["algo=ppo"], ppo)
    new = fake_metrics(IDENTITY, "identity", 0.3, 0.4, 0.6, 0.7)
    new["method"] = "ipo(N=4)"  # the recorded field wins
    write_job(root, "3", ["algo=ipo"], new)
    rc, out = run_main(str(root), "--no-wandb")
    assert rc == 0, out
    runs = read_csv(root / "report" / "runs.csv")
    methods = [r["method"] for r in runs]
    assert methods == ["exp(t=4)", "ipo", "identity+ppo", "ipo(N=4)"]
    # runs.csv leaves ipo's transform columns empty: a filter on family == exp or t == 4 finds exp(t=4) only
    assert [(r["transform"], r["family"], r["t"]) for r in runs[:2]] == [("exp(t=4)", "exp", "4.0"), ("", "", "")]
    series = {s["label"]: s for s in json.loads((root / "report" / "summary.json").read_text())["series"]}
    assert set(series) == {"exp(t=4)", "ipo", "identity+ppo", "ipo(N=4)"}
    assert (series["ipo"]["family"], series["ipo"]["t"]) == ("ipo", None)
    assert series["ipo"]["theory"] == {"reward_model": None, "gold": None} and "ipo" in series["ipo"]["theory_note"]
    assert series["exp(t=4)"]["theory"]["reward_model"] is not None


def test_panels_a_run_joins_once_each():
    """N is an evaluation axis: a run joins the panel of every N of eval.ns (N = 1 and plain
    sampling are the one standard panel, joined once), only its trained N (and the standard panel)
    when its method depends on N; judges without per-prompt lists are skipped."""
    from infalign.math.procedures import Sample, WorstOfN
    from infalign.pipeline.run_record import RunRecord
    from infalign.report import Job, panel_runs

    def job(name, family, ns, depends_on_n=False):
        pp = {"prompt_ids": ["a", "b"], "reward_model": {"kl": [0.1, 0.2], "standard_win_rate": [0.5, 0.6],
                                                         **{f"{family}{n}_win_rate": [0.6, 0.7] for n in ns}}}
        metrics = {"status": "finished", "method": name, "seed": 0,
                   "method_info": {"algo": "rloo", "transform": name, "depends_on_n": depends_on_n, "trained_n": 4},
                   "eval": {"procedure": family, "ns": ns, "per_prompt": pp, "judges": {}}}
        return Job(job=name, path=Path(name), status="finished", record=RunRecord.from_json(metrics))

    jobs = [job("identity", "bon", [1, 2, 4]), job("sampled", "sample", [1, 2, 4]),
            job("optimal(N=4)", "bon", [1, 2, 4], depends_on_n=True), job("worst", "won", [4])]
    panels, notes = panel_runs(jobs, ["reward_model", "gold"])
    members = {k: [r.method for r in v] for k, v in panels.items()}
    assert members == {(Sample(), "reward_model"): ["identity", "sampled", "optimal(N=4)"],
                       (BestOfN(2), "reward_model"): ["identity"],
                       (BestOfN(4), "reward_model"): ["identity", "optimal(N=4)"],
                       (WorstOfN(4), "reward_model"): ["worst"]}
    run = panels[(BestOfN(4), "reward_model")][1]
    assert run.metric.tolist() == [0.6, 0.7] and run.kl.tolist() == [0.1, 0.2] and run.prompt_ids == ("a", "b")
    assert notes == []


WANDB_NEW = {"_target_": "infalign.pipeline.loggers.RunWandbLogger", "project": "p", "entity": None,
             "group": "sweep-a", "mode": "offline"}


@pytest.mark.parametrize("logger, expected", [
    (WANDB_NEW, {"project": "p", "entity": None, "group": "sweep-a", "offline": True}),
    # sweep dirs written before the logger group was instantiated by Hydra: `kind: wandb`, `offline`
    ({"kind": "wandb", "project": "p", "entity": None, "group": "sweep-a", "offline": True},
     {"project": "p", "entity": None, "group": "sweep-a", "offline": True}),
    ({"_target_": "lightning.pytorch.loggers.WandbLogger", "project": "p", "group": None, "mode": "online"},
     {"project": "p", "entity": None, "group": "multirun-multirun-<hash>", "offline": False}),
    ({"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": "x"}, None),
    ({"kind": "csv"}, None),
    (None, None),  # logger=none
])
def test_wandb_jobs_are_recognised_in_new_and_old_sweep_dirs(tmp_path, logger, expected):
    from infalign.report.collect import collect
    from infalign.report.wandb_run import wandb_settings

    root = tmp_path / "multirun"
    metrics = fake_metrics(IDENTITY, "identity", 0.3, 0.25, 0.62, 0.70)
    metrics["config"]["logger"] = logger
    write_job(root, "0", ["transform=identity"], metrics)
    if expected is not None and expected["group"].endswith("<hash>"):
        from infalign.infra.sweeps import multirun_group

        expected = {**expected, "group": multirun_group(root)}
    if expected is not None:
        expected = {**expected, "groups": [expected["group"]]}
    assert wandb_settings(collect(root), root) == expected


def test_a_sweep_logged_to_wandb_only_by_a_kept_rerun_gets_its_report_run_in_its_group(tmp_path):
    """Review finding (W&B): the README's workflow -- a sweep run with logger=none, then again with
    logger=wandb ckpt_path=last_or_new for the dashboards -- logs each kept run to the sweep's group, but the
    records keep logger=null: infalign-report made no W&B run, or with --wandb one in multirun-<dir>, not
    the runs' group. logged.json names the W&B logger; the group is the sweep's name."""
    from infalign.report.collect import collect
    from infalign.report.wandb_run import wandb_settings

    root = tmp_path / "multirun"
    metrics = fake_metrics(IDENTITY, "identity", 0.3, 0.25, 0.62, 0.70)
    metrics["config"]["logger"], metrics["config"]["sweep_name"] = None, "paper_won"
    job = write_job(root, "0", ["transform=identity"], metrics)
    assert wandb_settings(collect(root), root) is None  # logged nowhere yet
    (job / "logged.json").write_text(json.dumps(["RunWandbLogger"]))
    (job / "wandb" / "offline-run-20261205_000000-abcd1234").mkdir(parents=True)
    assert wandb_settings(collect(root), root) == {"project": "infalign", "entity": None, "group": "paper_won",
                                                   "groups": ["paper_won"], "offline": True}
    # W&B review: the project and entity the re-run's logger used, not 'infalign'
    (job / "wandb" / "group").write_text(json.dumps({"group": "paper_won", "project": "myproj", "entity": "lab"}))
    assert wandb_settings(collect(root), root)["project"] == "myproj"
    assert wandb_settings(collect(root), root)["entity"] == "lab"
    (job / "wandb" / "group").unlink()
    (job / "logged.json").write_text(json.dumps(["CSVLogger"]))
    assert wandb_settings(collect(root), root) is None
    # ... and a W&B logger disabled (WANDB_MODE=disabled) logged nothing: no report run (was an offline one)
    metrics["config"]["logger"] = {"_target_": "infalign.pipeline.loggers.RunWandbLogger", "mode": "disabled"}
    write_job(root, "1", ["transform=identity"], metrics)
    assert wandb_settings(collect(root), root) is None
    import shutil

    shutil.rmtree(root / "1")
    metrics["config"]["logger"] = None
    # no sweep_name: the group infalign-train used, the outermost sweep's -- also for runs added in <sweep>/more,
    # which made the report's run 'multirun-more' (W&B walkthrough)
    from infalign.infra.sweeps import multirun_group

    (root / "multirun.yaml").write_text("{}\n")
    (job / "logged.json").write_text(json.dumps(["RunWandbLogger"]))
    metrics["config"]["sweep_name"] = None
    (job / "metrics.json").write_text(json.dumps(metrics))
    for n in range(2):
        more = write_job(root / "more", str(n), ["transform=identity"], metrics)
        (more / "logged.json").write_text(json.dumps(["RunWandbLogger"]))
        (more / "wandb" / "offline-run-20261205_000000-abcd123{n}").mkdir(parents=True)
    assert wandb_settings(collect(root), root)["group"] == multirun_group(root) == multirun_group(root / "more")
    for job_dir in (job, root / "more" / "0", root / "more" / "1"):  # the group the re-run's logger recorded wins
        (job_dir / "wandb" / "group").write_text("multirun-moved-abc123\n")
    assert wandb_settings(collect(root), root)["group"] == "multirun-moved-abc123"


@pytest.mark.slow
def test_method_option_narrows_the_comparison_and_widens_its_kls(tmp_path, capsys):
    root = make_matched_sweep(tmp_path / "multirun")
    rc, stdout = run_main(str(root), "--no-wandb", "--method", "identity", "--method", "expn(t=4)")
    assert rc == 0, stdout
    rows = [r for r in read_csv(root / "report" / "matched_kl.csv") if r["panel"] == "bon4"]
    assert {r["method"] for r in rows} == {"identity", "expn(t=4)"}
    # raw (KL 0.10-0.90) left out: the common KLs reach identity's top, 1.0, instead of raw's 0.9
    assert max(float(r["kl"]) for r in rows) == pytest.approx(1.0)
    assert len(read_csv(root / "report" / "runs.csv")) == 13  # every run is still tabulated
    rc, _ = run_main(str(root), "--no-wandb", "--method", "expn(t=5)")
    err = capsys.readouterr().err
    assert rc == 2 and "--method=['expn(t=5)'] is not allowed: methods of the finished runs: expn(t=4)," in err


@pytest.mark.slow
def test_a_dir_of_links_to_sweeps_is_reported_as_one(tmp_path):
    sweep = make_matched_sweep(tmp_path / "multirun")
    combined = tmp_path / "combined"
    combined.mkdir()
    (combined / "a").symlink_to(sweep, target_is_directory=True)
    (combined / "b").symlink_to(sweep, target_is_directory=True)  # the same sweep twice: walked once
    (combined / "a" / "loop").symlink_to(combined, target_is_directory=True)  # a loop: not followed
    rc, stdout = run_main(str(combined), "--no-wandb")
    assert rc == 0, stdout
    jobs = [r["job"] for r in read_csv(combined / "report" / "runs.csv")]
    assert len(jobs) == 13 and all(j.startswith("a/") for j in jobs)  # links walked in name order


def test_the_seed_interval_names_an_unpaired_test():
    """Paired seeds print "3 seeds [...]"; a comparison whose seed sets differ names its seed counts
    and test, so a reader sees it is not paired; the total interval follows; none prints nothing."""
    import numpy as np

    from infalign.math.matched_kl import Gain
    from infalign.report.matched import seed_clause

    def gain(test, n, nb):
        one = np.array([0.02])
        return Gain("exp", "identity", one, one - 0.01, one + 0.01, n, one, np.array([True]),
                    np.array([0.005]), np.array([0.035]), test, nb, np.array([True]), np.array([0.001]),
                    np.array([0.039]))

    assert seed_clause(gain("paired", 3, 3), 0) == "3 seeds [+0.5, +3.5], total [+0.1, +3.9]"
    assert seed_clause(gain("welch", 3, 2), 0) == "3 vs 2 seeds, welch [+0.5, +3.5], total [+0.1, +3.9]"
    assert seed_clause(gain("pooled", 1, 3), 0) == "1 vs 3 seeds, pooled [+0.5, +3.5], total [+0.1, +3.9]"
    assert seed_clause(gain("none", 1, 1), 0) == ""


def test_runs_with_other_calibration_or_evaluation_settings_are_not_pooled(tmp_path):
    """One method at other calibration settings is another method (its own series and matched-KL
    curve); a run evaluated with another sampler (temperature, top-k, top-p, response length) is
    another evaluation, compared apart like another world -- neither is pooled with the rest. Only
    the runs unlike most get a note, so the common runs keep their plain names (and the default
    baselines); a key missing from a record (written before it existed) is not compared."""
    from infalign.report.collect import collect
    from infalign.report.matched import panel_runs
    from infalign.report.naming import method_of, world_keys
    from infalign.report.series import build_series

    info = {"algo": "rloo", "transform": "identity", "depends_on_n": False, "trained_n": 4}
    settings = [({"K": 32}, {"temperature": 1.0}), ({"K": 32}, {"temperature": 1.0}),
                ({"K": 64}, {"temperature": 1.0}), ({"K": 32}, {"temperature": 0.5})]
    for job, (calibration, ev) in enumerate(settings):
        kl = 0.2 * (job + 1)
        metrics = per_prompt_metrics("identity", info, kl, round(0.1 / kl, 3), {})
        metrics["world"] = {"world_id": "W"}
        metrics["config"] |= {"calibration": calibration, "eval": ev}
        write_job(tmp_path, str(job), ["method=identity"], metrics)
    jobs = collect(tmp_path)
    assert [method_of(j) for j in jobs] == ["identity", "identity", "identity [calibration.K=64]", "identity"]
    assert list(world_keys(jobs).values()) == ["W", "W", "W", "W [eval.temperature=0.5]"]
    labels = sorted(s.label for s in build_series(jobs, ["reward_model"]))
    assert labels == ["identity", "identity [calibration.K=64]", "identity [eval.temperature=0.5]"]
    panels, notes = panel_runs(jobs, ["reward_model"])
    assert {(r.method, r.label) for runs in panels.values() for r in runs} == {
        ("identity", "0"), ("identity", "1"), ("identity [calibration.K=64]", "2")}
    assert len(notes) == 1 and notes[0].startswith("job 3 (identity): another evaluation (eval.temperature=0.5;")
    # an older record without the eval node: eval settings are not compared at all
    metrics = per_prompt_metrics("identity", info, 0.9, 0.11, {})
    metrics["world"] = {"world_id": "W"}
    metrics["config"] |= {"calibration": {"K": 32}}
    write_job(tmp_path, "4", ["method=identity"], metrics)
    assert set(world_keys(collect(tmp_path)).values()) == {"W"}


def test_runs_without_a_theory_point_are_kept_and_counted_and_worlds_never_share_a_series(tmp_path):
    """theory_gap.csv keeps a calibrated run whose measured KL has no theory point (KL <= 0) or an
    unreachable one, with a note and no gap, and the medians count it apart; the plots' series, like
    the matched-KL comparison, never join runs of two worlds (a record without a world id joins the
    main world)."""
    from infalign.report.collect import collect
    from infalign.report.series import build_series
    from infalign.report.theory_gap import median_theory_gap, runs_cell, theory_gap_rows

    info = {"algo": "rloo", "transform": "identity", "depends_on_n": False, "trained_n": 4}
    for job, (kl, world) in enumerate([(0.1, "A"), (0.3, "A"), (0.5, "B"), (0.7, None), (0.9, "A"), (1.1, "A")]):
        metrics = per_prompt_metrics("identity", info, kl, round(0.1 / kl, 3), {})
        if world is not None:
            metrics["world"] = {"world_id": world}
        if job == 4:  # measured KL <= 0: no theory point
            del metrics["eval"]["theory"]["at_measured_kl"]
        if job == 5:  # the theory cannot reach the measured KL
            metrics["eval"]["theory"]["at_measured_kl"] = {"kl": kl, "reachable": False, "standard_win_rate": None,
                                                           "bon2_win_rate": None, "bon4_win_rate": None}
        write_job(tmp_path, str(job), ["method=identity"], metrics)
    jobs = collect(tmp_path)
    rows = theory_gap_rows(jobs)
    assert {r["job"] for r in rows} == {"0", "1", "2", "3", "4", "5"}
    assert [r["note"] for r in rows if r["job"] == "4"] == ["no theory point: the measured KL is <= 0"]
    assert {r["note"] for r in rows if r["job"] == "5"} == {"the theory does not reach the measured KL"}
    assert all(r["gap"] is None for r in rows if r["job"] in ("4", "5"))
    assert {r["world_id"] for r in rows if r["job"] == "3"} == {"A"}  # no world id: the main world's
    gap = median_theory_gap(rows)
    assert set(gap) == {"identity [A]", "identity [B]"}
    assert (gap["identity [A]"]["runs"], gap["identity [A]"]["runs_without_theory"]) == (3, 2)
    assert runs_cell(gap["identity [A]"]) == "3 (+2 without a theory point)"
    series = {s.label: sorted(j.job for j in s.jobs) for s in build_series(jobs, ["reward_model"])}
    assert series == {"identity": ["0", "1", "3", "4", "5"], "identity [world B]": ["2"]}


def test_series_of_two_procedures_in_one_standard_panel_get_different_markers(tmp_path, monkeypatch):
    """The standard-win-rate plot holds every procedure's series in one panel: bon4's and won4's
    identity share a colour (one family), so the procedure picks the marker too."""
    from infalign.infra import plotting
    from infalign.report.collect import collect
    from infalign.report.plots import plot_series
    from infalign.report.series import build_series

    info = {"algo": "rloo", "transform": "identity", "depends_on_n": False, "trained_n": 4}
    for job, name in enumerate(["bon", "won"]):
        metrics = per_prompt_metrics("identity", info, 0.3, 0.3, {})
        metrics["config"]["procedure"]["name"] = name
        metrics["procedure"] = f"{name}4"
        write_job(tmp_path, str(job), ["method=identity"], metrics)
    figures = []
    monkeypatch.setattr(plotting, "save_png", lambda fig, path: figures.append(fig))
    series = build_series(collect(tmp_path), ["reward_model"])
    assert len(series) == 2
    plot_series(series, ["reward_model"], "standard", tmp_path / "s.png")
    drawn = {c.get_label(): c.lines[0].get_marker() for c in figures[0].axes[0].containers}
    assert set(drawn) == {s.label for s in series} and len(set(drawn.values())) == 2


def test_the_legend_with_its_theory_entry_sits_on_a_panel_that_draws_the_theory(tmp_path, monkeypatch):
    """Extension-walkthrough finding: the legend, with its "theory (calibrated space)" entry, sat on the last
    panel -- the gold judge's, which draws no theory curve. It sits on the reward model's, which does."""
    from infalign.infra import plotting
    from infalign.report.collect import collect
    from infalign.report.plots import plot_series
    from infalign.report.series import build_series

    info = {"algo": "rloo", "transform": "identity", "depends_on_n": False, "trained_n": 4}
    for job, kl in enumerate([0.2, 0.4]):
        write_job(tmp_path, str(job), ["method=identity"], per_prompt_metrics("identity", info, kl, 0.3, {}))
    figures = []
    monkeypatch.setattr(plotting, "save_png", lambda fig, path: figures.append(fig))
    series = build_series(collect(tmp_path), ["reward_model", "gold"])
    plot_series(series, ["reward_model", "gold"], "inference", tmp_path / "w.png")
    reward_ax, gold_ax = figures[0].axes[:2]
    assert any(line.get_linestyle() == "--" for line in reward_ax.lines)  # the theory is drawn here ...
    assert not any(line.get_linestyle() == "--" for line in gold_ax.lines)  # ... not here
    assert gold_ax.get_legend() is None
    assert "theory (calibrated space)" in [t.get_text() for t in reward_ax.get_legend().get_texts()]


def test_a_method_and_its_replica_or_pooled_control_are_drawn_apart(tmp_path, monkeypatch):
    """identity, its A/A replica and its pooled-calibration control share a colour (one family) and
    an algorithm: the later ones (in label order) take other markers, drawn hollow, so the legend
    tells the curves a control finding compares apart; a series of another colour keeps the plain one."""
    from infalign.infra import plotting
    from infalign.report.collect import collect
    from infalign.report.plots import plot_series
    from infalign.report.series import build_series

    info = {"algo": "rloo", "transform": "identity", "depends_on_n": False, "trained_n": 4}
    for job, method in enumerate(["identity", "identity[replica=1]", "identity[pooled]", "expn(t=4)"]):
        metrics = per_prompt_metrics(method, {**info, "transform": "expn(t=4)" if "expn" in method else "identity"},
                                     0.3, 0.3, {})
        if "expn" not in method:
            metrics["config"]["transform"] = IDENTITY
        write_job(tmp_path, str(job), [f"method={method}"], metrics)
    figures = []
    monkeypatch.setattr(plotting, "save_png", lambda fig, path: figures.append(fig))
    series = build_series(collect(tmp_path), ["reward_model"])
    assert sorted(s.label for s in series) == ["expn(t=4)", "identity", "identity[pooled]", "identity[replica=1]"]
    plot_series(series, ["reward_model"], "standard", tmp_path / "s.png")
    lines = {c.get_label(): c.lines[0] for c in figures[0].axes[0].containers}
    looks = {label: (line.get_color(), line.get_marker(), line.get_markerfacecolor()) for label, line in lines.items()}
    identities = [looks[m] for m in ("identity", "identity[pooled]", "identity[replica=1]")]
    assert len({look[0] for look in identities}) == 1  # one family: one colour
    assert len(set(identities)) == 3  # ... but three looks
    assert looks["identity"][2] == looks["identity"][0] and looks["identity[pooled]"][2] == "white"
    assert looks["expn(t=4)"][1] == looks["identity"][1] and looks["expn(t=4)"][2] != "white"
    # extensibility walkthrough: a twin's theory curve (its own, when it is another transform) is drawn in its
    # colour but another line, so it does not pass for the first one's
    theory = [line for line in figures[0].axes[0].lines if line.get_alpha() == 0.9]
    styles = {(line.get_color(), line.get_linestyle()) for line in theory}
    assert {style for color, style in styles if color == looks["identity"][0]} == {"--", ":", "-."}


def test_runs_of_a_method_trained_otherwise_are_another_method_but_its_kl_knob_is_its_curve(tmp_path):
    """Two sweeps of one method at different training settings (reported together from a dir of links)
    made one curve of two trainings: now a run whose ``algo`` settings or training prompts differ from
    most runs of its method -- other than the KL knob its record names (``method_info.kl_knob``) --
    is another method. bon_sft walks ``algo.steps`` (its knob: not a note); an older record without
    ``kl_knob`` falls back to its algorithm's knob; a setting of another method never renames these."""
    from infalign.report.collect import collect
    from infalign.report.matched import panel_runs
    from infalign.report.naming import method_of

    rloo = {"algo": "rloo", "transform": "identity", "depends_on_n": False, "trained_n": 4,
            "kl_knob": ["algo.beta", "algo.kl_target"]}
    sft = {"algo": "bon_sft", "transform": None, "depends_on_n": True, "trained_n": 4, "kl_knob": ["algo.steps"]}
    legacy_sft = {k: v for k, v in sft.items() if k != "kl_knob"}
    specs = [  # method, info, algo settings, train prompts
        ("identity", rloo, {"beta": 0.4, "kl_target": 0.1, "steps": 100, "lr": 1e-4}, 64),
        ("identity", rloo, {"beta": 0.2, "kl_target": 0.2, "steps": 100, "lr": 1e-4}, 64),
        ("identity", rloo, {"beta": 0.1, "kl_target": 0.4, "steps": 100, "lr": 1e-4}, 64),
        ("identity", rloo, {"beta": 0.1, "kl_target": 0.4, "steps": 200, "lr": 1e-4}, 64),  # trained longer
        ("identity", rloo, {"beta": 0.1, "kl_target": 0.4, "steps": 100, "lr": 1e-4}, 32),  # on fewer prompts
        ("bon_sft(N=4)", sft, {"steps": 4, "lr": 3e-4}, 64),
        ("bon_sft(N=4)", sft, {"steps": 8, "lr": 3e-4}, 64),
        ("bon_sft(N=4)", legacy_sft, {"steps": 16, "lr": 3e-4}, 64),
        ("bon_sft(N=4)", sft, {"steps": 32, "lr": 1e-3}, 64),  # another learning rate
    ]
    for job, (method, info, algo, prompts) in enumerate(specs):
        metrics = per_prompt_metrics(method, info, 0.2 + 0.1 * job, algo.get("beta", 0.3), {})
        metrics["world"] = {"world_id": "W"}
        metrics["config"] |= {"algo": {"name": info["algo"], **algo}, "data": {"train_prompts": prompts}}
        write_job(tmp_path, str(job), [f"method={method}"], metrics)
    jobs = collect(tmp_path)
    assert [method_of(j) for j in jobs] == [
        "identity", "identity", "identity", "identity [algo.steps=200]", "identity [data.train_prompts=32]",
        "bon_sft(N=4)", "bon_sft(N=4)", "bon_sft(N=4)", "bon_sft(N=4) [algo.lr=0.001]"]
    panels, _ = panel_runs(jobs, ["reward_model"])
    methods = {r.method for runs in panels.values() for r in runs}
    assert {"identity", "identity [algo.steps=200]", "identity [data.train_prompts=32]"} <= methods


def test_runs_of_one_label_with_another_transform_are_another_method(tmp_path):
    """Walkthrough finding: a custom transform's label is its ``name`` alone, so runs of one callable at two
    parameter values (``pow3`` = the Beta(3, 1) cdf u^3, and a = 2: u^2), and a custom entry named
    ``identity`` (u^2 again), pooled into one method -- one curve, one gain, one theory gap over both. A run
    whose transform differs, leaf by leaf, from most runs' of its method is another method now
    (``pow3 [transform.fn.a=2.0]``); the optimal transform's ``beta``, which reads algo.beta (its KL knob),
    stays a point on its curve."""
    from infalign.report.collect import collect
    from infalign.report.naming import method_of

    info = {"algo": "rloo", "depends_on_n": False, "trained_n": 4, "kl_knob": ["algo.beta", "algo.kl_target"]}

    def pow_cfg(a: float) -> dict:
        return {"_target_": "infalign.math.transforms.Custom", "name": "pow3",
                "fn": {"_target_": "scipy.stats.beta.cdf", "_partial_": True, "a": a, "b": 1.0}}

    optimal = {"_target_": "infalign.math.theory.optimal_transform", "procedure": "bon", "n": 4}
    specs = [("pow3", pow_cfg(3.0), 0.4), ("pow3", pow_cfg(3.0), 0.2), ("pow3", pow_cfg(2.0), 0.1),
             ("identity", IDENTITY, 0.4), ("identity", IDENTITY, 0.2), ("identity", pow_cfg(2.0) | {"name": "identity"},
                                                                           0.1),
             ("optimal(bon4)", optimal | {"beta": 0.4}, 0.4), ("optimal(bon4)", optimal | {"beta": 0.1}, 0.1)]
    for job, (method, tcfg, beta) in enumerate(specs):
        metrics = per_prompt_metrics(method, info | {"transform": method}, 0.2 + 0.1 * job, beta, {})
        metrics["world"] = {"world_id": "W"}
        metrics["config"]["transform"] = tcfg
        write_job(tmp_path, str(job), [], metrics)
    assert [method_of(j) for j in collect(tmp_path)] == [
        "pow3", "pow3", "pow3 [transform.fn.a=2.0]",
        # (keys the others lack are not compared: the target tells the custom entry apart)
        "identity", "identity", 'identity [transform._target_="infalign.math.transforms.Custom"]',
        "optimal(bon4)", "optimal(bon4)"]
    # review finding: an offline baseline never reads its transform (its policy key leaves it out), so IPO runs
    # of a sweep over transforms x algorithms stay one method whatever their transform node
    ipo = {"algo": "ipo", "transform": None, "depends_on_n": True, "trained_n": 4, "kl_knob": ["algo.beta"]}
    for job, tcfg in enumerate([IDENTITY, IDENTITY, exp_cfg(4.0, normalized=True), exp_cfg(4.0, normalized=True)]):
        metrics = per_prompt_metrics("ipo(N=4)", ipo, 0.2 + 0.1 * job, 0.1 * (job + 1), {})
        metrics["world"] = {"world_id": "W"}
        metrics["config"]["transform"] = tcfg
        write_job(tmp_path / "offline", str(job), [], metrics)
    assert [method_of(j) for j in collect(tmp_path / "offline")] == ["ipo(N=4)"] * 4


def test_runs_of_one_label_whose_transform_values_differ_are_another_method(tmp_path):
    """Extensibility walkthrough: a second sweep of a custom entry added ``fn.loc`` / ``fn.scale`` (the cdf of
    ((u + 1) / 2)^3, not u^3) -- leaves the first sweep's configs lack, which the leaf-by-leaf comparison skips --
    and the report drew both as one ``pow3`` curve with the first run's theory. The recorded transform values
    tell them apart: the odd run is noted with the differing leaves (a missing one ``<unset>``), or by a digest of
    its values when no leaf differs (the transform's code changed). Control: runs whose values agree, a config
    spelled otherwise included (``b: 1`` against ``b: 1.0``), stay one method."""
    import numpy as np

    from infalign.report.collect import collect
    from infalign.report.naming import method_of

    info = {"algo": "rloo", "depends_on_n": False, "trained_n": 4, "kl_knob": ["algo.beta", "algo.kl_target"]}
    u = np.linspace(0, 1, 1025)
    cube, shifted = (u ** 3).tolist(), (((u + 1) / 2) ** 3).tolist()
    fn = {"_target_": "scipy.stats.beta.cdf", "_partial_": True, "a": 3.0, "b": 1.0}
    specs = [(fn, cube), (fn | {"b": 1}, cube), (fn, cube), (fn | {"loc": -1.0, "scale": 2.0}, shifted),
             (fn, shifted)]
    for job, (fn_cfg, values) in enumerate(specs):
        metrics = per_prompt_metrics("pow3", info | {"transform": "pow3", "transform_values": values},
                                     0.2 + 0.1 * job, 0.4, {})
        metrics["world"] = {"world_id": "W"}
        metrics["config"]["transform"] = {"_target_": "infalign.math.transforms.Custom", "name": "pow3",
                                          "fn": fn_cfg}
        write_job(tmp_path, str(job), [], metrics)
    methods = [method_of(j) for j in collect(tmp_path)]
    assert methods[:3] == ["pow3"] * 3
    assert methods[3] == "pow3 [transform.fn.loc=-1.0, transform.fn.scale=2.0]"
    assert methods[4].startswith("pow3 [transform_values=#") and methods[4] not in methods[:4]


def test_the_legacy_kl_knobs_are_the_algorithms_own():
    """The report's knobs for records written before ``method_info.kl_knob`` are what each registered
    algorithm declares (``Algorithm.kl_knob_keys``, recorded by new runs)."""
    from infalign.report.naming import DEFAULT_KL_KNOB, LEGACY_KL_KNOBS
    from infalign.training.algorithms import ALGORITHMS

    for name, cls in ALGORITHMS.items():
        assert tuple(cls.kl_knob_keys) == LEGACY_KL_KNOBS.get(name, DEFAULT_KL_KNOB), name


def test_odd_settings_compare_numbers_by_value_within_a_world_and_calibration_only_where_used(tmp_path):
    """1 and 1.0 are one temperature; a raw run (no calibration) at another calibration.K is not renamed
    (it would drop out of the default baselines); a run of another world does not rename this world's."""
    from infalign.report.collect import collect
    from infalign.report.naming import method_of

    info = {"algo": "rloo", "transform": "identity", "depends_on_n": False, "trained_n": 4}
    raw = {"algo": "rloo", "transform": "raw", "depends_on_n": False, "trained_n": 4}
    specs = [("identity", info, "W", 64, 1.0), ("identity", info, "W", 64, 1.0), ("identity", info, "W", 64, 1),
             ("raw", raw, "W", 32, 1.0), ("identity", info, "V", 32, 1.0), ("identity", info, "V", 32, 1.0)]
    for job, (method, inf, world, k, temp) in enumerate(specs):
        metrics = per_prompt_metrics(method, inf, 0.2 + 0.1 * job, 0.3, {})
        metrics["world"] = {"world_id": world}
        metrics["config"] |= {"calibration": {"K": k}, "eval": {"temperature": temp}}
        write_job(tmp_path, str(job), [f"method={method}"], metrics)
    jobs = collect(tmp_path)
    assert [method_of(j) for j in jobs] == ["identity", "identity", "identity", "raw", "identity", "identity"]
    assert [j.eval_note for j in jobs] == [""] * 6


def test_a_refused_attempt_does_not_relabel_the_finished_runs_overrides(tmp_path):
    """Hydra rewrites .hydra/overrides.yaml for every attempt; after a refused resume (metrics.failed.json
    beside a finished metrics.json) the run's own overrides are those saved beside its checkpoints, or
    none when it saved none (never the attempt's)."""
    from infalign.report.collect import load_job

    info = {"algo": "rloo", "transform": "identity", "depends_on_n": False, "trained_n": 4}
    write_job(tmp_path, "0", ["transform.t=2"], per_prompt_metrics("identity", info, 0.3, 0.3, {}))
    job_dir = tmp_path / "0"
    assert load_job(job_dir, tmp_path).overrides == ["transform.t=2"]  # no failed attempt: .hydra's
    (job_dir / "metrics.failed.json").write_text("{}")
    assert load_job(job_dir, tmp_path).overrides == []
    (job_dir / "checkpoints").mkdir()
    (job_dir / "checkpoints" / "run_overrides.yaml").write_text('- "transform.t=4"\n')
    job = load_job(job_dir, tmp_path)
    assert job.status == "finished" and job.overrides == ["transform.t=4"]


def test_the_report_reads_a_runs_overrides_from_its_record_not_from_a_refused_attempts_hydra_dir(tmp_path):
    """Review finding: Hydra rewrites .hydra/overrides.yaml (and config.yaml) before a run refuses the dir,
    and a refusal before any record is written (another run's dir) left no trace: the report listed the
    refused attempt's overrides beside the finished run's results. The run records its own overrides
    (metrics.json ``overrides``, also when it failed); the report reads them first, then those saved beside
    its checkpoints, and .hydra's only for a record without either."""
    from infalign.report.collect import load_job

    info = {"algo": "rloo", "transform": "identity", "depends_on_n": False, "trained_n": 4}
    metrics = per_prompt_metrics("identity", info, 0.3, 0.3, {})
    write_job(tmp_path, "0", ["transform.t=2", "algo.beta=0.5"], {**metrics, "overrides": ["transform.t=4"]})
    job_dir = tmp_path / "0"
    (job_dir / "checkpoints").mkdir()
    (job_dir / "checkpoints" / "run_overrides.yaml").write_text('- "transform.t=8"\n')
    assert load_job(job_dir, tmp_path).overrides == ["transform.t=4"]
    write_job(tmp_path, "1", ["transform.t=2"], {"version": 3, "status": "failed", "error": "boom",
                                                 "overrides": ["transform.t=16"], "config": {}})
    job = load_job(tmp_path / "1", tmp_path)
    assert job.status == "failed" and job.overrides == ["transform.t=16"]


def test_the_narrower_reports_of_a_sweep_get_their_own_wandb_run_names(tmp_path):
    """Every report run of a sweep was named ``report`` in the sweep's group: ``report_t``,
    ``report_baselines`` ... could not be told apart on the dashboard."""
    from types import SimpleNamespace

    from infalign.report.wandb_run import report_run_name

    assert report_run_name(SimpleNamespace(out_dir=tmp_path / "bon" / "report")) == "report"
    assert report_run_name(SimpleNamespace(out_dir=tmp_path / "bon" / "report_t")) == "report:report_t"


# ---------------------------------------------------------------- guards found by mutation testing

MUT_INFO = {"algo": "rloo", "transform": "identity", "depends_on_n": False, "trained_n": 4}
S, B4 = "standard_win_rate", "bon4_win_rate"


def test_a_finished_record_without_judges_is_failed(tmp_path):
    from infalign.report.collect import load_job

    m = per_prompt_metrics("identity", MUT_INFO, 0.3, 0.3, {})
    m["eval"]["judges"] = {}
    write_job(tmp_path, "0", ["method=identity"], m)
    job = load_job(tmp_path / "0", tmp_path)
    assert (job.status, job.reason) == ("failed", "incomplete metrics.json (no eval.judges)")


def test_jobs_in_natural_order_and_the_swept_overrides_of_a_lone_job(tmp_path):
    from infalign.report.collect import Job, find_job_dirs, swept_overrides

    for i in (0, 2, 10, 1):
        (tmp_path / str(i) / ".hydra").mkdir(parents=True)
    assert [p.name for p in find_job_dirs(tmp_path)] == ["0", "1", "2", "10"]
    jobs = [Job("0", Path("0"), "missing", overrides=["a=1", "b=2"]), Job("1", Path("1"), "missing")]
    assert swept_overrides(jobs) == {"0": ["a=1", "b=2"], "1": []}


def test_a_job_dir_without_hydra_is_collected_by_its_record(tmp_path):
    """A run launched with ``hydra.output_subdir=null`` writes no ``.hydra/``: its metrics.json (or the
    metrics.failed.json of a refused attempt) makes its dir a job all the same -- it was left out of its
    sweep's report without a word -- and its overrides come from its record. A dir with neither, under
    a job (its policy/, a stray folder), is no job."""
    from infalign.report.collect import collect

    write_job(tmp_path, "0", ["transform=identity"], fake_metrics(IDENTITY, "identity", 0.3, kl=0.25, std=0.6, win=0.7))
    bare = tmp_path / "1"
    bare.mkdir()
    metrics = fake_metrics(IDENTITY, "identity", 0.1, kl=0.8, std=0.7, win=0.8)
    (bare / "metrics.json").write_text(json.dumps({**metrics, "overrides": ["transform=identity", "algo.beta=0.1"]}))
    refused = tmp_path / "2"
    refused.mkdir()
    (refused / "metrics.failed.json").write_text(json.dumps({"status": "failed", "error": "ConfigError: x"}))
    (tmp_path / "1" / "notes").mkdir()
    analyzed = tmp_path / "analyze"  # infalign-analyze's own metrics.json (no status): no job (review finding)
    analyzed.mkdir()
    (analyzed / "metrics.json").write_text(json.dumps({"procedure": "bon4", "transforms": ["identity"]}))
    jobs = collect(tmp_path)
    assert [j.job for j in jobs] == ["0", "1", "2"]
    assert jobs[1].status == "finished" and jobs[1].overrides == ["transform=identity", "algo.beta=0.1"]
    assert jobs[2].status != "finished"


def test_matched_kl_runs_carry_the_records_seed(tmp_path):
    from infalign.report.collect import collect
    from infalign.report.matched import panel_runs

    for job, seed in enumerate([1, 2]):
        m = per_prompt_metrics("identity", MUT_INFO, 0.2 + 0.2 * job, 0.3, {}, seed=seed)
        m["config"]["seed"] = None  # the record's resolved seed is the one that pairs runs
        write_job(tmp_path, str(job), ["method=identity"], m)
    panels, _ = panel_runs(collect(tmp_path), ["reward_model"])
    assert {r.label: r.seed for runs in panels.values() for r in runs} == {"0": 1, "1": 2}


def _gain(gain, significant, prompt_significant=None):
    from infalign.math.matched_kl import Gain

    g = np.asarray(gain, float)
    sig = np.asarray(significant, bool)
    psig = sig if prompt_significant is None else np.asarray(prompt_significant, bool)
    return Gain("expn(t=4)", "identity", g, g - 0.005, g + 0.005, 3, np.full_like(g, 0.002), sig, g - 0.004,
                g + 0.004, "paired", 3, psig, g - 0.006, g + 0.006)


def _panel(grid, gains, note=""):
    from infalign.math.matched_kl import MatchedKL
    from infalign.math.procedures import BestOfN
    from infalign.report.matched import Panel

    return Panel(BestOfN(4), "reward_model", MatchedKL(np.asarray(grid, float), bool(len(grid)), {}, gains=gains,
                                                       note=note))


def test_gain_sentences_verdicts_and_the_middle_kl():
    """beats / trails by the sign of a significant gain; the count of KLs is the full verdict's
    (not the prompt CI's); the summary sentence's numbers are at the KL its heading names; the
    console prints the same; a panel without a common KL keeps its note in matched_kl.csv."""
    from rich.console import Console

    from infalign.report.build import Report
    from infalign.report.matched import gain_clause, matched_kl_rows, matched_kl_summary
    from infalign.report.printing import print_matched_kl

    up = _gain([0.01, 0.02, 0.03, 0.04], [True] * 4)
    down = _gain([-0.01, -0.02, -0.03, -0.04], [False, False, True, True], [True] * 4)
    p = _panel([0.1, 0.2, 0.3, 0.4], [up, down])
    assert gain_clause(p, up, 2).startswith("expn(t=4) beats identity: +3.0 [+2.5, +3.5] points, 3 seeds")
    assert gain_clause(p, down, 2).startswith("expn(t=4) trails identity: -3.0")
    assert gain_clause(p, down, 0).startswith("expn(t=4) does not differ significantly from identity: -1.0")
    assert gain_clause(p, down, 0).endswith("(significant at 2 of 4 KLs: +0 −2)")
    assert matched_kl_summary([p])[0].startswith(
        "bon4 (reward_model): 4 common KLs in [0.10, 0.40]; at KL 0.30, expn(t=4) beats identity: +3.0")
    console = Console(file=io.StringIO(), width=250)
    print_matched_kl(Report(Path("."), Path("."), ["reward_model"], [], [], [], {}, {}, [p]), console)
    assert "expn(t=4) beats identity: +3.0" in console.file.getvalue()
    empty = _panel([], [], note="no KL covered by every method")
    assert [r["note"] for r in matched_kl_rows([empty])] == ["no KL covered by every method"]


def test_runs_row_summary_markdown_and_console_per_judge(tmp_path):
    from rich.console import Console

    from infalign.report.build import Report
    from infalign.report.collect import collect
    from infalign.report.printing import print_tables
    from infalign.report.series import Series
    from infalign.report.tables import job_row, make_summary, markdown

    write_job(tmp_path, "0", [], fake_metrics(IDENTITY, "identity", 0.3, kl=0.25, std=0.75, win=0.70))
    b = fake_metrics(IDENTITY, "identity", 0.1, kl=0.80, std=0.62, win=0.83)  # highest bon4, not standard
    b["seed"], b["config"]["seed"] = 5, None
    write_job(tmp_path, "1", [], b)
    write_job(tmp_path, "2", ["algo.beta=9"], None)  # missing
    jobs, judges = collect(tmp_path), ["reward_model", "gold"]
    rows = [job_row(j, judges) for j in jobs]
    assert rows[0]["theory_kl_at_beta"] == pytest.approx(0.5)  # theory at beta (2 x measured here), not measured
    assert rows[1]["seed"] == 5  # the record's seed
    series = [Series(("bon4", "identity", ""), "identity", None, "bon4", "rloo", "identity", jobs[:2], rows[:2])]
    summary = make_summary(tmp_path, tmp_path / "report", judges, jobs, rows, series, {})
    best = summary["highest_inference_win_rate"]["reward_model"]
    assert (best["job"], best["inference_win_rate"], best["kl"]) == ("1", 0.83, 0.80)
    assert [p["inference_win_rate"] for p in summary["series"][0]["points"]["gold"]] == pytest.approx([0.67, 0.80])
    md = markdown(rows, judges, jobs, tmp_path)
    assert "- **2** (missing):" in md.split("## Failed, missing and flagged jobs")[1]
    summary["theory_gap"] = {"identity": {"median_abs_gap": {S: 0.04}, "median_gap": {S: -0.04}, "median_kl_ratio": 1.0,
                                          "runs": 2, "runs_without_theory": 0, "reading": "r"}}
    console = Console(file=io.StringIO(), width=250)
    print_tables(Report(tmp_path, tmp_path, judges, jobs, rows, series, summary, {}), console)
    out = console.file.getvalue()
    gold = out.split("gold: finished runs")[1]
    assert "0.670" in gold and "0.700" not in gold  # gold's CIs in gold's table
    reward = out.split("reward_model: finished runs")[1].split("gold: finished runs")[0]
    assert reward.index("0.250") < reward.index("0.800")  # by method, then increasing KL
    assert "standard 0.040" in out and "-0.040" not in out  # |gap|, not the signed median
    assert "reward_model: finished runs (bon4; 95% CI" in out  # two seeds: a column
    console = Console(file=io.StringIO(), width=250)
    print_tables(Report(tmp_path, tmp_path, judges, jobs[:1], rows[:1], series, summary, {}), console)
    # one seed: named in the title (the walkthrough read "(bon4, 0; ...": a bare 0)
    assert "reward_model: finished runs (bon4, seed 0; 95% CI" in console.file.getvalue()


def test_theory_gap_rows_half_width_seed_kl_and_no_n1_duplicate(tmp_path):
    from infalign.report.collect import collect
    from infalign.report.theory_gap import theory_gap_rows

    m = per_prompt_metrics("identity", MUT_INFO, 0.3, 0.3, {}, seed=3)
    m["eval"]["theory"]["at_measured_kl"]["bon1_win_rate"] = 0.60  # evaluate.theory_prediction names N = 1 too
    m["eval"]["judges"]["gold"]["kl"] = {"mean": 0.9, "low": 0.8, "high": 1.0, "n_prompts": N_PROMPTS}
    write_job(tmp_path, "0", ["method=identity"], m)
    rows = theory_gap_rows(collect(tmp_path))
    assert [r["metric"] for r in rows] == ["bon2_win_rate", "bon4_win_rate", "standard_win_rate"]
    assert all(r["ci_half_width"] == pytest.approx(0.05) and r["seed"] == 3 for r in rows)
    assert all(r["kl_measured"] == pytest.approx(0.3) for r in rows)  # the reward model's KL


def test_one_policy_in_a_sweep_over_n_is_one_run_of_the_theory_gap(tmp_path):
    """WoN walkthrough: an N-independent method swept over procedure.n trains one policy and evaluates it
    once per N (bit-identical results); theory_gap.md said "identity | 8 runs" for 4 policies and weighed each
    once per N in its medians. Rows repeating a measurement's (same method, seed, beta, measured KL) metric
    are left out; runs count measurements. Another beta is another run."""
    from infalign.report.collect import collect
    from infalign.report.theory_gap import median_theory_gap, theory_gap_rows

    m = per_prompt_metrics("identity", MUT_INFO, 0.3, 0.3, {})
    write_job(tmp_path, "0", ["method=identity"], m)
    again = json.loads(json.dumps(m))  # the same policy and evaluation, recorded under bon2
    again["procedure"], again["config"]["procedure"]["n"] = "bon2", 2
    write_job(tmp_path, "1", ["method=identity", "procedure.n=2"], again)
    other = per_prompt_metrics("identity", MUT_INFO, 0.6, 0.1, {})
    write_job(tmp_path, "2", ["method=identity", "algo.beta=0.1"], other)
    rows = theory_gap_rows(collect(tmp_path))
    metrics = ("bon2_win_rate", "bon4_win_rate", "standard_win_rate")
    assert sorted((r["job"], r["metric"]) for r in rows) == [(job, m) for job in ("0", "1", "2") for m in metrics]
    repeats = [r for r in rows if r.get("repeat_of")]  # kept in theory_gap.csv, named, not weighed again
    assert {r["job"] for r in repeats} == {"1"} and len(repeats) == 3
    assert all(r["repeat_of"] == "0" and r["note"] == "the same measurement as job 0: counted once" for r in repeats)
    assert median_theory_gap(rows)["identity"]["runs"] == 2


def _ties(m, v):
    m["eval"]["miscalibration"] = {"n_prompts": N_PROMPTS, "reward_model": {"tie_share": v}}


def _penalty(m, v):
    m["config"].setdefault("algo", {})["missing_eos_penalty"] = v


def _horizon(m, v):
    m["config"].setdefault("algo", {})["max_new_tokens"] = 20
    m["config"].setdefault("eval", {})["max_new_tokens"] = v


@pytest.mark.parametrize("setting, without, kept, why", [
    # a reward that tied in every within-prompt pair (tie_share 1: a constant calibrated reward; review)
    (_ties, 1.0, [0.2], "every within-prompt pair of its reward ties"),
    # algo.missing_eos_penalty p > 0 trains the tilt of Phi(C) - p * 1{cut} (docs/method.md (6.1b); review: a
    # penalised run printed a theory KL of 1.30 beside a measured 2.58, kl_ratio 1.98); p = 0 is no penalty
    (_penalty, 0.5, [0.0, None], "missing_eos_penalty=0.5"),
    # eval.max_new_tokens other than algo.max_new_tokens: pools of another horizon than the trained and calibrated
    # one (review: kl_ratio 0.61 read as "under-tilted" for a policy cut at 6 tokens)
    (_horizon, 6, [20], "eval.max_new_tokens=6, trained at 20"),
], ids=["constant_reward", "missing_eos_penalty", "eval_horizon"])
def test_a_run_the_theory_does_not_describe_gets_no_theory_curve_nor_gap(tmp_path, setting, without, kept, why):
    """Runs whose trained target or evaluated distributions the calibrated-space theory does not describe: no
    theory curve or gain (built from the transform), and the theory older records still carry is not read into
    the theory gap. Controls: the same setting at a value the theory does describe keeps it."""
    from infalign.report.collect import collect
    from infalign.report.series import theory_transform
    from infalign.report.theory_gap import theory_gap_rows

    for job, value in enumerate([without, *kept]):  # (distinct KLs: the same run twice is a duplicate)
        m = per_prompt_metrics("identity", MUT_INFO, 0.3 + 0.2 * job, 0.3, {})
        m["config"]["transform"] = IDENTITY
        setting(m, value)
        write_job(tmp_path, str(job), ["method=identity"], m)
    jobs = {j.job: j for j in collect(tmp_path)}
    transform, reason = theory_transform(jobs["0"])
    assert transform is None and why in reason
    assert all(theory_transform(jobs[str(k)])[0] is not None for k in range(1, len(kept) + 1))
    assert {r["job"] for r in theory_gap_rows(list(jobs.values()))} == {str(k) for k in range(1, len(kept) + 1)}


def test_a_record_with_the_exact_theory_is_marked_in_the_theory_gap(tmp_path):
    """A record written before the theory beside a run tilted Phi_K (its eval.theory has no ``table`` and its KL
    at beta is the exact transform's) carries the exact theory, while the report's curves tilt Phi_K
    (docs/method.md §4.1): its theory-gap rows say so (review: one report mixed both silently). Not marked: a
    record with the table's settings, and one that tilted Phi_K without the marker (review: the code between the
    two changes wrote such records), told apart by its theory KL at beta."""
    from infalign.math import theory
    from infalign.math.finite_k import FiniteK
    from infalign.math.procedures import BestOfN
    from infalign.math.transforms import Identity
    from infalign.report.collect import collect
    from infalign.report.theory_gap import EXACT_THEORY_NOTE, theory_gap_rows

    cal = {"K": 4, "smoothing": True, "scope": "prompt"}  # (identity through 4 smoothed samples: 0.8 of its range)
    exact, finite = (theory.evaluate(t, 0.3, BestOfN(4))[0].kl for t in (Identity(), FiniteK(Identity(), 4, True)))
    assert abs(exact - finite) > 0.01
    for job, table, kl in (("0", None, exact), ("1", {"K": 4, "smoothing": True}, finite), ("2", None, finite)):
        m = per_prompt_metrics("identity", MUT_INFO, 0.3 + 0.2 * int(job), 0.3, {})
        m["config"]["transform"] = IDENTITY
        m["config"]["calibration"] = cal
        m["eval"]["theory"]["kl"] = kl
        if table:
            m["eval"]["theory"]["table"] = table
        write_job(tmp_path, job, ["method=identity"], m)
    rows = theory_gap_rows(collect(tmp_path))
    marked = {r["job"] for r in rows if EXACT_THEORY_NOTE in (r.get("note") or "")}
    assert marked == {"0"} and {r["job"] for r in rows} == {"0", "1", "2"}


def _exact_and_finite_records(tmp_path, jobs):
    """Write ``jobs``: ``(job, exact record?, measured KL)`` of one identity method at beta 0.3, K = 4 smoothed;
    a record is exact (no ``table`` marker, the exact transform's theory KL) or ``Phi_K``'s."""
    from infalign.math import theory
    from infalign.math.finite_k import FiniteK
    from infalign.math.procedures import BestOfN
    from infalign.math.transforms import Identity

    exact, finite = (theory.evaluate(t, 0.3, BestOfN(4))[0].kl for t in (Identity(), FiniteK(Identity(), 4, True)))
    for job, is_exact, kl in jobs:
        m = per_prompt_metrics("identity", MUT_INFO, kl, 0.3, {})
        m["config"]["transform"] = IDENTITY
        m["config"]["calibration"] = {"K": 4, "smoothing": True, "scope": "prompt"}
        m["eval"]["theory"]["kl"] = exact if is_exact else finite
        if not is_exact:  # (the newer code's record: another evaluation digest)
            m["eval"]["theory"]["table"] = {"K": 4, "smoothing": True}
        m["code"] = {"training": "t", "evaluation": "exact" if is_exact else "finite"}
        write_job(tmp_path, job, ["method=identity"], m)
    return exact, finite


def test_of_one_policy_recorded_both_ways_the_phi_k_record_is_weighed_whatever_the_order(tmp_path):
    """A cached policy evaluated again by the newer code gives a second record of the same measurement (same
    world, method, seed, beta and measured KL), one with the exact theory, one with Phi_K: the theory gap weighs
    the Phi_K one whether its job comes first or last (review: the first job in the directory's order was
    weighed), and the rows keep the jobs' order."""
    from infalign.report.collect import collect
    from infalign.report.theory_gap import median_theory_gap, theory_gap_rows

    for order in (("0", "1"), ("1", "0")):  # (job "0" in the first directory, "1" in the second, is exact)
        root = tmp_path / "".join(order)
        _, finite = _exact_and_finite_records(root, [(order[0], True, 0.3), (order[1], False, 0.3)])
        rows = theory_gap_rows(collect(root))
        assert [r["job"] for r in rows][0] == "0"  # (directory order kept)
        weighed = [r for r in rows if not r.get("repeat_of")]
        assert {r["job"] for r in weighed} == {order[1]} and all(not r["exact_theory_record"] for r in weighed)
        assert {r["repeat_of"] for r in rows if r["job"] == order[0]} == {order[1]}
        entry = median_theory_gap(rows)["identity"]
        assert entry["median_kl_ratio"] == pytest.approx(0.3 / finite, rel=1e-9)
        assert (entry["runs"], entry["exact_theory"], entry["runs_exact_theory_left_out"]) == (1, False, 0)


def test_a_methods_medians_do_not_pool_exact_theory_records_with_phi_k_ones(tmp_path):
    """docs/method.md §4.1: a smoothed K = 4 table moves the theory KL at beta by far more than noise, so a
    method's median KL ratio over older (exact-theory) and newer (Phi_K) records mixes two theories (review: the
    rows were marked, the medians and the md reading were not). Its exact records are left out and counted when it
    has Phi_K ones; a method of exact records only keeps them and says so."""
    from infalign.report.collect import collect
    from infalign.report.theory_gap import median_theory_gap, runs_cell, theory_gap_markdown, theory_gap_rows

    exact, finite = _exact_and_finite_records(tmp_path / "mixed", [("0", True, 0.2), ("1", False, 0.3),
                                                                    ("2", True, 0.4)])
    assert abs(exact / finite - 1) > 0.05  # (the two theories' KLs differ: the test can tell them apart)
    entry = median_theory_gap(theory_gap_rows(collect(tmp_path / "mixed")))["identity"]
    assert entry["median_kl_ratio"] == pytest.approx(0.3 / finite, rel=1e-9)
    assert (entry["runs"], entry["runs_exact_theory_left_out"], entry["exact_theory"]) == (1, 2, False)
    assert runs_cell(entry) == "1 (+2 of the exact theory, left out)"

    _exact_and_finite_records(tmp_path / "old", [("0", True, 0.2), ("2", True, 0.4)])
    summary = median_theory_gap(theory_gap_rows(collect(tmp_path / "old")))
    entry = summary["identity"]
    assert entry["median_kl_ratio"] == pytest.approx(0.3 / exact, rel=1e-9)
    assert (entry["runs"], entry["runs_exact_theory_left_out"], entry["exact_theory"]) == (2, 0, True)
    assert "| 2 (exact theory: older records) |" in theory_gap_markdown(summary)


def _gap_row(job: str, run: str, metric: str, gap, kl_ratio: float, exact: bool) -> dict:
    return {"job": job, "run": run, "method": "m", "metric": metric, "gap": gap, "kl_ratio": kl_ratio,
            "ci_half_width": 0.05, "seed": 0, "world_id": None, "exact_theory_record": exact}


def test_the_medians_leave_out_exact_rows_row_by_row_and_keep_them_when_no_phi_k_row_has_a_gap():
    """Review of the first version: (1) an older exact record of a policy with a metric its Phi_K record lacks
    (another eval.ns) gives a row that carries the Phi_K record's run -- leaving out by run dropped the Phi_K
    measurement too (runs 0, no KL ratio); rows are left out by their own flag. (2) A method whose only rows with
    a gap are exact, its Phi_K run without a theory point, read "no run has a theory point": its exact rows make
    its medians, marked, and the Phi_K run counts as without one."""
    from infalign.report.theory_gap import median_theory_gap, runs_cell

    rows = [_gap_row("1", "1", S, 0.01, 1.19, False), _gap_row("1", "1", B4, 0.02, 1.19, False),
            _gap_row("0", "1", "bon2_win_rate", 0.30, 1.0, True)]
    entry = median_theory_gap(rows)["m"]
    assert (entry["runs"], entry["median_kl_ratio"], entry["runs_exact_theory_left_out"]) == (1, 1.19, 0)
    assert set(entry["median_abs_gap"]) == {S, B4} and not entry["exact_theory"]
    rows = [_gap_row("0", "0", S, 0.01, 0.9, True), _gap_row("1", "1", S, 0.03, 1.1, True),
            _gap_row("2", "2", None, None, 1.0, False)]
    entry = median_theory_gap(rows)["m"]
    assert entry["exact_theory"] and (entry["runs"], entry["runs_without_theory"]) == (2, 1)
    assert entry["median_kl_ratio"] == pytest.approx(1.0) and "no run has a theory point" not in entry["reading"]
    assert runs_cell(entry) == "2 (+1 without a theory point) (exact theory: older records)"


def test_the_theory_gap_table_has_as_many_columns_in_every_row_when_no_method_has_a_gap():
    from infalign.report.theory_gap import median_theory_gap, theory_gap_markdown

    table = [line for line in theory_gap_markdown(median_theory_gap([_gap_row("0", "0", None, None, 1.0, False)]))
             .splitlines() if line.startswith("|")]
    assert len(table) == 3 and len({line.count("|") for line in table}) == 1, table


def test_the_reports_theory_curve_tilts_each_runs_reward_as_trained(tmp_path):
    """report/series.theory_transform: the run's transform through its own calibration.K and smoothing."""
    from infalign.math.finite_k import FiniteK
    from infalign.report.collect import collect
    from infalign.report.series import theory_transform

    m = per_prompt_metrics("identity", MUT_INFO, 0.3, 0.3, {})
    m["config"]["transform"] = IDENTITY
    m["config"]["calibration"] = {"K": 12, "smoothing": True, "scope": "prompt"}
    write_job(tmp_path, "0", ["method=identity"], m)
    (job,) = collect(tmp_path)
    transform, why = theory_transform(job)
    assert why == "" and isinstance(transform, FiniteK) and (transform.k, transform.smoothing) == (12, True)


def test_theory_grid_spacing_floor_and_width():
    from infalign.report.series import MIN_THEORY_KL, theory_grid

    np.testing.assert_allclose(theory_grid([(0.01, 0.01, 0.01), (1.0, 1.0, 1.0)], 5), np.geomspace(0.01, 1.0, 5))
    np.testing.assert_allclose(theory_grid([(0.3, 0.3, 0.3)], 3), np.linspace(0.3, 0.45, 3))
    g = theory_grid([(0.0005, -0.01, 0.002), (0.5, 0.4, 0.6)], 4)
    assert g.min() >= MIN_THEORY_KL and g.max() == pytest.approx(0.6)


def test_series_theory_spans_every_series_and_offline_baselines_are_named_by_algo(tmp_path):
    from infalign.report.collect import collect
    from infalign.report.series import build_series

    write_job(tmp_path, "0", [], fake_metrics(IDENTITY, "identity", 0.3, kl=0.25, std=0.62, win=0.70))
    write_job(tmp_path, "1", [], fake_metrics(RAW, "raw", 1.0, kl=1.20, std=0.60, win=0.65))
    ipo = fake_metrics(exp_cfg(4.0), "exp(t=4)", 0.3, 0.4, 0.6, 0.7)
    ipo["algo"], ipo["config"]["algo"]["name"] = "ipo", "ipo"
    write_job(tmp_path, "2", [], ipo)
    series = {s.label: s for s in build_series(collect(tmp_path), ["reward_model"])}
    assert max(series["identity"].theory["reward_model"]["kl"]) == pytest.approx(1.22)  # raw's KL CI: the whole plot
    assert series["ipo"].family == "ipo"


def test_a_theory_curve_keeps_only_converged_points(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from infalign.math import theory
    from infalign.report.collect import collect
    from infalign.report.series import build_series

    def frontier(transform, procedure, grid):
        grid = np.asarray(grid, float)
        n = len(grid)
        return SimpleNamespace(transform="identity", kl_budget=grid, beta=np.ones(n), standard_win_rate=np.full(n, .6),
                               win_rate=np.full(n, .7), valid=np.arange(n) < n - 1, reachable=np.ones(n, bool))

    monkeypatch.setattr(theory, "frontier", frontier)
    write_job(tmp_path, "0", ["method=identity"], per_prompt_metrics("identity", MUT_INFO, 0.3, 0.3, {}))
    (s,) = build_series(collect(tmp_path), ["reward_model"])
    assert len(s.theory["reward_model"]["unreachable_kl"]) == 1


def test_number_rejects_bools():
    from infalign.report.naming import number

    assert number(True) is None and number(1) == 1.0


def test_the_main_world_is_the_finished_runs_and_the_majority_setting_not_the_first(tmp_path):
    from infalign.report.collect import collect
    from infalign.report.matched import panel_runs
    from infalign.report.naming import method_of

    for job, world in enumerate(["A", "A"]):
        m = per_prompt_metrics("identity", MUT_INFO, 0.2 + 0.2 * job, 0.3, {})
        m["world"] = {"world_id": world}
        m["config"]["calibration"] = {"K": 64 if job == 0 else 32}
        write_job(tmp_path, str(job), ["method=identity"], m)
    m = per_prompt_metrics("identity", MUT_INFO, 0.7, 0.3, {})
    m["world"] = {"world_id": "A"}
    m["config"]["calibration"] = {"K": 32}
    write_job(tmp_path, "2", ["method=identity"], m)
    for job in (3, 4, 5, 6):  # failed runs of another world (more than the finished ones)
        failed = {"status": "failed", "error": "boom", "world": {"world_id": "B"}, "config": m["config"]}
        write_job(tmp_path, str(job), ["method=identity"], failed)
    jobs = collect(tmp_path)
    assert [method_of(j) for j in jobs[:3]] == ["identity [calibration.K=64]", "identity", "identity"]
    panels, notes = panel_runs(jobs, ["reward_model"])
    assert notes == [] and {r.label for runs in panels.values() for r in runs} == {"0", "1", "2"}


def test_the_theory_gap_stays_the_reward_models_under_judge_gold_and_bootstrap_floor(tmp_path):
    from infalign.errors import ConfigError
    from infalign.report.build import build_report

    write_job(tmp_path, "0", [], fake_metrics(IDENTITY, "identity", 0.3, kl=0.25, std=0.62, win=0.70))
    rep = build_report(tmp_path, tmp_path / "report", judge="gold", num_resamples=100)
    assert rep.summary["theory_gap"]["identity"]["median_gap"][B4] == pytest.approx(0.70 - 0.77)
    with pytest.raises(ConfigError):
        build_report(tmp_path, tmp_path / "r2", num_resamples=99)


def test_plots_draw_the_columns_theory_and_verdicts_they_name(tmp_path, monkeypatch):
    from infalign.infra import plotting
    from infalign.report.collect import collect
    from infalign.report.plots import plot_gains, plot_series
    from infalign.report.series import build_series

    figures = []
    monkeypatch.setattr(plotting, "save_png", lambda fig, path: figures.append(fig))
    write_job(tmp_path, "0", [], fake_metrics(IDENTITY, "identity", 0.1, kl=0.80, std=0.72, win=0.83))
    write_job(tmp_path, "1", [], fake_metrics(IDENTITY, "identity", 0.3, kl=0.25, std=0.62, win=0.70))
    (s,) = build_series(collect(tmp_path), ["reward_model"])
    plot_series([s], ["reward_model"], "standard", tmp_path / "s.png")
    ax = figures[-1].axes[0]
    data, theory_line = ax.containers[0].lines[0], next(ln for ln in ax.lines if ln.get_linestyle() == "--")
    assert data.get_xdata().tolist() == [0.25, 0.80] and data.get_ydata().tolist() == [0.62, 0.72]  # sorted by KL
    assert theory_line.get_ydata().tolist() == s.theory["reward_model"]["standard_win_rate"]
    g = _gain([0.01, 0.02, 0.01], [True, False, True], [True, True, True])
    # the chords alone make at most 0.02 at the last KL, more than the gain's intervals clear: not evidence
    g.chord_low, g.chord_high = np.array([0.0, 0.0, -0.02]), np.array([0.0, 0.0, 0.02])
    plot_gains([_panel([0.1, 0.2, 0.3], [g])], ["reward_model"], tmp_path / "g.png")
    ax = figures[-1].axes[0]
    faces = [f[:3].tolist() for f in ax.collections[-1].get_facecolors()]
    # filled = significant and beyond the chord check (review: a chord-flagged cell was drawn filled)
    assert faces[0] != [1.0, 1.0, 1.0] and faces[1] == faces[2] == [1.0, 1.0, 1.0]
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(100 * g.low.min()) and band.max() == pytest.approx(100 * g.high.max())


def test_the_bootstrap_option_reaches_the_report(tmp_path, capsys):
    from infalign.apps.report import main

    write_job(tmp_path, "0", [], fake_metrics(IDENTITY, "identity", 0.3, kl=0.25, std=0.62, win=0.70))
    assert main([str(tmp_path), "--no-wandb", "--bootstrap", "50"]) == 2
    assert "--bootstrap=50" in capsys.readouterr().err  # the option's own name
    # a baseline no run of the sweep has (a typo) compared nothing, silently: refused, naming the methods
    assert main([str(tmp_path), "--no-wandb", "--baseline", "identiy"]) == 2
    err = capsys.readouterr().err
    assert "--baseline=['identiy']" in err and "identity" in err


def test_the_inference_plot_has_one_row_per_procedure_holding_only_its_series(tmp_path, monkeypatch):
    """A sweep over bon4 and won4: the inference-time plot draws one row per procedure, each with that
    procedure's series only (its win rate is another quantity than the other row's)."""
    from infalign.infra import plotting
    from infalign.report.collect import collect
    from infalign.report.plots import plot_series
    from infalign.report.series import build_series

    info = {"algo": "rloo", "transform": "identity", "depends_on_n": False, "trained_n": 4}
    for job, name in enumerate(["bon", "won"]):
        metrics = per_prompt_metrics("identity", info, 0.3, 0.3, {})
        metrics["config"]["procedure"]["name"] = name
        metrics["procedure"] = f"{name}4"
        for section in (metrics["eval"]["judges"], metrics["eval"]["per_prompt"]):  # won4's own column
            section["reward_model"][f"{name}4_win_rate"] = section["reward_model"]["bon4_win_rate"]
        write_job(tmp_path, str(job), ["method=identity"], metrics)
    figures = []
    monkeypatch.setattr(plotting, "save_png", lambda fig, path: figures.append(fig))
    series = build_series(collect(tmp_path), ["reward_model"])
    plot_series(series, ["reward_model"], "inference", tmp_path / "i.png")
    rows = [[c.get_label() for c in ax.containers] for ax in figures[0].axes]
    by_procedure = {s.procedure: s.label for s in series}
    assert rows == [[by_procedure[p]] for p in sorted(by_procedure)]


def test_a_sweep_without_gold_reports_the_reward_model_alone(tmp_path):
    """Real-data runs have no gold judge: the report's judges are those the records hold (no empty gold
    tables, columns or plots)."""
    from infalign.report.build import build_report

    metrics = fake_metrics(IDENTITY, "identity", 0.3, kl=0.25, std=0.62, win=0.70)
    for section in ("judges", "per_prompt"):
        metrics["eval"].get(section, {}).pop("gold", None)
    write_job(tmp_path, "0", [], metrics)
    rep = build_report(tmp_path, tmp_path / "report", num_resamples=100)
    assert rep.judges == ["reward_model"]
    assert not any(k.startswith("gold_") for k in rep.rows[0])


def test_method_option_names_only_finished_runs_methods(tmp_path):
    """``--method exp(t=4)`` where exp(t=4)'s only run failed: refused before anything is written, the
    message listing the finished runs' methods (a failed run has no metrics to compare)."""
    from infalign import report as rep
    from infalign.errors import ConfigError

    root = make_sweep(tmp_path / "multirun")
    assert "exp(t=4)" in {rep.method_of(j) for j in rep.collect(root)}  # the failed job 4 carries it
    with pytest.raises(ConfigError, match=r"--method.*exp\(t=4\).*finished runs: exp\(t=2\), identity, raw$"):
        rep.build_report(root, tmp_path / "out", methods=["exp(t=4)"])
    assert not (tmp_path / "out").exists()  # refused before any table or plot was written
    # a --method report's theory_gap.md names the calibrated methods its comparison leaves out
    rep.build_report(root, tmp_path / "out", methods=["exp(t=2)", "raw"], num_resamples=100)
    assert "leaves out (--method): identity." in (tmp_path / "out" / "theory_gap.md").read_text()


def test_skip_absent_leaves_out_a_method_without_finished_runs_and_says_so(tmp_path):
    """A statistics review: infalign-paper narrowed with ``method=...`` (or a method whose jobs all failed) had its
    sub-reports refused (``--method`` of a method without finished runs), and findings.md called the whole
    experiment "not run?". With ``skip_absent`` (``--skip-absent``, what infalign-paper passes) the absent
    ``--method`` / ``--baseline`` is left out, the comparison's notes say so, and findings.py reads that note as the
    reason the claim's comparison is missing."""
    import json

    from infalign import report as rep
    from infalign.report.findings import Claim, read_claim

    root = make_sweep(tmp_path / "multirun")
    out = tmp_path / "multirun" / "report_t"
    rep.write_summary(rep.build_report(root, out, methods=["exp(t=4)", "exp(t=2)", "raw"],
                                       baselines=["raw", "expn(t=9)"], num_resamples=100, skip_absent=True))
    notes = json.loads((out / "summary.json").read_text())["matched_kl"]["notes"]
    assert notes[:2] == ["--method exp(t=4): no finished runs -- left out of the comparison",
                         "--baseline expn(t=9): not in the sweep -- left out of the comparison"]
    rows = list(csv.DictReader((out / "matched_kl.csv").open()))  # (this fake sweep has no per-prompt data)
    assert not {"exp(t=4)", "expn(t=9)"} & {r[k] for r in rows for k in ("method", "baseline")}
    (c,) = read_claim(Claim("x", "multirun/report_t", "claim", ("bon4",), ("exp(t=4)",), "raw", +1),
                      tmp_path).comparisons
    assert c.why == "--method exp(t=4): no finished runs -- left out of the comparison"
    (c,) = read_claim(Claim("multirun", "multirun/report_nosuch", "claim", ("bon4",), ("exp(t=4)",), "raw", +1),
                      tmp_path).comparisons
    assert "experiment 'multirun' has a dir, but this report of it is missing" in c.why


def test_left_out_groups_a_methods_runs_by_reason_and_names_the_seeds():
    """A method whose every seed has a single distinct KL (a KL knob that did nothing) has no curve: the
    panel's sentences would simply not mention it. ``left_out`` says so, one line per method and reason."""
    from infalign.math.matched_kl import Run, matched_kl
    from infalign.report.matched import left_out

    ids = tuple(str(i) for i in range(8))
    z = np.linspace(-1, 1, 8)
    runs = [Run(m, s, np.full(8, kl), 0.5 + 0.1 * kl + 0.01 * z, ids, f"{m}{s}{kl}")
            for m, kls in (("identity", (0.1, 0.5)), ("raw", (0.1, 0.5)), ("bon_sft(N=4)", (0.3, 0.3)))
            for s in range(3) for kl in kls]
    runs.append(Run("raw", 0, np.full(7, 0.2), np.full(7, 0.5), ids[:7], "short"))
    res = matched_kl(runs, baselines=["identity", "ipo(N=4)"], num_resamples=20)
    assert res.common and {g.method for g in res.gains} == {"raw"}
    assert left_out(res) == [
        "baseline(s) without a curve on this panel: ipo(N=4)",
        "raw: 1 run left out: 7 KL / 7 metric values, the panel has 8 prompts",
        "bon_sft(N=4): 6 runs left out (seeds 0, 1, 2): fewer than 2 runs with distinct KL, no curve",
    ]


@pytest.mark.slow
def test_a_finding_is_read_off_a_real_report(matched_sweep, tmp_path):
    """report/findings.py reads the columns infalign-report writes (not a copy of them): the fake sweep's
    known bon4 gain of expn(t=4) over identity at the middle common KL, one seed (no verdict)."""
    from infalign.report.findings import Claim, read_claim

    root, _, _ = matched_sweep
    claim = Claim("bon", "report", "exp(t) beats identity", ("bon4",), ("expn(t=4)",), "identity", +1)
    (c,) = read_claim(claim, root).comparisons
    assert c.kl == pytest.approx(np.linspace(0.2, 0.9, 6)[3]) and c.gain == pytest.approx(GAIN_BON4, abs=1e-9)
    assert c.num_kls == 6 and c.n_seeds == 1 and c.outcome.startswith("no verdict")
    assert read_claim(Claim("bon", "report", "x", ("bon4",), ("identity",), "raw", +1), root).comparisons[0].gain \
        == pytest.approx(0.01, abs=1e-9)


def test_a_one_seed_gain_made_of_two_straight_lines_says_the_chord_check_cannot_be_made():
    """A first sweep (walkthrough finding): one seed, two KLs per method, one method's KLs inside the
    other's range. The report said "expn(t=4) is behind identity on these prompts: -1.8 [-2.9, -0.8]"
    with nothing beside it -- pure chord sag (theory: +4.9). The clause now carries the chord note."""
    from infalign.math.matched_kl import Run, matched_kl
    from infalign.report.matched import gain_clause

    P, ids = 40, [f"p{i}" for i in range(40)]
    wr = lambda k: 0.5 + 0.2 * np.sqrt(k)  # noqa: E731  one concave truth for both
    runs = [Run(m, 0, np.full(P, k), np.full(P, wr(k)) + np.linspace(-0.01, 0.01, P), ids, f"{m}{k}")
            for m, kls in (("identity", (0.6, 1.4)), ("expn(t=4)", (0.2, 2.0))) for k in kls]
    result = matched_kl(runs, num_kl=5, num_resamples=200, baselines=["identity"])
    (g,) = result.gains
    i = int(np.argmax(np.abs(g.gain)))
    assert g.seed_test == "none" and g.prompt_significant[i] and g.gain[i] < 0  # the chords' sag alone
    clause = gain_clause(_panel(result.grid, [g]), g, i)
    assert clause.startswith("expn(t=4) is behind identity on these prompts")
    assert "the chord check cannot be made here" in clause and clause.endswith("not evidence")


def test_an_interrupted_job_is_listed_as_interrupted_with_how_to_continue_it(tmp_path):
    """A walkthrough's Ctrl-C'd job read "missing" in the report (as if it had never run)."""
    from infalign.report.collect import load_job

    job_dir = tmp_path / "3"
    job_dir.mkdir()
    (job_dir / "metrics.json").write_text(json.dumps({
        "status": "interrupted", "error": "KeyboardInterrupt: interrupted by the user (Ctrl-C)",
        "overrides": ["algo.beta=0.3"]}))
    job = load_job(job_dir, tmp_path)
    assert job.status == "interrupted" and job.overrides == ["algo.beta=0.3"]
    # a lone run (no multirun.yaml beside it): its command; ckpt_path=last only once it left a checkpoint
    assert job.reason == (f"KeyboardInterrupt: interrupted by the user (Ctrl-C); infalign-train algo.beta=0.3 "
                          f"hydra.run.dir={job_dir} continues it (it stopped before its first checkpoint)")
    (job_dir / "checkpoints").mkdir()
    (job_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert load_job(job_dir, tmp_path).reason.endswith(f"infalign-train algo.beta=0.3 hydra.run.dir={job_dir} "
                                                       "ckpt_path=last continues it")
    # a job of a sweep below the reported dir is continued by that sweep, in its own dir (walkthrough finding:
    # "the sweep again" read as the reported dir's, whose re-run with other values is refused)
    sub = tmp_path / "more" / "0"
    sub.mkdir(parents=True)
    (sub / "metrics.json").write_text((job_dir / "metrics.json").read_text())
    (tmp_path / "more" / "multirun.yaml").write_text("hydra: {}\n")
    assert load_job(sub, tmp_path).reason.endswith(
        f"its sweep again (the same command, hydra.sweep.dir={tmp_path / 'more'}) with ckpt_path=last_or_new "
        "continues it")


def test_the_chord_checks_bounds_are_the_three_intervals_inner_ends_and_the_count_is_by_sign():
    """gain_bounds hands chord_note the inner ends of all three intervals -- prompt CI, seed and
    total -- so the widest (the total's, +0.5 points here) decides whether a gain clears the chords;
    significant_count counts only the significant KLs by sign: one significant KL of two, +3 points,
    is "+1 −0" (the other KL's +2 is positive but not significant and counts for neither)."""
    from infalign.math.matched_kl import Gain
    from infalign.report.matched import gain_bounds, significant_count

    def a(*v):
        return np.array(v, float)

    g = Gain("expn(t=4)", "identity", a(0.03), a(0.02), a(0.04), 3, a(0.01), np.array([True]), a(0.015), a(0.045),
             "paired", 3, np.array([True]), a(0.005), a(0.055))
    assert gain_bounds(g, 0) == pytest.approx([0.02, 0.015, 0.005], abs=1e-12)
    two = Gain("expn(t=4)", "identity", a(0.03, 0.02), a(0.02, 0.01), a(0.04, 0.03), 3, a(0.01, 0.01),
               np.array([True, False]), a(0.015, 0.005), a(0.045, 0.035), "paired", 3, np.array([True, False]),
               a(0.005, -0.005), a(0.055, 0.045))
    assert significant_count(two, 2) == "significant at 1 of 2 KLs: +1 −0"


def test_training_settings_are_compared_within_each_world(tmp_path):
    """Two worlds each train identity at their own steps (W1: 100, W2: 200): within each world every
    identity run was trained alike, so none is another method. Pooled across worlds the 3-3 tie would
    name W2's runs ``identity [algo.steps=200]`` (the first sorted value, 100, counted as "most")."""
    from infalign.report.collect import collect

    rloo = {"algo": "rloo", "transform": "identity", "depends_on_n": False, "trained_n": 4,
            "kl_knob": ["algo.beta", "algo.kl_target"]}
    job = 0
    for world, steps in (("W1", 100), ("W2", 200)):
        for beta in (0.4, 0.2, 0.1):
            metrics = per_prompt_metrics("identity", rloo, 0.2 + 0.1 * job, beta, {})
            metrics["world"] = {"world_id": world}
            metrics["config"] |= {"algo": {"name": "rloo", "beta": beta, "kl_target": 0.1, "steps": steps,
                                           "lr": 1e-4}, "data": {"train_prompts": 64}}
            write_job(tmp_path, str(job), ["method=identity"], metrics)
            job += 1
    jobs = collect(tmp_path)  # (collect applies mark_odd_settings)
    assert [j.status for j in jobs] == ["finished"] * 6
    assert [j.method_note for j in jobs] == [""] * 6


def test_the_same_run_reported_twice_is_counted_once(tmp_path):
    """Numbers audit: two sweeps reported together, each with the identity arm of the same settings and seed
    (the second served from the policy and pool caches), counted that run twice -- in n_runs, the matched-KL
    curves and the theory-gap medians. The later job is ``duplicate``, naming the first; another seed is not."""
    root = tmp_path / "multirun"
    same = fake_metrics(IDENTITY, "identity", 0.3, kl=0.25, std=0.62, win=0.70)
    write_job(root / "a", "0", ["transform=identity"], same)
    write_job(root / "a", "1", ["transform=exp"], fake_metrics(exp_cfg(2.0), "exp(t=2)", 0.5, kl=0.4, std=0.64,
                                                               win=0.76))
    write_job(root / "b", "0", ["transform=identity"], same)
    other_seed = json.loads(json.dumps(same))
    other_seed["seed"] = other_seed["config"]["seed"] = 1
    write_job(root / "b", "1", ["transform=identity", "seed=1"], other_seed)
    rc, stdout = run_main(str(root), "--no-wandb")
    assert rc == 0
    rows = {r["job"]: r for r in read_csv(root / "report" / "runs.csv")}
    assert [rows[j]["status"] for j in ("a/0", "a/1", "b/0", "b/1")] == ["finished", "finished", "duplicate",
                                                                         "finished"]
    assert "the same run as a/0" in rows["b/0"]["error"]
    summary = json.loads((root / "report" / "summary.json").read_text())
    assert summary["counts"]["duplicate"] == 1 and summary["counts"]["finished"] == 3
    assert [p["job"] for p in summary["problems"]] == ["b/0"]
    assert "1 duplicate" in stdout and "the same run as a/0" in stdout


def test_a_method_whose_kl_turns_back_along_its_knob_gets_a_note(tmp_path):
    """report/matched.knob_order_notes: ordered by its KL knob (here algo.beta, the legacy records' knob), a
    method's KL that turns back by more than both runs' CIs is noted (walkthrough: BoN-SFT's SFT steps); one
    that falls steadily, or turns back within noise, is not."""
    from infalign.report.collect import collect
    from infalign.report.matched import knob_order_notes

    for job, (beta, kl) in enumerate(((0.1, 0.80), (0.3, 0.25), (1.0, 0.60))):  # back up at beta 1: noted
        write_job(tmp_path / "a", str(job), [], fake_metrics(IDENTITY, "identity", beta, kl=kl, std=0.6, win=0.7))
    for job, (beta, kl) in enumerate(((0.1, 0.80), (0.3, 0.25), (1.0, 0.27))):  # back up by 0.02: CIs overlap
        write_job(tmp_path / "b", str(job), [], fake_metrics(IDENTITY, "identity", beta, kl=kl, std=0.6, win=0.7))
    (note,) = knob_order_notes(collect(tmp_path / "a"))
    assert note.startswith("identity, seed 0: its KL is not monotone in algo.beta (0.1, 0.3, 1 -> KL 0.80, 0.25, 0.60)")
    assert knob_order_notes(collect(tmp_path / "b")) == []
    # a report comparing other methods (--method) has no note of this one (review finding)
    from infalign.report.matched import panel_runs

    knob = [n for n in panel_runs(collect(tmp_path / "a"), ["reward_model"])[1] if "not monotone" in n]
    assert knob == [note]
    assert not [n for n in panel_runs(collect(tmp_path / "a"), ["reward_model"], ["raw"])[1] if "not monotone" in n]
