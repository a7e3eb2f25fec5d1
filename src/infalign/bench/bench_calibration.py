"""Section ``calibration``: throughput of drawing a reference pool (sample K per prompt + score).

Goes through :func:`infalign.pipeline.pools.draw_pool` -- ``RolloutModule`` + ``Trainer.predict``
-- the exact code path of the calibration stage (minus the on-disk cache).
"""

from __future__ import annotations

import functools

from infalign.bench.common import num_params, rate, time_calls, toy_setup


def run(repeats: int, quick: bool = False, seed: int = 0) -> dict:
    import lightning as L
    from omegaconf import OmegaConf

    from infalign.pipeline.pools import draw_pool

    size = "tiny" if quick else "small"
    n_prompts, k, max_new = (8, 8, 8) if quick else (64, 32, 20)
    batch_size = 64  # conf/calibration/default.yaml: prompts per sampling batch
    setup = toy_setup(size, n_prompts, reward_size=size, seed=seed, calibration=False)
    # the calibration config group's keys, as the stage reads them (a DictConfig: .get for the optional ones)
    gen_cfg = OmegaConf.create({"max_new_tokens": max_new, "temperature": 1.0, "batch_size": batch_size})
    trainer = functools.partial(L.Trainer, accelerator="cpu", devices=1, enable_progress_bar=False,
                                enable_model_summary=False)
    pools: list[dict] = []

    def draw() -> None:
        pools.append(draw_pool(setup.reference, setup.tokenizer, setup.prompts, k, {"reward": setup.scorer},
                               gen_cfg, trainer, seed))

    draw()  # warm-up (first-call allocations, lazy imports)
    timing = time_calls(draw, repeats)
    responses = n_prompts * k
    tokens = float(pools[-1]["lengths"].float().sum())
    return {
        "label": f"reference pool: {n_prompts} prompts x K={k}, max_new_tokens={max_new}",
        "size": size, "lm_params": num_params(setup.reference), "reward_params": num_params(setup.reward_model),
        "prompts": n_prompts, "k": k, "max_new_tokens": max_new, "batch_size_prompts": batch_size,
        "responses": responses, "tokens": tokens, "mean_length": tokens / responses,
        **timing.as_dict(),
        "responses_per_s": rate(responses, timing.best),
        "tokens_per_s": rate(tokens, timing.best),
        "note": "randomly initialised toy LM + reward model (builders, ToyWorld tokenizer): throughput only",
    }
