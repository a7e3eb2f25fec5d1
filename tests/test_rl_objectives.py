"""RL maths: KL estimators, RLOO advantages and loss, PPO clipped surrogate, IPO loss."""

import math

import pytest
import torch

from infalign.errors import ConfigError
from infalign.math.rl_objectives import (
    ipo_loss,
    kl_penalty,
    ppo_loss,
    rloo_advantages,
    rloo_loss,
    shaped_reward,
)


# ---------------------------------------------------------------- KL estimators
def test_kl_k1_k3_hand_computation():
    # Asymmetric on purpose: k1 != 0 and the log-ratios differ in size, so swapping the arguments
    # (log q - log p) or flipping a sign changes both estimates; masked tokens hold large values.
    logp = torch.tensor([[-1.0, -2.5, -0.5], [-0.2, -3.0, -1.0]])
    ref = torch.tensor([[-2.0, -1.0, -7.0], [-0.7, -0.1, -4.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # k1 = sum (log p - log q): row 0: (-1 + 2) + (-2.5 + 1) = -0.5; row 1: -0.2 + 0.7 = 0.5.
    torch.testing.assert_close(kl_penalty(logp, ref, mask, "k1"), torch.tensor([-0.5, 0.5]))
    # k3 = sum (r - 1) - log r, log r = log q - log p: row 0: log r = -1, +1.5 -> e^-1 + (e^1.5 - 2.5);
    # row 1: log r = -0.5 -> e^-0.5 - 1 + 0.5.
    expected_k3 = torch.tensor([math.exp(-1) + math.exp(1.5) - 2.5, math.exp(-0.5) - 0.5])
    torch.testing.assert_close(kl_penalty(logp, ref, mask, "k3"), expected_k3)
    # swapped arguments give other values (the check above would catch a swap inside kl_penalty)
    assert not torch.allclose(kl_penalty(ref, logp, mask, "k1"), torch.tensor([-0.5, 0.5]))
    assert not torch.allclose(kl_penalty(ref, logp, mask, "k3"), expected_k3)


def test_k3_is_non_negative():
    g = torch.Generator().manual_seed(0)
    logp, ref = -torch.rand(64, 9, generator=g) * 5, -torch.rand(64, 9, generator=g) * 5
    per_seq = kl_penalty(logp, ref, torch.ones(64, 9), "k3")
    assert (per_seq >= 0).all()
    assert (kl_penalty(logp, ref, torch.ones(64, 9), "k1") < 0).any()  # k1 need not be


def test_k3_is_unbiased_for_categorical_kl():
    # p, q on 5 outcomes; 400k draws from p. The mean of k3 has standard error ~ sd/sqrt(n);
    # we require agreement within 4 standard errors (and the SE itself is below 1e-3).
    p = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
    q = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2])
    true_kl = (p * (p / q).log()).sum()
    y = torch.multinomial(p, 400_000, replacement=True, generator=torch.Generator().manual_seed(0))
    logp, logq = p.log()[y][:, None], q.log()[y][:, None]
    ones = torch.ones_like(logp)
    for est in ("k1", "k3"):
        samples = kl_penalty(logp, logq, ones, est).double()
        se = samples.std() / math.sqrt(len(samples))
        assert se < 1e-3
        assert abs(samples.mean() - true_kl) < 4 * se, est


def test_kl_unknown_estimator_names_the_key():
    x = torch.zeros(1, 1)
    with pytest.raises(ValueError, match=r"algo\.kl_estimator.*k1.*k3"):
        kl_penalty(x, x, x, "k2")


def test_shaped_reward_detaches_kl():
    kl = torch.tensor([1.0, 2.0], requires_grad=True)
    r = shaped_reward(torch.tensor([0.5, 0.25]), kl, beta=0.1)
    torch.testing.assert_close(r, torch.tensor([0.4, 0.05]))
    assert not r.requires_grad


# ---------------------------------------------------------------- RLOO
def test_rloo_advantages_hand_computation():
    rewards = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    expected = torch.tensor(
        [1 - (2 + 6) / 2, 2 - (1 + 6) / 2, 6 - (1 + 2) / 2, 0 - 1.5, 0 - 1.5, 3 - 0.0]
    )
    torch.testing.assert_close(rloo_advantages(rewards, 3), expected)
    torch.testing.assert_close(rloo_advantages(rewards.reshape(-1), 3), expected)


def test_rloo_advantages_sum_to_zero_per_group():
    rewards = torch.randn(7 * 5, generator=torch.Generator().manual_seed(0))
    adv = rloo_advantages(rewards, 5).view(7, 5)
    torch.testing.assert_close(adv.sum(1), torch.zeros(7), atol=1e-6, rtol=0)


def test_rloo_advantages_rejects_bad_group():
    with pytest.raises(ConfigError, match="algo.group_size"):
        rloo_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError):
        rloo_advantages(torch.zeros(5), 2)


