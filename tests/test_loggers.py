"""pipeline/loggers.py: what every Lightning logger gets from a run, and the W&B logger's extras.

A logger is a config file only: ``tests/extra_conf/logger/recording.yaml`` adds a logger infalign has
no code for (``recording_logger.RecordingLogger``, standing in for TensorBoard, MLflow, ...) and a
whole ``infalign-train`` run logs to it.
"""

from __future__ import annotations

import copy
import json
import re
import time
import warnings
from pathlib import Path

import pytest
from lightning.pytorch.loggers import Logger

from infalign.apps.config import instantiate_logger
from infalign.errors import ConfigError
from infalign.pipeline import loggers
from infalign.pipeline.run_record import CI, Evaluation, RunRecord
from pipeline_helpers import compose_train
from recording_logger import RecordingLogger

EXTRA_CONF = f"hydra.searchpath=[file://{Path(__file__).parent / 'extra_conf'}]"


def a_record() -> RunRecord:
    ev = Evaluation(judges={"reward_model": {"kl": CI(0.1, 0.05, 0.2, 5), "bon4_win_rate": CI(0.6, 0.5, 0.7, 5)}},
                    ns=[4], procedure="bon", samples=[["a0 ->", "b1 b2"], ["a1 ->", "b3"]])
    return RunRecord(run_name="bon4-x", procedure="bon4", eval=ev)


class Extras(RecordingLogger):
    """A logger with run-level extras (implements loggers.RunLogger)."""

    def log_record(self, record, files) -> None:
        self.calls.append(("log_record", record.run_name, sorted(files)))

    def finish(self, exit_code: int) -> None:
        self.calls.append(("finish", exit_code))


def test_every_logger_gets_config_summary_and_finalize_through_the_generic_interface(tmp_path):
    logger = RecordingLogger(str(tmp_path))
    assert not isinstance(logger, loggers.RunLogger)
    loggers.start(logger, {"seed": 0})
    loggers.log_record(logger, a_record(), {"plot": tmp_path / "win_rates.png"})
    loggers.close(logger, 0)
    assert logger.calls == [("experiment",), ("log_hyperparams", {"seed": 0}),
                            ("log_metrics", a_record().wandb_summary(), None), ("finalize", "success")]
    failed = RecordingLogger(str(tmp_path))
    loggers.close(failed, 1)
    assert failed.calls == [("finalize", "failed")]
    loggers.close(None, 1)  # no logger (logger=none): nothing to do


def test_a_run_logger_also_gets_the_record_and_finishes_its_run(tmp_path):
    logger = Extras(str(tmp_path))
    assert isinstance(logger, loggers.RunLogger)
    loggers.log_record(logger, a_record(), {"plot": tmp_path / "p.png"})
    loggers.close(logger, 1)
    assert [c[0] for c in logger.calls] == ["log_metrics", "log_record", "finalize", "finish"]
    assert logger.calls[1] == ("log_record", "bon4-x", ["plot"]) and logger.calls[3] == ("finish", 1)


def test_a_new_logger_is_a_config_file(tmp_path):
    cfg = compose_train(tmp_path / "cache", tmp_path / "run", "logger=recording", EXTRA_CONF)
    logger = instantiate_logger(cfg.logger)
    assert isinstance(logger, RecordingLogger) and logger.save_dir_ == tmp_path / "run"


def test_wandb_logger_validates_mode_and_keeps_the_run_id_of_the_run_dir(tmp_path):
    with pytest.raises(ConfigError, match=r"logger\.mode"):
        loggers.RunWandbLogger(save_dir=str(tmp_path), mode="onlin")
    first = loggers.RunWandbLogger(save_dir=str(tmp_path), mode="offline")
    again = loggers.RunWandbLogger(save_dir=str(tmp_path), mode="offline")
    explicit = loggers.RunWandbLogger(save_dir=str(tmp_path), mode="offline", id="abc12345")
    assert first._wandb_init["id"] == again._wandb_init["id"] == (tmp_path / "wandb" / "run_id").read_text().strip()
    assert explicit._wandb_init["id"] == "abc12345"


def test_wandb_logger_passes_anonymous_only_when_asked(tmp_path):
    """Lightning hands wandb.init ``anonymous=None`` unless asked, which wandb warns about on every run
    (a deprecated setting): left out then; ``anonymous=True`` still reaches wandb as ``"allow"``."""
    plain = loggers.RunWandbLogger(save_dir=str(tmp_path), mode="offline")
    assert "anonymous" not in plain._wandb_init
    asked = loggers.RunWandbLogger(save_dir=str(tmp_path), mode="offline", anonymous=True)
    assert asked._wandb_init["anonymous"] == "allow"


