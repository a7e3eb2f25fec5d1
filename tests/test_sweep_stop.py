"""Stopping a parallel sweep without losing its running jobs' records (apps/sweep_stop.py): the parent's
one-time handlers and their forwarding, a job's one-shot handlers, the stop marker and ``NOT_STARTED``, the
exit status -- and, end to end, a real joblib sweep stopped by a SIGINT to its parent alone, then continued."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from forked_cli import finished, train_cli
from infalign.apps import hydra_callbacks, sweep_stop
from infalign.apps import train as train_app
from infalign.errors import Terminated
from infalign.infra.sweeps import NOT_STARTED, STOP_MARKER, mark_not_started, request_stop, stop_requested
from pipeline_helpers import TINY_RUN, TINY_WORLD
from test_run_record import finished_json

# A child that records the signals it gets (one line each) and lives until told to end.
SIGNAL_RECORDER = """
import signal, sys, time
out = open(sys.argv[1], "a")
def note(signum, frame):
    out.write(f"{signum}\\n"); out.flush()
signal.signal(signal.SIGINT, note); signal.signal(signal.SIGTERM, note)
print("ready", flush=True)
time.sleep(30)
"""


def _recorder(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / "signals.txt"
    child = subprocess.Popen([sys.executable, "-c", SIGNAL_RECORDER, str(log)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    return child, log


def _received(log: Path, count: int, timeout: float = 10.0) -> list[int]:
    """The signals the recorder got, once it got ``count`` (or ``timeout`` passed: a check that none came)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [int(x) for x in log.read_text().split()] if log.exists() else []
        if len(got) >= count:
            return got
        time.sleep(0.02)
    return [int(x) for x in log.read_text().split()] if log.exists() else []


