"""The bench's FLOP counts (bench/flops.py, formula (F.1)) against hand computations, and its phase clock."""

import time

import pytest

from infalign.bench.flops import ModelCost, model_cost, sampling_flops, scoring_flops, teacher_forced_flops
from infalign.bench.phases import PhaseClock, median_phases, patched, timed


def _gpt2(n_layer=2, d=16, vocab=50, classifier=False):
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab, n_positions=32, n_embd=d, n_layer=n_layer, n_head=2, num_labels=1)
    return (GPT2ForSequenceClassification if classifier else GPT2LMHeadModel)(cfg)


def test_model_cost_counts_gpt2_projections():
    # per layer c_attn 3d^2 + attn c_proj d^2 + c_fc 4d^2 + mlp c_proj 4d^2 = 12 d^2; head vocab x d (tied to wte)
    cost = model_cost(_gpt2(n_layer=2, d=16, vocab=50))
    assert cost == ModelCost(body=2 * 12 * 16 ** 2, head=50 * 16, n_layer=2, d_model=16)
    assert model_cost(_gpt2(classifier=True)).head == 1 * 16  # the score head: labels x d


def test_forward_flops_hand_computed():
    cost = ModelCost(body=100, head=10, n_layer=3, d_model=4)
    assert cost.forward(body_tokens=5, head_tokens=2, attn_pairs=7) == 2 * 100 * 5 + 2 * 10 * 2 + 4 * 3 * 4 * 7


def test_phase_flops_hand_computed():
    cost = ModelCost(body=100, head=10, n_layer=1, d_model=2)

    def fwd(body, head, attn):
        return 200 * body + 20 * head + 8 * attn

    # 2 rows, prompt width 3, 3 new tokens: prefill (6 tokens, 2 head positions, 2*3*3 pairs), then steps t=1,2
    assert sampling_flops(cost, 2, 3, 3) == fwd(6, 2, 18) + fwd(2, 2, 2 * 4) + fwd(2, 2, 2 * 5)
    assert sampling_flops(cost, 2, 3, 3, prefill_rows=1) == fwd(3, 1, 9) + fwd(2, 2, 8) + fwd(2, 2, 10)
    # decode steps over the rows still generating: a row of length 1 (stop token first) needs none
    assert sampling_flops(cost, 2, 3, 3, lengths=[1, 3]) == fwd(6, 2, 18) + fwd(1, 1, 4) + fwd(1, 1, 5)
    assert sampling_flops(cost, 2, 3, 3, lengths=[2, 3]) == fwd(6, 2, 18) + fwd(2, 2, 8) + fwd(1, 1, 5)
    assert sampling_flops(cost, 2, 3, 3, lengths=[3, 3]) == sampling_flops(cost, 2, 3, 3)
    # teacher forcing over width 3 + 2, head on the last 2 + 1 positions
    assert teacher_forced_flops(cost, 2, 3, 2) == fwd(10, 6, 2 * 25)
    # shared prompt: the prompt once (3 tokens, 1 head position, 3*3 pairs), then each row's first
    # response token (2 rows x 1 token, attending to 3 + 1 keys)
    assert teacher_forced_flops(cost, 2, 3, 2, prefill_rows=1) == fwd(3, 1, 9) + fwd(2, 2, 2 * 4)
    assert teacher_forced_flops(cost, 2, 3, 1, prefill_rows=1) == fwd(3, 1, 9)
    # more than half the rows distinct: no sharing (as sequence_logprobs decides), the per-row forward
    assert teacher_forced_flops(cost, 3, 3, 2, prefill_rows=2) == teacher_forced_flops(cost, 3, 3, 2)
    assert scoring_flops(cost, 2, 4) == fwd(8, 8, 32)


def test_phase_clock_times_calls_and_restores_patches():
    clock = PhaseClock()

    class Box:
        def work(self, phase):
            time.sleep(0.01)
            return phase

    box = Box()
    original = box.work
    with patched(box, "work", timed(box.work, clock, lambda phase: phase)):
        assert box.work("a") == "a" and box.work("b") == "b" and box.work("a") == "a"
    assert box.work == original  # restored
    phases = clock.take(step_s=1.0)
    assert phases["a"] >= 0.02 and phases["b"] >= 0.01
    assert phases["overhead"] == pytest.approx(1.0 - phases["a"] - phases["b"])
    assert clock.take(0.5) == {"overhead": 0.5}  # the clock restarted
    assert median_phases([{"phases": {"generation": 1.0}}, {"phases": {"generation": 3.0, "backward": 2.0}},
                          {"phases": {"generation": 2.0}}]) == {"generation": 2.0, "backward": 0.0}


def test_decoder_cost_matches_the_published_parameter_counts():
    from infalign.bench.flops import ESTIMATE_MODELS

    # Qwen2.5-0.5B: 0.49B parameters, 1.5B: 1.54B (model cards; norms and biases, <0.1 %, not counted)
    c = ESTIMATE_MODELS["Qwen2.5-0.5B-Instruct"]
    assert c.body + c.head == pytest.approx(494e6, rel=5e-3)
    c = ESTIMATE_MODELS["Qwen2.5-1.5B-Instruct"]
    assert c.body + c.head == pytest.approx(1.544e9, rel=5e-3)