@pytest.mark.slow
def test_wandb_logger_logs_summary_samples_plot_and_marks_a_failed_run(tmp_path):
    """An offline W&B run (a wandb service process: a few seconds)."""
    import matplotlib.pyplot as plt

    plot = tmp_path / "win_rates.png"
    plt.figure()
    plt.savefig(plot)
    plt.close("all")
    logger = loggers.RunWandbLogger(save_dir=str(tmp_path), mode="offline", project="infalign", name="bon4-x")
    loggers.start(logger, {"seed": 0})
    loggers.log_record(logger, a_record(), {"plot": plot})
    loggers.close(logger, 1)
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    files = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    assert any("media/table/eval/samples" in f for f in files), files
    assert any("media/images/eval/win_rates" in f for f in files), files
    # the wandb-core service writes the run file itself: in two loaded full-suite runs it held only
    # its 7-byte header right after finish() returned, so wait (up to 30 s) for the summary to land
    transaction_log = next(run.glob("run-*.wandb"))
    deadline = time.monotonic() + 30
    while b"eval/reward_model/bon4_win_rate" not in transaction_log.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b"eval/reward_model/bon4_win_rate" in transaction_log.read_bytes()
    assert "got exitcode: 1" in (run / "logs" / "debug.log").read_text()  # shown as failed


@pytest.mark.slow
def test_a_whole_run_logs_to_a_logger_added_as_a_config_file(tmp_path, tiny_cache):
    """``logger=recording`` (a file, no infalign code): the run's config, Lightning's training
    metrics, the summary and finalize("success") all reach it."""
    from infalign.apps import train as train_app

    cfg = compose_train(tiny_cache, tmp_path / "run", "logger=recording", EXTRA_CONF, "policy_cache=false",
                        "log_every_n_steps=1")
    metrics = train_app.run(cfg)
    calls = json.loads((tmp_path / "run" / "recording.json").read_text())
    kinds = [c[0] for c in calls]
    assert kinds[:2] == ["experiment", "log_hyperparams"]  # started before any stage
    assert calls[1][1]["run_name"] == metrics["run_name"] == "bon4-exp-t4-b20"  # the resolved config
    assert any(c[0] == "log_metrics" and any(k.startswith("train/") for k in c[1]) for c in calls)  # Lightning's
    summary = [c[1] for c in calls if c[0] == "log_metrics" and c[2] is None]
    assert summary and summary[-1] == RunRecord.from_json(metrics).wandb_summary()
    assert calls[-1] == ["finalize", "success"]
    from infalign.apps import train_stages

    assert isinstance(train_stages.instantiate_logger(cfg.logger), Logger)


@pytest.mark.parametrize("overrides, name", [([], "bon4-exp-t4-b20"), (["run_name=my-run"], "my-run"),
                                             # review (W&B): a seed sweep with a run_name named every run alike
                                             (["run_name=my-run", "seed=1"], "my-run-s1"),
                                             (["replica=1"], "bon4-exp-t4-b20-r1"),
                                             (["seed=2", "replica=1"], "bon4-exp-t4-b20-s2-r1"),
                                             # the pooled-calibration control of a method: its own name
                                             (["transform=identity", "calibration.scope=pooled", "seed=1"],
                                              "bon4-identity-b20-pooled-s1")])
def test_the_logger_entry_gets_the_runs_name_tags_and_group(tmp_path, monkeypatch, overrides, name):
    """``name: ${run_name}`` / ``tags: ${tags}`` / ``group: ${run_group:...}`` of conf/logger/wandb.yaml
    resolve, when the app instantiates the logger, to the run's name (set, or generated once the
    config is valid), the user's tags then the generated ones, and ``single`` outside a sweep. A seed
    other than 0 is in the name (the seeds of a sweep's group shared one name: a reviewer's find)."""
    from omegaconf import OmegaConf

    from infalign.apps import train as train_app
    from infalign.apps import train_stages

    seen = []

    def capture(node):
        seen.append(OmegaConf.to_container(node, resolve=True))
        raise RuntimeError("stop before compute")

    monkeypatch.setattr(train_stages, "instantiate_logger", capture)
    cfg = compose_train(tmp_path / "cache", tmp_path / "run", "logger=wandb", "tags=[mine]", *overrides)
    with pytest.raises(RuntimeError, match="stop before compute"):
        train_app.run(cfg)
    (logger_cfg,) = seen
    assert logger_cfg["name"] == name and logger_cfg["group"] == "single"
    # an A/A replica is told apart on a dashboard by its name and a tag
    seed = next((o.split("=")[1] for o in overrides if o.startswith("seed=")), "0")
    pooled = "calibration.scope=pooled" in overrides
    assert logger_cfg["tags"] == ["mine", "bon4", *(["identity"] if pooled else ["exp", "t=4"]), "rloo", "beta=20",
                                  *(["calibration=pooled"] if pooled else []), "toy", f"seed={seed}",
                                  *(["replica=1"] if "replica=1" in overrides else [])]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["run_name"] == name


@pytest.mark.parametrize("overrides, tags", [
    (["tags=baseline"], ["baseline", "bon4", "exp", "t=4", "rloo", "beta=20", "toy", "seed=0"]),
    # an offline baseline: no transform (it reads none; its config keeps the default exp(t=4)), its knob
    (["method=bon_sft", "algo.steps=4"], ["bon4", "bon_sft", "steps=4", "toy", "seed=0"]),
    (["method=ipo"], ["bon4", "ipo", "beta=0.25", "toy", "seed=0"]),  # kl_point=2 here
])
def test_tags_say_what_the_run_read(tmp_path, monkeypatch, overrides, tags):
    """Review findings (W&B): tags=baseline became one-letter tags; BoN-SFT and IPO runs were tagged with
    the transform they never read (a filter on 'exp' pulled them in) and BoN-SFT with no KL knob; runs of
    one transform family at several t shared their tags."""
    from infalign.apps import train as train_app

    cfg = compose_train(tmp_path / "cache", tmp_path / "run", *overrides)
    procedure, transform, algo = train_app.validate(cfg)
    train_app.name_run(cfg, procedure, transform, algo)
    assert list(cfg.tags) == tags


