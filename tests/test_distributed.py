"""Sampling stages sharded over two gloo processes gather exactly the single-process result."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from infalign.math.pool_stats import pool_report
from infalign.pipeline.pools import draw_pool, reference_pool
from pool_fixtures import GEN, judges, tiny_models


def free_port() -> int:
    """A TCP port free on localhost now: two test runs at once (CI and a developer's) must not both
    ask torchrun for the same fixed port (EADDRINUSE)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

HERE = Path(__file__).parent


CASES = (7, 1)  # 4 batches of 2, the last short; 1 batch: rank 1 empty


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, tiny_world) -> SimpleNamespace:
    """One torchrun launch of two gloo ranks (a launch starts three interpreters, ~5 CPU-s of imports
    each) for every case of :data:`CASES` -- ``ddp_<n>.pt`` and ``ddp_cache_<n>/`` per case -- and then
    the train app on the tiny world with ``trainer=ddp_cpu`` (``train_run``); ``proc`` the launch. The
    price of one launch: a failure in the app (it runs first) fails the pool tests too, each test's
    message then shows the launch's output."""
    from pipeline_helpers import TINY_RUN, TINY_WORLD, seeded_cache

    out = tmp_path_factory.mktemp("ddp")
    train_run = out / "train_run"
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(HERE / "distributed_pool_job.py"), str(out), str(out), *map(str, CASES),
           "--", "trainer=ddp_cpu", *TINY_WORLD, *TINY_RUN,
           f"paths.cache_dir={seeded_cache(out / 'cache', tiny_world)}", f"hydra.run.dir={train_run}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    return SimpleNamespace(out=out, train_run=train_run, proc=proc)


def launch_output(ddp_runs) -> str:
    return ddp_runs.proc.stdout[-3000:] + ddp_runs.proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("n_prompts", CASES)
def test_two_gloo_ranks_equal_one_process(tmp_path, ddp_runs, n_prompts):
    assert (ddp_runs.out / f"ddp_{n_prompts}.pt").is_file(), launch_output(ddp_runs)
    ddp = torch.load(ddp_runs.out / f"ddp_{n_prompts}.pt", weights_only=False)
    assert ddp["ranks"] == [0, 1]  # really two processes

    world, prompts = tiny_models(n_prompts)
    kw = functools.partial(L.Trainer, accelerator="cpu", devices=1, enable_progress_bar=False,
                               enable_model_summary=False)
    single_calib, _ = reference_pool(world, prompts, 4, judges(), GEN, kw, 0, tmp_path / "cache", tag="calibration")
    single = draw_pool(world.reference, world.tokenizer, prompts, 4, judges(), GEN, kw, 7, reference=world.reference)

    assert torch.equal(ddp["index"], torch.arange(n_prompts))  # every prompt once, in order
    assert torch.equal(ddp["calibration"]["scores"]["reward"], single_calib["scores"]["reward"])  # the gathered table
    assert torch.equal(ddp["calibration"]["lengths"], single_calib["lengths"])
    assert torch.equal(ddp["calibration"]["ended"], single_calib["ended"])
    assert torch.equal(ddp["pool"]["reward"], single["scores"]["reward"])
    assert torch.allclose(ddp["log_ratio"], single["log_ratio"], atol=1e-5)
    a = pool_report(ddp["pool"]["reward"], ddp["calibration"]["scores"]["reward"], "bon", [1, 2, 4],
                    ddp["log_ratio"])
    b = pool_report(single["scores"]["reward"], single_calib["scores"]["reward"], "bon", [1, 2, 4],
                    single["log_ratio"])
    for key in a:
        assert a[key]["mean"] == pytest.approx(b[key]["mean"], abs=1e-6)
    pools = ddp_runs.out / f"ddp_cache_{n_prompts}" / "pools"
    assert pools.is_dir() and len(list(pools.glob("*.pt"))) == 1


