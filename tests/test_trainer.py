"""pipeline/trainer.py and the trainer / callbacks groups: every stage's ``L.Trainer`` is the
instantiated ``conf/trainer/`` entry with ``conf/callbacks/``; what a checkpoint holds."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from omegaconf import OmegaConf

import tiny_policy as tp
from infalign.apps.config import instantiate_callbacks, instantiate_trainer
from infalign.errors import ConfigError
from infalign.math.transforms import Identity
from infalign.pipeline.fit import fit_policy
from infalign.pipeline.trainer import stage_trainers
from infalign.training.algorithms import make_algorithm
from infalign.training.progress import StepsProgressBar
from pipeline_helpers import compose_train

pytestmark = [pytest.mark.filterwarnings("ignore:.*does not have many workers"),
              pytest.mark.filterwarnings("ignore:.*`isinstance\\(treespec, LeafSpec\\)`")]


class MyTrainer(L.Trainer):
    """A Trainer subclass named by ``trainer._target_``."""


def trainers_of(tmp_path, *overrides, logger=None):
    cfg = compose_train(tmp_path / "cache", tmp_path / "run", *overrides)
    return cfg, stage_trainers(instantiate_trainer(cfg.trainer), instantiate_callbacks(cfg.callbacks), logger,
                               log_every_n_steps=1)


def test_fit_gets_every_callback_and_predict_all_but_the_checkpoint(tmp_path):
    cfg, trainers = trainers_of(tmp_path, "trainer.progress_bar=rich", "checkpoint_every=3")
    fit = trainers.fit(max_steps=2)
    (ckpt,) = [c for c in fit.callbacks if isinstance(c, ModelCheckpoint)]
    assert ckpt.dirpath == str((tmp_path / "run" / "checkpoints").resolve())
    assert ckpt._every_n_train_steps == 3 and ckpt.save_last and ckpt.save_top_k == 0
    assert isinstance(fit.progress_bar_callback, StepsProgressBar) and fit.max_steps == 2 and fit.logger is None
    predict = trainers.predict(logger=False, enable_checkpointing=False)  # what pools.draw_pool asks for
    assert not any(isinstance(c, ModelCheckpoint) for c in predict.callbacks)
    assert predict.progress_bar_callback is fit.progress_bar_callback  # one bar for every stage of the run


def test_no_checkpoint_callback_means_no_checkpoints(tmp_path):
    """``callbacks.model_checkpoint=null`` switches checkpointing off (not Lightning's default callback)."""
    _, trainers = trainers_of(tmp_path, "callbacks.model_checkpoint=null")
    assert trainers.fit(max_steps=1).checkpoint_callback is None


@pytest.mark.slow
@pytest.mark.parametrize("style, bar", [("rich", StepsProgressBar), ("tqdm", TQDMProgressBar), ("none", None)])
def test_progress_bar_style(tmp_path, style, bar):
    _, trainers = trainers_of(tmp_path, f"trainer.progress_bar={style}")
    for trainer in (trainers.fit(), trainers.predict(logger=False, enable_checkpointing=False)):
        assert type(trainer.progress_bar_callback) is bar if bar else trainer.progress_bar_callback is None
        assert sum(isinstance(c, ProgressBar) for c in trainer.callbacks) == (bar is not None)


def test_bad_progress_bar_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer\.progress_bar"):
        trainers_of(tmp_path, "trainer.progress_bar=fancy")


@pytest.mark.parametrize("override, where", [("+trainer.deterministic=true", "deterministic (top level)"),
                                              ("+trainer.log_every_n_steps=1", "log_every_n_steps (top level)"),
                                              ("+trainer.max_steps=3", "algo.steps"),
                                              ("+trainer.enable_progress_bar=false", "trainer.progress_bar")])
def test_a_trainer_argument_every_stage_passes_itself_is_a_config_error(tmp_path, override, where):
    """``+trainer.deterministic=true`` was accepted, recorded in the policy-cache key, and replaced by the
    top-level ``deterministic`` in every fit (a reviewer's find): such keys now name where they are set."""
    cfg = compose_train(tmp_path, tmp_path, override)
    with pytest.raises(ConfigError) as err:
        instantiate_trainer(cfg.trainer)
    key = override.split("=")[0].lstrip("+")
    assert err.value.key == key and where in err.value.hint


@pytest.mark.parametrize("override", ["+trainer.limit_predict_batches=1", "+trainer.fast_dev_run=true"])
def test_a_trainer_argument_that_stops_a_stage_early_is_a_config_error(tmp_path, override):
    """Review finding: ``+trainer.limit_predict_batches=1`` (or ``fast_dev_run``) reached every predict stage,
    which drew a third of the calibration pool and cached it under the whole prompt set's key: a later run
    without the setting got it from the cache (infalign-calibration summarised the part silently)."""
    cfg = compose_train(tmp_path, tmp_path, override)
    with pytest.raises(ConfigError) as err:
        instantiate_trainer(cfg.trainer)
    assert err.value.key == override.split("=")[0].lstrip("+") and "data.eval_prompts" in err.value.hint
    for off in ("+trainer.limit_predict_batches=1.0", "+trainer.fast_dev_run=false"):  # their "off" values
        instantiate_trainer(compose_train(tmp_path, tmp_path, off).trainer)


def test_a_partial_pool_is_an_error_not_a_pool():
    """gather(num_prompts=P): a predict loop that stopped early -- however -- is refused, not cached."""
    from infalign.training.rollout import gather

    def part(index):
        n = len(index)
        return {"index": torch.tensor(index), "scores": {"gold": torch.zeros(n, 2)}, "lengths": torch.ones(n, 2),
                "ended": torch.ones(n, 2, dtype=torch.bool), "responses": [], "response_ids": [],
                "log_ratio": None}

    assert gather([part([2, 3]), part([0, 1])], num_prompts=4)["index"].tolist() == [0, 1, 2, 3]
    for outputs in ([part([0, 1])], []):
        with pytest.raises(RuntimeError, match="limit_predict_batches"):
            gather(outputs, num_prompts=4)


@pytest.mark.parametrize("every, steps, interval", [(5, 4, 1), (5, 8, 1), (5, 16, 1), (5, 32, 2), (5, 64, 4),
                                                    (5, 200, 5), (5, 60, 5), (5, 7, 1), (50, 1000, 50), (3, 97, 1)])
def test_the_logging_interval_logs_several_points_and_the_last_step(every, steps, interval):
    from infalign.pipeline.trainer import logging_interval

    n = logging_interval(every, steps)
    assert n == interval and steps % n == 0 and n <= every


def test_callback_without_target_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"callbacks\.mine"):
        trainers_of(tmp_path, "+callbacks.mine.every=3")


