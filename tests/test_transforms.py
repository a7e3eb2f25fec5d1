"""Tests for the reward transforms Phi: [0,1] -> R (docs/method.md §5; src/infalign/math/transforms.py)."""

from __future__ import annotations

import math
from pathlib import Path

import mpmath as mp
import numpy as np
import pytest
import torch

from infalign.errors import ConfigError
from infalign.math import theory
from infalign.math.procedures import BestOfN, Sample
from infalign.math.transforms import (
    TRANSFORMS,
    Custom,
    Exp,
    Identity,
    Log,
    Raw,
    Tabulated,
    Transform,
    as_transform,
    register_transform,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "transform"
U = np.linspace(0.0, 1.0, 1001)
U_INNER = np.linspace(1e-3, 1 - 1e-3, 999)


@pytest.fixture(autouse=True)
def _restore_mpmath_precision():
    """Tests below raise mpmath's global precision; give it back so no other test is affected."""
    dps = mp.mp.dps
    yield
    mp.mp.dps = dps


# --------------------------------------------------------------------------------------------
# Values (numpy and torch)
# --------------------------------------------------------------------------------------------


def test_identity_values():
    np.testing.assert_array_equal(Identity()(U), U)
    x = torch.linspace(0, 1, 11)
    assert torch.equal(Identity()(x), x)


def test_log_values_and_floor():
    # closed form: Phi(u) = log(max(u, floor)); relative 1e-15 (one libm call)
    np.testing.assert_allclose(Log()(U_INNER), np.log(U_INNER), rtol=1e-15)
    assert Log()(np.array([0.0]))[0] == pytest.approx(
        math.log(1e-6), rel=1e-15, abs=0
    )  # default floor
    assert Log(floor=0.25)(np.array([0.1]))[0] == pytest.approx(math.log(0.25), rel=1e-15, abs=0)
    with np.errstate(divide="ignore"):
        assert Log(floor=0.0)(np.array([0.0]))[0] == -np.inf
    x = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    np.testing.assert_allclose(Log()(x).numpy(), [math.log(1e-6), math.log(0.5), 0.0], rtol=1e-15)
    for bad in (-0.1, 1.0, 2.0):
        with pytest.raises(ConfigError, match="transform.floor"):
            Log(floor=bad)


@pytest.mark.parametrize("t", [-7.0, -0.5, 0.3, 4.0, 50.0])
def test_exp_values(t):
    # sign(t) e^{tu} and (e^{tu} - 1)/(e^t - 1): relative 1e-13 (two libm calls, expm1 vs exp-1)
    np.testing.assert_allclose(Exp(t)(U), math.copysign(1, t) * np.exp(t * U), rtol=1e-13)
    norm = Exp(t, normalized=True)(U)
    np.testing.assert_allclose(norm, np.expm1(t * U) / math.expm1(t), rtol=1e-13, atol=1e-300)
    assert norm[0] == 0.0 and norm[-1] == pytest.approx(
        1.0, rel=1e-15, abs=0
    )  # maps [0,1] onto [0,1]
    assert np.all(np.diff(norm) > 0) and np.all(
        np.diff(Exp(t)(U)) > 0
    )  # increasing for either sign
    xt = torch.tensor(U)
    np.testing.assert_allclose(Exp(t)(xt).numpy(), Exp(t)(U), rtol=1e-15)
    np.testing.assert_allclose(Exp(t, normalized=True)(xt).numpy(), norm, rtol=1e-15, atol=1e-300)


def test_exp_labels_and_registry():
    assert Exp(8).label == "exp(t=8)" and Exp(-2.5, normalized=True).label == "expn(t=-2.5)"
    assert {"identity", "log", "exp", "custom", "raw", "table"} <= set(TRANSFORMS)
    assert TRANSFORMS["exp"] is Exp and TRANSFORMS["identity"] is Identity and Exp(3.0).kind == "exp"


def test_a_family_with_a_t_and_no_label_of_its_own_is_labelled_with_its_t():
    """Extensibility walkthrough: a registered ``u^t`` family following docs/architecture.md §6 (a ``Transform``
    subclass with ``kind`` and ``t``, no ``label``) was labelled ``kind`` alone -- its runs at two t shared a run
    name and a method, and ``infalign-analyze`` refused its ``t: auto`` curves as one label. Now
    ``pow(t=2)``, named ``pow-t2`` in run names; a family without a t keeps its kind."""
    from omegaconf import OmegaConf

    from infalign.math.transforms import Transform
    from infalign.pipeline.record import run_name
    from infalign.training.algorithms import make_algorithm

    class Power(Transform):
        kind = "pow"

        def __init__(self, t):
            self.t = t

        def __call__(self, u):
            return u ** self.t

    class Plain(Transform):
        kind = "plain"

    assert [Power(2).label, Power(0.5).label, Plain().label] == ["pow(t=2)", "pow(t=0.5)", "plain"]
    algo = make_algorithm(OmegaConf.create({"name": "rloo", "beta": 0.3}))
    assert run_name(BestOfN(4), Power(2), algo) != run_name(BestOfN(4), Power(4), algo)
    assert run_name(BestOfN(4), Power(2), algo).startswith("bon4-pow-t2")


# --------------------------------------------------------------------------------------------
# centered(u, 1-u) = Phi(u) - constant
# --------------------------------------------------------------------------------------------

CENTERED_CASES = [
    Identity(),
    Log(),
    Log(floor=0.0),
    Log(floor=0.3),
    Log(floor=0.8),  # a floor past the midpoint: centered floors its log1p branch too
    Exp(3.0),
    Exp(-3.0),
    Exp(50.0),
    Exp(-50.0),
    Exp(6.0, normalized=True),
    Exp(-6.0, normalized=True),
    Custom(np.sqrt),
]


@pytest.mark.parametrize("transform", CENTERED_CASES, ids=repr)
def test_centered_differs_from_phi_by_a_constant(transform):
    rng = np.random.default_rng(0)
    u = np.concatenate([rng.random(5000), [0.0, 1e-12, 0.5, 1.0 - 1e-12, 1.0]])
    u = u[u > 0] if isinstance(transform, Log) and transform.floor == 0 else u
    with np.errstate(divide="ignore"):
        diff = np.asarray(transform(u), np.float64) - transform.centered(u, 1.0 - u)
    scale = max(1.0, float(np.max(np.abs(transform(u)))))
    # Phi is evaluated in float64; the difference may differ from a constant only by round-off
    # of the larger of the two terms, i.e. a few ulps of max|Phi| (1e-13 relative is ~500 ulps).
    assert np.ptp(diff) <= 1e-13 * scale


def test_tabulated_centered_equals_call():
    z = np.linspace(-30, 30, 601)
    table = Tabulated(z, np.tanh(z / 7), name="tanh")
    np.testing.assert_array_equal(table(U_INNER), table.centered(U_INNER, 1 - U_INNER))
    # torch path: same values, dtype and device preserved
    xt = torch.tensor(U_INNER, dtype=torch.float32)
    out = table(xt)
    assert out.dtype == torch.float32
    # compare with the float64 path at the float32-rounded inputs; output rounding only
    expected = table(xt.double().numpy()).astype(np.float32)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-7, atol=1e-7)
    # grid nodes are reproduced exactly (interpolation in z = logit(u)); float64 logit round trip
    u_nodes = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(table(u_nodes), np.tanh(z / 7), atol=1e-12)


