"""Console-script runs forked from a pre-imported interpreter: what ``subprocess.Popen`` of
``infalign-train`` does, without the ~3.5 CPU-s of imports (torch, Lightning -> torchmetrics, scipy,
transformers) every process pays before its first line of work.

The suite starts ~20 training CLIs (fault injection, sweeps): ~70 CPU-s of imports, a quarter of
``make test``. A test worker instead starts one *zygote* (``python forked_cli.py``) that imports the
training app and its stages exactly as ``infalign-train`` does (``infra/startup.import_frozen``), runs
no computation -- so no thread pool exists yet and forking is safe -- and then, per request, forks a
child that sets the request's environment, working directory and ``sys.argv``, points fds 0/1/2 at
``/dev/null`` and two files, calls the console script's entry point and exits as the interpreter would
(``SystemExit`` codes, traceback and 1 for an uncaught exception, atexit handlers run). The child is a
real process: its pid takes signals (SIGTERM, SIGKILL), it has its own exit status, it can start
processes of its own (joblib workers).

What it cannot reproduce it refuses: a request whose environment differs from the zygote's in a
variable read at import time (:func:`forkable_env`) gets a real
``subprocess.Popen`` instead, as does any console script not in :data:`FORKABLE`. Tests that are about
the interpreter itself (imports made before validation, ``python -m``) keep their own subprocesses.

Known differences from a real process, none of which the fault tests look at: the training stages
(and the GPT-2 model classes and matplotlib, :data:`FORKABLE`) are imported before the child starts
(their import-time warnings, and a signal during that import,
are not seen, and Lightning, imported before Hydra configures logging, adds its own console
handler, so its INFO lines lack Hydra's ``INFO:`` prefix on stderr); children share the zygote's
string-hash seed; ``tests/`` is on ``sys.path``; and the zygote reaps a child at once, so a signal
sent in the moment between its end and the client learning of it could reach a recycled pid
(``Popen`` keeps the zombie until it waits).
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

# (console script: module, entry point, then what the zygote imports beside the app: the stages, as
# the app imports them after validation, and what every run of the suite then imports on its own --
# the toy world's GPT-2 classes, found through transformers' auto mapping, and the plot's matplotlib:
# ~0.7 CPU-s a forked run would otherwise spend importing)
FORKABLE = {"infalign-train": ("infalign.apps.train", "main", "infalign.apps.train_stages",
                               "transformers.models.gpt2.modeling_gpt2", "matplotlib.figure",
                               "matplotlib.backends.backend_agg")}
# Read only when a run runs, never while the zygote imports (traced with os.environ reads during its
# imports, 2026-12-04): these may differ between the zygote and a forked child.
RUNTIME_ENV = frozenset({"WORLD_SIZE", "LOCAL_WORLD_SIZE", "INFALIGN_ROOT", "INFALIGN_CONCURRENT_JOBS"})
RUNTIME_ENV_PREFIXES = ("WANDB_", "TORCHELASTIC_")  # wandb is not imported by the zygote
# Read at import (Lightning's rank_zero_only.rank, torchmetrics' prints: RANK, LOCAL_RANK, SLURM_PROCID;
# apps/config.CONFIG_DIR: INFALIGN_CONFIG_DIR): a child may differ only by setting what unset means.
IMPORT_DEFAULTS = {"RANK": "0", "LOCAL_RANK": "0", "SLURM_PROCID": "0"}


BIN = Path(sys.executable).parent
# The environment of the suite's console-script runs: no hub, W&B offline and quiet, one BLAS/OpenMP
# thread (tiny models; two test workers share the cores). One dict, so every module's runs share a
# worker's zygote (one per environment).
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------------- the zygote


def _exit_code(exc: SystemExit) -> int:
    """The status CPython exits with for ``SystemExit(code)`` (a non-int code is printed, status 1)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def finish_process() -> None:
    """What the interpreter does at a normal exit before its teardown: join the non-daemon threads and
    run threading's exit callbacks (``concurrent.futures`` shutting down its pools, ...), run the
    ``atexit`` handlers, flush stdout and stderr. A process that then leaves with ``os._exit`` skips
    only the teardown (tests/fast_exit.py, the zygote and its children)."""
    shutdown = getattr(threading, "_shutdown", None)  # (the interpreter joins non-daemon threads first)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:  # closed or replaced
            pass


