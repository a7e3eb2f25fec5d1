"""Training modules whose batch is a function of the optimisation step (exact resumes).

A module with :class:`StepIndexed` trains, when its ``step_batches`` is set (a
:class:`~infalign.data.batches.StepBatches`), on ``step_batches[global_step]`` instead of the batch
its loader hands it -- the loader then only counts steps (``DataLoader(range(steps),
batch_size=None)``, as CTRL's). Lightning restores ``global_step`` from a checkpoint but restarts a
plain loader's epoch from its first batch; so resumed, the module still sees the batches an
uninterrupted run would have seen, in order (``pipeline/baselines.py``: the offline algorithms).
"""

from __future__ import annotations

import torch

__all__ = ["StepIndexed"]


class StepIndexed:
    """Mixin for a ``LightningModule`` whose ``training_step`` starts with ``batch = self.step_batch(batch)``."""

    step_batches = None  # a StepBatches, or None: train on the loader's batches

    def step_batch(self, batch):
        """``batch``, or -- with ``step_batches`` -- step ``global_step``'s batch on the module's device."""
        if self.step_batches is None:
            return batch
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                for k, v in self.step_batches[self.global_step].items()}
