"""Pins found by mutation testing of src/infalign/bench/flops.py and phases.py: the measured matmul peak (MFU's
denominator), the decoder-size estimates and the GPU data-sheet figures of the scale note, one RL step's
estimate at its default MFU and launch overhead by hand, and the phase clock's overhead clamp. Pure
arithmetic on hand-made sizes (formula (F.1) of flops.py): each test runs in milliseconds."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from infalign.bench import flops
from infalign.bench.flops import ModelCost, decoder_cost, estimate_step
from infalign.bench.phases import PhaseClock


def _clock(*durations: float):
    """A fake ``time`` module whose ``perf_counter`` gives back-to-back (start, stop) pairs ``durations`` apart."""
    ticks, t = [], 0.0
    for d in durations:
        ticks += [t, t + d]
        t += 10.0
    it = iter(ticks)
    return SimpleNamespace(perf_counter=lambda: next(it))


def test_matmul_peak_is_two_n_cubed_over_the_best_time(monkeypatch):
    """An n x n by n x n matmul is 2 n^3 FLOPs (n^3 multiply-adds); the peak is that over the *fastest* of
    ``repeats`` timed calls (the warm-up call is not timed). Timings 0.5, 0.25, 1.0 s at n = 8:
    2 * 512 / 0.25 = 4096 FLOP/s. ``repeats=0`` still times one call. Mutation testing: the factor 2,
    the minimum (-> the last time) and ``max(1, repeats)`` (-> an infinite best time, peak 0) went
    unnoticed (the bench only checked the peak was positive)."""
    monkeypatch.setattr(flops, "time", _clock(0.5, 0.25, 1.0))
    assert flops.matmul_peak(n=8, repeats=3) == pytest.approx(2 * 8**3 / 0.25)
    monkeypatch.setattr(flops, "time", _clock(0.5))
    assert flops.matmul_peak(n=8, repeats=0) == pytest.approx(2 * 8**3 / 0.5)


def test_decoder_cost_by_hand():
    """decoder_cost: per layer q, o = d^2 each, k, v = d x kv_dim each, MLP 3 d d_ff (gated) or 2 d d_ff; head
    vocab x d. n_layer 2, d 4, d_ff 8, vocab 10, kv_dim 2: ungated 2*16 + 2*8 + 2*32 = 112 per layer,
    gated 144; head 40. Mutation testing: the ungated factor 2 -> 3 and d_model -> d_ff in ModelCost."""
    assert decoder_cost(2, 4, 8, 10, kv_dim=2, gated=False) == ModelCost(body=224, head=40, n_layer=2, d_model=4)
    assert decoder_cost(2, 4, 8, 10, kv_dim=2) == ModelCost(body=288, head=40, n_layer=2, d_model=4)


def test_the_reward_estimate_is_deberta_v3_larges_ungated_body():
    """ESTIMATE_REWARD: DeBERTa-v3-large, 24 layers, hidden 1024, FFN 4096, an ungated (GELU) MLP; its model card
    gives 304M backbone parameters: 24 * (4 * 1024^2 + 2 * 1024 * 4096) = 302.0M matrix weights (norms,
    biases and relative-position embeddings not counted, < 1 %). A gated MLP would be 402.7M.
    Mutation testing: ``gated=False`` dropped."""
    name, cost = flops.ESTIMATE_REWARD
    assert "deberta-v3-large" in name
    assert cost.body == 24 * (4 * 1024**2 + 2 * 1024 * 4096)
    assert cost.body == pytest.approx(304e6, rel=1e-2)
    assert (cost.n_layer, cost.d_model) == (24, 1024)


def test_gpu_figures_are_the_data_sheets():
    """NVIDIA's data sheets: H100 SXM and H200 SXM both 989 TFLOP/s dense bf16 (1,979 with sparsity), HBM
    3.35 TB/s (H100) and 4.8 TB/s (H200). Mutation testing: the H200 bandwidth changed."""
    assert flops.ESTIMATE_GPUS == {"H100 SXM": (989e12, 3.35e12), "H200 SXM": (989e12, 4.8e12)}


def test_step_estimate_at_the_default_mfu_and_launch_overhead_by_hand():
    """estimate_step with its defaults (mfu 0.4, 15 ms per decode step, 2 bytes per weight). Policy: 1e9 body and
    1e8 head weights, one layer of d_model 1e8 (so attention, 4e8 FLOPs per pair by (F.1), weighs as much as the
    weights); reward: 1e6 body, 10 head weights, d_model 10. One row of a 2-token prompt, 3 new tokens,
    peak 1e12 FLOP/s (0.4e12 at MFU 0.4), 1 TB/s:

    - prefill: forward(2 tokens, 1 head position, 2^2 pairs) = 4e9 + 2e8 + 1.6e9 = 5.8e9 FLOPs;
    - decode t = 1, 2: forward(1, 1, 2 + t pairs) = 2.2e9 + 4e8 (2 + t) = 3.4e9, 3.8e9 FLOPs: 8.5, 9.5 ms of
      compute, more than the (1e9 + 1e8) * 2 bytes / 1e12 B/s = 2.2 ms of weight reads, so compute-bound
      (the max, not the sum), + 15 ms each;
    - reward: scoring over the whole width 2 + 3 = 5: 2e6 * 5 + 20 * 5 + 40 * 25 = 1e7 + 1100;
    - reference (one row: no shared prompt): forward(5 tokens, 4 head positions, 25 pairs) = 1e10 + 8e8 + 1e10;
      policy forward + backward 3x that; old_logprobs (bf16) once more.

    At peak 1e18 decoding is bandwidth-bound: 2.2 ms (head included) + 15 ms per step.
    Mutation testing: another default MFU or overhead, the reward's width without the prompt, the prefill's
    attention linear in the prompt length, and the head's weights left out of the bytes read per step all
    went unnoticed."""
    policy, reward = ModelCost(body=10**9, head=10**8, n_layer=1, d_model=10**8), ModelCost(10**6, 10, 1, 10)
    est = estimate_step(policy, reward, rows=1, prompts=1, prompt_len=2, response_len=3, peak=1e12, bandwidth=1e12)
    speed = 0.4e12
    reference = 2.08e10 / speed
    want = {"generation": 5.8e9 / speed + 3.4e9 / speed + 3.8e9 / speed + 2 * 0.015,
            "reward": (1e7 + 1100) / speed, "reference": reference, "policy_forward+backward": 3 * reference,
            "old_logprobs": reference}
    want["step"] = sum(want.values())
    assert est == pytest.approx(want, rel=1e-9)
    fast = estimate_step(policy, reward, rows=1, prompts=1, prompt_len=2, response_len=3, peak=1e18, bandwidth=1e12)
    assert fast["generation"] == pytest.approx(5.8e9 / 0.4e18 + 2 * (2.2e9 / 1e12 + 0.015), rel=1e-9)


def test_phase_clock_overhead_is_never_negative():
    """``overhead`` = step time minus the timed phases, clamped at 0: phases measured as 2 s inside a step
    reported as 1.5 s (clocks of different resolution, or nested timing) leave no negative overhead.
    Mutation testing: the clamp was dropped."""
    clock = PhaseClock()
    clock.add("generation", 1.25)
    clock.add("generation", 0.75)
    assert clock.take(1.5) == {"generation": 2.0, "overhead": 0.0}
