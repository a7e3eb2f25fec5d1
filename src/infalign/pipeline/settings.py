"""Range checks of config groups that both the torch-free validation of ``infalign-train``
(``apps/train.validate``, before any heavy import) and the stages need."""

from __future__ import annotations

from infalign.errors import require, require_type

__all__ = ["DATA_SOURCES", "DIALOGUE_SOURCES", "DTYPES", "HALF_DTYPES", "WANDB_MODES", "data_settings",
           "eval_pool_settings", "model_settings", "modified_sampler", "sampling_settings", "training_seed",
           "wandb_mode"]

DATA_SOURCES = ("toy", "hh", "tldr")
# data.source values whose prompts are Human / Assistant dialogues: rendered as chat turns
# (data/formats.chat_messages), with a last Human turn a reward model may read alone (reward.prompt_format)
DIALOGUE_SOURCES = ("hh",)

WANDB_MODES = ("online", "offline", "disabled")

DTYPES = ("float32", "bfloat16", "float16")  # models/builders.resolve_dtype's names
HALF_DTYPES = ("bfloat16", "float16")


def sampling_settings(gen_cfg, group: str = "eval") -> tuple[float, int | None, float]:
    """``(temperature, top_k, top_p)`` of a generation config group, range-checked (ConfigError
    naming ``<group>.<key>``); a group without ``top_k`` / ``top_p`` samples untruncated."""
    temperature, top_k, top_p = gen_cfg.temperature, gen_cfg.get("top_k"), gen_cfg.get("top_p", 1.0)
    require_type(f"{group}.temperature", temperature, float)
    require_type(f"{group}.top_k", top_k, int, optional=True)
    require_type(f"{group}.top_p", top_p, float)
    temperature, top_p = float(temperature), float(top_p)
    require(temperature >= 0, f"{group}.temperature", temperature, ">= 0 (0: greedy)")
    require(top_k is None or int(top_k) >= 1, f"{group}.top_k", top_k, "null or >= 1")
    require(0 < top_p <= 1, f"{group}.top_p", top_p, "0 < top_p <= 1 (1: no nucleus cut)")
    return temperature, None if top_k is None else int(top_k), top_p


def modified_sampler(gen_cfg, group: str = "eval") -> str | None:
    """None when ``gen_cfg`` samples the model's own distribution (temperature 1, no top-k, top-p 1);
    else the settings that modify it, ``"eval.temperature=0.7, eval.top_k=50"``. Samples of a modified
    sampler ``q`` are not the policy's: their mean log-ratio (docs/method.md (7.3)) is
    ``E_q[log pi - log pi_ref]``, not ``KL(pi || pi_ref)``, and their win rates are ``q``'s, so no
    calibrated-space theory (which describes the tilted policy itself) is put beside them."""
    temperature, top_k, top_p = sampling_settings(gen_cfg, group)
    parts = ([f"{group}.temperature={temperature:g}"] if temperature != 1.0 else []) + (
        [f"{group}.top_k={top_k}"] if top_k is not None else []) + ([f"{group}.top_p={top_p:g}"] if top_p != 1.0
                                                                    else [])
    return ", ".join(parts) or None

def eval_pool_settings(eval_cfg) -> None:
    """The evaluation pool (``eval``: M samples per held-out prompt, drawn ``batch_size`` rows at a time)
    as ``infalign-train`` and ``infalign-calibration`` both draw it: ``samples`` >= 2, ``batch_size`` >= 1,
    ``max_new_tokens`` >= 1 and its sampling settings (:func:`sampling_settings`); ConfigError naming
    ``eval.<key>``, before any compute (a bad length failed only at the evaluation, after training)."""
    require(int(eval_cfg.samples) >= 2, "eval.samples", eval_cfg.samples,
            "M >= 2 samples per held-out prompt (the evaluation's within-prompt spreads need two)")
    require(int(eval_cfg.batch_size) >= 1, "eval.batch_size", eval_cfg.batch_size, ">= 1 rows per batch")
    require_type("eval.max_new_tokens", eval_cfg.max_new_tokens, int)
    require(int(eval_cfg.max_new_tokens) >= 1, "eval.max_new_tokens", eval_cfg.max_new_tokens,
            ">= 1 new tokens per response")
    sampling_settings(eval_cfg, "eval")
    keep = eval_cfg.get("keep_responses", 0)
    require_type("eval.keep_responses", keep, int)
    require(keep >= 0, "eval.keep_responses", keep, "an integer >= 0 (sample responses kept in metrics.json; 0: none)")