def test_validate_warns_of_a_transform_against_the_procedure_and_an_overridden_method_knob(tmp_path, monkeypatch,
                                                                                         caplog):
    """Review findings (config surface): toy_bon's exp(t=4) under procedure=won was accepted without a word
    (infalign-analyze warns); algo.steps given with method=bon_sft replaced the knob kl_point walks, so a
    kl_point sweep trained one policy five times."""
    from infalign.apps import train as train_app

    caplog.set_level("WARNING", logger="infalign.apps.train")
    train_app.validate(compose_train(tmp_path, tmp_path, "procedure=won"))
    assert "gives a lower won4 win rate" in caplog.text
    caplog.clear()
    train_app.validate(compose_train(tmp_path, tmp_path))  # exp(t=4) with best-of-4: as meant
    assert "win rate" not in caplog.text
    monkeypatch.setattr(train_app, "command_line_keys", lambda **_: {"method", "algo.steps"})
    train_app.validate(compose_train(tmp_path, tmp_path, "method=bon_sft"))
    assert "every kl_point trains the same policy" in caplog.text
    caplog.clear()
    train_app.validate(compose_train(tmp_path, tmp_path, "method=ipo"))  # algo.steps is not IPO's knob
    assert "kl_point" not in caplog.text
    # kl_point without a method entry that reads it: a sweep over it would train one policy
    monkeypatch.setattr(train_app, "command_line_keys", lambda **_: {"kl_point"})
    train_app.validate(compose_train(tmp_path, tmp_path))
    assert "nothing in this run's config reads it" in caplog.text
    caplog.clear()
    train_app.validate(compose_train(tmp_path, tmp_path, "method=identity"))
    assert "reads it" not in caplog.text


def test_a_command_line_key_the_data_source_never_reads_is_refused(tmp_path, monkeypatch):
    """Review finding (config surface): every data.* key of any entry is a known key, so +data.seed=5 on
    the toy world (its seed is data.toy.seed), +data.train_file=... or +reward.train.steps=5 were accepted
    and ignored, as data.toy.* with real data."""
    from infalign.apps import train as train_app
    from infalign.errors import ConfigError

    cfg = compose_train(tmp_path, tmp_path)
    for keys, bad in (({"data.seed"}, "data.seed"), ({"data.train_file", "seed"}, "data.train_file"),
                      ({"reward.train.steps"}, "reward.train.steps")):
        with pytest.raises(ConfigError, match=bad.replace(".", r"\.") + ".*toy world"):
            train_app.check_source_keys(cfg, keys)
    train_app.check_source_keys(cfg, {"data.train_prompts", "data.toy.seed", "seed", "algo.beta",
                                      "reward.train.enabled"})  # (enabled=true is refused on its own)
    from omegaconf import OmegaConf

    real = OmegaConf.create({"data": {"source": "tldr", "toy": {"seed": 3}}})
    with pytest.raises(ConfigError, match=r"data\.toy\.seed.*data\.source=tldr"):
        train_app.check_source_keys(real, {"data.toy.seed"})
    train_app.check_source_keys(real, {"data.seed", "data.train_file", "reward.train.steps"})


def test_the_run_group_resolves_without_a_run_mode(monkeypatch):
    """Review finding: `infalign-train --cfg job --resolve` crashed resolving the default logger's group
    (Hydra sets no mode for --cfg)."""
    from types import SimpleNamespace

    from hydra.core.hydra_config import HydraConfig

    from infalign.apps.config import run_group

    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: SimpleNamespace(mode=None)))
    assert run_group(None) == "single" and run_group("paper_bon") == "paper_bon"


@pytest.mark.slow
def test_a_kl_target_run_records_and_logs_the_beta_it_chose(tmp_path, tiny_cache):
    """With algo.kl_target the configured algo.beta is not the one trained with: the run's record
    (metrics.json config), its logger's config and its beta agree on the effective beta, and the tags
    name the knob (kl_target=<k>) instead of the unused beta."""
    from infalign.apps import train as train_app

    cfg = compose_train(tiny_cache, tmp_path / "run", "logger=recording", EXTRA_CONF, "algo.kl_target=0.2")
    metrics = train_app.run(cfg)
    beta = metrics["beta"]
    assert beta != 20.0 and metrics["config"]["algo"]["beta"] == pytest.approx(beta)
    calls = json.loads((tmp_path / "run" / "recording.json").read_text())
    logged = [c[1]["algo"]["beta"] for c in calls if c[0] == "log_hyperparams" and "algo" in c[1]]
    assert logged[0] == 20.0 and logged[-1] == pytest.approx(beta)  # started with the configured, then updated
    assert "kl_target=0.2" in metrics["config"]["tags"] and not any(t.startswith("beta=") for t in
                                                                      metrics["config"]["tags"])


