"""Section ``trl``: our RL step against TRL's ``RLOOTrainer`` on the same model, prompts and reward.

Both sides get: the same randomly initialised toy GPT-2 (``small``; TRL loads the
``save_pretrained`` copy of the very same weights) and ToyWorld tokenizer, the same prompt set,
P prompts x G samples per step, max 20 new tokens (no minimum: both stop a row at eos and the
batch when every row has stopped), temperature 1, no top-k/top-p, beta=0.05 with the k1
sequence-KL folded into the reward, the same reward -- our ``RewardScorer`` -> ``C_hat`` against
the same calibration table -> exp(4), handed to TRL as a Python reward function -- one AdamW
(torch, non-fused) step per batch with grad-norm clip 1, float32, CPU, 2 threads, no logging
backend, no eval. The learning rate is 1e-12 (``RLBench.lr``): every update is computed and
applied in full, but an Adam step moves a weight by about the learning rate, so the policy stays
the initial one to ~11 digits and both sides sample the same response lengths throughout. With lr
1e-4 the two losses trained the policy's lengths apart within the six steps (medium: ours 12.4
tokens, TRL's 15.0; both 16.1 at the start, where the two samplers draw identical tokens from one
seed), and completions/s then measured that drift as much as the implementations; the step's cost
does not depend on the learning rate. The two sides run interleaved (``rounds`` fresh runs each,
from the same initial weights). Each side is timed per optimizer step (TRL: ``on_step_begin ->
on_step_end``; ours: ``on_train_batch_start -> on_train_batch_end``), the warm-up step dropped.
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
import warnings
from pathlib import Path

from infalign.bench.bench_rl import RLBench, model_costs, ours_records, reward_shapes, step_flops, summarize
from infalign.bench.common import num_params, toy_setup
from infalign.bench.flops import matmul_peak
from infalign.bench.phases import PhaseClock, patched, timed

SKIP_HINT = "TRL is not installed: `pip install -e .[bench]` (the optional `bench` extra) to run this section"

DIFFERENCES = [
    "TRL runs one extra no-grad policy forward per step (old log-probs for its clipped ratio); ours reuses "
    "the sampler's log-probs",
    "ours runs each prompt once in the reference and policy log-prob forwards (its KV cache serves its G "
    "responses, models/generation.sequence_logprobs); TRL runs the prompt again with every completion",
    "TRL samples with HF model.generate (DynamicCache, logits processors, stopping criteria); ours with its own "
    "KV-cache loop (infalign.models.generation.sample)",
    "TRL's loss is the PPO-clip surrogate at ratio 1 (same gradient as our REINFORCE/RLOO loss) and it also "
    "computes per-token entropies and gathers metrics (.item() syncs) inside the step",
    "trainer overhead differs: HF Trainer + accelerate (TRL) vs Lightning manual optimisation (ours, incl. its "
    "per-step log_dict)",
    "prompts are plain text in both (no chat template; TRL's is_conversational() is false), tokenised by the same "
    "tokenizer; TRL picks each step's prompts with its shuffled RepeatSampler, ours with randperm(seed, step)",
    "different RNG streams and prompt orders, so completion lengths differ a little (frozen weights: both sample "
    "the initial policy); tokens/s counts each side's real completion tokens (eos included)",
    "TRL's reward function is our scorer+calibration+exp(4) called from Python (TRL has no calibration of its own)",
]


def trl_version() -> str | None:
    if importlib.util.find_spec("trl") is None:
        return None
    import trl

    return trl.__version__


def trl_records(setup, bench: RLBench, seed: int = 0) -> tuple[list[dict], dict]:
    """Train ``bench.warmup + bench.steps`` steps of TRL's RLOOTrainer from the initial weights.

    Returns the per-step records of the timed steps and a few checked settings (dtype, ...)."""
    import datasets
    import torch
    from transformers import PrinterCallback, ProgressCallback, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from infalign.math.transforms import Exp

    index = {p: i for i, p in enumerate(setup.prompts)}
    transform = Exp(bench.t)
    counts: dict = {"rows": 0, "tokens": 0.0, "threads": 0, "shape": (0, 0, 0, 0)}
    clock = PhaseClock()

    def infalign_reward(prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        reward = setup.scorer.score(list(prompts), list(completions))
        u = setup.table.calibrate(torch.tensor([index[p] for p in prompts]), reward)
        counts["rows"] += len(completions)
        counts["threads"] = torch.get_num_threads()  # checks the HF Trainer kept our thread count
        counts["tokens"] += float(sum(len(c) for c in completion_ids))
        counts["batch"] = (list(prompts), list(completions), max(len(c) for c in completion_ids),
                           [len(c) for c in completion_ids])
        return transform(u).float().tolist()

    class StepTimer(TrainerCallback):
        """Times each optimizer step, and the optimizer step itself (between the two hooks around it)."""

        def __init__(self) -> None:
            self.records: list[dict] = []

        def on_step_begin(self, args, state, control, **kwargs):
            counts.update(rows=0, tokens=0.0)
            clock.take(0.0)
            self.t0 = time.perf_counter()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self.t_opt = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs):
            clock.add("optimizer", time.perf_counter() - self.t_opt)

        def on_step_end(self, args, state, control, **kwargs):
            step_s = time.perf_counter() - self.t0
            prompts, completions, response_len, lengths = counts.pop("batch")
            prompt_len = max(len(ids) for ids in setup.tokenizer(prompts)["input_ids"])
            flops = step_flops(costs, len(completions), prompt_len, response_len,
                               reward_shapes(setup, prompts, completions), prefill_rows=len(set(prompts)),
                               lengths=lengths)
            self.records.append({"step_s": step_s, **counts, "phases": clock.take(step_s), "flops": flops})

    costs = model_costs(setup)
    timer = StepTimer()
    fields = RLOOConfig.__dataclass_fields__  # transformers >= 5 renamed gradient_ -> activation_checkpointing
    no_checkpointing = {"activation_checkpointing" if "activation_checkpointing" in fields
                        else "gradient_checkpointing": False}
    with tempfile.TemporaryDirectory(prefix="infalign-bench-trl-") as tmp:
        model_dir = Path(tmp) / "policy"
        setup.reference.save_pretrained(model_dir)
        setup.tokenizer.save_pretrained(model_dir)
        config = RLOOConfig(
            output_dir=str(Path(tmp) / "run"),
            per_device_train_batch_size=bench.prompts * bench.group,  # one generation batch = P x G completions
            gradient_accumulation_steps=1,
            num_generations=bench.group,
            num_iterations=1,  # one optimizer step per batch, like our RLOO
            max_completion_length=bench.max_new_tokens,
            temperature=1.0, top_k=0, top_p=1.0,
            beta=bench.beta,
            learning_rate=bench.lr, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
            optim="adamw_torch",
            max_steps=bench.warmup + bench.steps,
            bf16=False, fp16=False, use_cpu=True, **no_checkpointing,
            disable_dropout=True,
            report_to="none", save_strategy="no", eval_strategy="no", logging_steps=10_000, disable_tqdm=True,
            dataloader_num_workers=0, seed=seed,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers' gradient->activation checkpointing rename
            trainer = RLOOTrainer(model=str(model_dir), reward_funcs=infalign_reward, args=config,
                                  train_dataset=datasets.Dataset.from_dict({"prompt": setup.prompts}),
                                  processing_class=setup.tokenizer, callbacks=[timer])
            for cb in (PrinterCallback, ProgressCallback):
                trainer.remove_callback(cb)
            dtype = next(trainer.model.parameters()).dtype
            checkpointing = bool(getattr(trainer.args, next(iter(no_checkpointing))))

            def which_logprobs(model, *args, **kwargs) -> str:
                if model is trainer.ref_model:
                    return "reference"
                return "policy_forward" if torch.is_grad_enabled() else "old_logprobs"

            # TRL's reward phase is its reward function: our scorer + calibration + Phi (ours splits the two)
            with patched(trainer, "_generate", timed(trainer._generate, clock, "generation")), \
                    patched(trainer, "_calculate_rewards", timed(trainer._calculate_rewards, clock, "reward")), \
                    patched(trainer, "_get_per_token_logps_and_entropies",
                            timed(trainer._get_per_token_logps_and_entropies, clock, which_logprobs)), \
                    patched(trainer.accelerator, "backward", timed(trainer.accelerator.backward, clock, "backward")), \
                    patched(trainer.accelerator, "clip_grad_norm_",
                            timed(trainer.accelerator.clip_grad_norm_, clock, "optimizer")):
                trainer.train()
    return timer.records[bench.warmup:], {"dtype": str(dtype).replace("torch.", ""),
                                         "activation_checkpointing": checkpointing}


def generation_only(setup, bench: RLBench, repeats: int, seed: int = 0) -> dict:
    """Sampling alone on one P x G batch: our ``sample`` vs ``model.generate`` with TRL's generation config."""
    import torch
    from transformers import GenerationConfig

    from infalign.bench.common import time_calls
    from infalign.models.generation import sample

    model, tok = setup.reference, setup.tokenizer
    prompts = setup.prompts[: bench.prompts]
    enc = [ids for ids in tok(prompts)["input_ids"] for _ in range(bench.group)]
    width = max(map(len, enc))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(e)) + e for e in enc])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
    config = GenerationConfig(max_new_tokens=bench.max_new_tokens, do_sample=True, temperature=1.0, top_k=0,
                              top_p=1.0, pad_token_id=tok.pad_token_id, eos_token_id=[tok.eos_token_id],
                              bos_token_id=tok.bos_token_id, disable_compile=True)
    torch.manual_seed(seed)

    def ours() -> None:
        sample(model, tok, prompts, bench.group, bench.max_new_tokens, 1.0,
               generator=torch.Generator().manual_seed(seed))

    def hf() -> None:
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, generation_config=config)

    ours(), hf()  # warm-up
    t_ours, t_hf = time_calls(ours, repeats), time_calls(hf, repeats)
    return {"rows": len(enc), "ours_s": t_ours.best, "hf_generate_s": t_hf.best, "ratio": t_hf.best / t_ours.best}


