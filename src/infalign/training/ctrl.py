"""InfAlign-CTRL (docs/method.md §6): KL-regularised RL on the transformed calibrated reward.

One RL step, for P prompts x G samples each:

  1. sample:    y ~ pi(.|x) with a KV cache (seeded by (seed, step, rank): a resumed run redraws
                exactly what it would have drawn, and DDP ranks draw apart);
  2. score:     r = r(x, y) with the frozen reward model;
  3. calibrate: u = C_hat(x, y) against the stored sorted reference rewards of x;
  4. transform: R = Phi(u)              (``raw``: R = r, no calibration -- the RLHF baseline);
                minus ``algo.missing_eos_penalty`` for responses cut without eos (docs/method.md (6.1b));
  5. KL:        KL_hat per sequence (k1: sum_t log pi - log pi_ref; the KL that is optimised *and*
                the KL that is logged);
  6. optimise:  the algorithm (``training/algorithms/``, an ``OnlineAlgorithm``) turns (R, KL_hat)
                into advantages and a minibatch loss -- RLOO: R' = R - beta KL_hat, leave-one-out
                A_i, loss -A_i log pi(y_i|x), one step; PPO: the same advantages, clipped surrogate,
                ``ppo_epochs`` x ``minibatches`` optimizer steps per rollout batch.

The reference and reward models are frozen and deliberately *not* registered submodules: they
never enter the optimizer or the checkpoint (the checkpoint holds only the policy).
"""

from __future__ import annotations

import time

import lightning as L
import torch

