"""algo.kl_target: beta chosen from the theory so that the ideal policy has the requested KL."""

import math

import pytest
import torch

from infalign.errors import ConfigError
from infalign.math import theory
from infalign.math.calibration import CalibrationTable
from infalign.math.procedures import BestOfN
from infalign.math.transforms import Exp, Identity, Raw
from infalign.pipeline.kl_target import beta_for_target
from infalign.training.algorithms import make_algorithm


@pytest.mark.parametrize("transform", [Identity(), Exp(t=4.0, normalized=True)], ids=["identity", "expn4"])
@pytest.mark.parametrize("kl", [0.05, 0.4, 1.5])
def test_calibrated_beta_hits_the_target_kl(transform, kl):
    beta = beta_for_target(kl, transform, BestOfN(n=4), None)
    assert theory.evaluate(transform, beta, BestOfN(n=4))[0].kl == pytest.approx(kl, rel=1e-6)


def test_raw_beta_is_identity_beta_times_score_spread_by_hand():
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 2.0, 4.0, 6.0]])  # variances 5/3 and 20/3 (n-1)
    table = CalibrationTable.from_rewards(scores)
    beta_id = beta_for_target(0.3, Identity(), BestOfN(n=4), None)
    expected = beta_id * math.sqrt(12 * (5 / 3 + 20 / 3) / 2)
    assert beta_for_target(0.3, Raw(), BestOfN(n=4), table) == pytest.approx(expected, rel=1e-9)
    # raw scores spread like the calibrated reward itself (variance 1/12) get identity's beta
    k = 20000
    u = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    uniform = CalibrationTable.from_rewards(torch.stack([u, u]).float())
    assert beta_for_target(0.3, Raw(), BestOfN(n=4), uniform) == pytest.approx(beta_id, rel=1e-3)


def test_bad_targets_name_the_key():
    with pytest.raises(ConfigError, match="algo.kl_target"):
        beta_for_target(0.0, Identity(), BestOfN(n=4), None)
    with pytest.raises(ConfigError, match="algo.kl_target"):
        beta_for_target(0.3, Raw(), BestOfN(n=4), None)  # raw needs the table
    with pytest.raises(ConfigError, match="algo.kl_target"):
        beta_for_target(0.3, Raw(), BestOfN(n=4), CalibrationTable.from_rewards(torch.ones(2, 4)))
    with pytest.raises(ConfigError, match=r"calibration\.K=1.*>= 2 with algo\.kl_target"):  # (var of 1 sample: NaN)
        beta_for_target(0.3, Raw(), BestOfN(n=4), CalibrationTable.from_rewards(torch.tensor([[1.0], [2.0]])))
    with pytest.raises(ConfigError, match=r"algo\.kl_target.*moves its KL with algo\.beta \(tau"):
        make_algorithm({"name": "ipo", "kl_target": 0.3})
    with pytest.raises(ConfigError, match="algo.kl_target"):
        make_algorithm({"name": "rloo", "kl_target": -1.0})


def test_a_beta_that_leaves_the_policy_where_it_is_is_warned_before_compute(caplog):
    """toy_bon's beta=20 is sized for exp(4u) (the theory's KL 0.36 nats); under identity it puts the
    tilted policy 1e-4 nats away, and a walkthrough's 100 steps moved nothing, silently. Warned for a
    calibrated transform at an explicit beta; not with a kl_target (it picks beta), not for raw (no
    theory), not for a beta that moves the policy."""
    import logging

    from infalign.apps.train import STAYS_KL, warn_if_the_policy_stays

    assert float(theory.tilt(theory.phi_table(Identity()), 20.0).kl[0]) < STAYS_KL  # the case, by the theory
    rloo = make_algorithm({"name": "rloo", "beta": 20.0})
    with caplog.at_level(logging.WARNING, logger="infalign.apps.train"):
        warn_if_the_policy_stays(Identity(), rloo)
        (record,) = caplog.records
        assert "algo.beta=20 with identity" in record.getMessage() and "algo.kl_target" in record.getMessage()
        caplog.clear()
        warn_if_the_policy_stays(Exp(4.0), rloo)  # KL 0.36: trains
        warn_if_the_policy_stays(Raw(), rloo)
        warn_if_the_policy_stays(Identity(), make_algorithm({"name": "rloo", "beta": 20.0, "kl_target": 0.3}))
        warn_if_the_policy_stays(Identity(), make_algorithm({"name": "rloo", "beta": 0.1}))
    assert not caplog.records