@pytest.mark.slow
def test_train_app_under_torchrun_two_cpu_ranks(ddp_runs):
    """The whole pipeline on two gloo ranks (trainer=ddp_cpu): calibration, DDP RL, gathered eval."""
    assert ddp_runs.proc.returncode == 0, launch_output(ddp_runs)
    import json

    run_dir = ddp_runs.train_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished"
    assert metrics["eval"]["judges"]["reward_model"]["kl"]["n_prompts"] == 5  # every eval prompt, once
    assert metrics["config"]["trainer"]["strategy"] == "ddp"


def test_multi_device_without_a_launcher_is_a_config_error(tmp_path, monkeypatch):
    from infalign.apps import train as train_app
    from infalign.errors import ConfigError
    from pipeline_helpers import compose_train

    for var in ("WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="trainer.devices"):
        train_app.run(compose_train(tmp_path, tmp_path, "trainer=ddp_cpu"))


@pytest.mark.parametrize("accelerator,gpus,refused", [
    ("cpu", 4, False),   # one CPU process whatever the GPUs
    ("gpu", 1, False),   # a single-GPU machine: one device, no launcher needed
    ("gpu", 2, True),    # every visible GPU: one process each, started by torchrun / SLURM
    ("cuda", 0, False),  # no GPU: one (Lightning's own refusal of the accelerator speaks, probe_trainer)
    ("auto", 0, False),  # auto without a GPU is one CPU
    ("auto", 3, True),   # auto with GPUs takes them all
])
def test_devices_auto_counts_what_lightning_would_use(tmp_path, monkeypatch, accelerator, gpus, refused):
    import torch

    from infalign.apps import train as train_app
    from infalign.errors import ConfigError
    from pipeline_helpers import compose_train

    for var in ("WORLD_SIZE", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert train_app.auto_device_count(accelerator) == (1 if accelerator in ("cpu", "mps") else max(1, gpus))
    for devices in ("auto", -1) if accelerator != "cpu" else ("auto",):  # -1: every visible GPU, as auto
        cfg = compose_train(tmp_path, tmp_path, f"trainer.accelerator={accelerator}", f"trainer.devices={devices}")
        if refused:
            with pytest.raises(ConfigError, match="trainer.devices"):
                train_app.validate(cfg)
        else:
            train_app.validate(cfg)


def fake_srun(monkeypatch, procid: int, ntasks: int, localid: int, nodes: int, gpus: int) -> tuple[list, list]:
    """An srun task's environment (SLURM's variables, none of torchrun's: monkeypatch restores them unset --
    init_from_env sets them, and a rank left in the worker's environment made later tests wait for a process
    group) on nodes of ``gpus`` visible GPUs, with the process group and ``set_device`` recorded, not run:
    ``(init_process_group's keyword arguments, set_device's devices)``, filled by ``init_from_env``."""
    from infalign.infra import distributed

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE",
                "TORCHELASTIC_RUN_ID"):
        monkeypatch.setenv(var, "")  # set, then deleted
        monkeypatch.delenv(var)
    for var, value in {"SLURM_PROCID": procid, "SLURM_NTASKS": ntasks, "SLURM_LOCALID": localid,
                       "SLURM_NODELIST": "gpu[3-4]", "SLURM_JOB_ID": 1234567, "SLURM_NNODES": nodes,
                       "SLURM_NTASKS_PER_NODE": ntasks // nodes, "SLURM_JOB_NAME": "train"}.items():
        monkeypatch.setenv(var, str(value))
    joined, devices = [], []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: joined.append(kw))
    monkeypatch.setattr(distributed.torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(distributed.torch.cuda, "device_count", lambda: gpus)  # (what auto counts)
    monkeypatch.setattr(distributed.torch.cuda, "set_device", devices.append)
    return joined, devices


@pytest.mark.parametrize("accelerator, cuda, backend", [("cpu", False, "gloo"), ("cpu", True, "gloo"),
                                                        ("gpu", True, "cpu:gloo,cuda:nccl"),
                                                        ("auto", True, "cpu:gloo,cuda:nccl"), ("auto", False, "gloo")])
def test_an_srun_task_joins_with_lightnings_slurm_address_and_the_trainers_backend(monkeypatch, accelerator, cuda,
                                                                                  backend):
    """Under srun (submitit's tasks) neither SLURM nor submitit sets MASTER_ADDR / MASTER_PORT, and the
    group's env:// rendezvous failed before calibration; and the backend followed CUDA's presence, so
    trainer=ddp_cpu on a GPU node got an NCCL-only group on which CPU collectives fail (both found by a
    review). Now: Lightning's SLURM address (first node of SLURM_NODELIST, 15000 + the job id's last
    4 digits) and the trainer's accelerator."""
    from infalign.infra import distributed

    joined, devices = fake_srun(monkeypatch, procid=1, ntasks=2, localid=1, nodes=1, gpus=2 * int(cuda))
    distributed.init_from_env(accelerator)
    assert joined == [{"backend": backend}]
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("1", "2", "1")
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("gpu3", str(15000 + 4567))
    assert devices == ([1] if "nccl" in backend else [])


def test_an_srun_task_on_the_second_node_uses_its_local_id_for_its_gpu(monkeypatch):
    """Under srun, init_from_env translates SLURM's names: RANK = SLURM_PROCID, WORLD_SIZE = SLURM_NTASKS,
    LOCAL_RANK = SLURM_LOCALID (the task's index on its node), and a GPU rank takes GPU LOCAL_RANK. Task 3 of
    4 on two nodes of 2 GPUs is the second task of node 2: local id 1, so GPU 1 (there is no GPU 3 on the
    node). (The test above has SLURM_PROCID = SLURM_LOCALID = 1, which cannot tell them apart: mutation
    testing.)"""
    from infalign.infra import distributed

    joined, devices = fake_srun(monkeypatch, procid=3, ntasks=4, localid=1, nodes=2, gpus=2)
    distributed.init_from_env("gpu")
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("3", "4", "1")
    assert devices == [1] and joined == [{"backend": "cpu:gloo,cuda:nccl"}]


def test_an_srun_task_that_sees_one_gpu_uses_it_whatever_its_local_id(monkeypatch):
    """srun with --gpus-per-task (each task's CUDA_VISIBLE_DEVICES its own GPU): local id 1 sees one GPU, index 0;
    set_device(1) would fail (review finding). The rank's GPU is its local id modulo the GPUs it sees."""
    from infalign.infra import distributed

    joined, devices = fake_srun(monkeypatch, procid=1, ntasks=2, localid=1, nodes=1, gpus=1)
    distributed.init_from_env("gpu")
    assert devices == [0] and os.environ["LOCAL_RANK"] == "1"


@pytest.mark.parametrize("strategy", ["fsdp", "FSDP", "fsdp_cpu_offload"])
def test_fsdp_is_refused_before_compute(tmp_path, strategy):
    """Lightning's FSDP runs training_step inside FSDP's forward, where RL's manual backward fails at the
    first step, and leaves predict's sampled models sharded (a review ran both on 2 CPU ranks):
    refused, naming trainer.strategy, instead of crashing mid-run."""
    from infalign.apps import train as train_app
    from infalign.errors import ConfigError
    from pipeline_helpers import compose_train

    with pytest.raises(ConfigError) as err:
        train_app.validate(compose_train(tmp_path, tmp_path, f"trainer.strategy={strategy}"))
    assert err.value.key == "trainer.strategy" and "trainer=ddp" in err.value.hint
    train_app.validate(compose_train(tmp_path, tmp_path, "trainer.strategy=ddp"))  # control: DDP passes


@pytest.mark.parametrize("job_name, multi", [("train", True), ("interactive", False), ("bash", False)])
def test_an_interactive_slurm_allocation_runs_as_one_process(monkeypatch, job_name, multi):
    """salloc/sbatch --ntasks=N running infalign-train itself (for N cores) is one process: as for
    Lightning's SLURMEnvironment.detect, an interactive job (name bash / interactive) is not N ranks --
    a process group would wait 30 minutes for ranks that never come (a review's find)."""
    from infalign.infra import distributed

    monkeypatch.setenv("WORLD_SIZE", "")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", job_name)
    assert distributed.launched_externally() is multi
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun's own count wins
    assert distributed.launched_externally() is False
