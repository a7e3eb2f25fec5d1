"""The progress bar of every ``L.Trainer`` stage (fit, and the sampling loops run as ``predict``)."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class StepsProgressBar(RichProgressBar):
    """Rich bar that shows ``Epoch k/E`` only when training is bounded by epochs (``max_epochs`` >= 1);
    our runs are bounded by ``max_steps`` (Lightning then sets ``max_epochs=-1``, which the stock bar
    shows as ``Epoch 0/-2``)."""

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        return f"Epoch {current_epoch}" + (f"/{max_epochs - 1}" if max_epochs and max_epochs > 0 else "")