@pytest.fixture
def restore_signals():
    """Every test here installs handlers: put the suite's back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)
    sweep_stop.CURRENT.clear()


def test_the_parent_takes_the_first_signal_forwards_it_to_running_jobs_and_aborts_on_the_second(tmp_path,
                                                                                                 restore_signals):
    """The first SIGINT writes the stop marker and is forwarded once to each running job of the sweep (its pid in
    the job's run lock, a child of this process); it raises nothing (joblib would abort and SIGKILL the jobs). The
    second restores the previous handlers and raises, as Ctrl-C did before (the abort)."""
    child, log = _recorder(tmp_path)
    try:
        for job, pid in (("0", child.pid), ("1", ""), ("2", os.getpid()), ("3", 999_999_999)):
            (tmp_path / job).mkdir()
            (tmp_path / job / sweep_stop.RUN_LOCK).write_text(f"{pid}\n")  # (ended; this process; no process)
        stop = sweep_stop.ParallelStop(tmp_path)
        stop.install()
        sweep_stop.CURRENT.append(stop)
        os.kill(os.getpid(), signal.SIGINT)  # (delivered here before the next line)
        assert stop_requested(tmp_path) == {"signal": "SIGINT", "by": "the sweep's command"}
        assert sweep_stop.parent_stop_signal() == "SIGINT" and not sweep_stop.parent_aborted()
        assert _received(log, 1) == [signal.SIGINT]  # the running job alone, once
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert sweep_stop.parent_aborted() and signal.getsignal(signal.SIGINT) is not stop.handle
        assert _received(log, 2, timeout=0.5) == [signal.SIGINT]  # (the abort forwards nothing: joblib kills them)
    finally:
        child.kill()
        child.wait()


def test_a_sigterm_to_the_parent_is_forwarded_as_sigterm_and_the_second_raises_terminated(tmp_path, restore_signals):
    child, log = _recorder(tmp_path)
    try:
        (tmp_path / "0").mkdir()
        (tmp_path / "0" / sweep_stop.RUN_LOCK).write_text(f"{child.pid}\n")
        stop = sweep_stop.ParallelStop(tmp_path)
        stop.install()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal_name == "SIGTERM" and stop_requested(tmp_path)["signal"] == "SIGTERM"
        assert _received(log, 1) == [signal.SIGTERM]
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        child.kill()
        child.wait()


def test_a_jobs_one_shot_handlers_raise_once_and_ignore_the_forwarded_copy(restore_signals):
    """A terminal's Ctrl-C reaches a parallel sweep's job twice (from the terminal, and forwarded by the parent):
    the first raises as Python's default handler does, the second -- arriving while the job writes its record --
    is ignored; SIGTERM raises Terminated; the handlers before are restored."""
    before = signal.getsignal(signal.SIGINT)
    written = []
    with sweep_stop.one_shot_stop() as received:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # (the record is being written: nothing raised)
        os.kill(os.getpid(), signal.SIGTERM)
        written.append("record")
    assert written == ["record"] and received == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is before
    with sweep_stop.one_shot_stop() as received, pytest.raises(Terminated):
        os.kill(os.getpid(), signal.SIGTERM)
    assert received == [signal.SIGTERM]


def test_running_job_pids_are_this_processes_children_holding_a_run_lock(tmp_path):
    child, _ = _recorder(tmp_path)
    try:
        for job, pid in (("0", child.pid), ("a/1", child.pid), ("2", "x"), ("3", os.getppid())):
            (tmp_path / job).mkdir(parents=True)
            (tmp_path / job / sweep_stop.RUN_LOCK).write_text(f"{pid}\n")
        assert sweep_stop.running_job_pids(tmp_path) == [child.pid]  # (once; not the parent's pid; not "x")
    finally:
        child.kill()
        child.wait()
    assert sweep_stop.running_job_pids(tmp_path) == []  # (a reaped child: gone)


def test_the_run_lock_holds_the_runs_pid_while_it_runs_and_a_refused_run_leaves_it(tmp_path):
    from infalign.errors import ConfigError

    lock = tmp_path / sweep_stop.RUN_LOCK
    with train_app.run_dir_lock(tmp_path):
        assert lock.read_text() == f"{os.getpid()}\n"
        # a second run on the dir (another open file description: flock refuses it) must not erase the pid
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's status says
            try:
                with train_app.run_dir_lock(tmp_path):
                    os._exit(3)
            except ConfigError:
                os._exit(0 if lock.read_text() == f"{os.getppid()}\n" else 4)
            os._exit(5)
        assert os.waitpid(pid, 0)[1] >> 8 == 0
    assert lock.read_text() == ""


def test_a_job_of_a_stopped_sweep_is_not_started_and_a_dir_with_a_record_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_stop, "sweep_dir", lambda: tmp_path)
    monkeypatch.setattr(train_app, "train_job", lambda cfg: pytest.fail("a job of a stopped sweep ran"))
    request_stop(tmp_path, "SIGTERM", "job 3")
    request_stop(tmp_path, "SIGINT", "job 4")  # (the first request stays)
    cfg = OmegaConf.create({"paths": {"run_dir": str(tmp_path / "5")}})
    assert train_app.parallel_job(cfg, []) is None
    assert (tmp_path / "5" / NOT_STARTED).read_text() == "not started: the sweep was stopped (SIGTERM from job 3)\n"
    assert hydra_callbacks.job_failure(tmp_path / "5") == "not started: the sweep was stopped (SIGTERM from job 3)"
    (tmp_path / "6").mkdir()
    (tmp_path / "6" / "metrics.json").write_text("{}")
    mark_not_started(tmp_path / "6", stop_requested(tmp_path))
    assert not (tmp_path / "6" / NOT_STARTED).exists()


@pytest.mark.parametrize("stop, name", [(KeyboardInterrupt, "SIGINT"), (Terminated, "SIGTERM")])
def test_an_interrupted_job_returns_to_the_launcher_and_stops_the_sweep(tmp_path, monkeypatch, stop, name):
    """Raising would make joblib abort and SIGKILL the sweep's other running jobs: the job (recorded by run())
    returns no objective and writes the stop marker, so no new job starts even when the signal reached it alone;
    a failure still raises, and writes none."""
    monkeypatch.setattr(sweep_stop, "sweep_dir", lambda: tmp_path)
    cfg = OmegaConf.create({"paths": {"run_dir": str(tmp_path / "2")}})

    def interrupted(_):
        (tmp_path / "2").mkdir(exist_ok=True)
        (tmp_path / "2" / "metrics.json").write_text('{"status": "interrupted"}')  # (as run() records it)
        raise stop

    monkeypatch.setattr(train_app, "train_job", interrupted)
    assert train_app.parallel_job(cfg, []) is None
    assert stop_requested(tmp_path) == {"signal": name, "by": "job 2"}
    assert not (tmp_path / "2" / NOT_STARTED).exists()
    (tmp_path / STOP_MARKER).unlink()
    monkeypatch.setattr(train_app, "train_job", lambda cfg: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        train_app.parallel_job(cfg, [])
    assert stop_requested(tmp_path) is None
    monkeypatch.setattr(train_app, "train_job", lambda cfg: 0.5)  # a signal taken without an exception reaching
    assert train_app.parallel_job(cfg, [signal.SIGTERM]) == 0.5  # here (Lightning's handling): the sweep stops
    assert stop_requested(tmp_path)["signal"] == "SIGTERM"


def test_a_job_stopped_before_it_could_record_anything_is_not_started(tmp_path, monkeypatch, caplog):
    """Review: a signal in the few ms while a job takes its dir (lock, checks: before run() can record) logged
    "stopped by SIGINT and recorded", left no record, and the closing line and the report said the job was
    killed. It is now marked not started (the continue runs it), and the log says so."""
    monkeypatch.setattr(sweep_stop, "sweep_dir", lambda: tmp_path)
    cfg = OmegaConf.create({"paths": {"run_dir": str(tmp_path / "4")}})

    def taking_its_dir(_):
        (tmp_path / "4").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(train_app, "train_job", taking_its_dir)
    with caplog.at_level("WARNING"):
        assert train_app.parallel_job(cfg, []) is None
    assert (tmp_path / "4" / NOT_STARTED).read_text() == "not started: the sweep was stopped (SIGINT from job 4)\n"
    assert "before it started: not started" in caplog.text and "and recorded" not in caplog.text
    # a finished job kept by a continue, stopped while it took its dir: its record stands (and counts as finished)
    done = tmp_path / "5"
    done.mkdir()
    (done / "metrics.json").write_text(json.dumps(finished_json()))
    os.utime(done / "metrics.json", (time.time() - 60, time.time() - 60))
    (tmp_path / STOP_MARKER).unlink()
    monkeypatch.setattr(train_app, "train_job", lambda cfg: (_ for _ in ()).throw(KeyboardInterrupt))
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert train_app.parallel_job(OmegaConf.create({"paths": {"run_dir": str(done)}}), []) is None
    assert "before it started: its earlier record stands" in caplog.text and not (done / NOT_STARTED).exists()
    assert sweep_stop.stop_outcome(tmp_path / "nonexistent", 0.0)["not_started"] == 0
    (tmp_path / "4" / ".hydra").mkdir()
    assert sweep_stop.stop_outcome(tmp_path, 0.0)["not_started"] == 1


@pytest.mark.parametrize("name, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_stopped_parallel_sweep_exits_as_a_stopped_command(monkeypatch, capsys, restore_signals, name, code):
    """The jobs returned (nothing raised) or the failed-jobs callback listed them (exit 1): the command still
    exits 130 / 143 and says how to continue; after a second signal it says the jobs may have left no record."""
    stop = sweep_stop.ParallelStop(Path("/nonexistent"))
    stop.signal_name = name
    sweep_stop.CURRENT.append(stop)
    monkeypatch.setattr(sys, "argv", ["infalign-train", "-m"])
    for outcome in (None, SystemExit("2 of 4 jobs failed: ...")):
        def hydra_main(outcome=outcome):
            if outcome is not None:
                raise outcome

        monkeypatch.setattr(train_app, "hydra_main", hydra_main)
        with pytest.raises(SystemExit) as exit_info:
            train_app.main()
        assert exit_info.value.code == code  # (review: "the same command" alone made a new timestamped dir)
        assert "the same command with hydra.sweep.dir=/nonexistent ckpt_path=last_or_new" in capsys.readouterr().err
    stop.aborted = True
    with pytest.raises(SystemExit):
        train_app.main()
    assert "may have left no record" in capsys.readouterr().err


def test_the_callback_acts_under_the_joblib_launcher_alone_and_clears_a_stale_marker(tmp_path, restore_signals):
    callback = hydra_callbacks.GracefulStop()
    basic = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)},
                                        "launcher": {"_target_": "hydra._internal.core_plugins.basic_launcher."
                                                                 "BasicLauncher"}}})
    callback.on_multirun_start(basic)
    assert sweep_stop.CURRENT == []
    request_stop(tmp_path, "SIGINT", "an earlier invocation")
    joblib = OmegaConf.merge(basic, {"hydra": {"launcher": {"_target_": "hydra_plugins.hydra_joblib_launcher."
                                                                        "joblib_launcher.JoblibLauncher"}}})
    callback.on_multirun_start(joblib)
    assert stop_requested(tmp_path) is None and signal.getsignal(signal.SIGINT) == sweep_stop.CURRENT[0].handle
    callback.on_multirun_end(joblib)
    assert signal.getsignal(signal.SIGINT) != sweep_stop.CURRENT[0].handle


def _worker_sigint_ignored(_) -> bool:
    return signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN


@pytest.mark.slow  # (starts loky workers: ~3 s)
def test_the_sweeps_workers_ignore_the_stop_signals_outside_a_job(restore_signals):
    """Review: a terminal's Ctrl-C reaches every process of its group, and a loky worker idle (a sweep with fewer
    jobs than n_jobs, its tail) or between jobs raised KeyboardInterrupt in its queue -- a broken pool, which made
    joblib abort and SIGKILL the running jobs. Within the multirun the loky backend gives its workers
    ignore_stop_signals as their initializer (a job's one-shot handlers take the signals within a job, and put
    SIG_IGN back); outside it, joblib's own backend again."""
    from joblib import Parallel, delayed
    from joblib.parallel import BACKENDS

    before = BACKENDS["loky"]
    sweep_stop.use_stoppable_backend()
    try:
        assert Parallel(n_jobs=2, backend="loky")(delayed(_worker_sigint_ignored)(i) for i in range(2)) == [True] * 2
    finally:
        sweep_stop.restore_backend()
    assert BACKENDS["loky"] is before
    with sweep_stop.one_shot_stop():  # (in a worker: SIG_IGN before, and after)
        pass
    sweep_stop.ignore_stop_signals()
    with sweep_stop.one_shot_stop():
        assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_job_that_finds_the_sweep_stopped_once_it_holds_its_dir_does_not_run(tmp_path, monkeypatch):
    """Review: the stop marker was read before the run lock was taken, so a job between the two -- its pid not yet
    in its lock, so not signalled by the parent -- ran in full after the stop. run() looks again under the lock."""
    from pipeline_helpers import compose_train

    monkeypatch.setattr(sweep_stop, "parallel_job", lambda: True)
    monkeypatch.setattr(sweep_stop, "sweep_dir", lambda: tmp_path)
    request_stop(tmp_path, "SIGINT", "the sweep's command")
    run_dir = tmp_path / "0"
    cfg = compose_train(tmp_path / "cache", run_dir)
    with pytest.raises(sweep_stop.NotStarted):
        train_app.run(cfg)
    assert not (run_dir / "metrics.json").exists()
    monkeypatch.setattr(train_app, "train_job", train_app.run)  # (the marker appears after parallel_job's look)
    looks = []

    def first_look_before_the_stop(where):
        looks.append(where)
        return None if len(looks) == 1 else stop_requested(where)

    monkeypatch.setattr(train_app, "stop_requested", first_look_before_the_stop)
    assert train_app.parallel_job(cfg, []) is None and len(looks) == 2
    assert (run_dir / NOT_STARTED).exists() and not (run_dir / "metrics.json").exists()


