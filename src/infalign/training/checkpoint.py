"""``RunCheckpoint``: Lightning's ``ModelCheckpoint`` with the cadence and the final state a run's
``checkpoints/last.ckpt`` promises (conf/callbacks/default.yaml, README "What a checkpoint holds").

An RL step makes ``k = algo.optimizer_steps_per_batch`` optimizer steps (PPO: epochs x minibatches),
so ``trainer.global_step`` moves by ``k`` per batch, and Lightning's ``every_n_train_steps = n``
saves only where ``global_step % n == 0`` lands on a batch end: every ``lcm(k, n)`` steps (PPO's 4
steps per batch with ``checkpoint_every=10``: every 20). And Lightning's ``save_last`` writes
``last.ckpt`` at the end of training only when no periodic save happened at all, so a run whose
step count is not a multiple of ``n`` ends with a ``last.ckpt`` of an earlier step. Here:

* ``last.ckpt`` is written at the end of the first RL step at or past each multiple of ``n``
  optimizer steps (``global_step // n`` has grown since the last save), and
* at the end of training when the last save is older than the final step,

both through Lightning's own last-checkpoint save (``_save_last_checkpoint``: the same contents, this
callback's state included, and ``last_model_path`` kept, so Lightning's later saves overwrite
``last.ckpt`` instead of versioning a ``last-v1.ckpt`` beside it). Only ``last.ckpt`` is handled so:
``save_top_k`` checkpoints keep Lightning's cadence.

Every checkpoint file is written to a temporary file in its own directory and renamed over the old one
(``infra/cache.atomic_path``: ``os.replace``), so a process killed mid-save leaves the previous
checkpoint whole. Lightning's own save writes its temporary file in ``TMPDIR`` and moves it into place:
when that is another file system (a local ``/tmp`` or ``/dev/shm`` beside a run dir on NFS / Lustre) the
move is a copy into the existing ``last.ckpt``, and a kill during it destroyed the only checkpoint.
"""

from __future__ import annotations

import os
from weakref import proxy

from lightning.pytorch.callbacks import ModelCheckpoint

from infalign.infra.cache import atomic_path

__all__ = ["RunCheckpoint"]


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` follows ``every_n_train_steps`` across RL steps of
    several optimizer steps and holds the final state when training ends (module docstring)."""

    def __init__(self, *args, every_n_train_steps: int | None = None, **kwargs):
        super().__init__(*args, every_n_train_steps=every_n_train_steps, **kwargs)
        self.every_n = int(every_n_train_steps or 0)
        self.saved_at = 0  # global step of the newest checkpoint on disk (or training's start)

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self.saved_at = trainer.global_step  # 0, or the step the run resumed from (its checkpoint exists)
        if self.save_last and self.dirpath:
            # last.ckpt is this run's own (a resume continues it): Lightning overwrites its
            # last_model_path, but versions any other existing file -- and a resume does not always
            # get that path back (a checkpoint from before this callback, a moved run dir, another
            # checkpoint_every, which is part of the callback's state key): last-v1.ckpt would
            # hold the newer state beside a stale last.ckpt that ckpt_path=last resumes by name
            self.last_model_path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        self.saved_at = trainer.global_step  # every save passes here: Lightning's own and ours

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        """Lightning's ``ModelCheckpoint._save_checkpoint`` (Lightning 2.x), with the file written beside
        ``filepath`` and renamed into place (module docstring) by global rank 0, the one rank that writes
        under the strategies infalign runs (single device, DDP: ``Strategy.save_checkpoint``); the other
        ranks take part in the save (its barrier) as Lightning has them. A strategy that writes from every
        rank (DeepSpeed, FSDP's sharded files) and a remote path (``s3://...``) are left to Lightning."""
        from lightning.pytorch.strategies import Strategy

        rank_zero_writes = type(trainer.strategy).save_checkpoint is Strategy.save_checkpoint
        if not (trainer.is_global_zero and rank_zero_writes) or "://" in str(filepath):
            super()._save_checkpoint(trainer, filepath)
            return
        with atomic_path(filepath) as tmp:
            trainer.save_checkpoint(str(tmp), self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        for logger in trainer.loggers:  # after the rename: a logger that uploads the file reads the new one
            logger.after_save_checkpoint(proxy(self))

    def _save_last_now(self, trainer) -> None:
        # Lightning's own path for last.ckpt (ModelCheckpoint._save_last_checkpoint, Lightning 2.x): a
        # direct trainer.save_checkpoint left last_model_path unset, and Lightning's next save of the
        # last checkpoint then wrote last-v1.ckpt beside a stale last.ckpt
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step = trainer.global_step
        if (self.save_last and self.every_n > 0 and not trainer.sanity_checking
                and step // self.every_n > self.saved_at // self.every_n):
            self._save_last_now(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and trainer.global_step > self.saved_at:
            self._save_last_now(trainer)
