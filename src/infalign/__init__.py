"""infalign: inference-aware alignment (InfAlign, arXiv 2412.19792).

Layers (lower never imports higher):
  1. math       -- calibration, transforms, procedures, theory, estimators (torch/numpy only)
  2. models/data -- toy world, model builders, reward scorers, datamodules
  3. modules    -- Lightning modules (CTRL, reward model, toy pre-training)
  4. apps       -- Hydra entry points (infalign-train, infalign-analyze, ...)
"""

import time as _time

__version__ = "0.1.0"
# When this process first imported infalign: a module file of it changed on disk after this may not
# be the code the process runs (infra/cache.py: modules_digest keys its results apart).
IMPORTED_AT = _time.time()