@pytest.mark.slow
def test_a_logger_failing_after_the_run_is_recorded_keeps_the_results(tmp_path, tiny_cache, monkeypatch, caplog):
    """metrics.json is written (finished) before the logger gets the summary: a logger that raises
    then is reported, and the run's results stay finished (not replaced by a failure record)."""
    import logging

    from infalign.apps import train as train_app

    def broken(*args, **kwargs):
        raise ConnectionError("logging service down")

    monkeypatch.setattr(loggers, "log_record", broken)  # the summary, after metrics.json is written
    closed, close = [], loggers.close
    monkeypatch.setattr(loggers, "close", lambda logger, code: (closed.append(code), close(logger, code))[1])
    cfg = compose_train(tiny_cache, tmp_path / "run", "logger=recording", EXTRA_CONF)
    with caplog.at_level(logging.ERROR):
        metrics = train_app.run(cfg)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == written["status"] == "finished" and written["eval"] == metrics["eval"]
    assert "its logger failed: ConnectionError: logging service down" in caplog.text
    # and the logger is still closed: an unfinished W&B run is taken over by the process's next job
    assert closed == [0]


def test_a_resumed_runs_csv_keeps_the_history_and_the_summary_sits_at_the_last_step(tmp_path):
    """Lightning's CSV writer deletes an existing metrics.csv when it starts: a resume (a new logger on
    the run dir) erased the curve logged before the interruption. And the summary, logged without a
    step after the writer had flushed, was numbered step 0. Both, as conf/logger/csv.yaml configures it."""
    import csv as csv_module
    import dataclasses

    from lightning.pytorch.loggers import CSVLogger

    notices = []

    def attempt(steps, resume_step=None):
        logger = CSVLogger(save_dir=tmp_path, name="csv", version="")
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            loggers.start(logger, {"seed": 0}, resume_step=resume_step)
        notices.append([str(w.message) for w in seen if "will be deleted" in str(w.message)])
        for s in steps:
            logger.log_metrics({"train/reward": float(s)}, step=s)
        logger.save()
        return logger

    attempt([0, 1, 2, 3])  # interrupted after step 3, its last checkpoint at step 2
    logger = attempt([2, 3, 4], resume_step=2)  # the resume replays steps 2 and 3: no duplicates
    loggers.log_record(logger, dataclasses.replace(a_record(), steps=5), {})
    loggers.close(logger, 0)
    rows = list(csv_module.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows if r["train/reward"]] == [0, 1, 2, 3, 4]
    summary = [r for r in rows if r.get("eval/reward_model/kl")]
    assert len(summary) == 1 and int(summary[0]["step"]) == 5
    attempt([0, 1])  # a fresh start (no checkpoint) in the dir: a new history, as Lightning starts one
    rows = list(csv_module.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [0, 1]
    # Lightning's "previous log files ... will be deleted": not said on the resume, which keeps them;
    # said on the fresh start, which does delete them
    assert [bool(n) for n in notices] == [False, False, True], notices


def test_a_resume_reads_past_a_metrics_row_a_kill_cut_short(tmp_path):
    """Lightning writes metrics.csv in place, so a kill can leave a cut last row: the resume's history
    keeps the whole rows before the resumed step and drops the cut one (it raised AttributeError on the
    missing fields)."""
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(save_dir=tmp_path, name="csv", version="")
    (tmp_path / "csv").mkdir(parents=True)
    (tmp_path / "csv" / "metrics.csv").write_text("epoch,step,train/loss\n0,0,1.0\n0,1,0.9\n0")
    path, header, rows = loggers._csv_history(logger, 5)
    assert header == ["epoch", "step", "train/loss"] and [r["step"] for r in rows] == ["0", "1"]
    (tmp_path / "csv" / "metrics.csv").write_text("epoch,step,train/loss\n0,0,1.0\n0,1")  # cut after step
    assert [r["step"] for r in loggers._csv_history(logger, 5)[2]] == ["0"]


def test_a_resume_whose_csv_rewrite_fails_midway_keeps_the_history(tmp_path, monkeypatch):
    """Review finding: the resume's rewrite of metrics.csv (the rows before the resumed step) opened the file
    with "w": a failure or kill while writing it lost the whole curve logged before the interruption. It is
    written beside the file and renamed: a write that fails after the header leaves the old file."""
    import csv as csv_module

    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(save_dir=tmp_path, name="csv", version="")
    loggers.start(logger, {"seed": 0})
    for s in range(4):
        logger.log_metrics({"train/reward": float(s)}, step=s)
    logger.save()
    before = (tmp_path / "csv" / "metrics.csv").read_text()

    class DyingWriter(csv_module.DictWriter):
        def writerows(self, rows):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(loggers.csv, "DictWriter", DyingWriter)
    with pytest.raises(OSError, match="No space left"):
        loggers.start(CSVLogger(save_dir=tmp_path, name="csv", version=""), {"seed": 0}, resume_step=2)
    assert (tmp_path / "csv" / "metrics.csv").read_text() == before



class FakeRun:
    """What Lightning's W&B logger calls on a wandb run: ``log``, ``config.update`` (no service started)."""

    def __init__(self, run_id: str):
        self.id, self.logged = run_id, []
        self.config = type("Config", (), {"update": lambda *a, **k: None})()

    def log(self, data: dict) -> None:
        self.logged.append(data)


class OfflineWandb(loggers.RunWandbLogger):
    """A RunWandbLogger whose run is a :class:`FakeRun`, made with the id ``wandb.init`` would get."""

    @property
    def experiment(self):
        if self._experiment is None:
            self._experiment = FakeRun(self._wandb_init["id"])
        return self._experiment


def wandb_attempt(run_dir: Path, steps, resume_step=None, trains=False, **kwargs) -> FakeRun:
    logger = OfflineWandb(save_dir=str(run_dir), mode=kwargs.pop("mode", "offline"), **kwargs)
    loggers.start(logger, {"seed": 0}, resume_step=resume_step, trains=trains)
    for s in steps:
        logger.log_metrics({"train/reward": float(s)}, step=s)
    logger.log_metrics({"eval/kl": 0.1})  # the summary (no step): always sent
    return logger.experiment


def sent_steps(run: FakeRun) -> list:
    return [d.get("trainer/global_step") for d in run.logged]


def test_a_resumed_wandb_run_gets_each_training_step_once(tmp_path):
    """A resume continues the run dir's W&B run, which holds the steps the interrupted attempt logged after
    its checkpoint too. Lightning's W&B logger plots against ``trainer/global_step``: the resume sent those
    steps again, and the curve ran back to the checkpoint and forward again (a zig-zag). Steps at or before
    the last one the W&B run holds are not sent again."""
    first = wandb_attempt(tmp_path, range(6), trains=True)  # killed after step 5; its last checkpoint at 3
    resumed = wandb_attempt(tmp_path, range(3, 9), resume_step=3)
    assert resumed.id == first.id == (tmp_path / "wandb" / "run_id").read_text().strip()
    assert sent_steps(first) == [0, 1, 2, 3, 4, 5, None]
    assert sent_steps(resumed) == [6, 7, 8, None]  # (old: 3, 4, 5, 6, 7, 8: 3-5 twice)
    assert loggers.last_logged_step(tmp_path, first.id) == 8
    # resumed again, from an earlier checkpoint: still nothing twice
    assert sent_steps(wandb_attempt(tmp_path, range(2, 10), resume_step=2)) == [9, None]


def test_a_start_without_a_checkpoint_over_a_wandb_run_with_steps_opens_a_new_one(tmp_path):
    """A start without a checkpoint in a run dir whose W&B run was sent steps (``ckpt_path=last_or_new`` after an
    attempt killed before its first checkpoint, maybe with other settings) gets a new W&B id: continuing drew its
    curve over the old one, and a second fix that skipped the old steps instead showed another ``algo.beta``'s
    curve under the new config (review findings). One whose W&B run got no step (it failed before training)
    continues it; a kept finished run reaching a new logger keeps the id; a ``logger.id`` given is continued."""
    failed = wandb_attempt(tmp_path, range(3), trains=True)
    fresh = wandb_attempt(tmp_path, range(5), trains=True)
    assert fresh.id != failed.id and fresh.id == (tmp_path / "wandb" / "run_id").read_text().strip()
    assert sent_steps(fresh) == [0, 1, 2, 3, 4, None] and loggers.last_logged_step(tmp_path, fresh.id) == 4
    assert loggers.last_logged_step(tmp_path, failed.id) == 2  # the old run's record stays its own
    other = tmp_path / "other"
    before = wandb_attempt(other, [], trains=True)
    assert wandb_attempt(other, range(2), trains=True).id == before.id
    assert wandb_attempt(tmp_path, []).id == fresh.id  # log_kept: no curves follow
    given = wandb_attempt(tmp_path, range(3), trains=True, id="named0001")
    assert sent_steps(wandb_attempt(tmp_path, range(5), trains=True, id="named0001")) == [3, 4, None]
    assert given.id == "named0001"
    # ... also as Lightning's ``version`` (the dir's stored id left as it is); an empty id is none (review findings)
    before = (tmp_path / "wandb" / "run_id").read_text()
    assert wandb_attempt(tmp_path, range(5), trains=True, version="named0001").id == "named0001"
    assert (tmp_path / "wandb" / "run_id").read_text() == before
    assert not (tmp_path / "v").exists() and wandb_attempt(tmp_path / "v", [], version="v1").id == "v1"
    assert not (tmp_path / "v" / "wandb" / "run_id").exists()  # (no stray id written for a given version)
    stored = (tmp_path / "wandb" / "run_id").read_text().strip()
    empty = wandb_attempt(tmp_path, range(2), trains=True, id="")
    assert empty.id != stored and sent_steps(empty) == [0, 1, None]


@pytest.mark.slow
def test_the_new_id_of_a_fresh_start_is_the_wandb_runs(tmp_path):
    """The id :meth:`RunWandbLogger.begin_curves` replaces reaches ``wandb.init`` (an offline run: a wandb
    service process, a few seconds)."""
    (tmp_path / "wandb").mkdir()
    (tmp_path / "wandb" / "run_id").write_text("0ld1d000\n")
    loggers.steps_file(tmp_path, "0ld1d000").write_text("0\n1\n")
    logger = loggers.RunWandbLogger(save_dir=str(tmp_path), mode="offline", project="infalign")
    loggers.start(logger, {"seed": 0}, trains=True)
    logger.log_metrics({"train/reward": 1.0}, step=0)
    run_id = logger.experiment.id
    loggers.close(logger, 0)
    assert run_id != "0ld1d000" and run_id == (tmp_path / "wandb" / "run_id").read_text().strip()
    assert [p.name.rsplit("-", 1)[-1] for p in (tmp_path / "wandb").glob("offline-run-*")] == [run_id]
    assert loggers.last_logged_step(tmp_path, run_id) == 0


def test_the_steps_a_wandb_run_holds_are_its_own(tmp_path):
    """Review finding: the steps file was the run dir's, not its W&B run's: a resume into another W&B run
    (``logger.id`` given, or ``wandb/run_id`` deleted) dropped steps that run never got."""
    wandb_attempt(tmp_path, range(6), trains=True)
    assert sent_steps(wandb_attempt(tmp_path, range(3, 9), resume_step=3, id="named0001")) == [3, 4, 5, 6, 7, 8,
                                                                                                None]
    (tmp_path / "wandb" / "run_id").unlink()
    fresh = wandb_attempt(tmp_path, range(3, 9), resume_step=3)
    assert sent_steps(fresh) == [3, 4, 5, 6, 7, 8, None] and loggers.last_logged_step(tmp_path, fresh.id) == 8


def test_the_last_logged_step_counts_whole_lines_and_a_disabled_run_records_none(tmp_path):
    steps = loggers.steps_file(tmp_path, "abc")
    assert loggers.last_logged_step(tmp_path, "abc") is None  # never logged
    steps.parent.mkdir()
    steps.write_text("1\n2\n3\n1")  # a kill cut the line of step 12 (or 10, 11, ...)
    assert loggers.last_logged_step(tmp_path, "abc") == 3
    steps.write_text("50\n10")  # ... of step 100, the 2nd logged (log_every_n_steps=50): not read as 10
    assert loggers.last_logged_step(tmp_path, "abc") == 50
    steps.write_text("12")  # ... of the first step logged, 120: nothing whole (no step is skipped)
    assert loggers.last_logged_step(tmp_path, "abc") is None
    steps.write_text("\x00garbage\n")
    assert loggers.last_logged_step(tmp_path, "abc") is None
    disabled = tmp_path / "disabled"
    run = wandb_attempt(disabled, range(3), trains=True, mode="disabled")
    assert loggers.last_logged_step(disabled, run.id) is None and not list((disabled / "wandb").glob("steps-*"))


def test_a_kept_run_reaches_only_a_logger_that_has_not_recorded_it(tmp_path):
    """loggers.log_kept: a logger without the run gets config, summary, record and finish, and is
    marked in <run dir>/logged.json; a marked one gets nothing. A failing one is closed as failed, not
    marked (tried again next time), and its error propagates. A W&B dir without the mark is no proof
    (review finding: wandb makes it before reaching the server); a disabled W&B logger is never marked."""
    fresh = Extras(str(tmp_path))
    assert not loggers.logged_before(fresh, tmp_path)
    assert loggers.log_kept(fresh, a_record(), {"metrics": tmp_path / "metrics.json"}, {"seed": 0}, tmp_path)
    assert [c[0] for c in fresh.calls] == ["experiment", "log_hyperparams", "log_metrics", "log_record",
                                           "finalize", "finish"]
    assert json.loads((tmp_path / loggers.LOGGED).read_text()) == ["Extras"]
    again = Extras(str(tmp_path))
    assert loggers.logged_before(again, tmp_path) and not loggers.log_kept(again, a_record(), {}, {}, tmp_path)
    assert again.calls == []

    class Failing(RecordingLogger):
        def log_metrics(self, metrics, step=None) -> None:
            raise OSError("disk full")

    failing = Failing(str(tmp_path / "f"))
    with pytest.raises(OSError, match="disk full"):
        loggers.log_kept(failing, a_record(), {}, {}, tmp_path / "f")
    assert failing.calls[-1] == ("finalize", "failed") and not loggers.logged_before(failing, tmp_path / "f")

    wandb = loggers.RunWandbLogger(save_dir=str(tmp_path / "w"), mode="offline")
    (tmp_path / "w" / "wandb" / "offline-run-20261204_000000-abcd1234").mkdir(parents=True)
    assert not loggers.logged_before(wandb, tmp_path / "w")  # a dir a failed attempt may have left
    loggers.mark_logged(wandb, tmp_path / "w")
    assert loggers.logged_before(wandb, tmp_path / "w")
    disabled = loggers.RunWandbLogger(save_dir=str(tmp_path / "d"), mode="disabled")
    loggers.mark_logged(disabled, tmp_path / "d")
    assert not (tmp_path / "d" / loggers.LOGGED).exists() and not loggers.logged_before(disabled, tmp_path / "d")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / loggers.LOGGED).write_text("{not json")  # unreadable: as if none had it
    assert not loggers.logged_before(fresh, tmp_path / "x")
    from lightning.pytorch.loggers import CSVLogger

    csv = CSVLogger(save_dir=str(tmp_path / "c"), name="csv", version="")
    assert not loggers.logged_before(csv, tmp_path / "c")
    (tmp_path / "c" / "csv").mkdir(parents=True)
    (tmp_path / "c" / "csv" / "metrics.csv").write_text("step,loss\n0,1.0\n1,0.5\n")
    # (review finding: a CSV file without the mark was started over -- Lightning's writer deletes it)
    assert loggers.logged_before(csv, tmp_path / "c") and not loggers.log_kept(csv, a_record(), {}, {}, tmp_path / "c")
    assert (tmp_path / "c" / "csv" / "metrics.csv").read_text() == "step,loss\n0,1.0\n1,0.5\n"