def run(repeats: int, quick: bool = False, seed: int = 0) -> dict:
    version = trl_version()
    if version is None:
        return {"status": "skipped", "reason": SKIP_HINT}
    from trl import RLOOConfig

    if "num_generations" not in RLOOConfig.__dataclass_fields__:
        return {"status": "skipped", "reason": f"TRL {version} has the old RLOOTrainer API (no num_generations); "
                                               "this comparison needs `pip install 'trl>=1.0'`"}
    import torch
    import transformers

    sizes = ("tiny",) if quick else ("small", "medium")
    bench = RLBench(prompts=4, group=2, max_new_tokens=8, warmup=1, steps=max(1, min(repeats, 2))) if quick \
        else RLBench(steps=max(2, repeats))
    rounds = 1 if quick else 2
    peak = matmul_peak(512 if quick else 1024, 2 if quick else 5)
    out: dict = {"status": "ok",
                 "versions": {"trl": version, "transformers": transformers.__version__, "torch": torch.__version__},
                 "settings": {"P": bench.prompts, "G": bench.group, "max_new_tokens": bench.max_new_tokens,
                              "min_new_tokens": None, "beta": bench.beta, "lr": bench.lr,
                              "reward": f"RewardScorer -> C_hat -> exp({bench.t:g})", "optimizer_steps_per_batch": 1,
                              "warmup_steps": bench.warmup, "timed_steps": bench.steps, "rounds": rounds,
                              "prompt_set": 4 * bench.prompts},
                 "matmul_peak_flops": peak, "sizes": {}, "differences": DIFFERENCES}
    for size in sizes:
        out["sizes"][size] = compare(size, bench, rounds, peak, repeats, seed)
    return out