def calibration_sampler(cfg) -> None:
    """The reference samples that calibrate a reward (and set a ``kl_target``'s beta) must be drawn as
    RL draws: ``C_hat`` ranks a response among ``pi_ref``'s samples, and its uniformity under ``pi_ref``
    -- which the theory, the beta rules and the transforms assume (docs/method.md §2) -- holds only for
    samples from the distribution RL samples and anchors its KL to. So ``calibration.temperature`` and
    ``calibration.max_new_tokens`` equal ``algo``'s and the calibration draws are untruncated (no
    ``top_k`` / ``top_p``); a ConfigError names the key (the defaults interpolate ``algo``'s values)."""
    temperature, top_k, top_p = sampling_settings(cfg.calibration, "calibration")
    algo_temperature = float(cfg.algo.get("temperature", 1.0))
    why = "the reference samples C_hat ranks against are drawn as RL draws"
    require(temperature == algo_temperature, "calibration.temperature", temperature,
            f"{algo_temperature} (= algo.temperature: {why})")
    require(top_k is None, "calibration.top_k", top_k, f"null ({why}: the full distribution)")
    require(top_p == 1.0, "calibration.top_p", top_p, f"1 ({why}: the full distribution)")
    new = cfg.algo.get("max_new_tokens")
    require(new is None or int(cfg.calibration.max_new_tokens) == int(new), "calibration.max_new_tokens",
            cfg.calibration.max_new_tokens, f"{new} (= algo.max_new_tokens: {why})")


def wandb_mode(mode) -> str:
    """``logger.mode`` of the W&B logger, one of :data:`WANDB_MODES` (a ConfigError naming the key:
    it follows the WANDB_MODE environment variable)."""
    require(mode in WANDB_MODES, "logger.mode", mode, f"one of {list(WANDB_MODES)}",
            "it follows the WANDB_MODE environment variable")
    return str(mode)


def data_settings(data_cfg) -> None:
    """``data.source`` one of :data:`DATA_SOURCES`, ``data.train_prompts`` >= 1 and
    ``data.eval_prompts`` >= 2 (ConfigError naming the key). The files, models and tokenizers are checked by
    ``pipeline/world.check_world_config``, which needs transformers."""
    require(data_cfg.source in DATA_SOURCES, "data.source", data_cfg.source, f"one of {list(DATA_SOURCES)}")
    require(int(data_cfg.train_prompts) >= 1, "data.train_prompts", data_cfg.train_prompts, ">= 1")
    require(int(data_cfg.eval_prompts) >= 2, "data.eval_prompts", data_cfg.eval_prompts, ">= 2",
            "the evaluation's confidence intervals resample the prompts: one prompt gives a zero-width interval")