# --------------------------------------------------------------------------------------------
# Precision near the ends: u = 1 - s with s below float64 resolution
# --------------------------------------------------------------------------------------------


def test_exp_centered_precision_near_one():
    mp.mp.dps = 40
    t = 50.0
    tr = Exp(t)
    s = np.array([1e-30, 2e-30, 1e-20, 1e-10])
    u = 1.0 - s  # == 1.0 for the first three: u itself cannot resolve them
    got = tr.centered(u, s)
    exact = [float(mp.e ** mp.mpf(t) * mp.expm1(-mp.mpf(t) * mp.mpf(float(x)))) for x in s]
    # closed form e^t * expm1(-t s); expm1/exp are correctly rounded to ~1 ulp, so 1e-14 relative
    np.testing.assert_allclose(got, exact, rtol=1e-14)
    # the difference at s = 1e-30 vs 2e-30 (both u == 1.0 in float64) is resolved to 1e-12 relative
    d_exact = exact[0] - exact[1]
    assert d_exact == pytest.approx(math.exp(t) * t * 1e-30, rel=1e-12, abs=0)  # ~2.59e-7
    assert got[0] - got[1] == pytest.approx(d_exact, rel=1e-12, abs=0)
    # a naive Phi(u) - Phi(1) cannot: u rounds to 1
    assert tr(u[0]) - tr(1.0) == 0.0
    # normalised variant: same, scaled by 1/(e^t - 1)
    gn = Exp(t, normalized=True).centered(u, s)
    np.testing.assert_allclose(gn, np.array(exact) / math.expm1(t), rtol=1e-14)


