"""``infalign-analyze calibration.K=<K>``: the theory tool's curves and best-t scan as a run with a K-sample
calibration table trains (``Phi_K``, docs/method.md (4.11)); ``K: null`` stays the exact theory."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from infalign.apps import analyze as app
from infalign.apps.config import CONFIG_DIR
from infalign.errors import ConfigError
from infalign.math import theory
from infalign.math.finite_k import MAX_K, FiniteK
from infalign.math.procedures import BestOfN
from infalign.math.transforms import Exp, Identity

QUICK = ["procedure.n=4", "transforms=[identity,exp]", "t=[4,16]", "kl.list=[0.3,1.0]", "best_t.num=6",
         "best_t.budgets=[0.3,1.0]", "plot=false", "parallel=false"]


def config(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="analyze", overrides=list(overrides))


def rows_of(path):
    return list(csv.DictReader(path.open()))


def test_the_curves_tilt_each_transform_through_the_table_and_the_optimal_frontier_stays_exact(tmp_path):
    """Each transform's rows are ``theory.frontier`` of ``FiniteK(transform, K)`` -- for exp(t = 16) at K = 32
    another beta than the exact theory's (x1.043 at KL 0.3, where both are exact to ~1e-8: a run that ignored the
    table fails) --; the
    optimal frontier's rows are the exact one's, marked K = inf, and metrics.json records the table."""
    app.analyze(config(*QUICK, "calibration.K=32"), tmp_path / "k32", None)
    app.analyze(config(*QUICK), tmp_path / "exact", None)
    k32, exact = rows_of(tmp_path / "k32" / "curves.csv"), rows_of(tmp_path / "exact" / "curves.csv")
    bon4 = BestOfN(4)
    for transform in (Identity(), Exp(4.0), Exp(16.0)):
        want = theory.frontier(FiniteK(transform, 32), bon4, [0.3, 1.0])
        got = [r for r in k32 if r["transform"] == transform.label]
        # (1e-12 relative: the same computation, written as CSV text by repr)
        np.testing.assert_allclose([float(r["beta"]) for r in got], want.beta, rtol=1e-12)
        np.testing.assert_allclose([float(r["win_rate"]) for r in got], want.win_rate, rtol=1e-12)
        assert {r["calibration_K"] for r in got} == {"32"}
    beta = {(r["transform"], r["kl_budget"]): float(r["beta"]) for r in exact}
    ratio = float(next(r["beta"] for r in k32 if r["transform"] == "exp(t=16)" and r["kl_budget"] == "0.3")) / \
        beta[("exp(t=16)", "0.3")]
    assert abs(ratio - 1) > 0.02, ratio  # Phi_K's beta for exp(16) is not the exact theory's
    optimal = [(r["beta"], r["win_rate"], r["calibration_K"]) for r in k32 if r["transform"].startswith("optimal")]
    assert optimal == [(r["beta"], r["win_rate"], "inf") for r in exact if r["transform"].startswith("optimal")]
    assert {r["calibration_K"] for r in exact} == {"inf"}
    best = theory.best_t(bon4, [0.3, 1.0], theory.default_t_grid(bon4, 6), extend=True,
                         calibration={"K": 32, "smoothing": False})
    written = rows_of(tmp_path / "k32" / "best_t.csv")
    np.testing.assert_allclose([float(r["best_t"]) for r in written], best.t, rtol=1e-12)
    assert {r["calibration_K"] for r in written} == {"32"}
    assert [r["best_t"] for r in written] != [r["best_t"] for r in rows_of(tmp_path / "exact" / "best_t.csv")]
    assert {r["calibration_smoothing"] for r in written + k32} == {"False"}
    assert json.loads((tmp_path / "k32" / "metrics.json").read_text())["calibration"] == {"K": 32, "smoothing": False}
    assert json.loads((tmp_path / "exact" / "metrics.json").read_text())["calibration"] is None


def test_identity_through_a_table_is_the_exact_identity_and_smoothing_rescales_its_beta(tmp_path):
    """Closed forms (docs/method.md §4.1): identity's Bernstein polynomial is ``u`` itself, so without smoothing
    its curve is the exact one; smoothed it is ``(K u + 1/2) / (K + 1)``, an affine map with slope K/(K+1) --
    the same tilted policies at ``beta * K / (K + 1)``: the same win rates at each KL. (Tolerances: the grid
    theory's own agreement between two transforms, 1e-9 relative -- 1e-7 for smoothed win rates, whose beta
    search stops at the budget's KL within 1e-8 relative.)"""
    base = ["transforms=[identity]", "optimal=false", "kl.list=[0.1,0.5,2.0]", "best_t.num=2",
            "best_t.budgets=[0.5]", "plot=false", "parallel=false"]
    runs = {}
    for name, extra in (("exact", []), ("k8", ["calibration.K=8"]),
                        ("k8s", ["calibration.K=8", "calibration.smoothing=true"])):
        app.analyze(config(*base, *extra), tmp_path / name, None)
        runs[name] = rows_of(tmp_path / name / "curves.csv")
    beta = {name: np.array([float(r["beta"]) for r in rows]) for name, rows in runs.items()}
    win = {name: np.array([float(r["win_rate"]) for r in rows]) for name, rows in runs.items()}
    np.testing.assert_allclose(beta["k8"], beta["exact"], rtol=1e-9)
    np.testing.assert_allclose(win["k8"], win["exact"], rtol=1e-9)
    np.testing.assert_allclose(beta["k8s"], beta["exact"] * 8 / 9, rtol=1e-7)
    np.testing.assert_allclose(win["k8s"], win["exact"], rtol=1e-7)
    assert [r["calibration_smoothing"] for r in runs["k8s"]] == ["True"] * 3


def test_the_best_t_scan_tilts_each_exponent_through_the_table():
    """``theory.best_t(..., calibration=)``: each scanned exp(t) is ``FiniteK(Exp(t), K)`` (its table entries are
    that transform's frontier); at K = 32 the best t at KL 1 (BoN-4) moves from ~18 (exact) to ~24."""
    bon4, ts = BestOfN(4), np.geomspace(4.0, 32.0, 7)
    table = {"K": 32, "smoothing": False}
    scan = theory.best_t(bon4, [0.3, 1.0], ts, calibration=table)
    exact = theory.best_t(bon4, [0.3, 1.0], ts)
    for i, t in enumerate(ts):
        want = theory.frontier(FiniteK(Exp(float(t)), 32), bon4, [0.3, 1.0])
        np.testing.assert_allclose(scan.table[i], want.win_rate, rtol=1e-12)
    assert scan.t[1] > exact.t[1] * 1.2, (scan.t, exact.t)


def test_a_table_past_max_k_is_the_exact_theory_and_says_so(tmp_path, capsys):
    """``seen_through_table`` keeps the exact transform past MAX_K (as beside a trained run): the curves are the
    exact theory's, marked K = inf, and the printed note says why."""
    app.analyze(config(*QUICK, f"calibration.K={MAX_K + 1}"), tmp_path / "big", None)
    app.analyze(config(*QUICK), tmp_path / "exact", None)
    out = capsys.readouterr().out
    assert rows_of(tmp_path / "big" / "curves.csv") == rows_of(tmp_path / "exact" / "curves.csv")
    assert f"calibration K = {MAX_K + 1} > {MAX_K}: the exact theory" in " ".join(out.split())


def test_the_table_is_said_beside_the_tables_and_on_the_plot(tmp_path, capsys, monkeypatch):
    notes = []
    monkeypatch.setattr(app, "plot_frontiers", lambda *a: notes.append(a[-1]) or "linear")
    app.analyze(config(*QUICK, "calibration.K=16", "calibration.smoothing=true", "plot=true"), tmp_path, None)
    out = " ".join(capsys.readouterr().out.split())
    said = "transforms seen through a K = 16 calibration table, smoothed (Phi_K"
    assert said in out and notes and said in notes[0]


@pytest.mark.parametrize("override, key", [
    ("calibration.K=0", "calibration.K"), ("calibration.K=abc", "calibration.K"),
    ("calibration.K=2.5", "calibration.K"), ("calibration.K=true", "calibration.K"),
    ("calibration.K=inf", "calibration.K"),  # (int(inf): an OverflowError traceback; a walkthrough)
    ("calibration.smoothing=maybe", "calibration.smoothing"),
    ("calibration.smoothing=true", "calibration.smoothing"),  # (without K: no table to smooth; review)
    ("+calibration.scope=pooled", "calibration.scope")])
def test_a_bad_table_is_a_config_error_naming_its_key(override, key):
    with pytest.raises(ConfigError) as info:
        app.validate(config(*QUICK, override))
    assert info.value.key == key


def test_a_transform_not_finite_at_the_tables_values_names_the_table(monkeypatch):
    """A transform the exact theory can tilt (finite on its grid of the open (0, 1)) but not finite at
    ``C_hat = 0``, a table value without smoothing: a ConfigError of calibration.K with the smoothing hint."""
    from infalign.math.transforms import Log

    monkeypatch.setattr(app, "build_transforms", lambda cfg, procedure: [Log(floor=0.0)])
    with pytest.raises(ConfigError) as info:
        app.validate(config(*QUICK, "calibration.K=8"))
    assert info.value.key == "calibration.K" and "smoothing=true" in info.value.hint
    procedure, transforms, *_ = app.validate(config(*QUICK, "calibration.K=8", "calibration.smoothing=true"))
    assert isinstance(transforms[0], FiniteK) and math.isfinite(transforms[0](np.array([0.0]))[0])