def model_settings(cfg) -> None:
    """``policy.dtype`` (the frozen reference's weights), ``policy.train_dtype`` (the trained policy's
    weights, what the optimizer updates) and ``reward.dtype``: each one of :data:`DTYPES`;
    ``reward.input`` one of ``models/reward.REWARD_INPUTS``, ``reward.prompt_format`` one of
    ``models/reward.REWARD_PROMPT_FORMATS`` and ``last_user_turn`` only for HH data, whose prompts have
    turns (:data:`DIALOGUE_SOURCES`); ``policy.system_prompt`` only with ``policy.chat_template`` (ConfigError
    naming the key)."""
    from infalign.models.reward import REWARD_INPUTS, REWARD_PROMPT_FORMATS  # (where they are read; not at import)

    custom = (cfg.get("reward") or {}).get("_target_") is not None  # a custom scorer: no reward-model setting
    for group, key in (("policy", "dtype"), ("policy", "train_dtype"), ("reward", "dtype")):
        value = (cfg.get(group) or {}).get(key)
        if value is not None:
            require(value in DTYPES, f"{group}.{key}", value, f"one of {list(DTYPES)}")
    policy = cfg.get("policy") or {}
    require(policy.get("system_prompt") is None or bool(policy.get("chat_template")), "policy.system_prompt",
            policy.get("system_prompt"), "null unless policy.chat_template=true",
            "without the chat template the prompts are fed as they are: the system prompt would be ignored")
    if custom:  # (one set beside it is refused, all named at once: pipeline/custom_reward.check_custom_reward)
        return
    value = (cfg.get("reward") or {}).get("input", "joined")
    require(value in REWARD_INPUTS, "reward.input", value, f"one of {list(REWARD_INPUTS)}",
            "pair: the tokenizer's text-pair template, for reward models trained as tokenizer(prompt, response)")
    value = (cfg.get("reward") or {}).get("prompt_format", "full")
    require(value in REWARD_PROMPT_FORMATS, "reward.prompt_format", value, f"one of {list(REWARD_PROMPT_FORMATS)}",
            "last_user_turn: an HH dialogue's last Human turn alone, as OpenAssistant's DeBERTa reward models read "
            "their question (docs/method.md §6)")
    source = (cfg.get("data") or {}).get("source")
    require(value == "full" or source in DIALOGUE_SOURCES, "reward.prompt_format", value,
            f"'full' for data.source={source} (its prompts have no Human / Assistant turns)")
    reward = cfg.get("reward") or {}
    if reward.get("batch_size") is not None:
        require_type("reward.batch_size", reward.batch_size, int)
        require(reward.batch_size >= 1, "reward.batch_size", reward.batch_size,
                "an integer >= 1 rows per reward-model forward")
    train = reward.get("train") or {}
    if train.get("enabled"):  # Bradley-Terry training (a bad value failed after the world's models loaded)
        require_type("reward.train.steps", train.get("steps"), int)
        require(train.steps >= 1, "reward.train.steps", train.steps,
                "an integer >= 1 (0 would cache the untrained scalar head as the reward model)")
        require_type("reward.train.lr", train.get("lr"), float)
        require(train.lr > 0, "reward.train.lr", train.lr, "> 0")
        for key in ("warmup", "weight_decay"):
            value = train.get(key, 0)
            require_type(f"reward.train.{key}", value, float)
            require(value >= 0, f"reward.train.{key}", value, ">= 0")
        accelerator = train.get("accelerator")
        require(accelerator in (None, "cpu", "gpu", "cuda", "mps", "auto"), "reward.train.accelerator", accelerator,
                "null (trainer.accelerator) or one of ['cpu', 'gpu', 'cuda', 'mps', 'auto']")


def training_seed(cfg) -> int:
    """The seed of a run's training draws (prompt order, samples, the offline baselines' pools,
    ``seed_everything``): ``seed``, or for ``replica`` r > 0 an independent one, the int hash of
    ``(seed, r)`` (no random salt for ints and tuples of ints, so the same on every run of 64-bit
    CPython -- as ``training/rollout.step_generator``'s streams; 32-bit builds and PyPy hash
    otherwise, and ``hash(-1) == hash(-2)``: use seeds >= 0).
    The calibration table and the evaluation pools stay those of ``seed``, so a replica is paired
    with every other method of its seed: ``replica=1`` is an independent re-training of the same
    method, the A/A control of a matched-KL comparison (docs/method.md §10)."""
    seed, replica = cfg.get("seed", 0), cfg.get("replica", 0)
    require(isinstance(replica, int) and not isinstance(replica, bool) and replica >= 0, "replica", replica,
            "an integer >= 0 (0: the run of its seed; r > 0: an independent re-training)")
    return int(seed) if replica == 0 else hash((int(seed), int(replica))) & 0x7FFF_FFFF