def free_generation_bound(ours: dict, trl: dict) -> float:
    """The ceiling of a faster sampler: ours/TRL on the median step if our generation phase took no
    time, ``trl_median / median over our steps of (step - its generation)`` (the median of the
    per-step differences: a median step minus a median generation can come from two steps)."""
    rest = ours.get("median_s_without_generation", ours["median_s"] - ours["phases_s"]["generation"])
    return trl["median_s"] / rest


def compare(size: str, bench: RLBench, rounds: int, peak: float, repeats: int, seed: int) -> dict:
    """Ours vs TRL on one toy size (policy and reward model of that size): ``rounds`` interleaved runs each."""
    setup = toy_setup(size, 4 * bench.prompts, reward_size=size, seed=seed)
    trl_recs: list[dict] = []
    our_recs: list[dict] = []
    for _ in range(rounds):  # interleaved, so a burst of load on the shared machine hits both sides
        recs, checked = trl_records(setup, bench, seed)
        trl_recs += recs
        our_recs += ours_records(setup, bench, seed)
    trl_res = {**summarize(trl_recs, peak), **checked}
    ours = {**summarize(our_recs, peak), "dtype": str(next(setup.reference.parameters()).dtype).replace("torch.", ""),
            "activation_checkpointing": False}
    return {
        "policy_params": num_params(setup.reference), "reward_params": num_params(setup.reward_model),
        "ours": ours,
        "trl": trl_res,
        "ratio_samples_per_s": ours["samples_per_s"] / trl_res["samples_per_s"],
        "ratio_tokens_per_s": ours["tokens_per_s"] / trl_res["tokens_per_s"],
        "ratio_samples_per_s_median": trl_res["median_s"] / ours["median_s"],
        "ratio_bound_free_generation": free_generation_bound(ours, trl_res),
        # completions/s compares like with like only at similar lengths (the report flags > 10 %)
        "ratio_mean_length": ours["mean_length"] / trl_res["mean_length"],
        "generation_only": generation_only(setup, bench, max(1, min(repeats, 5)), seed),
    }
