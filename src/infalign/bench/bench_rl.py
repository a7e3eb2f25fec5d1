"""Section ``rl``: samples/s and tokens/s of one InfAlign-CTRL RL step (RLOO), per toy size.

The step runs exactly as in training: ``CTRLModule.training_step`` under ``L.Trainer.fit``
(sample with the KV cache, score, calibrate, exp transform, k1 KL shaping, one RLOO update with
grad clipping). A callback times ``on_train_batch_start -> on_train_batch_end``; the first
``warmup`` steps are dropped. Inside the same steps each phase is timed (``bench/phases.py``) and
its model FLOPs counted (``bench/flops.py``), so the breakdown and the MFU describe real steps.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from infalign.bench.common import Timing, ToySetup, num_params, rate, toy_setup
from infalign.bench.flops import ModelCost, matmul_peak, model_cost, sampling_flops, scoring_flops, teacher_forced_flops
from infalign.bench.phases import PhaseClock, median_phases, patched, timed


@dataclass
class RLBench:
    prompts: int = 16  # P
    group: int = 4  # G
    max_new_tokens: int = 20
    beta: float = 0.05
    t: float = 4.0  # exp(t) transform
    lr: float = 1e-12  # updates run in full but move no weight by more than ~1e-12 (see bench_trl.py)
    warmup: int = 1
    steps: int = 5  # timed steps

    def config(self):
        from infalign.training.algorithms import make_algorithm

        return make_algorithm({"name": "rloo", "beta": self.beta, "lr": self.lr, "group_size": self.group,
                               "prompts_per_step": self.prompts, "steps": self.warmup + self.steps,
                               "max_new_tokens": self.max_new_tokens, "kl_estimator": "k1", "grad_clip": 1.0})


def step_stats(times: list[float], rows: list[int], tokens: list[float]) -> dict:
    """Best/median step time; samples/s and tokens/s are each the best over steps (response
    lengths, hence step times, vary from step to step); ``*_mean`` are totals over all steps."""
    timing = Timing(list(times))
    best = times.index(timing.best)
    return {
        **timing.as_dict(),
        "rows_per_step": rows[best],
        "mean_length": sum(tokens) / max(sum(rows), 1),
        "samples_per_s": max(rate(r, t) for r, t in zip(rows, times)),
        "tokens_per_s": max(rate(k, t) for k, t in zip(tokens, times)),
        "samples_per_s_mean": rate(sum(rows), sum(times)),
        "tokens_per_s_mean": rate(sum(tokens), sum(times)),
    }


def ours_records(setup: ToySetup, bench: RLBench, seed: int = 0) -> list[dict]:
    """Per-step records of ``bench.steps`` RL steps of CTRLModule under a Lightning Trainer, after
    ``bench.warmup`` untimed steps; the policy starts from the initial weights. Each record has
    ``step_s``, ``rows``, ``tokens``, the step's ``phases`` (seconds, timed inside the real step,
    ``bench/phases.py``) and their model ``flops`` (``bench/flops.py``)."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    import infalign.training.ctrl as ctrl
    from infalign.math.transforms import Exp

    clock = PhaseClock()

    class TimedScorer:
        """The reward scorer, timed; remembers its last inputs (their FLOPs are counted after the step)."""

        def __init__(self, inner) -> None:
            self.inner, self.model, self.batch = inner, getattr(inner, "model", None), ([], [])

        def score(self, prompts: list[str], responses: list[str]):
            self.batch = (prompts, responses)
            return timed(self.inner.score, clock, "reward")(prompts, responses)

    class TimedOptimizer:
        """The LightningOptimizer with its ``step`` timed as ``optimizer``."""

        def __init__(self, opt) -> None:
            self._opt = opt

        def step(self, *args, **kwargs):
            return timed(self._opt.step, clock, "optimizer")(*args, **kwargs)

        def __getattr__(self, name: str):
            return getattr(self._opt, name)

    class TimedCTRL(ctrl.CTRLModule):
        def rollout(self, step: int) -> dict:
            before = sum(clock.acc.values())
            t0 = time.perf_counter()
            out = super().rollout(step)
            rollout_s = time.perf_counter() - t0
            clock.add("calibrate+Phi", rollout_s - (sum(clock.acc.values()) - before))
            roll = out["roll"]
            rows, prompt_len = roll.prompt_ids.shape
            self.last = {"rollout_s": rollout_s, "rows": int(rows), "tokens": float(roll.response_mask.sum()),
                         "threads": torch.get_num_threads()}
            self.shape = (int(rows), int(prompt_len), int(roll.response_ids.shape[1]))
            self.lengths = roll.response_mask.sum(dim=1).tolist()
            return out

        def manual_backward(self, loss, *args, **kwargs) -> None:
            timed(super().manual_backward, clock, "backward")(loss, *args, **kwargs)

        def clip_gradients(self, *args, **kwargs) -> None:
            timed(super().clip_gradients, clock, "optimizer")(*args, **kwargs)

        def optimizers(self, *args, **kwargs):
            return TimedOptimizer(super().optimizers(*args, **kwargs))

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.records: list[dict] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            clock.take(0.0)
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            step_s = time.perf_counter() - self.t0  # FLOP counting (a re-tokenisation) stays out of the step
            rows, prompt_len, response_len = pl_module.shape
            flops = step_flops(costs, rows, prompt_len, response_len, reward_shapes(setup, *scorer.batch),
                               prefill_rows=rows // bench.group, lengths=pl_module.lengths)
            self.records.append({"step_s": step_s, **pl_module.last, "phases": clock.take(step_s), "flops": flops})

    def which_logprobs(*args, **kwargs) -> str:
        return "policy_forward" if torch.is_grad_enabled() else "reference"

    algo = bench.config()
    costs = model_costs(setup)
    scorer = TimedScorer(setup.scorer)
    module = TimedCTRL(setup.fresh_policy(), setup.reference, setup.tokenizer, scorer, Exp(bench.t),
                       setup.table, setup.prompts, algo, seed=seed)
    timer = StepTimer()
    steps = algo.cfg.steps
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    with patched(ctrl, "sample", timed(ctrl.sample, clock, "generation")), \
            patched(ctrl, "sequence_logprobs", timed(ctrl.sequence_logprobs, clock, which_logprobs)):
        trainer.fit(module, DataLoader(range(steps), batch_size=None))
    return timer.records[bench.warmup:]


def reward_shapes(setup: ToySetup, prompts: list[str], responses: list[str]) -> list[tuple[int, int]]:
    """``(rows, padded width)`` of each forward the reward scorer runs on these pairs: its length
    buckets, each padded to its own widest input (``RewardScorer.encoded_chunks``) -- not all rows to
    the widest of all, which over-counted the phase by 4-6 %."""
    return [(len(idx), int(enc["input_ids"].shape[1]))
            for idx, enc in setup.scorer.encoded_chunks(list(prompts), list(responses))]


def model_costs(setup: ToySetup) -> tuple[ModelCost, ModelCost]:
    """:class:`~infalign.bench.flops.ModelCost` of the policy and of the reward model (computed once per run)."""
    return model_cost(setup.reference), model_cost(setup.reward_model)


def step_flops(costs: tuple[ModelCost, ModelCost], rows: int, prompt_len: int, response_len: int,
               reward_shapes: list[tuple[int, int]], prefill_rows: int | None = None,
               lengths: list[int] | None = None) -> dict[str, float]:
    """Model FLOPs (``bench/flops.py``) of each phase of one RL step with these shapes: sampling
    ``response_len`` tokens for ``rows`` rows (prefill over ``prefill_rows``: the distinct prompts;
    decode steps over the rows still generating, from ``lengths`` -- the work the model needs, also
    for an implementation that prefills every sample's copy or computes finished rows), scoring
    the ``(rows, width)`` batches of ``reward_shapes`` (:func:`reward_shapes`), the reference and
    policy log-prob forwards (each distinct prompt once, over ``prefill_rows``, as for sampling), and
    the backward (2x the policy forward).
    ``old_logprobs`` is TRL's extra no-grad policy forward."""
    policy, reward = costs
    forward = teacher_forced_flops(policy, rows, prompt_len, response_len, prefill_rows)
    return {"generation": sampling_flops(policy, rows, prompt_len, response_len, prefill_rows, lengths),
            "reward": sum(scoring_flops(reward, n, width) for n, width in reward_shapes),
            "reference": forward, "old_logprobs": forward, "policy_forward": forward, "backward": 2 * forward}


# Phases one implementation runs that the step does not need: TRL's no-grad policy forward for its
# "old" log-probs, which equal the sampler's at float32 (ours reuses those). Timed and given their own
# MFU, but not counted as the step's useful FLOPs.
REDUNDANT = ("old_logprobs",)


def summarize(records: list[dict], peak: float | None = None) -> dict:
    """Step statistics; the median seconds of each phase over steps; and with ``peak`` (FLOP/s,
    :func:`~infalign.bench.flops.matmul_peak`) each phase's MFU = its summed model FLOPs over the
    timed steps / its summed seconds / peak, and the step's: the FLOPs of the work the step *needs*
    (every phase but :data:`REDUNDANT`, as generation counts only the rows still generating) over all
    steps' time -- so ours and TRL's step MFU are on one scale and their ratio is the time ratio."""
    out = step_stats([r["step_s"] for r in records], [r["rows"] for r in records], [r["tokens"] for r in records])
    if all("rollout_s" in r for r in records):
        out["rollout_share"] = sum(r["rollout_s"] for r in records) / sum(r["step_s"] for r in records)
    out["threads"] = records[-1]["threads"]
    if not all("phases" in r for r in records):
        return out
    out["phases_s"] = median_phases(records)
    if all("generation" in r["phases"] for r in records):  # per step, then the median (not a median's difference)
        out["median_s_without_generation"] = statistics.median(r["step_s"] - r["phases"]["generation"]
                                                               for r in records)
    if peak and all("flops" in r for r in records):
        done = {p for r in records for p in r["phases"]}  # phases this implementation runs
        flops = {p: sum(r["flops"].get(p, 0.0) for r in records) for p in records[0]["flops"] if p in done}
        secs = {p: sum(r["phases"].get(p, 0.0) for r in records) for p in flops}
        out["mfu"] = {p: flops[p] / secs[p] / peak for p in flops if secs[p] > 0}
        needed = sum(v for p, v in flops.items() if p not in REDUNDANT)
        out["mfu"]["step"] = needed / sum(r["step_s"] for r in records) / peak
        out["flops_per_step"] = needed / len(records)
    return out


def run_ours(setup: ToySetup, bench: RLBench, seed: int = 0, peak: float | None = None) -> dict:
    """Step statistics, phases and MFU of :func:`ours_records`."""
    return summarize(ours_records(setup, bench, seed), peak)


def run(repeats: int, quick: bool = False, seed: int = 0) -> dict:
    sizes = ("tiny",) if quick else ("small", "medium")
    bench = RLBench(prompts=4, group=2, max_new_tokens=8, warmup=1, steps=max(1, min(repeats, 2))) if quick \
        else RLBench(steps=max(2, repeats))
    peak = matmul_peak(512 if quick else 1024, 2 if quick else 5)
    out: dict = {"settings": {"P": bench.prompts, "G": bench.group, "max_new_tokens": bench.max_new_tokens,
                              "beta": bench.beta, "lr": bench.lr, "transform": f"exp({bench.t:g})", "algo": "rloo",
                              "kl_estimator": "k1", "warmup_steps": bench.warmup, "timed_steps": bench.steps,
                              "prompt_set": 4 * bench.prompts},
                 "matmul_peak_flops": peak, "sizes": {}}
    reward_size = "tiny" if quick else "small"
    for size in sizes:
        setup = toy_setup(size, 4 * bench.prompts, reward_size=reward_size, seed=seed)
        res = run_ours(setup, bench, seed, peak)
        res["policy_params"] = num_params(setup.reference)
        res["reward_params"] = num_params(setup.reward_model)
        out["sizes"][size] = res
    out["note"] = ("randomly initialised toy models (builders, ToyWorld tokenizer); calibration table from random "
                   "reference rewards; timed on_train_batch_start->end under L.Trainer, warm-up step dropped; "
                   "phases: median seconds over the timed steps, measured inside them; MFU: model FLOPs "
                   "(bench/flops.py) / time / measured float32 matmul peak")
    return out