@pytest.mark.slow
def test_a_finished_run_kept_as_it_is_is_logged_to_a_new_logger_once(tiny_cache, tmp_path):
    """Left from a review: re-running a finished run (ckpt_path=last_or_new) with a logger it was not
    run with kept the record and logged nothing -- a sweep run with logger=none, then again with
    logger=wandb for the dashboards, reached no dashboard. Now the kept record goes to that logger once
    (its summary: the same numbers as the record), and not again."""
    from infalign.apps import train as train_app

    run_dir = tmp_path / "run"

    def run(*overrides):
        return train_app.run(compose_train(tiny_cache, run_dir, "policy_cache=false", *overrides))

    first = run("logger=none")
    record = (run_dir / "metrics.json").read_bytes()
    kept = run("logger=csv", "ckpt_path=last_or_new")
    assert kept["eval"] == first["eval"] and (run_dir / "metrics.json").read_bytes() == record
    logged = (run_dir / "csv" / "metrics.csv").read_text()
    summary = RunRecord.from_json(first).wandb_summary()
    header, row = logged.splitlines()[0].split(","), logged.splitlines()[-1].split(",")
    assert float(row[header.index("eval/reward_model/kl")]) == pytest.approx(summary["eval/reward_model/kl"])
    run("logger=csv", "ckpt_path=last_or_new")  # has the run already: not logged twice
    assert (run_dir / "csv" / "metrics.csv").read_text() == logged
    run("logger=recording", EXTRA_CONF, "ckpt_path=last")
    calls = json.loads((run_dir / "recording.json").read_text())
    assert [c[0] for c in calls] == ["experiment", "log_hyperparams", "log_metrics", "finalize"]
    logged_config = dict(calls[1][1])
    assert logged_config.pop("logger")["_target_"].endswith("RecordingLogger")
    # the run's own config (its ckpt_path, a kl_target's beta), not this invocation's: under this logger
    assert logged_config == json.loads(json.dumps({k: v for k, v in first["config"].items() if k != "logger"}))
    assert calls[2][1] == pytest.approx(summary) and calls[3][1] == "success"
    assert json.loads((run_dir / loggers.LOGGED).read_text()) == ["CSVLogger", "RecordingLogger"]
    run("logger=none", "ckpt_path=last_or_new", "algo.steps=3")  # trained further: a new record, no logger has it
    assert not (run_dir / loggers.LOGGED).exists()
    other = tmp_path / "other"  # a run logged to the end while it ran is marked too: a kept re-run skips it
    train_app.run(compose_train(tiny_cache, other, "policy_cache=false", "logger=csv"))
    logged = (other / "csv" / "metrics.csv").read_text()
    train_app.run(compose_train(tiny_cache, other, "policy_cache=false", "logger=csv", "ckpt_path=last_or_new"))
    assert (other / "csv" / "metrics.csv").read_text() == logged


