"""infalign: inference-aware alignment (InfAlign, arXiv 2412.19792).

Layers (lower never imports higher):
  1. math       -- calibration, transforms, procedures, theory, estimators (torch/numpy only)
  2. models/data -- toy world, model builders, reward scorers, datamodules
  3. modules    -- Lightning modules (CTRL, reward model, toy pre-training)
  4. apps       -- Hydra entry points (infalign-train, infalign-analyze, ...)
"""

__version__ = "0.1.0"