def test_rloo_loss_gradient_is_reinforce():
    # One-token "responses" from a categorical policy softmax(theta): grad log pi(y) = e_y - pi,
    # so the gradient of the loss is -(1/B) sum_i A_i (e_{y_i} - pi).
    theta = torch.tensor([0.3, -1.0, 0.5, 0.0], requires_grad=True)
    y = torch.tensor([0, 2, 2, 1, 3, 0])
    rewards = torch.tensor([1.0, 0.0, 2.0, -1.0, 0.5, 0.25])
    adv = rloo_advantages(rewards, 3)
    logprobs = torch.log_softmax(theta, 0)[y][:, None]
    mask = torch.ones_like(logprobs)
    rloo_loss(logprobs, mask, adv).backward()
    pi = torch.softmax(theta.detach(), 0)
    analytic = -(adv[:, None] * (torch.nn.functional.one_hot(y, 4) - pi)).mean(0)
    torch.testing.assert_close(theta.grad, analytic)


def test_rloo_loss_ignores_masked_tokens():
    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, -4.0]], requires_grad=True)
    loss = rloo_loss(logprobs, torch.tensor([[1, 1], [1, 0]]), torch.tensor([1.0, -2.0]))
    torch.testing.assert_close(loss, -(1.0 * -3.0 + -2.0 * -0.5) / 2 * torch.ones(()))
    loss.backward()
    assert logprobs.grad[1, 1] == 0


