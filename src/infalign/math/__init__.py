"""Layer 1, the mathematics of InfAlign (docs/method.md): calibration, transforms, inference-time
procedures, the 1-D calibrated-space theory engine, estimators and evaluation statistics, matched-KL
comparison and the RL objectives.

Pure functions and small dataclasses over torch / numpy: nothing here imports Hydra, Lightning or
W&B (``tests/test_layers.py`` checks it in a clean interpreter), so the formulas can be used and
tested on their own.
"""