def test_runs_added_under_a_sweep_join_its_group(tmp_path, monkeypatch):
    """An unnamed multirun's W&B group is ``multirun-<sweep dir name>``; runs added in a dir under it
    (``hydra.sweep.dir=<sweep dir>/more``, as README and the sweep guard advise) join the sweep's group --
    they were ``multirun-more``, one group for the extensions of unrelated sweeps. A named sweep keeps
    its name."""
    from types import SimpleNamespace

    from hydra.core.hydra_config import HydraConfig

    from infalign.apps.config import run_group

    a, b = tmp_path / "sweepA", tmp_path / "sweepB"
    for d in (a, b):
        (d / "more").mkdir(parents=True)
        (d / "multirun.yaml").write_text("{}\n")  # what Hydra's sweeper writes into a sweep dir
    current: dict = {}
    hydra_cfg = lambda: SimpleNamespace(mode=SimpleNamespace(name="MULTIRUN"),  # noqa: E731
                                        sweep=SimpleNamespace(dir=str(current["dir"])))
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(hydra_cfg))
    groups = {}
    for d in (a, a / "more", b / "more", tmp_path / "plain"):
        current["dir"] = d
        groups[d.relative_to(tmp_path).as_posix()] = run_group(None)
    assert {k: v.rsplit("-", 1)[0] for k, v in groups.items()} == {
        "sweepA": "multirun-sweepA", "sweepA/more": "multirun-sweepA", "sweepB/more": "multirun-sweepB",
        "plain": "multirun-plain"}
    assert groups["sweepA"] == groups["sweepA/more"]
    assert run_group("paper_bon") == "paper_bon"
    # two sweeps whose dirs end alike are two groups (W&B walkthrough: outputs/expA/sweep and outputs/expB/sweep
    # were one, multirun-sweep): the name and a hash of the path
    alike = []
    for d in (tmp_path / "expA" / "sweep", tmp_path / "expB" / "sweep"):
        d.mkdir(parents=True)
        current["dir"] = d
        alike.append(run_group(None))
    assert alike[0] != alike[1] and all(re.fullmatch(r"multirun-sweep-[0-9a-f]{6}", g) for g in alike)