def test_trainer_class_and_every_setting_come_from_the_config(tmp_path):
    """``_target_`` is instantiated (a subclass is used), any L.Trainer argument added to the entry
    reaches every stage, and a stage's own arguments win."""
    _, trainers = trainers_of(tmp_path, "trainer._target_=test_trainer.MyTrainer", "+trainer.limit_test_batches=3",
                              "trainer.progress_bar=none", "callbacks.model_checkpoint=null")
    fit, predict = trainers.fit(max_steps=4), trainers.predict(limit_test_batches=1)
    assert isinstance(fit, MyTrainer) and isinstance(predict, MyTrainer)
    assert fit.limit_test_batches == 3 and predict.limit_test_batches == 1 and fit.max_steps == 4


@pytest.mark.slow
@pytest.mark.parametrize("save_optimizer", [True, False])
def test_checkpoint_holds_the_policy_only_and_the_optimizer_unless_switched_off(tmp_path, save_optimizer):
    """README, "What a checkpoint holds": the policy's weights (never the frozen reference or reward
    model), the optimizer state unless save_optimizer=false, the loops' progress."""
    _, trainers = trainers_of(tmp_path, "trainer.progress_bar=none", "checkpoint_every=1",
                              f"save_optimizer={str(save_optimizer).lower()}")
    algo = make_algorithm({"name": "rloo", "beta": 0.3, "lr": 0.05, "steps": 2, "group_size": 2,
                           "prompts_per_step": 2, "max_new_tokens": 4, "grad_clip": 0.0})
    world = tp.world()
    fit_policy(world, OmegaConf.create({"seed": 0}), algo, Identity(), tp.calibration_table(), trainers, None)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert set(ckpt["state_dict"]) == {f"policy.{k}" for k in world.policy.state_dict()}
    assert ("optimizer_states" in ckpt) == save_optimizer
    assert ckpt["global_step"] == 2


