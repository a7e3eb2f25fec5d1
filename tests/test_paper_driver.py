"""``infalign-paper`` (apps/paper.py): the plan of commands, bad options, and the time table --
with a fake runner in place of the sweeps (the sweeps themselves are tested as config entries)."""

import json
import shutil
from pathlib import Path

import pytest

from infalign.apps import paper
from infalign.apps.config import CONFIG_DIR

SWEEPS = Path(CONFIG_DIR).parent / "sweeps"


def args(*argv: str, out: Path | None = None):
    a = paper.parse_args(list(argv))
    a.out = out or Path("OUT")
    return a


def fake_sweep(cmd: list[str], **times) -> None:
    """What an ``infalign-train -m`` command leaves for the time table: its sweep dir (``hydra.sweep.dir``)
    with a ``sweep_time.json`` of ``times``."""
    sweep_dir = Path(next(c for c in cmd if c.startswith("hydra.sweep.dir=")).split("=", 1)[1])
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "sweep_time.json").write_text(json.dumps(times))


def test_every_experiment_names_a_sweep_that_exists():
    # bon trains first: null (its identity and exp(t=8) runs), standard and won load policies from it
    assert [e.name for e in paper.EXPERIMENTS][:4] == ["calibration", "bon", "null", "standard"]
    for e in paper.EXPERIMENTS:
        assert e.sweep is None or (SWEEPS / f"{e.sweep}.yaml").is_file(), e


def test_dry_run_prints_every_command_in_order_with_seeds_and_extra_overrides():
    lines = []
    a = args("--seeds", "0,2", "--only", "won,bon", "--n-jobs", "3", "--dry-run", "--", "logger=none")
    assert paper.run_all(a, runner=lambda cmd: pytest.fail("ran"), echo=lines.append) == 0
    assert lines == [
        "infalign-train -m +sweeps=paper_bon seed=0,2 hydra.sweep.dir=OUT/bon hydra/launcher=local_parallel "
        "hydra.launcher.n_jobs=3 logger=none",
        "infalign-report OUT/bon",
        # the README's narrower reports: the transforms alone (common KLs not cut by the baselines),
        # every t against the others, the baselines -- each leaving out, with a note, a method the sweep (narrowed by
        # method=..., or its jobs failed) has no finished runs of (review: the report was refused, the findings lost)
        "infalign-report OUT/bon --out OUT/bon/report_transforms --skip-absent --method raw --method identity "
        "--method 'expn(t=4)' --method 'expn(t=8)' --method 'expn(t=16)'",
        "infalign-report OUT/bon --out OUT/bon/report_t --skip-absent --method 'expn(t=4)' --method 'expn(t=8)' "
        "--method 'expn(t=16)' --baseline 'expn(t=4)' --baseline 'expn(t=8)'",
        "infalign-report OUT/bon --out OUT/bon/report_baselines --skip-absent --method raw --method identity "
        "--method 'bon_sft(N=4)' --method 'ipo(N=4)'",
        "infalign-train -m +sweeps=paper_won seed=0,2 hydra.sweep.dir=OUT/won hydra/launcher=local_parallel "
        "hydra.launcher.n_jobs=3 logger=none",
        "infalign-report OUT/won",
    ]
    calibration = paper.plan(args("--only", "calibration"))[0][1]
    assert calibration == [["infalign-calibration", "hydra.run.dir=OUT/calibration"]]
    # the README's grid-narrowing overrides go to the sweeps only: the single-run calibration app refused
    # them ("Ambiguous value") and the driver stopped
    steps = paper.plan(args("--only", "calibration,bon", "--", "kl_point=1,2,3", "method=raw,identity",
                            "logger=none", "seed=range(0,2)"))
    assert steps[0][1] == [["infalign-calibration", "hydra.run.dir=OUT/calibration", "logger=none"]]
    assert "kl_point=1,2,3" in steps[1][1][0] and "method=raw,identity" in steps[1][1][0]


