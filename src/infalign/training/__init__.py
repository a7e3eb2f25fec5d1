"""Lightning modules: toy reference pre-training and Bradley-Terry reward-model training.

The names below are loaded on first use (PEP 562), so importing a submodule that needs no
Lightning -- the algorithm registry, which ``infalign-train`` consults to validate a config before
any compute -- does not pay Lightning's import (~4 s)."""

import importlib

_EXPORTS = {
    "LMPretrainModule": "pretrain",
    "PromptResponseCollator": "pretrain",
    "TextPairs": "pretrain",
    "adamw_with_warmup": "pretrain",
    "make_lm_dataloader": "pretrain",
    "PreferenceCollator": "reward_model",
    "RewardModelModule": "reward_model",
    "bradley_terry_loss": "reward_model",
    "make_preference_dataloader": "reward_model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