@pytest.mark.slow
def test_a_save_killed_midway_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    """Review finding: Lightning writes last.ckpt to a temp file in TMPDIR and moves it into place; across
    file systems (a local TMPDIR, a run dir on NFS / Lustre) the move copies into the existing last.ckpt,
    and a kill during the copy destroyed the only checkpoint. The move is made to fail half-way through
    its copy at the second save: the first save's checkpoint must still be there, whole, and alone
    (training/checkpoint.py writes beside the file and renames)."""
    import shutil
    import zipfile

    class Killed(Exception):
        pass

    moves = []

    def cross_device_move(src, dst, *args, **kwargs):  # shutil.move's copy fallback, killed half-way
        moves.append(dst)
        if len(moves) < 2:
            return real_move(src, dst, *args, **kwargs)
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            fout.write(fin.read()[: 1000])
        raise Killed("SIGKILL during the copy")

    real_move = shutil.move
    monkeypatch.setattr(shutil, "move", cross_device_move)
    _, trainers = trainers_of(tmp_path, "trainer.progress_bar=none", "checkpoint_every=1")
    algo = make_algorithm({"name": "rloo", "beta": 0.3, "lr": 0.05, "steps": 2, "group_size": 2,
                           "prompts_per_step": 2, "max_new_tokens": 4, "grad_clip": 0.0})
    with pytest.raises(Killed):
        fit_policy(tp.world(), OmegaConf.create({"seed": 0}), algo, Identity(), tp.calibration_table(), trainers,
                   None)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert len(moves) == 2 and [p.name for p in ckpt_dir.iterdir()] == ["last.ckpt"]
    assert zipfile.is_zipfile(ckpt_dir / "last.ckpt")
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=False)["global_step"] == 1


def test_predict_factory_is_what_the_pools_call(tmp_path):
    """A plain ``functools.partial(L.Trainer, ...)`` is a valid factory too (benchmarks, tests)."""
    make = functools.partial(L.Trainer, accelerator="cpu", devices=1, enable_model_summary=False)
    trainers = stage_trainers(make, [])
    assert trainers.predict().progress_bar_callback is None  # no bar callback -> bar off


def test_a_run_logs_which_devices_exist_once_not_once_per_stage(caplog):
    """Lightning logs "GPU available: ..., used: ..." at every trainer it builds (6-8 per run, the
    same lines); pipeline/trainer.py keeps each distinct line once per run (stage_trainers starts a
    run's count: the next job of a multirun shows them again), other lines untouched."""
    import logging

    def run(trainers: int, *extra: str) -> list[str]:
        caplog.clear()
        factories = stage_trainers(functools.partial(L.Trainer, accelerator="cpu", devices=1,
                                                     enable_model_summary=False), [])
        for _ in range(trainers):
            factories.predict()
        for message in extra:
            logging.getLogger("lightning.pytorch.utilities.rank_zero").info(message)
        return [r.getMessage() for r in caplog.records]

    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        lines = run(3, "GPU available: True (cuda), used: True", "`Trainer.fit` stopped.", "`Trainer.fit` stopped.")
        assert sum(m.startswith("GPU available: False") for m in lines) == 1, lines
        assert sum(m.startswith("TPU available:") for m in lines) == 1, lines
        assert "GPU available: True (cuda), used: True" in lines  # another device setup: shown
        assert lines.count("`Trainer.fit` stopped.") == 2
        lines = run(2)  # the next run (a multirun's next job, same process)
        assert sum(m.startswith("GPU available: False") for m in lines) == 1, lines


def test_deterministic_reaches_every_stage_trainer():
    """``deterministic`` (train.yaml's top-level key) goes to the sampling stages' trainers as well as
    to the fit's: Lightning applies it per trainer (``torch.use_deterministic_algorithms``), and the
    calibration pool is drawn before the fit trainer exists."""
    import torch

    seen = []

    def make(**kwargs):
        seen.append(kwargs.get("deterministic", "unset"))
        return L.Trainer(accelerator="cpu", devices=1, enable_model_summary=False, **kwargs)

    before = torch.are_deterministic_algorithms_enabled()
    try:
        trainers = stage_trainers(make, [], deterministic=True)
        trainers.predict()
        assert torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(False)
        trainers.fit(max_steps=1)
        assert seen == [True, True] and torch.are_deterministic_algorithms_enabled()
        seen.clear()
        plain = stage_trainers(make, [])  # None: Lightning's default, torch's setting left alone
        plain.predict()
        plain.fit(max_steps=1)
        assert seen == ["unset", "unset"]
    finally:
        torch.use_deterministic_algorithms(before)