def _child(request: dict, entry, protocol_fd: int) -> None:
    """In the forked child: become the requested process, run the entry point, never return."""
    code, interrupted = 1, False
    try:
        os.close(protocol_fd)  # the zygote's line to the client: not this process's (nor its children's)
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["out"], os.O_WRONLY | os.O_CREAT),
                                (2, request["err"], os.O_WRONLY | os.O_CREAT)):
            target = os.open(path, flags, 0o644)
            os.dup2(target, fd)
            os.close(target)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 -- fd 0 is /dev/null now, not the request pipe
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        try:
            code = _exit_code(SystemExit(entry()))  # the console script: sys.exit(main())
        except SystemExit as exc:
            code = _exit_code(exc)
        except BaseException as exc:
            sys.excepthook(*sys.exc_info())
            code, interrupted = 1, isinstance(exc, KeyboardInterrupt)
        finish_process()
    except BaseException:  # setting up the process failed (a missing cwd): say so, as Popen would raise
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        if interrupted:  # CPython ends an uncaught KeyboardInterrupt by dying of SIGINT (status -2)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code)


def serve() -> None:
    """The zygote: import the forkable apps, then read JSON requests (one per line) on stdin, fork
    each, and write ``{"started": pid}`` at once and ``{"exited": pid, "returncode": rc}`` when it
    ends (``-signal`` when killed, as ``Popen.returncode``). At end of input, remaining children are
    killed and the zygote exits."""
    from infalign.infra.startup import import_frozen

    entries = {}
    for name, (module, func, *heavy) in FORKABLE.items():
        import_frozen(module, *heavy)
        entries[name] = getattr(importlib.import_module(module), func)
    assert threading.active_count() == 1, f"threads before fork: {threading.enumerate()}"
    sys.stdout.flush()  # nothing buffered here may be copied into every child's output
    sys.stderr.flush()
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # stray prints must not corrupt the protocol
    children: set[int] = set()

    def emit(message: dict) -> None:
        out.write(json.dumps(message) + "\n")

    def reap() -> None:
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            children.discard(pid)
            emit({"exited": pid, "returncode": os.waitstatus_to_exitcode(status)})

    pending = b""
    while True:
        ready, _, _ = select.select([0], [], [], 0.02)
        reap()
        if not ready:
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            break
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _child(request, entries[request["script"]], out.fileno())
            children.add(pid)
            emit({"started": pid})
    for pid in children:
        os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------------- the client


class ForkedProcess:
    """The part of ``subprocess.Popen`` the tests use, for a child of the zygote (text output)."""

    def __init__(self, zygote: _Zygote, pid: int, args: list[str], out: Path, err: Path) -> None:
        self._zygote, self.pid, self.args, self._out, self._err = zygote, pid, args, out, err
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._zygote.returncode(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._zygote.wait(self.pid, timeout, self.args)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return (self._out.read_text(errors="replace"), self._err.read_text(errors="replace"))


class _Zygote:
    def __init__(self, env: dict[str, str]) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="forked-cli-"))
        self._proc = subprocess.Popen([sys.executable, __file__], env=env, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, cwd=Path(__file__).parent)
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._started: list[int] = []
        self._exited: dict[int, int] = {}
        self._count, self._broken = 0, False
        threading.Thread(target=self._read, daemon=True).start()
        atexit.register(self.close)

    def close(self) -> None:
        """End of input: the zygote kills children still running and exits; its files go."""
        if self.alive():
            self._proc.stdin.close()
            self._proc.wait(timeout=30)
        shutil.rmtree(self._dir, ignore_errors=True)

    def _read(self) -> None:
        try:
            for line in self._proc.stdout:
                message = json.loads(line)
                with self._changed:
                    if "started" in message:
                        self._started.append(message["started"])
                    else:
                        self._exited[message["exited"]] = message["returncode"]
                    self._changed.notify_all()
        finally:  # end of output, or a line that is not the protocol: the zygote is no longer usable
            self._broken = True
            self._proc.kill()
            with self._changed:
                self._changed.notify_all()

    def alive(self) -> bool:
        return not self._broken and self._proc.poll() is None

    def start(self, script: str, argv: list[str], env: dict[str, str], cwd: Path) -> ForkedProcess:
        with self._lock:
            self._count += 1
            out, err = self._dir / f"{self._count}.out", self._dir / f"{self._count}.err"
            request = {"script": script, "argv": argv, "env": env, "cwd": str(cwd), "out": str(out),
                       "err": str(err)}
            self._proc.stdin.write((json.dumps(request) + "\n").encode())
            self._proc.stdin.flush()
            with self._changed:
                self._changed.wait_for(lambda: self._started or not self.alive(), timeout=120)
                if not self._started:  # a late answer must not be matched to the next request
                    self._broken = True
                    self._proc.kill()
                    raise RuntimeError("the CLI zygote did not start the process (it exited or hung)")
                pid = self._started.pop(0)
        return ForkedProcess(self, pid, argv, out, err)

    def returncode(self, pid: int) -> int | None:
        with self._changed:
            return self._exited.get(pid)

    def wait(self, pid: int, timeout: float | None, args) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while pid not in self._exited and self.alive():  # short waits: a dead zygote is seen too
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(args, timeout)
                self._changed.wait(0.5 if left is None else min(0.5, left))
            if pid not in self._exited:
                raise RuntimeError("the CLI zygote exited while its child ran")
            return self._exited[pid]


