"""Pins found by mutation testing of the training layer: ``training/ctrl.py`` (CTRLModule's prompt
slices, minibatch permutations, RL step, gradient clipping, optimizer), ``training/step_batches.py``,
``training/checkpoint.py`` (RunCheckpoint's start) and ``training/reward_model.py`` (accuracy, train mode).

Every module here is tiny (tests/tiny_policy.ctrl_module: the tabular bigram LM), and a CTRL ``training_step`` runs
without a Trainer: the few Trainer services it uses (optimizer, backward, clipping, logging) are stubbed
on the instance by :func:`_stepping`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import tiny_policy as tp
from infalign.training.checkpoint import RunCheckpoint
from infalign.training.reward_model import RewardModelModule
from infalign.training.rollout import step_generator
from infalign.training.step_batches import StepIndexed


def _stepping(module, global_step=0, clip_calls=None):
    """``module`` ready for ``training_step`` without a Trainer: its own AdamW, a plain backward, clipping
    recorded in ``clip_calls`` (else a no-op), logging dropped."""
    opt = module.configure_optimizers()
    tp.as_rank(module, 0, 1, global_step)
    module.optimizers = lambda *a, **k: opt
    module.manual_backward = lambda loss, *a, **k: loss.backward()
    module.clip_gradients = (lambda *a, **k: clip_calls.append((a, k))) if clip_calls is not None else (
        lambda *a, **k: None)
    module.log_dict = lambda *a, **k: None
    module.log = lambda *a, **k: None
    return module


# ------------------------------------------------------------------------------------- ctrl.py


def test_step_prompts_cycle_the_permutation_enough_for_every_rank():
    """C3: the permutation of 5 prompts is repeated ceil(p * world / 5) = ceil(3 * 2 / 5) = 2 times (10
    entries), so rank 1 of 2 gets its full slice [3:6] of p = 3 prompts. Repeating for one rank's p only
    (ceil(3 / 5) = 1) leaves 5 entries and rank 1 gets 2 prompts: a short, unequal batch per rank."""
    prompts = [f"p{i}" for i in range(5)]
    r0 = tp.as_rank(tp.ctrl_module(prompts, p=3), 0, 2).step_prompts(0)
    r1 = tp.as_rank(tp.ctrl_module(prompts, p=3), 1, 2).step_prompts(0)
    assert len(r0) == 3 and len(r1) == 3
    # the two ranks' slices are consecutive pieces of one permutation cycled twice: 6 draws cover all 5
    assert sorted(set(torch.cat([r0, r1]).tolist())) == list(range(5))


def test_ppo_minibatches_do_not_depend_on_the_global_rng():
    """C11: PPO's minibatch permutation comes from the step's own generator (seed, step, 3), so one
    training step from the same state gives bit-identical parameters whatever the global torch seed
    (exact resumes; a DDP rank's global RNG is not the run's). With ``randperm(rows)`` on the global RNG
    manual_seed(0) and manual_seed(1) order the 2 x 2 minibatch updates differently (AdamW, lr 0.5)."""
    tables = []
    for seed in (0, 1):
        module = _stepping(tp.ctrl_module(name="ppo", minibatches=2, lr=0.5))
        torch.manual_seed(seed)
        module.training_step(None, 0)
        tables.append(module.policy.table.detach().clone())
    assert not torch.equal(tables[0], tp.reference_logits())  # the step did update the policy
    assert torch.equal(tables[0], tables[1])


def test_ppo_minibatch_permutation_changes_with_the_rl_step(monkeypatch):
    """C9: the minibatch generator is seeded by (seed, rl_step, 3): RL steps 0 and 1 (global_step 0 and
    4 with PPO's 2 epochs x 2 minibatches) split their 8 rows differently. Seeded by (seed, 0, 3) every
    step would replay step 0's split. Captured by wrapping torch.randperm: the rows' permutations are the
    calls with n = p * G = 8 (the prompt permutation draws n = 2)."""
    drawn: list[list[int]] = []
    randperm = torch.randperm

    def recording(n, *args, **kwargs):
        out = randperm(n, *args, **kwargs)
        if n == 8:
            drawn.append(out.tolist())
        return out

    monkeypatch.setattr(torch, "randperm", recording)
    per_step = []
    for global_step in (0, 4):
        drawn.clear()
        module = _stepping(tp.ctrl_module(name="ppo", minibatches=2), global_step=global_step)
        assert module.rl_step == global_step // 4
        module.training_step(None, 0)
        assert len(drawn) == 2  # one permutation per PPO epoch
        per_step.append(list(drawn))
        # from their own stream (3), one generator for the step's epochs -- not the prompt permutation's (1),
        # with which the split followed the prompt order (mutation testing)
        g = step_generator(module.seed, module.rl_step, 3)
        assert drawn == [randperm(8, generator=g).tolist() for _ in range(2)]
    assert per_step[0] != per_step[1]


@pytest.mark.parametrize("global_step, rl_step", [(0, 0), (3, 0), (4, 1), (7, 1), (8, 2)])
def test_rl_step_counts_rollouts_not_optimizer_steps(global_step, rl_step):
    """PPO (2 epochs x 2 minibatches) makes k = 4 optimizer steps per rollout batch, so Lightning's
    global_step 4 is RL step 4 // 4 = 1 (the step that seeds the prompts and samples)."""
    module = tp.as_rank(tp.ctrl_module(name="ppo", minibatches=2), 0, 1, global_step)
    assert module.algo.optimizer_steps_per_batch == 4
    assert module.rl_step == rl_step


@pytest.mark.parametrize("grad_clip, expected", [(0.5, [0.5]), (0.0, [])])
def test_grad_clip_clips_each_update_with_its_value_and_zero_does_not(grad_clip, expected):
    """C14: RLOO makes one optimizer step per training_step, so algo.grad_clip=0.5 clips once, by norm,
    at 0.5; algo.grad_clip=0 ("none") never calls clip_gradients."""
    calls: list = []
    module = _stepping(tp.ctrl_module(grad_clip=grad_clip), clip_calls=calls)
    module.training_step(None, 0)
    assert [k["gradient_clip_val"] for _, k in calls] == expected
    assert all(k["gradient_clip_algorithm"] == "norm" for _, k in calls)


def test_configure_optimizers_uses_algo_weight_decay():
    """C15: AdamW gets algo.weight_decay (0.1 here; torch's own default is 0.01) and algo.lr."""
    opt = tp.ctrl_module(weight_decay=0.1, lr=0.25).configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[0]["lr"] == 0.25


# ----------------------------------------------------------------------------- step_batches.py


class _Stepped(StepIndexed):
    """A StepIndexed module at ``global_step`` 2 on the CPU (what step_batch reads of a LightningModule)."""

    global_step = 2
    device = torch.device("cpu")


def test_step_batch_is_the_batch_of_the_current_global_step():
    """S1: with step_batches set, the batch is step_batches[global_step] -- step 2's ({"x": [2]}), not the
    first one; without step_batches the loader's batch is passed through."""
    module = _Stepped()
    assert module.step_batch("loader's") == "loader's"
    module.step_batches = [{"x": torch.tensor([i]), "tag": f"b{i}"} for i in range(4)]
    batch = module.step_batch(None)
    assert batch["x"].tolist() == [2] and batch["tag"] == "b2"


# ------------------------------------------------------------------------------- checkpoint.py


def test_run_checkpoint_starts_counting_from_the_resumed_step(tmp_path):
    """K3: on_train_start records the step training starts at (a resume's: 10) as the last save, so the
    next last.ckpt is due at the next multiple of every_n (15), not at once; 0 would save right away."""
    cb = RunCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=5)
    trainer = SimpleNamespace(global_step=10)
    cb.on_train_start(trainer, None)
    assert cb.saved_at == 10
    assert cb.last_model_path == str(tmp_path / "last.ckpt")