class _Steps(L.LightningModule):
    """One weight, one optimizer step per batch of a loader of ``range(steps)``: the fit loop alone."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w - 1.0).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
@pytest.mark.parametrize("first, total", [(6, 10), (4, 10)], ids=["after-a-whole-loader", "mid-loader"])
def test_a_resumed_steps_bar_counts_optimizer_steps_of_max_steps(tmp_path, first, total):
    """Walkthrough finding: a resumed run's bar read ``100/39`` -- the stock bar counts the epoch's batch
    index against the batches *left* of max_steps. Bounded by steps, it shows global_step / max_steps,
    from the step the checkpoint holds: first ``first`` steps (a loader of ``first`` batches, as a run
    trained to ``algo.steps=first``; or ``first`` of ``total``), then resumed to ``total``."""
    seen = []

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            task = trainer.progress_bar_callback.progress.tasks[trainer.progress_bar_callback.train_progress_bar_id]
            seen.append((task.completed, task.total, trainer.global_step))

    def fit(steps, loader_len, ckpt=None):
        trainer = L.Trainer(max_steps=steps, logger=False, enable_model_summary=False, default_root_dir=tmp_path,
                            callbacks=[StepsProgressBar(), Probe(), ModelCheckpoint(tmp_path / "ckpt", save_last=True)])
        trainer.fit(_Steps(), torch.utils.data.DataLoader(range(loader_len), batch_size=None), ckpt_path=ckpt)

    fit(first, first if first == 6 else total)
    seen.clear()
    fit(total, total, tmp_path / "ckpt" / "last.ckpt")
    assert seen == [(step, total, step) for step in range(first + 1, total + 1)]


def test_the_steps_bar_counts_a_modules_rl_steps_through_a_fit(tmp_path):
    """Through a real fit: a module whose algorithm makes k = 2 optimizer steps per RL step (here each batch
    makes one, so the RL step advances every second batch) shows global_step // 2 of max_steps // 2."""
    from types import SimpleNamespace

    seen = []

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            task = trainer.progress_bar_callback.progress.tasks[trainer.progress_bar_callback.train_progress_bar_id]
            seen.append((task.completed, task.total))

    module = _Steps()
    module.algo = SimpleNamespace(optimizer_steps_per_batch=2)
    trainer = L.Trainer(max_steps=6, logger=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=tmp_path, callbacks=[StepsProgressBar(), Probe()])
    trainer.fit(module, torch.utils.data.DataLoader(range(6), batch_size=None))
    assert seen == [(step // 2, 3) for step in range(1, 7)]


def test_the_steps_bar_counts_rl_steps_of_k_optimizer_steps():
    """Review finding: counted in optimizer steps, a PPO run of algo.steps=3 (4 optimizer steps per RL step)
    showed 12/12 under a stage that announced 3 steps: the bar counts global_step // k of max_steps // k,
    k = the module's algo.optimizer_steps_per_batch (1 without an algo)."""
    from types import SimpleNamespace

    bar = StepsProgressBar()
    module = SimpleNamespace(algo=SimpleNamespace(optimizer_steps_per_batch=4))
    bar._trainer = SimpleNamespace(max_epochs=-1, max_steps=12, lightning_module=module)
    assert bar.total_train_batches == 3 and bar._per_step() == 4
    bar._trainer.lightning_module = SimpleNamespace()
    assert bar.total_train_batches == 12


@pytest.mark.skipif(__import__("torch").cuda.is_available() or __import__("torch").backends.mps.is_available(),
                    reason="needs a machine without a GPU")
def test_a_gpu_trainer_on_a_machine_without_one_says_trainer_cpu():
    """probe_trainer: ``trainer=gpu`` where no GPU is is a ConfigError naming ``trainer`` before compute with
    Lightning's own words and, since they do not say what to do, ``trainer=cpu`` (walkthrough finding)."""
    import functools

    import lightning as L

    from infalign.errors import ConfigError
    from infalign.pipeline.trainer import probe_trainer

    with pytest.raises(ConfigError) as err:
        probe_trainer(functools.partial(L.Trainer, accelerator="gpu", devices=1))
    assert err.value.key == "trainer" and str(err.value).endswith("this machine has no GPU: trainer=cpu)")
    with pytest.raises(ConfigError) as err:  # several processes: the CPU entry that runs them (review finding)
        probe_trainer(functools.partial(L.Trainer, accelerator="gpu", devices=2, strategy="ddp"))
    assert str(err.value).endswith("this machine has no GPU: trainer=ddp_cpu)")
    with pytest.raises(ConfigError) as err:  # Lightning's words for accelerator=cuda differ
        probe_trainer(functools.partial(L.Trainer, accelerator="cuda", devices=1))
    assert str(err.value).endswith("this machine has no GPU: trainer=cpu)")
    with pytest.raises(ConfigError) as err:  # another refusal gets no such advice
        probe_trainer(functools.partial(L.Trainer, accelerator="cpu", max_step=3))
    assert "trainer=cpu" not in str(err.value)