# ---------------------------------------------------------------- PPO
def test_ppo_loss_unclipped_is_minus_advantage_times_ratio():
    old = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    new = old + torch.tensor([[0.05, -0.05, 0.0], [0.1, 0.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([2.0, -1.0])
    loss, stats = ppo_loss(new, old, adv, mask, clip_eps=0.2)
    ratio = torch.exp(new - old)
    expected = (-(adv[:, None] * ratio) * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected)
    assert stats["clip_frac"] == 0
    expected_kl = ((ratio - 1 - (new - old)) * mask).sum() / mask.sum()
    torch.testing.assert_close(stats["approx_kl"], expected_kl)


def test_ppo_loss_clips_in_the_pessimistic_direction():
    old = torch.zeros(4, 1)
    log_ratio = torch.log(torch.tensor([[1.5], [1.5], [0.5], [0.5]]))
    new = (old + log_ratio).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, stats = ppo_loss(new, old, adv, torch.ones(4, 1), clip_eps=0.2)
    # A>0, rho=1.5: clipped to 1.2 (no gradient). A<0, rho=1.5: unclipped -(-1)(1.5).
    # A>0, rho=0.5: unclipped -0.5.              A<0, rho=0.5: clipped to 0.8 -> 0.8.
    per_token = torch.tensor([-1.2, 1.5, -0.5, 0.8])
    torch.testing.assert_close(loss, per_token.mean())
    torch.testing.assert_close(stats["clip_frac"], torch.tensor(0.5))
    loss.backward()
    grad = new.grad.squeeze(1)
    assert grad[0] == 0 and grad[3] == 0  # clipped terms carry no gradient
    torch.testing.assert_close(grad[[1, 2]], torch.tensor([1.5, -0.5]) / 4)  # d(-A rho)/dlog rho


# ---------------------------------------------------------------- IPO
def test_ipo_loss_hand_computation():
    # pair 0: h = (2 - 1) - (0.5 - 1) = 1.5; pair 1: h = (0 - 1) - (1 - 0) = -2; tau = 0.25 -> target 2
    # loss = ((1.5 - 2)^2 + (-2 - 2)^2) / 2 = (0.25 + 16) / 2
    t = torch.tensor
    loss = ipo_loss(t([2.0, 0.0]), t([1.0, 1.0]), t([0.5, 1.0]), t([1.0, 0.0]), 0.25)
    assert loss.item() == pytest.approx(8.125)


def test_ppo_gradient_at_ratio_one_is_rloos_scaled_by_rows_over_tokens():
    """docs/method.md §6: at rho = 1 the token-mean surrogate's gradient is RLOO's times B / sum|y|."""
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(3, 5, generator=g).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.float32)
    adv = torch.tensor([0.7, -1.2, 0.4])
    (ppo_grad,) = torch.autograd.grad(ppo_loss(lp, lp.detach(), adv, mask, clip_eps=0.2)[0], lp)
    (rloo_grad,) = torch.autograd.grad(rloo_loss(lp, mask, adv), lp)
    torch.testing.assert_close(ppo_grad, rloo_grad * 3 / 10)  # B = 3 rows, 10 response tokens


def test_kl_penalty_ignores_non_finite_values_on_padding():
    """Padding may hold -inf / NaN log-probs (masked logits): they must not reach the KL (NaN * 0 = NaN)."""
    logp = torch.tensor([[-1.0, -2.0, -math.inf]])
    ref = torch.tensor([[-1.5, -1.0, float("nan")]])
    mask = torch.tensor([[1, 1, 0]])
    assert kl_penalty(logp, ref, mask, "k1").item() == pytest.approx(0.5 - 1.0)
    assert torch.isfinite(kl_penalty(logp, ref, mask, "k3")).all()


def test_ppo_loss_treats_old_logprobs_as_constants():
    """The surrogate differentiates log pi only: rho = exp(lp - old.detach()). Passing the same tensor
    as both (as a caller reusing the policy's log-probs does) must still give the policy gradient, by
    hand d/dlp mean_t(-A rho_t) = -A rho_t / T = -1 * 1 / 2 per token -- not 0, which a rho built from
    lp - lp with both sides differentiated would give. Exact in float32."""
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, _ = ppo_loss(lp, lp, torch.tensor([1.0]), torch.ones(1, 2), 0.2)
    (grad,) = torch.autograd.grad(loss, lp)
    torch.testing.assert_close(grad, torch.tensor([[-0.5, -0.5]]), atol=1e-7, rtol=0)


def test_rloo_loss_treats_advantages_as_constants():
    """The advantages are constants of the REINFORCE estimate even when they carry a graph back to
    the log-probs (e.g. a reward built from them): d loss / d lp_it = -(1/B) A_i. By hand, lp =
    [[-1, -2], [-.5, -.5]]: sequence sums -3 and -1, mean -2, A = [-1, 1], so the gradient is
    [[0.5, 0.5], [-0.5, -0.5]]. (Differentiating A = S - mean S too would double it: the loss is then
    -(1/B) sum_i (S_i - mean S) S_i, with d/dS_k = -(2/B) A_k.) Exact in float32."""
    lp = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]], requires_grad=True)
    seq = lp.sum(-1)
    adv = seq - seq.mean()
    (grad,) = torch.autograd.grad(rloo_loss(lp, torch.ones(2, 2), adv), lp)
    torch.testing.assert_close(grad, torch.tensor([[0.5, 0.5], [-0.5, -0.5]]), atol=1e-7, rtol=0)