def test_exp_negative_t_centered_precision_near_zero():
    t = -50.0
    u = np.array([1e-30, 2e-30, 1e-300])
    got = Exp(t).centered(u, 1.0 - u)
    # Phi(u) - Phi(0) = -expm1(t u) ~ |t| u: relative 1e-14
    np.testing.assert_allclose(got, -np.expm1(t * u), rtol=1e-14)
    assert got[1] - got[0] == pytest.approx(50e-30, rel=1e-12, abs=0)


def test_log_centered_precision_near_one():
    s = np.array([1e-30, 2e-30])
    got = Log().centered(1.0 - s, s)
    np.testing.assert_allclose(got, -s, rtol=1e-14)  # log(1 - s) = -s - s^2/2 ...
    assert got[0] - got[1] == pytest.approx(1e-30, rel=1e-12, abs=0)


def test_identity_centered_precision_near_one():
    s = np.array([1e-30, 2e-30])
    np.testing.assert_array_equal(Identity().centered(1.0 - s, s), -s)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_t", [0, 0.0, float("nan"), float("inf"), 701.0, "3"])
def test_exp_bad_t_names_key(bad_t):
    with pytest.raises(ConfigError, match=r"transform\.t") as info:
        Exp(bad_t)
    assert info.value.key == "transform.t"


def test_exp_t_zero_message_points_to_identity():
    with pytest.raises(ConfigError, match="identity"):
        Exp(0.0)


def test_raw_is_uncalibrated_and_rejected_by_theory():
    assert Raw.calibrated is False and Identity.calibrated is True
    x = torch.tensor([-3.0, 7.0])
    assert torch.equal(Raw()(x), x)
    with pytest.raises(ConfigError, match="raw"):
        theory.evaluate(Raw(), 0.1, BestOfN(4))
    with pytest.raises(ConfigError, match="raw"):
        theory.frontier(Raw(), BestOfN(4), [0.5])
    with pytest.raises(ConfigError, match="raw"):
        Raw().centered(U, 1 - U)


# --------------------------------------------------------------------------------------------
# User transforms: Custom, registry, Hydra config entry
# --------------------------------------------------------------------------------------------


def _sqrt_reference_kl(beta: float) -> float:
    """KL of f ∝ exp(sqrt(u)/beta) by mpmath quadrature (independent of the theory engine)."""
    mp.mp.dps = 30
    g = lambda u: mp.sqrt(u) / beta  # noqa: E731
    z = mp.quad(lambda u: mp.exp(g(u)), [0, 0.25, 1])
    mean = mp.quad(lambda u: g(u) * mp.exp(g(u)), [0, 0.25, 1]) / z
    return float(mean - mp.log(z))


def test_custom_from_dotted_path_feeds_theory():
    tr = Custom(fn="numpy.sqrt")
    assert tr.label == "sqrt" and tr.fn is np.sqrt
    np.testing.assert_array_equal(tr(U), np.sqrt(U))
    point = theory.evaluate(tr, 0.2, Sample())[0]
    # the engine is spectrally accurate on its logit grid; 1e-9 absolute is a loose bound
    assert point.kl == pytest.approx(_sqrt_reference_kl(0.2), abs=1e-9)
    assert 0.5 < point.standard_win_rate < 1


def test_custom_bad_fn_raises():
    with pytest.raises(ConfigError, match=r"transform\.fn"):
        Custom(fn="numpy.definitely_not_a_function")
    with pytest.raises(ConfigError, match=r"transform\.fn"):
        Custom(fn="no_such_module_xyz.f")
    with pytest.raises(ConfigError, match=r"transform\.fn"):
        Custom(fn=3.0)


def test_as_transform():
    t = Identity()
    assert as_transform(t) is t
    wrapped = as_transform(np.tanh)
    assert isinstance(wrapped, Custom) and wrapped.label == "tanh"
    with pytest.raises(ConfigError, match="transform"):
        as_transform(42)