def test_default_out_dirs_of_drivers_started_in_one_second_differ(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setenv("INFALIGN_ROOT", str(tmp_path))
    monkeypatch.setattr(paper, "run_all", lambda a: seen.append(a.out) or 0)
    for _ in range(2):
        with pytest.raises(SystemExit):
            paper.main(["--dry-run"])
    assert len(seen) == 2 and seen[0] != seen[1] and seen[0].parent == tmp_path / "outputs" / "paper"


@pytest.mark.parametrize("argv, message", [
    (["--only", "bon,bonn"], "--only: unknown experiment(s) ['bonn']; allowed: calibration, bon,"),
    (["--seeds", "0,x"], "--seeds='0,x': need comma-separated integers"),
    (["--seeds", ""], "--seeds='': need comma-separated integers"),
    (["--n-jobs", "0"], "--n-jobs=0: need >= 1"),
])
def test_bad_options_exit_2_naming_the_option(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        paper.main([*argv, "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_time_table_counts_every_step_and_a_failure_does_not_stop_the_rest(tmp_path):
    ran = []

    def runner(cmd):
        ran.append(cmd[0])
        if cmd[0] == "infalign-train":
            hits = 4 if "paper_won" in cmd[2] else 0
            fake_sweep(cmd, jobs=10, finished=9, policy_cache_hits=hits, eval_pool_hits=hits - 1)
            return 1 if "paper_bon" in cmd[2] else 0  # one job of bon failed: the sweep exits 1
        return 0

    code = paper.run_all(args("--only", "calibration,bon,won", "--seeds", "0", out=tmp_path), runner=runner,
                         echo=lambda s: None)
    assert code == 1
    assert ran == ["infalign-calibration", "infalign-train", *["infalign-report"] * 4, "infalign-train",
                   "infalign-report"]
    t = json.loads((tmp_path / "paper_time.json").read_text())
    rows = {r["experiment"]: r for r in t["experiments"]}
    assert list(rows) == ["calibration", "bon", "won"] and t["seeds"] == "0"
    assert rows["bon"]["exit"] == 1 and rows["won"]["exit"] == 0 and rows["calibration"]["exit"] == 0
    assert rows["won"]["jobs"] == 10 and rows["won"]["finished"] == 9 and rows["won"]["policies_loaded"] == 4
    assert rows["won"]["pools_loaded"] == 3
    assert "jobs" not in rows["calibration"] and t["total_s"] >= sum(r["wall_s"] for r in rows.values()) - 0.5
    md = (tmp_path / "paper_time.md").read_text()
    assert md.count("| 10 | 9 | 4 | 3 |") == 1  # won's jobs, finished, policies and pools loaded
    assert "| won | 0 |" in md and "| bon | 1 |" in md and "| **total** |" in md


def test_invocations_into_one_out_add_up_to_one_time_table(tmp_path):
    """A second invocation into the same OUT (e.g. ``--only hacking`` after ``--only bon,won``) wrote a
    time table of its own experiments only, losing the first's rows while findings.md reads both's
    reports: the earlier rows of other experiments are kept, in the experiments' order, with their
    seeds; an experiment run again replaces its row; the total adds up."""
    def runner(cmd):
        if cmd[0] == "infalign-train":  # (a real re-run needs its sweep dir removed first: the sweep refuses)
            shutil.rmtree(next(c for c in cmd if c.startswith("hydra.sweep.dir=")).split("=", 1)[1], True)
            fake_sweep(cmd, jobs=10, finished=10, policy_cache_hits=0, eval_pool_hits=0)
        return 0

    quiet = {"runner": runner, "echo": lambda s: None}
    assert paper.run_all(args("--only", "bon,won", "--seeds", "0,1", out=tmp_path), **quiet) == 0
    first = {r["experiment"]: r for r in json.loads((tmp_path / "paper_time.json").read_text())["experiments"]}
    assert paper.run_all(args("--only", "won,calibration", "--seeds", "0", out=tmp_path), **quiet) == 0
    t = json.loads((tmp_path / "paper_time.json").read_text())
    rows = {r["experiment"]: r for r in t["experiments"]}
    assert list(rows) == ["calibration", "bon", "won"]
    assert rows["bon"] == first["bon"] and rows["bon"]["seeds"] == "0,1" and rows["won"]["seeds"] == "0"
    assert t["total_s"] >= sum(r["wall_s"] for r in rows.values()) - 0.5
    assert "(seeds 0 / 0,1," in (tmp_path / "paper_time.md").read_text()
    assert t["seeds"] == "0 / 0,1"
    # an invocation stopped before it re-runs an experiment keeps that experiment's earlier row
    assert [r["experiment"] for r in paper.time_table(paper.earlier_rows(tmp_path), [])] == list(rows)
    assert paper.time_table(paper.earlier_rows(tmp_path), [{"experiment": "bon", "seeds": "2"}])[1] == {
        "experiment": "bon", "seeds": "2"}
    (tmp_path / "paper_time.json").write_text("{not json")  # unreadable: this invocation's rows only
    assert paper.run_all(args("--only", "won", "--seeds", "0", out=tmp_path), **quiet) == 0
    assert [r["experiment"] for r in json.loads((tmp_path / "paper_time.json").read_text())["experiments"]] == ["won"]


def test_commands_run_the_scripts_of_this_environment_without_it_on_path(monkeypatch):
    """``make paper`` runs .venv/bin/infalign-paper without the venv on PATH: the driver must still find
    infalign-train & co. beside its interpreter (and fall back to PATH for a name it does not have)."""
    import sys

    monkeypatch.setenv("PATH", "/nonexistent")
    for name in ("infalign-train", "infalign-report", "infalign-calibration"):
        found = Path(paper.executable(name))
        assert found.parent == Path(sys.executable).parent and found.is_file()
    assert paper.executable("no-such-infalign-script") == "no-such-infalign-script"


def test_an_experiments_extra_sweeps_run_into_its_dir_before_its_reports_and_count_in_its_row(tmp_path):
    """Experiment.more (hacking: raw between 2 and 4 nats): each extra sweep runs into OUT/<name>/<sweep>
    -- under the dir its reports read, so they see both sweeps' runs -- after the main sweep and
    before the reports; the time table sums the sweeps' counts."""
    hacking = next(e for e in paper.EXPERIMENTS if e.name == "hacking")
    assert hacking.more == ("paper_hacking_raw",) and (SWEEPS / "paper_hacking_raw.yaml").is_file()
    cmds = paper.plan(args("--only", "hacking", "--seeds", "0,1", "--n-jobs", "2", "--", "logger=none"))[0][1]
    assert [c[:3] for c in cmds] == [["infalign-train", "-m", "+sweeps=paper_hacking"],
                                     ["infalign-train", "-m", "+sweeps=paper_hacking_raw"],
                                     ["infalign-report", "OUT/hacking"]]
    assert "hydra.sweep.dir=OUT/hacking" in cmds[0] and "hydra.sweep.dir=OUT/hacking/paper_hacking_raw" in cmds[1]
    assert all(c[3] == "seed=0,1" and c[-1] == "logger=none" for c in cmds[:2])

    def runner(cmd):
        if cmd[0] == "infalign-train":
            raw = "paper_hacking_raw" in cmd[2]
            fake_sweep(cmd, jobs=6 if raw else 30, finished=6 if raw else 29, policy_cache_hits=0,
                       eval_pool_hits=None if raw else 2)
        return 0

    assert paper.run_all(args("--only", "hacking", "--seeds", "0,1", out=tmp_path), runner=runner,
                         echo=lambda s: None) == 0
    row = json.loads((tmp_path / "paper_time.json").read_text())["experiments"][0]
    assert (row["jobs"], row["finished"], row["policies_loaded"], row["pools_loaded"]) == (36, 35, 0, 2)
    assert paper.sweep_counts(tmp_path / "nothing", ("paper_hacking_raw",)) == {}
    # a second invocation whose sweep crashes before writing its sweep_time.json: the row has no counts,
    # not the first invocation's (a review: the stale file was read as this run's)
    import os

    for stale in tmp_path.rglob("sweep_time.json"):
        os.utime(stale, (stale.stat().st_atime, stale.stat().st_mtime - 60))  # written a minute before
    assert paper.run_all(args("--only", "hacking", "--seeds", "0,1", out=tmp_path), runner=lambda cmd: 1,
                         echo=lambda s: None) == 1
    row = json.loads((tmp_path / "paper_time.json").read_text())["experiments"][0]
    assert row["exit"] == 1 and "jobs" not in row


def test_the_hacking_a_a_control_fills_raw_and_reads_raw_on_the_calibrated_runs_kl_range():
    """null_hacking runs its raw fill (as hacking does) before its reports, and raw's A/A report lists
    identity too: the report's common KLs are those of every listed method, and raw alone spans KL
    0.1-25, which would leave one of six common KLs in the range the hacking finding reads."""
    null = next(e for e in paper.EXPERIMENTS if e.name == "null_hacking")
    assert null.more == ("paper_null_hacking_raw",) and (SWEEPS / "paper_null_hacking_raw.yaml").is_file()
    cmds = paper.plan(args("--only", "null_hacking", "--seeds", "0", "--n-jobs", "1"))[0][1]
    assert [c[2] if c[0] == "infalign-train" else c[1] for c in cmds[:3]] == [
        "+sweeps=paper_null_hacking", "+sweeps=paper_null_hacking_raw", "OUT/null_hacking"]
    raw = next(r for r in null.reports if r.suffix == "raw")
    assert raw.methods == ("raw", "raw[replica=1]", "identity") and raw.baselines == ("raw",)


def test_a_refused_sweep_runs_no_report_and_counts_nothing_of_an_earlier_run(tmp_path):
    """A sweep refused before any job (exit 2: e.g. its dir holds an earlier invocation's results) left
    the driver reporting that earlier run and counting its sweep_time.json as this one's (a reviewer's
    find): its reports are skipped, its row has the exit and no counts, and the next experiment runs."""
    ran, lines = [], []
    (tmp_path / "won").mkdir()
    (tmp_path / "won" / "sweep_time.json").write_text(json.dumps({"jobs": 2, "finished": 2}))  # the earlier run's

    def runner(cmd):
        ran.append(cmd[0] + (" " + cmd[2] if cmd[0] == "infalign-train" else ""))
        if cmd[0] == "infalign-train" and "paper_won" in cmd[2]:
            return 2
        if cmd[0] == "infalign-train":
            fake_sweep(cmd, jobs=10, finished=10)
        return 0

    code = paper.run_all(args("--only", "won,standard", "--seeds", "0", out=tmp_path), runner=runner, echo=lines.append)
    assert code == 1
    # standard (before won in EXPERIMENTS) ran with its reports; won's sweep was the last command
    assert ran[0] == "infalign-train +sweeps=paper_standard" and "infalign-report" in ran
    assert ran[-1] == "infalign-train +sweeps=paper_won"
    rows = {r["experiment"]: r for r in json.loads((tmp_path / "paper_time.json").read_text())["experiments"]}
    assert rows["won"]["exit"] == 2 and "jobs" not in rows["won"]
    assert rows["standard"]["exit"] == 0 and rows["standard"]["jobs"] == 10
    assert any("the sweep was refused" in line for line in lines)


def test_a_report_refusing_its_options_keeps_the_sweeps_counts(tmp_path):
    """Only a refused *sweep* drops an experiment's counts: a report exiting 2 (a --method with no
    finished runs, e.g. after ``-- method=identity`` narrowed the sweep) left a fully run sweep without
    its jobs and cache counts (a review's find)."""
    def runner(cmd):
        if cmd[0] == "infalign-train":
            fake_sweep(cmd, jobs=30, finished=30)
            return 0
        return 2 if any("report_expn" in c for c in cmd) else 0

    lines = []
    assert paper.run_all(args("--only", "null", "--seeds", "0", out=tmp_path), runner=runner, echo=lines.append) == 1
    (row,) = json.loads((tmp_path / "paper_time.json").read_text())["experiments"]
    assert row["exit"] == 2 and row["jobs"] == 30 and row["finished"] == 30
    assert not any("the sweep was refused" in line for line in lines)


def test_the_findings_are_written_after_every_experiment_not_only_at_the_end(tmp_path):
    """findings.md / findings.json are rewritten after each experiment (module docstring), so a long
    run stopped midway has the findings of what it ran: when null's sweep starts, bon's are there."""
    seen = {}

    def runner(cmd):
        sweep = next((c for c in cmd if c.startswith("hydra.sweep.dir=")), "")
        if cmd[0] == "infalign-train" and sweep.endswith("/null"):
            seen["null"] = (tmp_path / "findings.json").exists()
        return 0

    assert paper.run_all(args("--only", "bon,null", "--seeds", "0", out=tmp_path), runner=runner,
                         echo=lambda s: None) == 0
    assert seen == {"null": True}


def test_the_total_counts_this_invocations_rows_once_as_its_wall_time():
    """total_seconds = the earlier invocations' rows (bon: 60 s) + this invocation's wall time since
    ``start``; this invocation's own row (won: 30 s) is in that wall time, not added again. With
    ``start`` = now the total is 60 s (tolerance 1 s for the call itself), not 90."""
    import time

    r = {"experiment": "won", "wall_s": 30.0}
    assert paper.total_seconds([{"experiment": "bon", "wall_s": 60.0}, r], [r], time.time()) == pytest.approx(
        60.0, abs=1.0)
