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
    shows as ``Epoch 0/-2``)."""

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        return f"Epoch {current_epoch}" + (f"/{max_epochs - 1}" if max_epochs and max_epochs > 0 else "")


def progress_bar(style: str) -> ProgressBar | None:
    """The bar for ``trainer.progress_bar`` (one of :data:`PROGRESS_BARS`): ``rich`` ->
    :class:`StepsProgressBar`, ``tqdm`` -> Lightning's ``TQDMProgressBar``, ``none`` -> None (no
    callback; the trainers are then built with ``enable_progress_bar=False``)."""
    require(style in PROGRESS_BARS, "trainer.progress_bar", style, " | ".join(PROGRESS_BARS))
    if style == "rich":
        return StepsProgressBar(leave=True)
    return TQDMProgressBar() if style == "tqdm" else None
