"""Models: Hugging Face builders/loaders and reward scorers (no Lightning, no Hydra)."""

from infalign.models.builders import (
    TOY_SIZES,
    build_toy_lm,
    build_toy_reward_model,
    encode_prompt_response,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    resolve_dtype,
    special_tokens_around,
)
from infalign.models.reward import (
    REWARD_INPUT_VERSION,
    GoldScorer,
    RewardScorer,
    Scorer,
    check_finite,
    reward_input_format,
    reward_model_inputs,
)

__all__ = [
    "REWARD_INPUT_VERSION",
    "TOY_SIZES",
    "GoldScorer",
    "RewardScorer",
    "Scorer",
    "build_toy_lm",
    "build_toy_reward_model",
    "check_finite",
    "encode_prompt_response",
    "load_causal_lm",
    "load_reward_model",
    "load_tokenizer",
    "resolve_dtype",
    "reward_input_format",
    "reward_model_inputs",
    "special_tokens_around",
]
