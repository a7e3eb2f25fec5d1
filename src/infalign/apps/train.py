"""``infalign-train``: InfAlign-CTRL end to end (world -> calibrate -> train -> evaluate -> record).

    infalign-train                                   # experiment=toy_bon: exp(t=4), best-of-4
    infalign-train experiment=toy_won                # worst-of-4, exp with t < 0
    infalign-train transform=identity algo.beta=0.1 algo=ppo
    infalign-train -m transform=identity,log,raw     # a multirun sweep

Returns the objective ``eval/<objective.judge>/<objective.metric>`` (for Optuna sweeps).
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from infalign import distributed
from infalign.apps.config import CONFIG_DIR
from infalign.cache import atomic_write_json
from infalign.errors import ConfigError, require
from infalign.modules.ctrl import RLConfig
from infalign.pipeline import record
from infalign.pipeline.baselines import OFFLINE_ALGOS
from infalign.pipeline.evaluate import evaluate_policy
from infalign.pipeline.fit import calibration_table, fit_policy
from infalign.pipeline.kl_target import beta_for_target
from infalign.pipeline.policy_cache import policy_key, train_or_load
from infalign.pipeline.world import load_world
from infalign.procedures import Procedure
from infalign.transforms import Log, Raw, Transform, as_transform

log = logging.getLogger(__name__)
# Our train "dataloader" only counts steps (prompts and seeds are functions of the step), so a
# mid-epoch resume is exact; and the checkpoint is meant to hold the post-update state.
warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")


def instantiate_checked(node: DictConfig):
    """``hydra.utils.instantiate`` that surfaces our ConfigError instead of Hydra's wrapper."""
    try:
        return instantiate(node)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, ConfigError):
            raise exc.__cause__ from None
        raise


def validate(cfg: DictConfig) -> tuple[Procedure, Transform, RLConfig]:
    """Everything that can be checked without compute; raises ConfigError naming the key."""
    procedure: Procedure = instantiate_checked(cfg.procedure)
    transform = as_transform(instantiate_checked(cfg.transform))
    rl = RLConfig(**OmegaConf.to_container(cfg.algo, resolve=True))
    require(int(cfg.calibration.K) >= 1, "calibration.K", cfg.calibration.K, "K >= 1 reference samples per prompt")
    require(int(cfg.eval.samples) >= 1, "eval.samples", cfg.eval.samples, "M >= 1 samples per held-out prompt")
    bad_n = [n for n in cfg.eval.ns if not 1 <= int(n) <= int(cfg.eval.samples)]
    require(not bad_n and procedure.n <= int(cfg.eval.samples), "eval.ns", list(cfg.eval.ns),
            f"every N (and procedure.n={procedure.n}) in [1, eval.samples={cfg.eval.samples}]")
    require(cfg.trainer.accelerator in ("cpu", "gpu", "cuda", "mps", "auto"), "trainer.accelerator",
            cfg.trainer.accelerator, "one of ['cpu', 'gpu', 'cuda', 'mps', 'auto']")
    multi = int(cfg.trainer.devices) != 1 or int(cfg.trainer.get("num_nodes", 1)) > 1
    require(not multi or distributed.launched_externally(), "trainer.devices", cfg.trainer.devices,
            "1, or several processes started by torchrun / SLURM (one per device)",
            "e.g. torchrun --nproc_per_node=4 $(which infalign-train) trainer=ddp trainer.devices=4 "
            "hydra.run.dir=outputs/train/my_run, or hydra/launcher=slurm")
    require(cfg.ckpt_path is None or cfg.ckpt_path == "last" or Path(cfg.ckpt_path).is_file(), "ckpt_path",
            cfg.ckpt_path, "null, 'last' (this run dir's checkpoints/last.ckpt) or an existing checkpoint file")
    return procedure, transform, rl


def trainer_kwargs(cfg: DictConfig) -> dict:
    """Device settings shared by every stage (fit and predict)."""
    from lightning.pytorch.callbacks import RichProgressBar

    t = cfg.trainer
    kw = {"accelerator": t.accelerator, "devices": t.devices, "precision": t.precision, "strategy": t.strategy,
          "num_nodes": t.get("num_nodes", 1), "enable_model_summary": False}
    if t.progress_bar == "rich":
        kw["callbacks"] = [RichProgressBar(leave=True)]
    kw["enable_progress_bar"] = t.progress_bar != "none"
    return kw


