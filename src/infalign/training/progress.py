"""The progress bar of every ``L.Trainer`` stage (fit, and the sampling loops run as ``predict``).

``conf/callbacks/default.yaml`` instantiates :func:`progress_bar` with ``trainer.progress_bar``.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar

from infalign.errors import require

PROGRESS_BARS = ("rich", "tqdm", "none")


class StepsProgressBar(RichProgressBar):
    """Rich bar that shows ``Epoch k/E`` only when training is bounded by epochs (``max_epochs`` >= 1);
    our runs are bounded by ``max_steps`` (Lightning then sets ``max_epochs=-1``, which the stock bar
    shows as ``Epoch 0/-2``). Bounded by steps, the bar counts the module's steps over the whole fit --
    an RL step is ``k = algo.optimizer_steps_per_batch`` optimizer steps (PPO: epochs x minibatches), so
    ``global_step // k`` of ``max_steps // k``, the ``algo.steps`` the run announces; a module without an
    ``algo`` counts optimizer steps -- from where a resumed run's checkpoint left off: the stock bar counts
    the epoch's batch index against the batches *left* (``min(batches, max_steps - global_step)``), which a
    resumed run showed as ``100/39``. (Lightning's ``TQDMProgressBar``, ``trainer.progress_bar=tqdm``,
    keeps its own count.)"""

    def _steps_bounded(self) -> bool:
        return self.trainer.max_epochs in (None, -1) and (self.trainer.max_steps or -1) > 0

    def _per_step(self) -> int:
        algo = getattr(self.trainer.lightning_module, "algo", None)
        return max(1, int(getattr(algo, "optimizer_steps_per_batch", 1) or 1))

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        return f"Epoch {current_epoch}" + (f"/{max_epochs - 1}" if max_epochs and max_epochs > 0 else "")

    @property
    def total_train_batches(self) -> int | float:
        if self._steps_bounded():
            return self.trainer.max_steps // self._per_step()
        return super().total_train_batches

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self._steps_bounded():  # a resumed run starts where its checkpoint left off
            self._update(self.train_progress_bar_id, trainer.global_step // self._per_step())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._steps_bounded():
            self._update(self.train_progress_bar_id, trainer.global_step // self._per_step())


def progress_bar(style: str) -> ProgressBar | None:
    """The bar for ``trainer.progress_bar`` (one of :data:`PROGRESS_BARS`): ``rich`` ->
    :class:`StepsProgressBar`, ``tqdm`` -> Lightning's ``TQDMProgressBar``, ``none`` -> None (no
    callback; the trainers are then built with ``enable_progress_bar=False``)."""
    require(style in PROGRESS_BARS, "trainer.progress_bar", style, " | ".join(PROGRESS_BARS))
    if style == "rich":
        return StepsProgressBar(leave=True)
    return TQDMProgressBar() if style == "tqdm" else None
