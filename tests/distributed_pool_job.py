"""Run under ``torchrun --nproc_per_node=2``. Given ``-- OVERRIDES...``, first run ``infalign-train
OVERRIDES`` in these ranks as ``torchrun infalign-train OVERRIDES`` would (the console script's entry
point: the app joins the process group itself). Then, for each prompt count given, draw a calibration
pool and an evaluation pool sharded across the two gloo ranks; rank 0 saves what every rank gathered to
``OUT_DIR/ddp_<n>.pt`` (test_distributed.py compares). One launch serves every case: each process start
costs seconds of imports (torch, Lightning), the cases share one process group."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import lightning as L
import torch

from infalign.infra import distributed
from infalign.pipeline.pools import draw_pool, reference_pool
from pool_fixtures import GEN, judges, tiny_models

args, train = (sys.argv[1:sys.argv.index("--")], sys.argv[sys.argv.index("--") + 1:]) if "--" in sys.argv \
    else (sys.argv[1:], None)
if train is not None:
    from infalign.apps.train import main

    # the app joins the group (infra/distributed.init_from_env) and leaves it at its end; left joined here,
    # the pools below use it (torch hangs joining a second group through torchrun's store)
    leave, distributed.shutdown = distributed.shutdown, distributed.barrier
    sys.argv = [str(Path(sys.executable).parent / "infalign-train"), *train]
    try:
        main()
    finally:
        distributed.shutdown = leave
out_dir, cache_root = Path(args[0]), Path(args[1])
for n_prompts in map(int, args[2:]):
    world, prompts = tiny_models(n_prompts)
    kw = functools.partial(L.Trainer, accelerator="cpu", devices=2, strategy="ddp", enable_progress_bar=False,
                           enable_model_summary=False)
    cache_dir = cache_root / f"ddp_cache_{n_prompts}"
    calib, hit = reference_pool(world, prompts, 4, judges(), GEN, kw, 0, cache_dir, tag="calibration")
    pool = draw_pool(world.reference, world.tokenizer, prompts, 4, judges(), GEN, kw, 7, reference=world.reference)
    gathered = distributed.all_gather_objects(distributed.rank())
    if distributed.rank() == 0:
        torch.save({"calibration": calib, "hit": hit, "pool": pool["scores"], "log_ratio": pool["log_ratio"],
                    "index": pool["index"], "ranks": gathered}, out_dir / f"ddp_{n_prompts}.pt")
distributed.shutdown()