def make_logger(cfg: DictConfig, out_dir: Path, name: str, tags: list[str]):
    if cfg.logger is None or cfg.logger.get("kind", "none") == "none":
        return None
    if cfg.logger.kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(out_dir), name="csv", version="")
    if cfg.logger.kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(
            project=cfg.logger.project, name=name, group=wandb_group(cfg), job_type=cfg.logger.job_type,
            tags=tags, save_dir=str(out_dir), offline=bool(cfg.logger.offline),
            config=OmegaConf.to_container(cfg, resolve=True), entity=cfg.logger.get("entity"),
        )
    raise ConfigError("logger.kind", cfg.logger.kind, "one of ['wandb', 'csv', 'none']")


def wandb_group(cfg: DictConfig) -> str:
    """``logger.group`` if set (sweep configs set ``sweep_name``), else one group per multirun
    (``multirun-<sweep dir name>``), else ``single``."""
    if cfg.logger.get("group"):
        return str(cfg.logger.group)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN":
        return f"multirun-{Path(HydraConfig.get().sweep.dir).name}"
    return "single"


def resolve_ckpt(cfg: DictConfig, out_dir: Path) -> str | None:
    if cfg.ckpt_path == "last":
        last = out_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.exists() else None
    return cfg.ckpt_path


def run(cfg: DictConfig) -> dict:
    """All stages; returns metrics. The logger is finished (marked failed on error) in every case."""
    procedure, transform, rl = validate(cfg)
    out_dir = Path(cfg.paths.run_dir)
    cache_dir = Path(cfg.paths.cache_dir)
    name = record.run_name(procedure, transform, rl.beta, rl.name, rl.kl_target)
    tags = [procedure.label, transform.kind, rl.name, f"beta={rl.beta:g}", cfg.data.source]
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    logger = make_logger(cfg, out_dir, name, tags)
    if logger is not None and type(logger).__name__ == "WandbLogger":
        _ = logger.experiment  # start the run now, so a job that fails in any stage shows up (as failed)
    kw = trainer_kwargs(cfg)
    timings: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        world = load_world(cfg, cache_dir)  # per process (the toy build is lock-protected, single-rank)
        timings["world_s"] = time.perf_counter() - t0
        distributed.init_from_env()  # from here on every stage sees the same ranks

        t0 = time.perf_counter()
        table, calib_hit = None, None
        if (transform.calibrated or rl.kl_target is not None) and rl.name not in OFFLINE_ALGOS:
            table, calib_hit = calibration_table(world, cfg, kw, cache_dir)
        if rl.kl_target is not None and rl.name not in OFFLINE_ALGOS:
            require("optimal_transform" not in str(cfg.transform.get("_target_")), "algo.kl_target", rl.kl_target,
                    "null with transform=optimal (it is built for algo.beta; set algo.beta instead)")
            rl.beta = beta_for_target(rl.kl_target, transform, procedure, table)
            log.info("algo.kl_target=%g -> beta=%.4g", rl.kl_target, rl.beta)
        timings["calibration_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        fit_kwargs = {
            **{k: v for k, v in kw.items() if k != "callbacks"},
            "callbacks": [*kw.get("callbacks", []), checkpoint_callback(cfg, out_dir)],
            "logger": logger if logger is not None else False,
            "log_every_n_steps": int(cfg.log_every_n_steps), "deterministic": bool(cfg.deterministic),
        }
        ckpt = resolve_ckpt(cfg, out_dir)

        def train() -> None:
            fit_policy(world, cfg, rl, transform, table, fit_kwargs, kw, ckpt)

        policy_hit = None
        if cfg.get("policy_cache", True) and ckpt is None and not distributed.is_distributed():
            policy_hit = train_or_load(world.policy, policy_key(cfg, world, rl.beta), cache_dir, train, str(out_dir))
        else:
            train()
        timings["train_s"] = time.perf_counter() - t0
        if cfg.save_policy and distributed.rank() == 0:
            world.policy.save_pretrained(out_dir / "policy")
            world.tokenizer.save_pretrained(out_dir / "policy")

        t0 = time.perf_counter()
        # theory beside the run: bon_sft targets the best-of-N policy (log at beta = 1/(N-1))
        theory_transform, theory_beta = transform, rl.beta
        if rl.name == "bon_sft":
            theory_transform, theory_beta = Log(floor=0.0), 1.0 / (rl.n_samples - 1)
        elif rl.name == "ipo":
            theory_transform = Raw()  # no calibrated-space prediction
        ev = evaluate_policy(world, cfg, procedure, theory_transform, theory_beta, kw, cache_dir)
        timings["eval_s"] = time.perf_counter() - t0
        th = ev["theory"]
        kl = ev["judges"]["reward_model"]["kl"]["mean"]
        info = record.method_info(cfg, rl.name, transform, procedure)
        metrics = {
            "run_name": name, "status": "finished", "procedure": procedure.label, "transform": transform.label,
            "method": info.pop("method"), "method_info": info, "algo": rl.name, "beta": rl.beta, "steps": rl.steps, "seed": int(cfg.seed), "eval": ev,
            "kl_ratio": (kl / th["kl"]) if th and th["kl"] > 0 else None,
            "timings": timings, "cache": {"toy_built": world.stats.get("toy_built"), "calibration_hit": calib_hit, "policy_hit": policy_hit,
                                          "eval_reference_hit": ev["reference_pool_cache_hit"]},
            "world": {k: v for k, v in world.stats.items() if isinstance(v, int | float | str | bool)},
            "data_reports": world.stats.get("data_reports"),  # real data: usable / malformed / too_long
            "config": OmegaConf.to_container(cfg, resolve=True),
        }
        if distributed.rank() != 0:  # every rank holds the gathered metrics; rank 0 records them
            return metrics
        paths = record.write_files(out_dir, metrics, procedure)
        record.print_summary(metrics, procedure)
        if logger is not None:
            log_to_logger(logger, metrics, paths)
        finish_logger(logger, 0)
        return metrics
    except BaseException as exc:
        # a failed job leaves a record a sweep report can list (and is marked failed in W&B)
        failed = {"run_name": name, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                  "timings": timings, "config": OmegaConf.to_container(cfg, resolve=True)}
        atomic_write_json(out_dir / "metrics.json", failed)
        finish_logger(logger, 1)
        raise


