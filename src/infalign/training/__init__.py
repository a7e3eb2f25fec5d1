"""Lightning modules: toy reference pre-training and Bradley-Terry reward-model training."""

from infalign.training.pretrain import (
    LMPretrainModule,
    PromptResponseCollator,
    TextPairs,
    adamw_with_warmup,
    make_lm_dataloader,
)
from infalign.training.reward_model import (
    PreferenceCollator,
    RewardModelModule,
    bradley_terry_loss,
    make_preference_dataloader,
)

__all__ = [
    "LMPretrainModule",
    "PreferenceCollator",
    "PromptResponseCollator",
    "RewardModelModule",
    "TextPairs",
    "adamw_with_warmup",
    "bradley_terry_loss",
    "make_lm_dataloader",
    "make_preference_dataloader",
]