def test_a_stored_wandb_run_id_has_64_random_bits(tmp_path):
    """W&B walkthrough: 8 hex characters (32 bits) collide at ~1 % in a project of 10,000 runs, and resume="allow"
    would merge the two runs; 16 (64 bits): ~3e-12."""
    ids = {loggers.stored_run_id(tmp_path / str(i)) for i in range(50)}
    assert len(ids) == 50 and all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)


def test_a_multirun_group_is_the_same_through_a_symlink_or_a_relative_path(tmp_path, monkeypatch):
    """multirun_group hashes the sweep's real path: infalign-report run from another dir, or on a link to the
    sweep, names the group infalign-train's jobs used."""
    from infalign.infra.sweeps import multirun_group

    sweep = tmp_path / "runs" / "sweep"
    (sweep / "more").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}\n")
    (tmp_path / "link").symlink_to(sweep)
    monkeypatch.chdir(tmp_path / "runs")
    group = multirun_group(sweep)
    assert multirun_group(Path("sweep")) == multirun_group(tmp_path / "link") == multirun_group(sweep / "more") == group


def test_a_wandb_run_records_its_group_where_the_report_reads_it(tmp_path):
    """A kept run logged by a later re-run has no logger config in its record: the group the re-run's logger used
    is written to <run dir>/wandb/group, which report/wandb_run reads (review: a sweep moved, or reached through
    another path, named another group than its jobs'). A disabled run records none."""
    from infalign.report.wandb_run import recorded_wandb

    wandb_attempt(tmp_path / "a", [], group="multirun-sweep-abc123", project="myproj", entity="lab")
    assert loggers.group_file(tmp_path / "a") == tmp_path / "a" / "wandb" / "group"
    # (and its project and entity: the report's run had gone to project 'infalign', cut off from its runs)
    assert recorded_wandb(tmp_path / "a") == {"group": "multirun-sweep-abc123", "project": "myproj", "entity": "lab"}
    loggers.group_file(tmp_path / "a").write_text("multirun-old\n")  # (written before the file held JSON)
    assert recorded_wandb(tmp_path / "a") == {"group": "multirun-old"}
    wandb_attempt(tmp_path / "d", [], group="g", mode="disabled")
    assert not loggers.group_file(tmp_path / "d").exists()


