"""Speed benchmarks: ``python -m infalign.bench [--quick] [--only SECTION[,SECTION]] [--repeats N]``.

Sections (theory, calibration, rl, trl, build, scale; each printed as a rich table and written
to ``outputs/bench/bench.json``):

- ``theory``: the calibrated-space theory engine against its time targets (frontier of 4
  transforms x 50 KL budgets < 2 s, one optimal-transform solve < 1 s, a 40-point best-t
  search < 1 s) plus the full optimal frontier;
- ``calibration``: responses/s of drawing a reference pool through ``draw_pool``
  (``RolloutModule`` + ``Trainer.predict``), the calibration stage's code path;
- ``rl``: samples/s and tokens/s of one InfAlign-CTRL RL step (sample, score, calibrate,
  transform, KL-shape, RLOO update) for the toy ``small`` and ``medium`` sizes;
- ``trl``: the same RL step against TRL's ``RLOOTrainer`` on the same model, prompts and reward
  (skipped, with a hint, when TRL is not installed: ``pip install -e .[bench]``), on both toy
  sizes, with a per-phase time breakdown and MFU for both sides;
- ``build``: the toy world built from scratch (stage seconds, target < 40 s) and its quality
  (reference val loss, reward-model accuracy vs labels and gold);
- ``scale``: computed (not measured) RL-step times of the HH experiment with Qwen2.5-0.5B/1.5B on
  one H100/H200, from FLOPs and memory bandwidth (every assumption printed).

Models are randomly initialised from the toy builders: the figures measure throughput only.
"""

from infalign.bench.cli import main, run

__all__ = ["main", "run"]
