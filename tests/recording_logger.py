"""A Lightning ``Logger`` that records every call: stands in for any third-party logger (TensorBoard,
MLflow, ...) that infalign has no code for (``tests/extra_conf/logger/recording.yaml``)."""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch.loggers import Logger


class RecordingLogger(Logger):
    """Appends each call to ``self.calls`` and, on finalize, writes them to ``<save_dir>/recording.json``."""

    def __init__(self, save_dir: str) -> None:
        super().__init__()
        self.save_dir_ = Path(save_dir)
        self.calls: list[tuple] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> str:
        return "0"

    @property
    def experiment(self):
        self.calls.append(("experiment",))
        return self

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        self.calls.append(("log_hyperparams", dict(params) if isinstance(params, dict) else str(params)))

    def log_metrics(self, metrics, step=None) -> None:
        self.calls.append(("log_metrics", dict(metrics), step))

    def finalize(self, status: str) -> None:
        self.calls.append(("finalize", status))
        self.save_dir_.mkdir(parents=True, exist_ok=True)
        (self.save_dir_ / "recording.json").write_text(json.dumps(self.calls, default=str))