def test_step_estimate_is_bound_where_it_should_be():
    from infalign.bench.flops import ModelCost, estimate_step

    cost, reward = ModelCost(body=10**9, head=0, n_layer=1, d_model=1), ModelCost(0, 0, 1, 1)
    # 1 row, 1 prompt of 1 token, 3 new tokens: two decode steps, each reading 2 GB at 1 TB/s = 2 ms + 1 ms overhead
    est = estimate_step(cost, reward, rows=1, prompts=1, prompt_len=1, response_len=3, peak=1e18, bandwidth=1e12,
                        mfu=1.0, step_overhead_s=1e-3)
    assert est["generation"] == pytest.approx(2 * (2e-3 + 1e-3), rel=1e-6)
    # compute-bound: one row shares nothing, a forward over 4 tokens = 8e9 FLOP (+ attention 4*16) at
    # 1e12 FLOP/s; backward 2x more
    est = estimate_step(cost, reward, 1, 1, 1, 3, peak=1e12, bandwidth=1e30, mfu=1.0, step_overhead_s=0.0)
    assert est["reference"] == pytest.approx((8e9 + 64) / 1e12, rel=1e-12)
    # two rows of one prompt share it: the 1-token prompt once (2e9, attention 4*1), then each row's first
    # 2 response tokens (2 x 4e9, attention 4 * 2 rows * 2*3 pairs)
    shared = estimate_step(cost, reward, 2, 1, 1, 3, peak=1e12, bandwidth=1e30, mfu=1.0, step_overhead_s=0.0)
    assert shared["reference"] == pytest.approx((1e10 + 4 + 48) / 1e12, rel=1e-12)
    assert est["policy_forward+backward"] == pytest.approx(3 * est["reference"])
    # bf16 (2 bytes per weight, trainer=gpu's autocast): one more teacher-forced policy forward gives the
    # log-probs (rollout_logprobs); float32 reuses the sampler's
    assert est["old_logprobs"] == pytest.approx(est["reference"])
    assert est["step"] == pytest.approx(sum(v for k, v in est.items() if k != "step"))
    est32 = estimate_step(cost, reward, 1, 1, 1, 3, peak=1e12, bandwidth=1e30, mfu=1.0, step_overhead_s=0.0,
                          bytes_per_weight=4)
    assert "old_logprobs" not in est32 and est32["step"] == pytest.approx(est["step"] - est["reference"])


def test_step_mfu_counts_the_work_the_step_needs_not_a_redundant_forward():
    """TRL's old-log-probs forward is timed and gets its own MFU, but the step's FLOPs are those of the
    work it needs: two implementations doing the same needed work have step MFUs in the ratio of their
    times (hand computation: 2 steps of 1 s, 6 needed GFLOP each + 2 redundant, peak 10 GFLOP/s)."""
    from infalign.bench.bench_rl import summarize

    rec = {"step_s": 1.0, "rows": 4, "tokens": 40, "threads": 2,
           "phases": {"generation": 0.3, "old_logprobs": 0.2, "backward": 0.5},
           "flops": {"generation": 2e9, "old_logprobs": 2e9, "backward": 4e9}}
    out = summarize([rec, dict(rec)], peak=10e9)
    assert out["flops_per_step"] == pytest.approx(6e9)
    assert out["mfu"]["step"] == pytest.approx(6e9 / 1.0 / 10e9)
    assert out["mfu"]["old_logprobs"] == pytest.approx(2e9 / 0.2 / 10e9)


def test_faster_sampler_ceiling_takes_the_median_of_per_step_differences():
    """steps 1.0, 1.1, 1.2 s with generation 0.5, 0.3, 0.4 s: without generation 0.5, 0.8, 0.8 -> median
    0.8 (a median step minus a median generation, 1.1 - 0.4 = 0.7, mixes two steps)."""
    from infalign.bench.bench_rl import summarize
    from infalign.bench.bench_trl import free_generation_bound

    recs = [{"step_s": st, "rows": 4, "tokens": 40, "threads": 2, "phases": {"generation": g}}
            for st, g in ((1.0, 0.5), (1.1, 0.3), (1.2, 0.4))]
    ours = summarize(recs)
    assert ours["median_s_without_generation"] == pytest.approx(0.8)
    assert free_generation_bound(ours, {"median_s": 1.6}) == pytest.approx(2.0)


def test_reward_flops_count_each_length_bucket_at_its_own_width():
    """The scorer runs its length buckets as separate forwards, each padded to its own widest input: the
    reward phase's FLOPs are the sum over those (rows, width), not all rows at the widest of all (a
    reviewer measured 1.990e9 computed vs 2.111e9 counted on a bench step). Hand check: the shapes
    are the scorer's own chunks, encoded one by one."""
    from types import SimpleNamespace

    from infalign.bench.bench_rl import reward_shapes, step_flops
    from infalign.models import build_toy_reward_model
    from infalign.models.reward import RewardScorer, reward_model_inputs
    from infalign.toy import ToyWorld

    world = ToyWorld(seed=0)
    tok = world.tokenizer()
    scorer = RewardScorer(build_toy_reward_model(tok, "tiny"), tok, batch_size=256)
    prompts, responses = world.reference_corpus(32, 2, seed=0)  # 64 rows: two buckets
    shapes = reward_shapes(SimpleNamespace(scorer=scorer, tokenizer=tok), prompts, responses)
    chunks = scorer.chunks(prompts, responses)
    assert len(shapes) == len(chunks) == 2
    widths = [reward_model_inputs(tok, [prompts[i] for i in c], [responses[i] for i in c])["input_ids"].shape[1]
              for c in chunks]
    assert shapes == [(len(c), w) for c, w in zip(chunks, widths)] and sum(n for n, _ in shapes) == 64
    widest = reward_model_inputs(tok, prompts, responses)["input_ids"].shape[1]
    assert min(widths) < widest  # (else this case would not tell the two counts apart)
    cost = ModelCost(body=100, head=1, n_layer=1, d_model=2)
    flops = step_flops((cost, cost), 64, 4, 3, shapes)
    assert flops["reward"] == sum(scoring_flops(cost, n, w) for n, w in shapes) < scoring_flops(cost, 64, widest)