def test_register_transform_adds_to_registry():
    try:

        @register_transform("_test_cube")
        class Cube(Transform):
            def __call__(self, u):
                return u**3

        assert TRANSFORMS["_test_cube"] is Cube and Cube().kind == "_test_cube"
        assert Cube()(np.array([2.0]))[0] == 8.0
    finally:
        TRANSFORMS.pop("_test_cube", None)


def test_hydra_config_entry_is_a_new_transform():
    """'A new transform is one YAML entry': instantiate it and compute its frontier."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {"_target_": "infalign.math.transforms.Custom", "fn": "numpy.sqrt", "name": "sqrt"}
    )
    tr = instantiate(cfg)
    assert isinstance(tr, Custom) and tr.label == "sqrt"
    budgets = [0.05, 0.2, 0.5]
    fr = theory.frontier(tr, BestOfN(4), budgets)
    assert fr.reachable.all() and fr.transform == "sqrt"
    # KL at the returned beta matches the budget (beta_for_kl tol 1e-10; 1e-8 leaves margin)
    np.testing.assert_allclose(fr.kl, budgets, atol=1e-8)
    # and independently (mpmath quadrature) to 1e-8
    for b, beta in zip(budgets, fr.beta):
        assert _sqrt_reference_kl(float(beta)) == pytest.approx(b, abs=1e-8)
    assert np.all(np.diff(fr.win_rate) > 0) and np.all((fr.win_rate > 0.5) & (fr.win_rate < 1))


def test_shipped_yaml_entries_instantiate():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    for name, cls in [
        ("sqrt", Custom),
        ("exp", Exp),
        ("identity", Identity),
        ("log", Log),
        ("raw", Raw),
    ]:
        path = CONF / f"{name}.yaml"
        if not path.exists():
            pytest.skip(f"{path} not present")
        assert isinstance(instantiate(OmegaConf.load(path)), cls)


def test_finite_in_float32_is_trainings_own_range():
    """exp overflows float32 only upwards (t > 88.72, plain or normalised: e^t, expm1(t)); any t < 0 is
    finite. A callable written for torch tensors is probed with one (it used to fail validation with an
    AttributeError)."""
    import torch

    from infalign.math.transforms import Custom, Exp, Identity, finite_in_float32

    assert finite_in_float32(Exp(88.5)) and finite_in_float32(Exp(88.5, normalized=True))
    assert not finite_in_float32(Exp(89.0)) and not finite_in_float32(Exp(89.0, normalized=True))
    assert finite_in_float32(Exp(-300.0)) and finite_in_float32(Exp(-300.0, normalized=True))
    assert finite_in_float32(Identity())
    torch_only = Custom(lambda u: torch.log1p(u.clamp(min=0)), name="torch_only")
    assert finite_in_float32(torch_only)
    assert not finite_in_float32(Custom(lambda u: torch.log(u.clamp(min=0)), name="log0"))  # -inf at 0


def test_a_step_sum_of_rewards_bounds_t_where_the_rloo_baseline_overflows():
    """Training sums a step's P x G rewards (each RLOO group's baseline; the logged mean): exp(t u) at t = 87.5
    is finite alone but its group of 4 sums past float32's 3.4e38 and every advantage became -inf (theory
    walkthrough: t = 88 crashed in multinomial). ``terms`` puts the limit at 88.72 - ln(terms): checked
    against rloo_advantages itself on either side of it. The normalised form stays in [0, 1]."""
    import math

    import torch

    from infalign.math.rl_objectives import rloo_advantages
    from infalign.math.transforms import FLOAT32_MAX, Exp, finite_in_float32

    assert finite_in_float32(Exp(87.5)) and not finite_in_float32(Exp(87.5), terms=64)
    assert finite_in_float32(Exp(88.5, normalized=True), terms=64)
    rows = 64
    limit = math.log(FLOAT32_MAX / rows)  # 84.56
    for t, finite in ((limit - 0.01, True), (limit + 0.01, False)):
        assert finite_in_float32(Exp(t), terms=rows) is finite
        rewards = torch.full((rows,), math.exp(t), dtype=torch.float32)  # the top of [0, 1]: u = 1 for every row
        step = torch.cat([rloo_advantages(rewards, 4), rewards.mean()[None]])
        assert bool(torch.isfinite(step).all()) is finite


def test_exp_accepts_t_at_the_documented_bound_700():
    assert Exp(700.0).t == 700.0 and Exp(-700.0).t == -700.0
    with pytest.raises(ConfigError):
        Exp(700.5)