def test_the_closing_line_says_what_the_records_say_and_a_jobs_own_stop_sets_the_exit_status(tmp_path, capsys,
                                                                                            monkeypatch,
                                                                                            restore_signals):
    """Review: with n_jobs=1 (jobs in the parent, under their one-shot handlers) or a signal to one worker, the
    parent's handlers saw no signal: the command exited 1 with "k of n jobs failed". The stop a job requested now
    sets the exit status (143 for SIGTERM), and the line counts the records -- interrupted this time, not started,
    failed this time (a continue fails them again), left none -- instead of asserting every running job was
    recorded (a job killed meanwhile is not)."""
    stop = sweep_stop.ParallelStop(tmp_path)
    sweep_stop.CURRENT.append(stop)
    for job, status in (("0", "interrupted"), ("1", None), ("2", "not started"), ("3", "finished"),
                        ("4", "old interrupted"), ("5", "failed"), ("6", "finished"), ("7", "finished")):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        if status == "not started":
            (tmp_path / job / NOT_STARTED).write_text("not started\n")
        elif status is not None:
            record = finished_json() if status == "finished" else {"status": status.split()[-1], "error": "x"}
            (tmp_path / job / "metrics.json").write_text(json.dumps(record))
    old = tmp_path / "4" / "metrics.json"
    os.utime(old, (stop.started - 60, stop.started - 60))  # (an earlier invocation's record)
    # review: a finished run continued (last_or_new) and interrupted keeps its record; this attempt's is beside it
    # (FAILED_ATTEMPT) -- this invocation's counts, an earlier invocation's does not
    for job, when in (("6", stop.started + 1), ("7", stop.started - 60)):
        attempt = tmp_path / job / "metrics.failed.json"
        attempt.write_text(json.dumps({"status": "interrupted", "error": "x"}))
        os.utime(attempt, (when, when))
    request_stop(tmp_path, "SIGTERM", "job 0")
    stop.finish()
    assert stop.signal_name == "SIGTERM" and sweep_stop.parent_stop_signal() == "SIGTERM"
    assert stop.outcome["interrupted"] == 2 and stop.outcome["no_record"] == 1 and stop.outcome["finished"] == 2
    assert stop.outcome["not_started"] == 2  # (NOT_STARTED, and the earlier invocation's unfinished record)
    monkeypatch.setattr(sys, "argv", ["infalign-train", "-m"])
    monkeypatch.setattr(train_app, "hydra_main", lambda: None)
    with pytest.raises(SystemExit) as exit_info:
        train_app.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 143 and ("2 running jobs recorded as interrupted, 2 not started, 1 failed (a "
                                            "continue runs it again: the report lists why), 1 left no record (killed: "
                                            "its checkpoints stand), 2 finished") in err
    # review: after an exception (a worker killed after the stop breaks the pool) Hydra skips the end callbacks:
    # main() counts the records itself
    stop.outcome = None

    def broken_pool():
        raise KeyboardInterrupt

    monkeypatch.setattr(train_app, "hydra_main", broken_pool)
    with pytest.raises(SystemExit):
        train_app.main()
    assert "2 running jobs recorded as interrupted" in capsys.readouterr().err


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_a_parallel_sweep_stopped_by_sigint_to_its_parent_records_its_running_jobs_and_continues(tiny_cache,
                                                                                                tmp_path):
    """End to end under ``hydra/launcher=local_parallel`` (2 workers, 3 jobs): a SIGINT to the parent alone (as
    ``kill -INT``; a terminal's Ctrl-C reaches the workers too, which the one-shot handlers absorb). Was: joblib
    aborted and SIGKILLed the running jobs, which often left no record. Now the command exits 130, the two
    running jobs are recorded ``interrupted`` with their checkpoints, the third is ``NOT_STARTED``, no stop
    marker is left -- and the same command with ``ckpt_path=last_or_new`` finishes all three."""
    sweep = tmp_path / "sweep"
    run = [o for o in TINY_RUN if not o.startswith(("algo.steps", "checkpoint_every"))]
    args = ["-m", "transform=identity,exp,log", "algo.beta=0.3", *TINY_WORLD, *run, "algo.steps=60",
            "checkpoint_every=1", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2", "threads=1",
            f"paths.cache_dir={tiny_cache}", f"hydra.sweep.dir={sweep}"]
    proc = train_cli(*args)
    ckpts = [sweep / job / "checkpoints" / "last.ckpt" for job in ("0", "1")]
    _wait_for(lambda: all(c.exists() for c in ckpts) or proc.poll() is not None, 300, "two jobs' checkpoints")
    assert proc.poll() is None, "the sweep ended before it could be stopped"
    os.kill(proc.pid, signal.SIGINT)
    code, out, err = finished(proc, timeout=300)
    assert code == 130, err[-3000:]
    assert "2 running jobs recorded as interrupted, 1 not started" in err, err[-2000:]
    for job in ("0", "1"):
        record = json.loads((sweep / job / "metrics.json").read_text())
        assert record["status"] == "interrupted", record.get("error")
    assert (sweep / "2" / NOT_STARTED).exists() and not (sweep / "2" / "metrics.json").exists()
    assert not (sweep / STOP_MARKER).exists()

    proc = train_cli(*args, "ckpt_path=last_or_new")
    code, out, err = finished(proc, timeout=600)
    assert code == 0, err[-3000:]
    for job in ("0", "1", "2"):
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "finished"
    assert not (sweep / "2" / NOT_STARTED).exists()


