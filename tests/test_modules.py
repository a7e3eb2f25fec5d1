"""Lightning modules: response-only LM pre-training and Bradley-Terry reward-model training."""

import math

import lightning as L
import pytest
import torch

from infalign.models import build_toy_lm, build_toy_reward_model
from infalign.toy import ToyWorld
from infalign.training import (
    LMPretrainModule,
    PreferenceCollator,
    PromptResponseCollator,
    RewardModelModule,
    bradley_terry_loss,
    make_lm_dataloader,
    make_preference_dataloader,
)


@pytest.fixture(scope="module")
def tok():
    return ToyWorld(seed=0).tokenizer()


pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers"),
    pytest.mark.filterwarnings("ignore:.*no `val_dataloader`"),
]


def _trainer(max_steps):
    return L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def test_bradley_terry_loss_hand_computation():
    chosen, rejected = torch.tensor([1.0, 0.0, 3.0]), torch.tensor([0.0, 2.0, 3.0])
    # -log sigmoid(d) = log(1 + exp(-d)) for d = 1, -2, 0.
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(2)) + math.log(2)) / 3
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)
    # Stable for huge margins (no inf/nan).
    big = bradley_terry_loss(torch.tensor([0.0]), torch.tensor([1e4]))
    assert big.item() == pytest.approx(1e4)


@pytest.mark.parametrize("steps,warmup", [(4, 0), (8, 2)])
def test_lr_schedule_is_the_documented_warmup_then_cosine(tok, steps, warmup):
    """The LR of each optimizer step of a real fit, against adamw_with_warmup's formula by hand: warmup
    (s+1)/w, then 0.1 + 0.9 (1 + cos(pi (s - w) / (T - w))) / 2 -- the floor 0.1 is reached one step
    past the last (the last of 4 steps runs at 0.2318)."""
    torch.manual_seed(0)
    module = LMPretrainModule(build_toy_lm(tok, "tiny"), lr=2.0, warmup=warmup)
    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = _trainer(steps)
    trainer.callbacks.append(Record())
    loader = make_lm_dataloader(tok, ["a1 ->"] * 4 * steps, ["b1"] * 4 * steps, batch_size=4, seed=0)
    trainer.fit(module, loader)
    expected = [2.0 * ((s + 1) / warmup if s < warmup else
                       0.1 + 0.45 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup)))) for s in range(steps)]
    assert seen == pytest.approx(expected, rel=1e-12)
    if steps == 4:
        assert seen[-1] / 2.0 == pytest.approx(0.2318, abs=1e-4)


def test_collators_mask_prompt_and_padding(tok):
    batch = PromptResponseCollator(tok)([("a1 a2 ->", "b1"), ("a3 ->", "b2 b3 b4")])
    ids, labels = batch["input_ids"], batch["labels"]
    assert labels[0].tolist() == [-100, -100, -100, ids[0, 3].item(), tok.eos_token_id, -100]
    assert labels[1].tolist() == [-100, -100, *ids[1, 2:].tolist()]
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 1, 1, 0]
    pairs = PreferenceCollator(tok)([("a1 ->", "b1 b2", "b3"), ("a2 ->", "b4", "b5 b6 b7")])
    assert pairs["input_ids"].shape == (4, 6)  # [chosen_0, chosen_1, rejected_0, rejected_1]
    assert tok.convert_ids_to_tokens(pairs["input_ids"][2, :4].tolist()) == [
        "a1",
        "->",
        "b3",
        "<eos>",
    ]


def test_pretrain_loss_is_response_only_cross_entropy(tok):
    torch.manual_seed(0)
    model = build_toy_lm(tok, "tiny")
    batch = PromptResponseCollator(tok)([("a1 a2 ->", "b1 b2"), ("a3 ->", "b3")])
    loss = LMPretrainModule(model)(batch)
    logp = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).logits.log_softmax(-1)
    # Response tokens (incl. eos): row 0 positions 3, 4, 5; row 1 positions 2, 3.
    terms = [logp[0, t - 1, batch["input_ids"][0, t]] for t in (3, 4, 5)]
    terms += [logp[1, t - 1, batch["input_ids"][1, t]] for t in (2, 3)]
    assert loss.item() == pytest.approx(-torch.stack(terms).mean().item(), rel=1e-5)


@pytest.mark.slow
def test_pretrain_loss_decreases(tok):
    world = ToyWorld(seed=0)
    xs, ys = world.reference_corpus(32, 2, seed=0)
    torch.manual_seed(0)
    module = LMPretrainModule(build_toy_lm(tok, "tiny"), lr=3e-3, warmup=2)
    val = make_lm_dataloader(tok, xs, ys, batch_size=64, shuffle=False)
    trainer = _trainer(max_steps=25)
    before = trainer.validate(module, val, verbose=False)[0]["val/loss"]
    trainer.fit(module, make_lm_dataloader(tok, xs, ys, batch_size=16))
    assert "train/loss" in trainer.callback_metrics
    after = trainer.validate(module, val, verbose=False)[0]["val/loss"]
    assert after < before - 0.5, (before, after)


@pytest.mark.slow
def test_reward_model_learns_a_separable_preference(tok):
    # Chosen responses contain b0, rejected ones b1: trivially learnable.
    world = ToyWorld(seed=0)
    prompts = world.prompts("train", 64)
    chosen = [f"b0 b{2 + i % 5} b0" for i in range(64)]
    rejected = [f"b1 b{2 + i % 5} b1" for i in range(64)]
    torch.manual_seed(0)
    module = RewardModelModule(build_toy_reward_model(tok, "tiny"), lr=3e-3, warmup=2)
    val = make_preference_dataloader(tok, prompts, chosen, rejected, batch_size=64, shuffle=False)
    trainer = _trainer(max_steps=30)
    before = trainer.validate(module, val, verbose=False)[0]
    trainer.fit(module, make_preference_dataloader(tok, prompts, chosen, rejected, batch_size=16))
    assert {"train/loss", "train/accuracy"} <= set(trainer.callback_metrics)
    after = trainer.validate(module, val, verbose=False)[0]
    assert after["val/accuracy"] == 1.0 and after["val/loss"] < before["val/loss"] - 0.3


def test_lm_dataloader_shuffles_with_its_seed():
    from infalign.data.batches import make_lm_dataloader

    tok = ToyWorld(seed=0).tokenizer()
    xs = [f"a{i % 5 + 1} ->" for i in range(24)]
    ys = [" ".join(f"b{j % 5 + 1}" for j in range(i % 7 + 1)) for i in range(24)]

    def first(seed):
        return next(iter(make_lm_dataloader(tok, xs, ys, batch_size=24, seed=seed)))["input_ids"]

    assert torch.equal(first(0), first(0))
    assert not torch.equal(first(0), first(1))