def checkpoint_callback(cfg: DictConfig, out_dir: Path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    return ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True, save_top_k=0,
                           every_n_train_steps=int(cfg.checkpoint_every))


def log_to_logger(logger, metrics: dict, paths: dict) -> None:
    summary = record.flat_summary(metrics)
    logger.log_metrics(summary)
    if type(logger).__name__ == "WandbLogger":
        logger.experiment.summary.update(summary)
        samples = metrics["eval"]["samples"]
        if samples:
            logger.log_table(key="eval/samples", columns=["prompt", "response"], data=[list(s) for s in samples])
        logger.log_image(key="eval/win_rates", images=[str(paths["plot"])])


def finish_logger(logger, exit_code: int) -> None:
    if logger is not None and type(logger).__name__ == "WandbLogger":
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)
    elif logger is not None:
        logger.finalize("success" if exit_code == 0 else "failed")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    try:
        metrics = run(cfg)
        distributed.shutdown()
    except Exception:
        # In a sweep one failed job must not cancel the rest: it is recorded (metrics.json with
        # status=failed, W&B run marked failed) and returns NaN. A single run fails loudly.
        if HydraConfig.get().mode.name != "MULTIRUN" or not cfg.continue_on_failure:
            raise
        log.exception("job failed; continuing the sweep (continue_on_failure=true)")
        return float("nan")
    return objective(cfg, metrics)


def objective(cfg: DictConfig, metrics: dict) -> float:
    """``eval/<objective.judge>/<objective.metric>`` (``standard_win_rate`` for procedure=sample),
    minus ``objective.kl_penalty * max(0, KL - objective.kl_budget)`` when a budget is set."""
    cols = metrics["eval"]["judges"][cfg.objective.judge]
    metric = cfg.objective.metric if cfg.objective.metric in cols else "standard_win_rate"
    value = float(cols[metric]["mean"])
    budget = cfg.objective.get("kl_budget")
    if budget is not None:  # over-budget runs lose kl_penalty per nat of excess KL
        value -= float(cfg.objective.kl_penalty) * max(0.0, cols["kl"]["mean"] - float(budget))
    return value


if __name__ == "__main__":
    main()