class FakeSummary(dict):
    """A W&B run summary that records what it was told: updates, and deletions (W&B sends a key's removal)."""

    def __init__(self, held=()):
        super().__init__({k: 0.0 for k in held})
        self.removed: list[str] = []

    def __delitem__(self, key):
        self.removed.append(key)
        self.pop(key, None)


def test_a_continued_runs_wandb_summary_loses_the_record_keys_its_new_record_lacks(tmp_path):
    """W&B review: W&B merges a summary update key by key, so a run continued with other eval settings showed the
    earlier policy's bon8 columns and theory beside the new numbers. The record keys an earlier attempt sent
    (recorded in the run dir; offline the run cannot list them) or that the resumed run's summary shows are
    removed when the new record lacks them; training curves' keys stay."""
    first = a_record()
    first.kl_ratio = 0.9
    logger = OfflineWandb(save_dir=str(tmp_path), mode="offline")
    loggers.start(logger, {"seed": 0})
    logger.experiment.summary = FakeSummary()
    logger.log_record(first, {})
    sent = set(first.wandb_summary())
    assert logger.experiment.summary.removed == [] and sent <= set(logger.experiment.summary)
    second = copy.deepcopy(first)
    second.eval.judges["reward_model"].pop("bon4_win_rate")
    second.kl_ratio = None
    resumed = OfflineWandb(save_dir=str(tmp_path), mode="offline")
    loggers.start(resumed, {"seed": 0}, resume_step=3)
    resumed.experiment.summary = FakeSummary(held=["train/kl", "eval/gold/bon8_win_rate"])  # (online: shown)
    resumed.log_record(second, {})
    removed = set(resumed.experiment.summary.removed)
    assert removed == (sent - set(second.wandb_summary())) | {"eval/gold/bon8_win_rate"}
    assert "eval/reward_model/bon4_win_rate" in removed and "eval/kl_ratio_to_theory" in removed
    assert "train/kl" in resumed.experiment.summary  # (a training curve's key: the trainer's)
