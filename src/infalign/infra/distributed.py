"""Tiny helpers over ``torch.distributed`` that are no-ops in a single process.

Sampling stages (calibration, evaluation) shard *whole batches* of prompts across ranks and
gather the per-prompt results, so a distributed run draws exactly what a single process draws
(each batch's random stream is seeded by the batch, not by the rank) -- every prompt once, no
duplicates or losses at uneven splits.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def accelerator_kind(accelerator: str) -> str:
    """The device kind a ``trainer.accelerator`` runs on here: ``auto`` -> ``cuda`` when a CUDA GPU is
    visible (``torch.cuda.device_count() > 0``, as Lightning counts them), else ``mps`` when available,
    else ``cpu`` (Lightning's order); ``gpu`` -> ``cuda``; the others as given."""
    if accelerator == "auto":
        mps = getattr(torch.backends, "mps", None)
        return ("cuda" if torch.cuda.device_count() > 0 else
                "mps" if mps is not None and mps.is_available() else "cpu")
    return "cuda" if accelerator == "gpu" else accelerator


def launched_externally() -> bool:
    """True when a launcher started one process per rank (torchrun: ``WORLD_SIZE``; SLURM srun /
    submitit: ``SLURM_NTASKS``, unless the job is an interactive allocation -- job name ``bash`` or
    ``interactive``, Lightning's rule (``SLURMEnvironment.detect``) -- where one process runs alone
    and a process group would wait for ranks that never come)."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"]) > 1
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and os.environ.get("SLURM_JOB_NAME") not in ("bash",
                                                                                                    "interactive")


def launch_rank() -> int:
    """This process's rank in a torchrun / srun launch (``RANK``, else ``SLURM_PROCID``), known before the
    process group exists (:func:`init_from_env` joins it later); 0 for a single process."""
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)


def launch_local_rank() -> int:
    """This process's rank on its node in a torchrun / srun launch (``LOCAL_RANK``, else ``SLURM_LOCALID``);
    0 for a single process."""
    return int(os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_LOCALID") or 0)


def local_gpu() -> int:
    """The CUDA device index this rank uses: its local rank -- or 0 when it sees one GPU, as an srun task
    restricted to its own (``CUDA_VISIBLE_DEVICES``) does, whatever its rank. (More ranks than the GPUs a
    rank sees is left to fail as CUDA says: "invalid device ordinal", not silent sharing.)"""
    return 0 if torch.cuda.device_count() == 1 else launch_local_rank()


def init_from_env(accelerator: str = "auto") -> None:
    """Join the process group described by the launcher's env vars, before any stage runs.

    Every stage (calibration, RL, evaluation) then sees the same ranks; Lightning reuses an
    initialised group. No-op in a single process or when already initialised. Under srun (SLURM's
    names: ``SLURM_PROCID``, ...) the rendezvous address is what Lightning's SLURM environment derives
    -- the first node of ``SLURM_NODELIST``, port 15000 + the job id's last 4 digits -- unless
    ``MASTER_ADDR`` / ``MASTER_PORT`` are set (neither SLURM nor submitit sets them: without them the
    group's ``env://`` rendezvous failed). The backend follows the trainer's ``accelerator``: on GPUs
    (``gpu``, ``cuda``, or ``auto`` with CUDA present) ``cpu:gloo,cuda:nccl`` -- NCCL for CUDA tensors
    and gloo for the CPU tensors the stages gather --, else gloo (a ``ddp_cpu`` run on a GPU machine
    got an NCCL-only group, on which every CPU collective fails).
    """
    if not launched_externally() or (dist.is_available() and dist.is_initialized()):
        return
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env:  # srun: translate SLURM's names
        env.setdefault("RANK", env["SLURM_PROCID"])
        env.setdefault("WORLD_SIZE", env["SLURM_NTASKS"])
        env.setdefault("LOCAL_RANK", env.get("SLURM_LOCALID", "0"))
        from lightning.fabric.plugins.environments import SLURMEnvironment

        slurm = SLURMEnvironment()
        env.setdefault("MASTER_ADDR", slurm.main_address)
        env.setdefault("MASTER_PORT", str(slurm.main_port))
    gpu = torch.cuda.is_available() and accelerator_kind(str(accelerator)) == "cuda"
    if gpu:
        torch.cuda.set_device(local_gpu())
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if gpu else "gloo")


def shutdown() -> None:
    """Wait for every rank, then leave the process group (a rank that exits while its peers still
    talk to it aborts with "terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