_zygotes: dict[tuple, _Zygote] = {}
_unusable: set[tuple] = set()  # zygotes that could not start a process: the tests go on without them


def forkable_env(base: dict[str, str], env: dict[str, str]) -> bool:
    """Whether a child of a zygote started with ``base`` can run with ``env``: every variable that
    differs is read only at run time (:data:`RUNTIME_ENV`, :data:`RUNTIME_ENV_PREFIXES`), or is one
    read at import whose value means what leaving it unset means (:data:`IMPORT_DEFAULTS`)."""

    def same(key: str) -> bool:
        default = IMPORT_DEFAULTS.get(key)
        return base.get(key, default) == env.get(key, default)

    differ = {k for k in base.keys() | env.keys() if not same(k)}
    return all(k in RUNTIME_ENV or k.startswith(RUNTIME_ENV_PREFIXES) for k in differ)


def start(argv: list[str], env: dict[str, str], base_env: dict[str, str], cwd: Path | None = None,
          **popen) -> ForkedProcess | subprocess.Popen:
    """``subprocess.Popen(argv, env=env, cwd=cwd, text=True, stdout=PIPE, stderr=PIPE)``, forked from
    the zygote started with ``base_env`` when ``argv[0]`` is a :data:`FORKABLE` console script and
    ``env`` differs from ``base_env`` only in run-time variables; a real process otherwise."""
    script = Path(argv[0]).name
    cwd = Path(cwd or os.getcwd())
    if not cwd.is_dir():  # as Popen raises
        raise FileNotFoundError(f"no such directory: {cwd}")
    key = tuple(sorted(base_env.items()))
    if script in FORKABLE and not popen and forkable_env(base_env, env) and key not in _unusable:
        zygote = _zygotes.get(key)
        if zygote is None or not zygote.alive():
            zygote = _zygotes[key] = _Zygote(base_env)
        try:
            return zygote.start(script, [str(a) for a in argv], env, cwd)
        except RuntimeError as exc:  # (its own error is on stderr: e.g. a thread some import started)
            _unusable.add(key)
            warnings.warn(f"forked_cli: {exc}; real processes from now on", stacklevel=2)
    return subprocess.Popen(argv, env=env, cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            **popen)


def train_cli(*args: str, env: dict | None = None, **popen) -> ForkedProcess | subprocess.Popen:
    """``infalign-train *args`` as a process of its own, with :data:`ENV` updated by ``env`` (forked from
    the zygote when it can be: :func:`start`)."""
    return start([str(BIN / "infalign-train"), *args], {**ENV, **(env or {})}, ENV, **popen)


def finished(proc, timeout: int = 600) -> tuple[int, str, str]:
    """``(returncode, stdout, stderr)`` of a process :func:`train_cli` started, once it has ended."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


if __name__ == "__main__":  # (run as a script: tests/ is sys.path[0])
    serve()
    # a normal exit without the interpreter's teardown: with torch, Lightning and transformers imported
    # that takes ~0.5-1 s, which the test worker's exit (its atexit close of this zygote) would wait for
    finish_process()
    os._exit(0)
