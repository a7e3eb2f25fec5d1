"""`infalign-analyze` as a user runs it: bad inputs fail in one line (key, value, allowed values)
with a non-zero exit and no traceback; what it writes marks every point it cannot vouch for."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from infalign.apps import analyze as app
from infalign.apps.config import CONFIG_DIR
from infalign.errors import ConfigError

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
FAST = ["kl.num=4", "optimal=false", "best_t.num=4", "best_t.budgets=[0.5]", "plot=false"]


def analyze(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "infalign-analyze"), *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, env=ENV, timeout=300)


def config(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="analyze", overrides=list(overrides))


BAD = [
    (["t=abc"], "t='abc'"),
    (["t=0"], "t=0"),
    (["t=[]"], "t="),
    (["best_t.num=0"], "best_t.num=0"),
    (["best_t.num=abc"], "best_t.num='abc'"),
    (["best_t.budgets=[-1]"], "best_t.budgets="),
    (["transforms=[nosuch]"], "transforms='nosuch'"),
    (["transforms=[raw]"], "transforms='raw'"),
    (["kl.num=0"], "kl.num=0"),
    (["kl.start=abc"], "kl.start='abc'"),
    (["kl.start=3", "kl.stop=1"], "kl.stop=1"),
    (["kl.start=0.5", "kl.stop=0.5", "kl.num=3"], "kl.stop=0.5"),  # 3 equal budgets: it crashed mid-run
    (["kl.list=[0.5,abc]"], "kl.list='abc'"),
    (["kl.list=[0.5,0.5]"], "kl.list=[0.5, 0.5]"),
    (["procedure.n=0"], "procedure.n=0"),
    (["plot_scale=loglog"], "plot_scale='loglog'"),
    (["parallel=sometimes"], "parallel='sometimes'"),
    # accepted and ignored before (a review): t without an exp-family transform, kl.num beside kl.list,
    # a repeated best-t budget (duplicate rows)
    (["transforms=[identity]", "t=[abc]"], "t='abc'"),
    (["kl.list=[1.0]", "kl.num=abc"], "kl.num='abc'"),
    (["best_t.budgets=[1.0,1.0]"], "best_t.budgets=[1.0, 1.0]"),
    (["calibration.K=0"], "calibration.K=0"),
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides,key", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_names_key_value_and_allowed(overrides, key):
    """In process (fast): validation raises one ConfigError naming the user's key and value."""
    with pytest.raises(ConfigError) as info:
        app.validate(config(*FAST, *overrides))
    assert key in str(info.value) and "is not allowed" in str(info.value)


def test_every_transform_entry_builds_by_name():
    """Review finding: transforms=[expn_t4] (an entry with a defaults: list, as exp_won and every expn_*)
    built a DictConfig, not a transform, and the run failed with a traceback; every entry named in
    conf/transform/ but optimal and raw (refused: no calibrated theory) now builds its transforms."""
    from infalign.apps.config import group_entries
    from infalign.math.transforms import Transform

    for name in [n for n in group_entries("transform") if n not in ("optimal", "raw")]:
        procedure, transforms, *_ = app.validate(config(*FAST, f"transforms=[{name}]", "t=[2]"))
        assert transforms and all(isinstance(t, Transform) for t in transforms), name


@pytest.mark.slow  # a process start each (imports); test_bad_input_names_key_value_and_allowed is the fast check
@pytest.mark.parametrize("overrides,key", [BAD[0], BAD[3], BAD[6]], ids=["t=abc", "best_t.num=0", "transforms=nosuch"])
def test_bad_input_is_one_line_without_traceback(tmp_path, overrides, key):
    """As a user runs it: the message only, on stderr, exit code 2 (was: a full traceback)."""
    proc = analyze(tmp_path, *FAST, *overrides)
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("infalign-analyze: error: "), proc.stderr
    assert key in lines[0] and "is not allowed" in lines[0], lines[0]


def test_positive_t_with_worst_of_n_warns(caplog):
    cfg = config(*FAST, "procedure=won", "t=[2,-4]")
    with caplog.at_level("WARNING", logger="infalign.apps.analyze"):
        app.validate(cfg)
    out = caplog.text
    assert "t=2 with won4" in out and "gives a lower won4 win rate" in out
    assert "t=-4 with" not in out


