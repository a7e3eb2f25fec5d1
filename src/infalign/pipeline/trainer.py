"""``L.Trainer`` settings every stage shares, from the ``trainer`` config group (``conf/trainer/``).

``infalign-train`` and ``infalign-calibration`` both build their trainers from here (fit, and the
sampling stages that run as ``Trainer.predict``).
"""

from __future__ import annotations

from omegaconf import DictConfig

from infalign.training.progress import StepsProgressBar

PROGRESS_BARS = ("rich", "tqdm", "none")


def trainer_kwargs(cfg: DictConfig) -> dict:
    """Device settings shared by every stage (fit and predict): ``trainer.accelerator``, ``devices``,
    ``precision``, ``strategy``, ``num_nodes``; ``trainer.progress_bar`` (one of :data:`PROGRESS_BARS`)
    picks the bar (``rich``: :class:`StepsProgressBar`)."""
    t = cfg.trainer
    kw = {"accelerator": t.accelerator, "devices": t.devices, "precision": t.precision, "strategy": t.strategy,
          "num_nodes": t.get("num_nodes", 1), "enable_model_summary": False}
    if t.progress_bar == "rich":
        kw["callbacks"] = [StepsProgressBar(leave=True)]
    kw["enable_progress_bar"] = t.progress_bar != "none"
    return kw
