"""InfAlign-CTRL (docs/method.md §6): KL-regularised RL on the transformed calibrated reward.

One RL step, for P prompts x G samples each:

  1. sample:    y ~ pi(.|x) with a KV cache (seeded by (seed, step): a resumed run redraws
                exactly what it would have drawn);
  2. score:     r = r(x, y) with the frozen reward model;
  3. calibrate: u = C_hat(x, y) against the stored sorted reference rewards of x;
  4. transform: R = Phi(u)              (``raw``: R = r, no calibration -- the RLHF baseline);
  5. shape:     R' = R - beta * KL_hat  (KL_hat per sequence, estimator k1 or k3; this is the KL
                that is optimised *and* the KL that is logged);
  6. optimise:  RLOO: A_i = R'_i - mean_{j != i} R'_j, loss = -A_i * log pi(y_i|x) (one step);
                PPO:  the same advantages, clipped surrogate, ``ppo_epochs`` x ``minibatches``
                optimizer steps per rollout batch.

The reference and reward models are frozen and deliberately *not* registered submodules: they
never enter the optimizer or the checkpoint (the checkpoint holds only the policy).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import lightning as L
import torch

from infalign.errors import ConfigError, require
from infalign.math.calibration import CalibrationTable
from infalign.math.rl_objectives import (
    kl_penalty,
    ppo_loss,
    rloo_advantages,
    rloo_loss,
    shaped_reward,
)
from infalign.math.transforms import Transform
from infalign.models.generation import sample, sequence_logprobs
from infalign.models.reward import Scorer
from infalign.training.rollout import step_generator

ALGOS = ("rloo", "ppo", "bon_sft", "ipo")  # the last two: offline baselines (pipeline/baselines.py)


@dataclass
class RLConfig:
    """Hyper-parameters of the RL step (the ``algo`` config group)."""

    name: str = "rloo"
    beta: float = 0.05
    lr: float = 1e-4
    group_size: int = 4  # G samples per prompt
    prompts_per_step: int = 16  # P
    steps: int = 100
    kl_estimator: str = "k1"
    max_new_tokens: int = 20
    temperature: float = 1.0
    grad_clip: float = 1.0
    ppo_epochs: int = 2
    minibatches: int = 2
    clip_eps: float = 0.2
    weight_decay: float = 0.0
    n_samples: int = 4  # bon_sft / ipo: N reference samples per prompt for (best, worst)-of-N
    kl_target: float | None = None  # set: beta from the theory for this KL (pipeline/kl_target.py)

    def __post_init__(self) -> None:
        require(self.name in ALGOS, "algo.name", self.name, f"one of {list(ALGOS)}")
        require(self.beta > 0, "algo.beta", self.beta, "beta > 0")
        require(self.kl_target is None or self.kl_target > 0, "algo.kl_target", self.kl_target,
                "null or a KL budget > 0 nats")
        require(self.kl_target is None or self.name in ("rloo", "ppo"), "algo.kl_target", self.kl_target,
                f"null for algo={self.name} (its own knob sets the KL: beta for ipo, steps for bon_sft)")
        require(self.lr > 0, "algo.lr", self.lr, "lr > 0")
        require(
            self.group_size >= 2,
            "algo.group_size",
            self.group_size,
            "G >= 2 (RLOO needs a leave-one-out baseline)",
        )
        require(self.prompts_per_step >= 1, "algo.prompts_per_step", self.prompts_per_step, ">= 1")
        require(self.steps >= 1, "algo.steps", self.steps, ">= 1")
        require(
            self.kl_estimator in ("k1", "k3"),
            "algo.kl_estimator",
            self.kl_estimator,
            "one of ['k1', 'k3']",
        )
        require(self.max_new_tokens >= 1, "algo.max_new_tokens", self.max_new_tokens, ">= 1")
        require(self.temperature > 0, "algo.temperature", self.temperature, "> 0")
        require(self.ppo_epochs >= 1, "algo.ppo_epochs", self.ppo_epochs, ">= 1")
        rows = self.prompts_per_step * self.group_size
        require(
            1 <= self.minibatches <= rows and rows % self.minibatches == 0,
            "algo.minibatches",
            self.minibatches,
            f"a divisor of prompts_per_step * group_size = {rows}",
        )
        require(0 < self.clip_eps < 1, "algo.clip_eps", self.clip_eps, "0 < clip_eps < 1")
        require(self.n_samples >= 2, "algo.n_samples", self.n_samples, ">= 2 (best and worst of N)")

    @property
    def optimizer_steps_per_batch(self) -> int:
        return self.ppo_epochs * self.minibatches if self.name == "ppo" else 1


class CTRLModule(L.LightningModule):
    """Policy trainable; reference and reward frozen; one RL step per ``training_step``."""

    def __init__(
        self,
        policy,
        reference,
        tokenizer,
        reward: Scorer,
        transform: Transform,
        table: CalibrationTable | None,
        prompts: list[str],
        rl: RLConfig,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if transform.calibrated and table is None:
            raise ConfigError("calibration", None, "a calibration table for a calibrated transform")
        if table is not None and table.num_prompts != len(prompts):
            raise ValueError(
                f"calibration table has {table.num_prompts} prompts, training set has {len(prompts)}"
            )
        self.policy, self.tokenizer, self.rl, self.seed = policy, tokenizer, rl, seed
        self._frozen = {"reference": reference, "reward": reward}
        self.transform, self.table, self.prompts = transform, table, prompts
        self.automatic_optimization = False
        for (
            m
        ) in policy.modules():  # RL on a sampled policy: dropout off (samples = the trained policy)
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        policy.train()  # (dropout is zeroed above) so Lightning sees a module in train mode
        reference.requires_grad_(False).eval()

    @property
    def reference(self):
        return self._frozen["reference"]

    @property
    def reward(self) -> Scorer:
        return self._frozen["reward"]

    def on_fit_start(self) -> None:  # the frozen models follow the policy to its device
        self.reference.to(self.device)
        reward_model = getattr(self.reward, "model", None)
        if reward_model is not None:
            reward_model.to(self.device)

    def configure_optimizers(self):
        return torch.optim.AdamW(
            self.policy.parameters(), lr=self.rl.lr, weight_decay=self.rl.weight_decay
        )

    @property
    def rl_step(self) -> int:
        return self.global_step // self.rl.optimizer_steps_per_batch

    def step_prompts(self, step: int) -> torch.Tensor:
        """This rank's prompts for ``step``: a fixed function of (seed, step), so resumes replay.

        One permutation is drawn for all ranks and each rank takes its own slice of P, so a
        distributed step covers P x world_size distinct prompts (cycling if the set is smaller).
        """
        g = step_generator(self.seed, step, 1)
        world, rank = (self.trainer.world_size if self._trainer else 1), self.global_rank
        p = self.rl.prompts_per_step
        perm = torch.randperm(len(self.prompts), generator=g)
        perm = perm.repeat(-(-p * world // len(perm)))  # enough for every rank
        return perm[rank * p : (rank + 1) * p]

    @torch.no_grad()
    def rollout(self, step: int) -> dict:
        """Steps 1-5: sample, score, calibrate, transform, shape. Returns tensors for the update."""
        rl, g = self.rl, self.rl.group_size
        idx = self.step_prompts(step)
        prompts = [self.prompts[i] for i in idx.tolist()]
        roll = sample(
            self.policy,
            self.tokenizer,
            prompts,
            g,
            rl.max_new_tokens,
            rl.temperature,
            generator=step_generator(self.seed, step, 2, self.global_rank, device=self.device),
        )
        flat_idx = idx.repeat_interleave(g)
        reward = self.reward.score([p for p in prompts for _ in range(g)], roll.responses).to(
            self.device
        )
        if self.transform.calibrated:
            calibrated = self.table.calibrate(flat_idx.to(reward.device), reward)
            task = self.transform(calibrated).float()
        else:
            calibrated, task = None, reward
        ref_lp = sequence_logprobs(
            self.reference, roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask
        )
        kl = kl_penalty(roll.logprobs, ref_lp, roll.response_mask, rl.kl_estimator)
        shaped = shaped_reward(task, kl, rl.beta)
        return {
            "roll": roll,
            "reward": reward,
            "calibrated": calibrated,
            "task": task,
            "kl": kl,
            "shaped": shaped,
            "advantages": rloo_advantages(shaped, g),
        }

    def training_step(self, batch, batch_idx):
        t0 = time.perf_counter()
        step = self.rl_step
        out = self.rollout(step)
        roll, adv = out["roll"], out["advantages"]
        opt = self.optimizers()
        rows = adv.shape[0]
        stats: dict[str, float] = {}
        epochs = self.rl.ppo_epochs if self.rl.name == "ppo" else 1
        minibatches = self.rl.minibatches if self.rl.name == "ppo" else 1
        g = step_generator(self.seed, step, 3)
        for _ in range(epochs):
            perm = torch.randperm(rows, generator=g) if minibatches > 1 else torch.arange(rows)
            for mb in perm.to(adv.device).chunk(minibatches):
                lp = sequence_logprobs(
                    self.policy,
                    roll.prompt_ids[mb],
                    roll.prompt_mask[mb],
                    roll.response_ids[mb],
                    roll.response_mask[mb],
                )
                if self.rl.name == "rloo":
                    loss = rloo_loss(lp, roll.response_mask[mb], adv[mb])
                else:
                    loss, ppo_stats = ppo_loss(
                        lp, roll.logprobs[mb], adv[mb], roll.response_mask[mb], self.rl.clip_eps
                    )
                    stats.update({f"train/ppo_{k}": float(v) for k, v in ppo_stats.items()})
                opt.zero_grad()
                self.manual_backward(loss)
                if self.rl.grad_clip:
                    self.clip_gradients(
                        opt, gradient_clip_val=self.rl.grad_clip, gradient_clip_algorithm="norm"
                    )
                opt.step()
        elapsed = time.perf_counter() - t0
        tokens = float(roll.response_mask.sum())
        metrics = {
            "train/reward": out["reward"].mean(),
            "train/task_reward": out["task"].mean(),
            "train/kl": out["kl"].mean(),
            "train/objective": out["shaped"].mean(),
            "train/loss": loss.detach(),
            "train/response_length": tokens / rows,
            "perf/samples_per_s": rows / elapsed,
            "perf/tokens_per_s": tokens / elapsed,
            **stats,
        }
        if out["calibrated"] is not None:
            metrics["train/calibrated_reward"] = out["calibrated"].mean()
        self.log_dict(
            {k: torch.as_tensor(v, dtype=torch.float32) for k, v in metrics.items()},
            prog_bar=False,
            on_step=True,
            on_epoch=False,
            batch_size=rows,
        )
        self.log("kl", out["kl"].mean(), prog_bar=True, on_step=True, batch_size=rows)
        self.log(
            "C",
            out["calibrated"].mean() if out["calibrated"] is not None else out["reward"].mean(),
            prog_bar=True,
            on_step=True,
            batch_size=rows,
        )
        return None