@pytest.mark.slow  # the console script, end to end
def test_readme_won_example_marks_nothing_unreachable(tmp_path):
    """README: `infalign-analyze procedure=won procedure.n=8 t=[-1,-4,-16] kl.stop=2`. exp(t=-16) used
    to be 'unreachable' (the beta search range, not the transform); best t must be monotone in the
    budget (more negative with more KL, docs/method.md §5) and never silently on the scan edge."""
    proc = analyze(tmp_path, "procedure=won", "procedure.n=8", "t=[-1,-4,-16]", "kl.stop=2", "kl.num=8",
                   "best_t.num=12", "plot=false")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "run" / "curves.csv").open()))
    assert {r["transform"] for r in rows} >= {"exp(t=-16)", "optimal(won8)", "identity"}
    assert all(r["reachable"] == "True" and r["converged"] == "True" for r in rows), [
        r for r in rows if r["reachable"] != "True"]
    assert "unreach." not in proc.stdout
    best = list(csv.DictReader((tmp_path / "run" / "best_t.csv").open()))
    # no best-of-N star under worst-of-N: that policy would "win" every worst-of-N comparison
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["bon_policy"] is None
    ts = [float(r["best_t"]) for r in best]
    assert all(a >= b for a, b in zip(ts, ts[1:])), ts
    # the scan is extended past |t| = 64 where the best t sat on it; at KL = 4 the WoN8 win rate is
    # 1 - O(1e-9) and the best t runs to the scan limit 512: flagged, not silent. At KL 1 the best of this
    # 12-point scan, t = -38.7, is the largest |t| that reaches the budget (t = -64 is past what the grid
    # resolves there): flagged too, the optimum may lie beyond it
    assert all(r["at_scan_edge"] == "True" for r in best if abs(float(r["best_t"])) == 512), best
    assert [r["at_scan_edge"] for r in best[:5]] == ["False", "False", "False", "True", "False"], best
    assert all(float(r["win_rate"]) <= float(r["optimal_win_rate"]) + 1e-4 for r in best)
    for r in best:  # the normalised entries' beta beside the plain transform's
        assert float(r["beta_expn"]) == pytest.approx(float(r["beta"]) / abs(math.expm1(float(r["best_t"]))),
                                                      rel=1e-12)


@pytest.mark.slow
def test_default_run_writes_converged_columns_and_a_plot(tmp_path):
    proc = analyze(tmp_path, "kl.num=6", "best_t.num=8")
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    rows = list(csv.DictReader((run / "curves.csv").open()))
    assert {"reachable", "converged", "reason", "kl", "kl_budget"} <= set(rows[0])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["plot_scale"] in ("linear", "logodds") and (run / "frontier.png").stat().st_size > 10_000
    assert metrics["unreachable"] == [] and metrics["not_converged"] == []
    assert metrics["bon_policy"]["win_rate"] > 0.5  # the best-of-N policy's point (the star)
    # a best t training cannot take (float32 overflows the sum of a default step's 64 exp(t u): t > 84.56) is
    # flagged, not just listed
    best = list(csv.DictReader((run / "best_t.csv").open()))
    assert [r["trainable"] == "True" for r in best] == [float(r["best_t"]) <= 84.56 for r in best]
    assert any(r["trainable"] == "False" for r in best) and "refuses" in proc.stdout  # (wrapped in its cell)


@pytest.mark.slow
def test_parallel_run_writes_what_the_serial_run_writes(tmp_path):
    """parallel=true (best-t scan and plot in a helper process, infra/background.py) changes where
    the work runs, not what is written: every file byte for byte as with parallel=false."""
    from infalign.infra.background import Background

    outs = {}
    with Background(app.PLOT_MODULES) as early:  # as main() starts it, before the config exists
        for run, parallel, helper in (("own", "true", None), ("early", "true", early), ("serial", "false", None)):
            out = tmp_path / run
            out.mkdir()
            cfg = config("kl.num=4", "best_t.num=6", "best_t.budgets=[0.25,4.0]", f"parallel={parallel}")
            metrics = app.analyze(cfg, out, helper)
            outs[run] = {name: (out / name).read_bytes() for name in
                         ("curves.csv", "best_t.csv", "metrics.json", "frontier.png")}
            assert metrics["plot_scale"] in ("linear", "logodds")
    assert outs["own"] == outs["serial"] and outs["early"] == outs["serial"]