from infalign.errors import ConfigError
from infalign.math.calibration import CalibrationTable
from infalign.math.rl_objectives import kl_penalty, missing_eos_penalized
from infalign.math.transforms import Transform
from infalign.models.generation import response_stats, rollout_logprobs, sample, sequence_logprobs
from infalign.models.reward import Scorer, score_rows
from infalign.training.algorithms import OnlineAlgorithm
from infalign.training.rollout import step_generator


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
        algo: OnlineAlgorithm,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if transform.calibrated and table is None:
            raise ConfigError("calibration", None, "a calibration table for a calibrated transform")
        if table is not None and table.num_prompts != len(prompts):
            raise ValueError(
                f"calibration table has {table.num_prompts} prompts, training set has {len(prompts)}"
            )
        self.policy, self.tokenizer, self.algo, self.seed = policy, tokenizer, algo, seed
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
        cfg = self.algo.cfg
        return torch.optim.AdamW(self.policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    @property
    def rl_step(self) -> int:
        return self.global_step // self.algo.optimizer_steps_per_batch

    def step_prompts(self, step: int) -> torch.Tensor:
        """This rank's prompts for ``step``: a fixed function of (seed, step), so resumes replay.

        One permutation is drawn for all ranks and each rank takes its own slice of P, so a
        distributed step covers P x world_size distinct prompts (cycling if the set is smaller).
        """
        g = step_generator(self.seed, step, 1)
        world, rank = (self.trainer.world_size if self._trainer else 1), self.global_rank
        p = self.algo.cfg.prompts_per_step
        perm = torch.randperm(len(self.prompts), generator=g)
        perm = perm.repeat(-(-p * world // len(perm)))  # enough for every rank
        return perm[rank * p : (rank + 1) * p]

    @torch.no_grad()
    def rollout(self, step: int) -> dict:
        """Steps 1-5 and the advantages: sample, score, calibrate, transform, KL. Tensors for the update."""
        cfg = self.algo.cfg
        g = cfg.group_size
        idx = self.step_prompts(step)
        prompts = [self.prompts[i] for i in idx.tolist()]
        roll = sample(
            self.policy,
            self.tokenizer,
            prompts,
            g,
            cfg.max_new_tokens,
            cfg.temperature,
            generator=step_generator(self.seed, step, 2, self.global_rank, device=self.device),
        )
        flat_idx = idx.repeat_interleave(g)
        # (a reward model also says which rows it read cut at max_length)
        reward, cut = score_rows(self.reward, [p for p in prompts for _ in range(g)], roll.responses,
                                 roll.ended.tolist())
        reward = reward.to(self.device)
        if self.transform.calibrated:
            calibrated = self.table.calibrate(flat_idx.to(reward.device), reward)
            task = self.transform(calibrated).float()
            if not bool(torch.isfinite(task).all()):  # a custom transform; exp(t) is checked before compute
                raise FloatingPointError(f"the transform {self.transform.label} gave non-finite rewards "
                                         f"Phi(C) at C = {calibrated[~torch.isfinite(task)][:5].tolist()}")
        else:
            calibrated, task = None, reward
        task = missing_eos_penalized(task, roll.ended, self.algo.missing_eos_penalty)
        ref_lp = sequence_logprobs(
            self.reference, roll.prompt_ids, roll.prompt_mask, roll.response_ids, roll.response_mask
        )
        roll.logprobs = rollout_logprobs(self.policy, roll)  # a teacher-forced pass under low precision
        kl = kl_penalty(roll.logprobs, ref_lp, roll.response_mask, cfg.kl_estimator)
        objective, advantages = self.algo.advantages(task, kl)
        return {
            "roll": roll,
            "reward": reward,
            "reward_cut": cut,
            "calibrated": calibrated,
            "task": task,
            "kl": kl,
            "objective": objective,
            "advantages": advantages,
        }

    def policy_logprobs(self, roll, rows: torch.Tensor) -> torch.Tensor:
        """Teacher-forced ``log pi(y|x)`` of ``roll``'s ``rows``, with grad, with the policy in eval mode:
        dropout off however the model applies it -- ``nn.Dropout`` modules are zeroed in ``__init__``,
        but OPT-style ``F.dropout(..., training=self.training)`` and attention dropout follow the mode --
        so before the first update these equal the sampler's (eval-mode) log-probs and PPO's ratio is 1.
        Gradients flow in eval mode."""
        self.policy.eval()
        return sequence_logprobs(
            self.policy, roll.prompt_ids[rows], roll.prompt_mask[rows], roll.response_ids[rows],
            roll.response_mask[rows],
        )

    def training_step(self, batch, batch_idx):
        t0 = time.perf_counter()
        step = self.rl_step
        out = self.rollout(step)
        roll, adv = out["roll"], out["advantages"]
        opt = self.optimizers()
        rows = adv.shape[0]
        stats: dict[str, float] = {}
        algo, grad_clip = self.algo, self.algo.cfg.grad_clip
        minibatches = algo.minibatches
        g = step_generator(self.seed, step, 3)
        losses: list[float] = []
        for _ in range(algo.epochs):
            perm = torch.randperm(rows, generator=g) if minibatches > 1 else torch.arange(rows)
            for mb in perm.to(adv.device).chunk(minibatches):
                lp = self.policy_logprobs(roll, mb)
                loss, loss_stats = algo.loss(lp, roll.logprobs[mb], adv[mb], roll.response_mask[mb])
                losses.append(float(loss.detach()))
                for k, v in loss_stats.items():  # summed here, averaged over the updates below
                    stats[f"train/{algo.name}_{k}"] = stats.get(f"train/{algo.name}_{k}", 0.0) + float(v)
                opt.zero_grad()
                self.manual_backward(loss)
                if grad_clip:
                    self.clip_gradients(
                        opt, gradient_clip_val=grad_clip, gradient_clip_algorithm="norm"
                    )
                opt.step()
        elapsed = time.perf_counter() - t0
        stats = {k: v / len(losses) for k, v in stats.items()}  # PPO: the rollout's mean over its updates
        tokens = float(roll.response_mask.sum())
        metrics = {
            "train/reward": out["reward"].mean(),
            "train/task_reward": out["task"].mean(),
            "train/kl": out["kl"].mean(),
            "train/objective": out["objective"].mean(),
            "train/loss": sum(losses) / len(losses),
            **{f"train/{k}": v for k, v in response_stats(roll.response_lengths, roll.ended).items()},
            "perf/samples_per_s": rows / elapsed,
            "perf/tokens_per_s": tokens / elapsed,
            **stats,
        }
        if out["calibrated"] is not None:
            metrics["train/calibrated_reward"] = out["calibrated"].mean()
        if out["reward_cut"] is not None:  # the share of the step's responses the reward model read cut
            metrics["train/reward_cut"] = out["reward_cut"].float().mean()
        # Under DDP every rank logs its own rollout (P x G rows each): the logged values are the mean
        # over ranks -- the whole batch's mean, as the ranks' batches are the same size -- and the
        # throughputs their sum (sync_dist; a no-op in one process).
        for reduce_fx, names in (("mean", [k for k in metrics if not k.startswith("perf/")]),
                                 ("sum", [k for k in metrics if k.startswith("perf/")])):
            # on the module's device: NCCL (GPU DDP) cannot all-reduce a CPU tensor
            self.log_dict({k: torch.as_tensor(metrics[k], dtype=torch.float32, device=self.device) for k in names},
                          prog_bar=False,
                          on_step=True, on_epoch=False, batch_size=rows, sync_dist=True, reduce_fx=reduce_fx)
        # the progress bar's two numbers only (logger=False): the logger has them as train/kl and
        # train/calibrated_reward -- "C" is the raw reward's mean under transform=raw, so one chart key
        # would mix ranks in [0, 1] with raw scores across a sweep
        self.log("kl", out["kl"].mean(), prog_bar=True, logger=False, on_step=True, batch_size=rows, sync_dist=True)
        self.log(
            "C",
            out["calibrated"].mean() if out["calibrated"] is not None else out["reward"].mean(),
            prog_bar=True,
            logger=False,
            on_step=True,
            batch_size=rows,
            sync_dist=True,
        )
        return None