@pytest.mark.slow
def test_a_terminals_ctrl_c_with_an_idle_worker_keeps_the_running_jobs_records(tiny_cache, tmp_path):
    """Review: a terminal's Ctrl-C goes to the whole process group; with fewer jobs than workers (n_jobs=3, 2
    jobs) the idle worker raised KeyboardInterrupt in its queue, the pool broke, and joblib SIGKILLed the
    running jobs, which left no record. Now (its workers ignore the signal outside a job) both are recorded."""
    sweep = tmp_path / "sweep"
    run = [o for o in TINY_RUN if not o.startswith(("algo.steps", "checkpoint_every"))]
    proc = train_cli("-m", "transform=identity,exp", "algo.beta=0.3", *TINY_WORLD, *run, "algo.steps=200",
                     "checkpoint_every=1", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=3", "threads=1",
                     f"paths.cache_dir={tiny_cache}", f"hydra.sweep.dir={sweep}", start_new_session=True)
    ckpts = [sweep / job / "checkpoints" / "last.ckpt" for job in ("0", "1")]
    _wait_for(lambda: all(c.exists() for c in ckpts) or proc.poll() is not None, 300, "two jobs' checkpoints")
    assert proc.poll() is None, "the sweep ended before it could be stopped"
    os.killpg(proc.pid, signal.SIGINT)  # (as a terminal's Ctrl-C: every process of the group)
    code, out, err = finished(proc, timeout=300)
    assert code == 130 and "BrokenProcessPool" not in err, err[-3000:]
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "interrupted"
    assert "2 running jobs recorded as interrupted, 0 not started" in err


