"""Section ``rl``: samples/s and tokens/s of one InfAlign-CTRL RL step (RLOO), per toy size.

The step runs exactly as in training: ``CTRLModule.training_step`` under ``L.Trainer.fit``
(sample with the KV cache, score, calibrate, exp transform, k1 KL shaping, one RLOO update with
grad clipping). A callback times ``on_train_batch_start -> on_train_batch_end``; the first
``warmup`` steps are dropped. A separate micro-benchmark splits one step into its phases.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from infalign.bench.common import Timing, ToySetup, num_params, rate, time_calls, toy_setup


@dataclass
class RLBench:
    prompts: int = 16  # P
    group: int = 4  # G
    max_new_tokens: int = 20
    beta: float = 0.05
    t: float = 4.0  # exp(t) transform
    lr: float = 1e-4
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
    """Per-step records (``step_s``, ``rows``, ``tokens``, ...) of ``bench.steps`` RL steps of CTRLModule
    under a Lightning Trainer, after ``bench.warmup`` untimed steps; the policy starts from the initial weights."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from infalign.math.transforms import Exp
    from infalign.training.ctrl import CTRLModule

    class TimedCTRL(CTRLModule):
        def rollout(self, step: int) -> dict:
            t0 = time.perf_counter()
            out = super().rollout(step)
            self.last = {"rollout_s": time.perf_counter() - t0, "rows": int(out["roll"].response_mask.shape[0]),
                         "tokens": float(out["roll"].response_mask.sum()), "threads": torch.get_num_threads()}
            return out

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.records: list[dict] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.records.append({"step_s": time.perf_counter() - self.t0, **pl_module.last})

    algo = bench.config()
    module = TimedCTRL(setup.fresh_policy(), setup.reference, setup.tokenizer, setup.scorer, Exp(bench.t),
                       setup.table, setup.prompts, algo, seed=seed)
    timer = StepTimer()
    steps = algo.cfg.steps
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(module, DataLoader(range(steps), batch_size=None))
    return timer.records[bench.warmup:]


def summarize(records: list[dict]) -> dict:
    out = step_stats([r["step_s"] for r in records], [r["rows"] for r in records], [r["tokens"] for r in records])
    if all("rollout_s" in r for r in records):
        out["rollout_share"] = sum(r["rollout_s"] for r in records) / sum(r["step_s"] for r in records)
    out["threads"] = records[-1]["threads"]
    return out


def run_ours(setup: ToySetup, bench: RLBench, seed: int = 0) -> dict:
    """Step statistics of :func:`ours_records`."""
    return summarize(ours_records(setup, bench, seed))


def phase_breakdown(setup: ToySetup, bench: RLBench, repeats: int, seed: int = 0) -> dict:
    """Best-of-``repeats`` seconds of each phase of one RL step, run one by one on the same batch."""
    import torch

    from infalign.math.rl_objectives import kl_penalty, rloo_advantages, rloo_loss, shaped_reward
    from infalign.math.transforms import Exp
    from infalign.models.generation import sample, sequence_logprobs
    from infalign.training.rollout import step_generator

    policy = setup.fresh_policy().train()
    opt = torch.optim.AdamW(policy.parameters(), lr=bench.lr, weight_decay=0.0)
    prompts = setup.prompts[: bench.prompts]
    idx = torch.arange(len(prompts)).repeat_interleave(bench.group)
    flat = [p for p in prompts for _ in range(bench.group)]
    state: dict = {}

    def do_sample() -> None:
        with torch.no_grad():
            state["roll"] = sample(policy, setup.tokenizer, prompts, bench.group, bench.max_new_tokens, 1.0,
                                   generator=step_generator(seed, 0, 2))

    def do_score() -> None:
        state["reward"] = setup.scorer.score(flat, state["roll"].responses)

    def do_calibrate() -> None:
        state["task"] = Exp(bench.t)(setup.table.calibrate(idx, state["reward"])).float()

    def do_reference() -> None:
        roll = state["roll"]
        with torch.no_grad():
            state["ref"] = sequence_logprobs(setup.reference, roll.prompt_ids, roll.prompt_mask, roll.response_ids,
                                             roll.response_mask)

    def do_update() -> None:
        roll = state["roll"]
        kl = kl_penalty(roll.logprobs, state["ref"], roll.response_mask, "k1")
        adv = rloo_advantages(shaped_reward(state["task"], kl, bench.beta), bench.group)
        lp = sequence_logprobs(policy, roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask)
        loss = rloo_loss(lp, roll.response_mask, adv)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()

    phases = {"sample": do_sample, "score": do_score, "calibrate+transform": do_calibrate,
              "reference_logprobs": do_reference, "update": do_update}
    for fn in phases.values():  # warm-up, and fills ``state`` in order
        fn()
    return {name: time_calls(fn, repeats).best for name, fn in phases.items()}


def run(repeats: int, quick: bool = False, seed: int = 0) -> dict:
    sizes = ("tiny",) if quick else ("small", "medium")
    bench = RLBench(prompts=4, group=2, max_new_tokens=8, warmup=1, steps=max(1, min(repeats, 2))) if quick \
        else RLBench(steps=max(2, repeats))
    out: dict = {"settings": {"P": bench.prompts, "G": bench.group, "max_new_tokens": bench.max_new_tokens,
                              "beta": bench.beta, "transform": f"exp({bench.t:g})", "algo": "rloo",
                              "kl_estimator": "k1", "warmup_steps": bench.warmup, "timed_steps": bench.steps,
                              "prompt_set": 4 * bench.prompts},
                 "sizes": {}}
    reward_size = "tiny" if quick else "small"
    for size in sizes:
        setup = toy_setup(size, 4 * bench.prompts, reward_size=reward_size, seed=seed)
        res = run_ours(setup, bench, seed)
        res["policy_params"] = num_params(setup.reference)
        res["reward_params"] = num_params(setup.reward_model)
        res["phases_s"] = phase_breakdown(setup, bench, max(1, min(repeats, 3)), seed)
        out["sizes"][size] = res
    out["note"] = ("randomly initialised toy models (builders, ToyWorld tokenizer); calibration table from random "
                   "reference rewards; timed on_train_batch_start->end under L.Trainer, warm-up step dropped")
    return out