@pytest.mark.slow
def test_helper_process_works_when_the_app_is_main_and_under_the_joblib_launcher(tmp_path):
    """``python -m infalign.apps.analyze`` makes the app ``__main__``, and a joblib worker cannot find
    ``__main__.plot_frontiers``: the helper process is handed functions by their import path
    (apps/analyze_plot.py). Was: PicklingError, no frontier.png, exit 1."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "infalign.apps.analyze", "-m", "hydra/launcher=local_parallel",
                           "procedure.n=2,4", *FAST[:-1], f"hydra.sweep.dir={sweep}"],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for job in ("0", "1"):
        assert (sweep / job / "frontier.png").stat().st_size > 10_000 and (sweep / job / "metrics.json").exists()


RUN_WITHOUT_TORCH = """
import atexit, sys
HEAVY = ("torch", "lightning", "pytorch_lightning", "transformers", "wandb")
atexit.register(lambda: print("heavy:", sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))))
sys.argv = ["infalign-analyze", *sys.argv[1:]]
from infalign.apps.analyze import main
main()
"""


@pytest.mark.slow
def test_a_run_loads_no_torch(tmp_path):
    """The whole run (threads, theory, optimal frontier, plot) is numpy-only: ``threads: auto`` sets
    the BLAS pools without importing torch (infra/threads.py, ``torch=False``)."""
    proc = subprocess.run([sys.executable, "-c", RUN_WITHOUT_TORCH, "kl.num=3", "best_t.num=4", "best_t.budgets=[0.5]",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "heavy: []", proc.stdout[-500:]
    assert (tmp_path / "run" / "frontier.png").exists()


PLOT_WITHOUT_PYPLOT = """
import sys
from pathlib import Path
import numpy as np
from infalign.apps.analyze_plot import plot_frontiers
from infalign.math.theory import Frontier
k = np.array([0.1, 0.5, 1.0])
f = Frontier("identity", "bon4", k, k, k, k / 2 + 0.4, k / 3 + 0.5, np.ones(3, bool), ["", "", ""])
plot_frontiers([f], Path(sys.argv[1]), "bon4", (0.6, 0.7))
assert Path(sys.argv[1]).stat().st_size > 10_000
print("pyplot imported" if "matplotlib.pyplot" in sys.modules else "no pyplot")
"""


@pytest.mark.slow  # a clean interpreter (the process start is the cost)
def test_frontier_plot_is_drawn_without_pyplot(tmp_path):
    """frontier.png is drawn on a bare Figure (infra.plotting.figure): the app never imports
    matplotlib.pyplot, about a third of matplotlib's import time."""
    proc = subprocess.run([sys.executable, "-c", PLOT_WITHOUT_PYPLOT, str(tmp_path / "f.png")],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "no pyplot"


def test_save_png_draws_the_figure_once(tmp_path, monkeypatch):
    """save_png lays the figure out once (tight_layout) and draws it once: the placeholder layout
    engine tight_layout leaves would make savefig draw the whole figure a second time."""
    from matplotlib.figure import Figure

    from infalign.infra.plotting import figure, save_png

    draws = []
    real = Figure.draw
    monkeypatch.setattr(Figure, "draw", lambda self, renderer: (draws.append(1), real(self, renderer))[1])
    fig = figure(figsize=(4, 3))
    fig.subplots().plot([0, 1], [0, 1])
    fig.suptitle("x")
    save_png(fig, tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 1000 and len(draws) == 1


def test_kl_list_is_sorted_so_every_frontier_shares_its_columns():
    """The optimal frontier is solved over sorted budgets; the printed table labels every row's columns
    with one budget order: kl.list is put in ascending order once (an unsorted list printed the
    optimal row's win rates under other KLs' headers)."""
    budgets = app.kl_budgets(config(*FAST, "kl.list=[1.0,0.1,0.25]"))
    assert budgets.tolist() == [0.1, 0.25, 1.0]


@pytest.mark.parametrize("t", [4.0, -8.0])
def test_expn_beta_gives_the_normalised_transform_the_same_tilted_policy(t):
    """best_t.csv's beta_expn: expn(t) at beta_expn is the policy exp(t) reaches at beta (same KL and
    win rate), so it is the algo.beta to use with an expn_t* entry."""
    from infalign.math import theory
    from infalign.math.procedures import make_procedure
    from infalign.math.transforms import Exp

    procedure = make_procedure("bon" if t > 0 else "won", 4)
    beta = theory.frontier(Exp(t), procedure, [0.3]).beta[0]
    plain = theory.evaluate(Exp(t), beta, procedure)[0]
    normalised = theory.evaluate(Exp(t, normalized=True), app.expn_beta(beta, t), procedure)[0]
    assert normalised.kl == pytest.approx(plain.kl, rel=1e-6) and plain.kl == pytest.approx(0.3, rel=1e-6)
    assert normalised.win_rate == pytest.approx(plain.win_rate, rel=1e-6)


def test_saturated_and_single_points_are_drawn(tmp_path, monkeypatch):
    """On the log-odds axis a valid win rate of exactly 1.0 (worst-of-12 identity past KL ~3.8) is drawn
    on the axis edge, not dropped as +inf (the line used to stop there), with a note; a transform with
    one valid point gets a marker (a one-point line draws nothing)."""
    import numpy as np

    from infalign.apps import analyze_plot
    from infalign.infra import plotting
    from infalign.math import theory
    from infalign.math.procedures import WorstOfN
    from infalign.math.transforms import Identity

    figures = []
    monkeypatch.setattr(plotting, "save_png", lambda fig, path: figures.append(fig))
    budgets = np.linspace(0.5, 6.0, 12)
    f = theory.frontier(Identity(), WorstOfN(12), budgets)
    assert f.valid.all() and (f.win_rate == 1.0).sum() >= 2  # saturated, yet valid
    one = theory.frontier(Identity(), WorstOfN(12), budgets[:1])
    analyze_plot.plot_frontiers([f, one], tmp_path / "f.png", "won12", scale="logodds")
    ax = figures[0].axes[0]
    lines = [ln for ln in ax.get_lines() if ln.get_label() == "identity"]
    full, single = lines[0], lines[1]
    assert np.isfinite(full.get_ydata()).all() and len(full.get_xdata()) == 12
    assert max(full.get_xdata()) == pytest.approx(6.0, rel=1e-6)
    assert len(single.get_xdata()) == 1 and single.get_marker() == "o"
    assert "drawn on that edge" in figures[0].get_suptitle()


def test_a_line_breaks_where_its_transform_does_not_reach_the_budget(tmp_path, monkeypatch):
    """Theory walkthrough: worst-of-4 exp(t=-300) is unreachable (grid step) at KL ~0.2-3.1, and frontier.png
    joined the reached points on either side with a straight line (0.67 at KL 1, where the theory gives 0.99).
    The drawn line holds NaN there (matplotlib breaks it) and its points are the reached ones."""
    import numpy as np

    from infalign.apps import analyze_plot
    from infalign.infra import plotting
    from infalign.math import theory
    from infalign.math.procedures import WorstOfN
    from infalign.math.transforms import Exp

    figures = []
    monkeypatch.setattr(plotting, "save_png", lambda fig, path: figures.append(fig))
    f = theory.frontier(Exp(-300.0), WorstOfN(4), np.geomspace(0.01, 8.0, 40))
    gap = np.flatnonzero(~f.valid)
    assert gap.size and gap[0] > 0 and gap[-1] < 39  # reached on both sides of the gap
    analyze_plot.plot_frontiers([f], tmp_path / "f.png", "won4", scale="linear")
    (line,) = [ln for ln in figures[0].axes[0].get_lines() if ln.get_label() == f.transform]
    y = np.asarray(line.get_ydata(), float)
    assert np.isnan(y[gap]).all() and np.allclose(y[f.valid], f.win_rate[f.valid])


def test_a_best_t_budget_no_t_reaches_is_a_row_not_a_crash(tmp_path):
    """Review finding: theory.best_t gives t = NaN where no t reaches a budget (1e-25 nats is below the
    float64 resolution of the KL); the row builder then made Exp(nan), a ConfigError blaming
    transform.t after all the compute, with no best_t.csv or metrics.json."""
    cfg = config("kl.num=4", "optimal=false", "best_t.num=4", "best_t.budgets=[0.5,1e-25]", "plot=false",
                 "parallel=false")
    metrics = app.analyze(cfg, tmp_path, None)
    reached, unreached = metrics["best_t"]
    assert reached["trainable"] and math.isfinite(reached["best_t"])
    assert math.isnan(unreached["best_t"]) and unreached["trainable"] is False
    assert (tmp_path / "best_t.csv").is_file()  # (the table's cell says "no t reaches this KL": below)


def test_a_best_t_whose_beta_underflows_float32_is_not_trainable():
    """Large-KL worst-of-N rows pick t ~ -130 at beta ~ 1e-56: exp(t u) is finite in float32 but beta
    (and the KL term beta * KL of training's shaped reward) rounds to 0 there."""
    assert app.untrainable_reason(-130.3, 1.29e-56).startswith("beta 1.29e-56 underflows float32")
    assert app.untrainable_reason(-130.3, 1e-3) is None
    assert app.untrainable_reason(4.0, app.FLOAT32_TINY) is None  # the smallest normal float32 still counts
    assert "float32 overflow" in app.untrainable_reason(90.0, 1.0)
    assert "float32 overflow" in app.untrainable_reason(86.0, 1.0)  # a default step's 64 rewards sum past 3.4e38
    assert app.untrainable_reason(84.0, 1.0) is None


def test_the_theory_tool_flags_t_by_the_default_step_training_sums():
    """analyze's DEFAULT_STEP_ROWS is algo's default P x G: the t it flags is the t training refuses."""
    from infalign.training.algorithms.rloo import RLOOConfig

    assert app.DEFAULT_STEP_ROWS == RLOOConfig.prompts_per_step * RLOOConfig.group_size
    assert app.untrainable_reason(float("nan"), float("nan")) == "no t reaches this KL"


@pytest.mark.parametrize("override, key, hint", [("+transform=expn_t4", "transform", "transforms="),
                                                 ("+best_t.budget=[2.0]", "best_t.budget", "best_t.budgets"),
                                                 ("+kl.lst=[0.5]", "kl.lst", "kl.list")])
def test_a_key_analyze_does_not_read_is_a_config_error(override, key, hint):
    """Hydra's "use +key" hint made ``+transform=expn_t4`` (train's group) and misspelt keys run the
    default table without a word (a reviewer's find): analyze now names the key and what it reads."""
    with pytest.raises(ConfigError) as info:
        app.validate(config(override))
    assert info.value.key.startswith(key) and hint in info.value.hint


def test_every_key_of_the_analyze_config_passes_the_key_check():
    app.validate(config(*FAST))


def test_a_reused_run_dir_keeps_no_plot_of_an_earlier_analysis(tmp_path):
    """Re-running into a run dir with plot=false left the earlier bon4 frontier.png beside the new bon8
    tables (a reviewer's find): every file in the dir is now this analysis's."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "frontier.png").write_bytes(b"an earlier analysis's plot")
    app.analyze(config(*FAST), out)
    assert not (out / "frontier.png").exists() and (out / "metrics.json").is_file()


def test_the_best_t_table_has_an_optimal_column_only_when_the_frontier_was_computed(tmp_path, capsys):
    """optimal=false printed an "optimal" column of nan in every row (a walkthrough)."""
    for optimal in ("false", "true"):
        cfg = config("kl.num=3", f"optimal={optimal}", "best_t.num=4", "best_t.budgets=[0.5]", "plot=false",
                     "parallel=false")
        app.analyze(cfg, tmp_path / optimal, None)
        out = capsys.readouterr().out
        header = next(line for line in out.splitlines() if "┃ KL budget" in line)
        row = next(line for line in out.splitlines() if line.strip("│ ").startswith("0.5 "))
        assert ("optimal" in header) == (optimal == "true") and "nan" not in row, out[-1500:]


def test_the_best_t_table_keeps_its_optimal_column_and_says_the_scan_step(tmp_path, capsys):
    """A walkthrough found the optimal column gone when every budget was past the optimal frontier's reach
    (best_t.budgets=[100]), a bare ``nan`` there otherwise and a win rate of 1.0 (won4 at KL 4) printed
    ``1``; and the table never said how fine the t scan is (best_t.num=4 over [0.25, 64]: each |t|
    (64/0.25)^(1/3) = 6.35x the last, 535 % above it). With optimal=true the column stays, an unreachable
    budget reads ``unreach.``, win rates print with four decimals, and the caption gives the step."""
    cfg = config("procedure=won", "kl.num=3", "optimal=true", "best_t.num=4", "best_t.budgets=[4,100]", "plot=false",
                 "parallel=false")
    app.analyze(cfg, tmp_path, None)
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "┃ KL budget" in line)
    far = next(line for line in out.splitlines() if line.strip("│ ").startswith("100 "))
    four = next(line for line in out.splitlines() if line.strip("│ ").startswith("4 "))
    assert "optimal" in header and far.count("unreach.") == 2 and four.count("1.0000") == 2, out[-1500:]
    assert "best of 4 log-spaced |t| in [0.25, 64], each 535 % above the last" in " ".join(out.split())


def test_the_win_rate_table_shows_every_listed_budget_or_says_which(tmp_path, capsys):
    """Theory walkthrough: kl.list=[0.001,0.05,0.3,1,3,10,30,70] printed 6 columns and left out 0.3 without a
    word. Up to TABLE_BUDGETS budgets are all shown; more are thinned with a caption saying so."""
    listed = [0.001, 0.05, 0.3, 1, 3, 10, 30, 70]
    cfg = config(f"kl.list=[{','.join(map(str, listed))}]", "transforms=[identity]", "optimal=false",
                 "best_t.num=2", "best_t.budgets=[0.5]", "plot=false", "parallel=false")
    app.analyze(cfg, tmp_path / "list", None)
    out = " ".join(capsys.readouterr().out.split())
    assert all(f"KL={b:.3g}" in out for b in listed) and "every one in curves.csv" not in out, out[-1500:]
    cfg = config("kl.num=20", "transforms=[identity]", "optimal=false", "best_t.num=2", "best_t.budgets=[0.5]",
                 "plot=false", "parallel=false")
    app.analyze(cfg, tmp_path / "num", None)
    out = " ".join(capsys.readouterr().out.split())
    assert "6 of the 20 KL budgets, evenly spaced; every one in curves.csv" in out, out[-1500:]


def test_a_t_past_700_is_told_its_limit_not_the_hint_about_t_0():
    """Theory walkthrough: t=[800] read "'auto' or a nonzero number ... (t = 0 is the identity transform ...)"."""
    with pytest.raises(ConfigError) as info:
        app.validate(config(*FAST, "t=[800]"))
    assert "|t| <= 700" in str(info.value) and "identity" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        app.validate(config(*FAST, "t=[0]"))
    assert "t = 0 is the identity transform" in str(info.value)


@pytest.mark.parametrize("override, message", [("procedure=mbr", "Could not find 'procedure/mbr'"),
                                               ("nosuch=1", "Could not override 'nosuch'"),
                                               ("procedure.n=[", "no viable alternative")])
def test_a_command_line_hydra_itself_refuses_exits_2(tmp_path, monkeypatch, capsys, override, message):
    """Walkthrough finding: Hydra's own refusals (an unknown group option or key, an unparsable override)
    exited 1 from infalign-analyze and infalign-calibration, 2 only from infalign-train; every app exits 2,
    as for its own config errors (README, "When things go wrong"), after Hydra's message."""
    from infalign.apps import calibration

    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    for main, name in ((app.main, "infalign-analyze"), (calibration.main, "infalign-calibration")):
        monkeypatch.setattr(sys, "argv", [name, override, f"hydra.run.dir={tmp_path / 'run'}"])
        with pytest.raises(SystemExit) as exit_info:
            main()
        assert exit_info.value.code == 2, name
        assert message in capsys.readouterr().err, name
    assert not (tmp_path / "run").exists()


def test_a_single_kl_budget_is_a_list_of_one():
    """A walkthrough: ``kl.list=0.3`` and ``best_t.budgets=0.3`` crashed (``list(<float>)`` built for a message
    before its check ran: a traceback, exit 1); a single number is a list of one."""
    checked = app.validate(config(*FAST, "kl.list=0.3", "best_t.budgets=0.3"))
    assert checked.budgets.tolist() == [0.3] and checked.bt_budgets.tolist() == [0.3]


def test_the_scan_caption_counts_the_t_an_extended_scan_took(tmp_path, capsys):
    """A walkthrough: best_t.num=2 scanned 4 t after extension and the caption said "best of 2" alone."""
    app.analyze(config("kl.num=3", "optimal=false", "best_t.num=2", "best_t.budgets=[0.5]", "plot=false",
                       "parallel=false"), tmp_path, None)
    from infalign.math import theory
    from infalign.math.procedures import BestOfN

    n = len(theory.best_t(BestOfN(4), [0.5], theory.default_t_grid(BestOfN(4), 2), extend=True).ts)
    assert n > 2 and f"sits on: {n} t in all)" in " ".join(capsys.readouterr().out.split())