# A step that records the signal it gets, takes 0.5 s to "record itself", and exits 130.
STOPPING_STEP = """
import os, signal, sys, time
log = open(LOG, "a")
def stop(signum, frame):
    log.write(f"{signum}\\n"); log.flush(); time.sleep(0.5); log.write("recorded\\n"); log.flush(); sys.exit(130)
signal.signal(signal.SIGINT, stop)
open(sys.argv[1], "w").write(str(os.getpid()))
time.sleep(30)
"""


def test_the_paper_driver_forwards_a_stop_to_its_step_and_waits_for_it(tmp_path, restore_signals):
    """infalign-paper ran each step with subprocess.run, which SIGKILLs the child 0.25 s after a Ctrl-C (its sweep
    left no record and its workers were orphaned), and a SIGTERM killed the driver alone. The step now runs in a
    session of its own; the driver forwards the signal once, waits for the step to end (here it takes 0.5 s to
    record itself), and then stops."""
    import threading

    from infalign.apps import paper

    log = tmp_path / "signals.txt"
    child = STOPPING_STEP.replace("LOG", repr(str(log)))
    ready = tmp_path / "ready"
    timer = threading.Thread(target=lambda: (_wait_for(ready.exists, 10, "the child"),
                                             os.kill(os.getpid(), signal.SIGINT)))
    timer.start()
    with pytest.raises(paper.Stopped) as info:
        paper.run_child([sys.executable, "-c", child, str(ready)])
    timer.join()
    assert info.value.signum == signal.SIGINT
    assert log.read_text().split() == [str(int(signal.SIGINT)), "recorded"]  # once, and it had time to record
    assert paper.run_child([sys.executable, "-c", "raise SystemExit(3)"]) == 3
    # review: a signal the driver was started ignoring (nohup's SIGHUP) stays ignored while a step runs
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert paper.run_child([sys.executable, "-c", "import os, signal, time; os.kill(os.getppid(), "
                                "signal.SIGHUP); time.sleep(0.3)"]) == 0
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