# ------------------------------------------------------------------------------ reward_model.py


class _Constant(torch.nn.Module):
    """A one-logit "sequence classifier" scoring every sequence 0.5 (every pair a tie), with dropout."""

    def __init__(self):
        super().__init__()
        self.drop = torch.nn.Dropout(0.1)

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(logits=torch.full((input_ids.shape[0], 1), 0.5))


def test_a_tie_is_not_a_correctly_ranked_pair():
    """R2: accuracy counts pairs with r(chosen) > r(rejected); a model that scores everything alike ranks
    0 of 3 pairs right (accuracy 0.0, loss log 2), not 3 of 3 as ``>= 0`` would say."""
    module = RewardModelModule(_Constant())
    module.log = lambda *a, **k: None
    batch = {"input_ids": torch.zeros(6, 4, dtype=torch.long), "attention_mask": torch.ones(6, 4, dtype=torch.long)}
    loss = module._step(batch, "train", module.train_acc)
    assert loss.item() == pytest.approx(0.6931471805599453)
    assert module.train_acc.compute().item() == 0.0


def test_fit_start_puts_the_reward_model_in_training_mode():
    """R3: from_pretrained models come in eval mode and Lightning keeps submodule modes; on_fit_start sets
    train mode (dropout on) for the model and its submodules."""
    model = _Constant().eval()
    module = RewardModelModule(model)
    model.eval()
    module.on_fit_start()
    assert model.training and model.drop.training