DRIVER = """
import sys
from infalign.apps.paper import run_child
run_child([sys.executable, "-c", sys.argv[1], sys.argv[2]])
"""


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_paper_step_stops_when_its_driver_is_killed(tmp_path):
    """Review: the step runs in a session of its own (so a terminal's Ctrl-C reaches the driver alone); a driver
    SIGKILLed (the OOM killer, a supervisor) left it running unattended, reparented to init. It now gets SIGTERM
    when the driver dies -- its sweep stops as for any SIGTERM, its running jobs recorded."""
    log, ready = tmp_path / "signals.txt", tmp_path / "ready"
    step = STOPPING_STEP.replace("LOG", repr(str(log))).replace("signal.signal(signal.SIGINT, stop)",
                                                                  "signal.signal(signal.SIGTERM, stop)")
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, step, str(ready)])
    try:
        _wait_for(ready.exists, 20, "the step")
        driver.kill()
        driver.wait()
        _wait_for(lambda: "recorded" in (log.read_text() if log.exists() else ""), 10, "the step's stop")
    finally:
        driver.kill()
        if ready.exists() and ready.read_text():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(ready.read_text()), signal.SIGKILL)  # (the step, were it left running)
    assert log.read_text().split() == [str(int(signal.SIGTERM)), "recorded"]


def test_an_interrupted_jobs_continue_command_names_its_sweep_and_a_single_runs_its_own_overrides(tmp_path,
                                                                                                monkeypatch):
    """``continue_command``: a multirun job's says to run the sweep again in its dir with ``last_or_new``; a single
    run's gives its own command (here before its first checkpoint)."""
    from types import SimpleNamespace

    from hydra.core.hydra_config import HydraConfig

    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: SimpleNamespace(
        mode=SimpleNamespace(name="MULTIRUN"), sweep=SimpleNamespace(dir=f"{tmp_path}/sweep/"))))
    said = train_app.continue_command(tmp_path / "sweep" / "3")
    assert f"hydra.sweep.dir={tmp_path / 'sweep'} ckpt_path=last_or_new" in said
    record = tmp_path / "sweep" / "3" / "metrics.json"
    assert said.startswith(f"recorded as interrupted in {record}; continue the sweep")
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: SimpleNamespace(mode=None)))
    monkeypatch.setattr(train_app, "task_overrides", lambda: ["seed=3"])
    said = train_app.continue_command(tmp_path / "run")
    assert "continue the sweep" not in said and "(before its first checkpoint); continue with:" in said
    assert "seed=3" in said
