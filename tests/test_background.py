"""infra/background.py: one helper process that imports its preloads first, runs submitted calls
in order and returns what the caller would have computed; ``enabled=False`` runs them in place."""

from __future__ import annotations

import os
import pickle
import sys
import time

import pytest

from infalign.errors import ConfigError
from infalign.infra.background import Background


def _pid_and_loaded(name: str) -> tuple[int, bool]:
    return os.getpid(), name in sys.modules


def _fail(key: str) -> None:
    raise ConfigError(key, 3, "an even number", "a hint")


PRELOAD = "tabnanny"  # a stdlib module nothing else here imports


def test_calls_run_in_one_helper_process_after_its_preloads():
    assert PRELOAD not in sys.modules
    with Background([PRELOAD]) as helper:
        assert helper.parallel
        first, second = helper.submit(_pid_and_loaded, PRELOAD), helper.submit(_pid_and_loaded, PRELOAD)
        (pid1, loaded1), (pid2, _) = first.result(timeout=60), second.result(timeout=60)
    assert pid1 == pid2 != os.getpid() and loaded1  # one worker; the preload came before the first call
    assert PRELOAD not in sys.modules  # ... and happened there, not here


def test_disabled_runs_in_place():
    helper = Background(enabled=False)
    assert not helper.parallel and helper.submit(_pid_and_loaded, "os").result() == (os.getpid(), True)


@pytest.mark.parametrize("enabled", [True, False])
def test_an_exception_reaches_the_caller_with_its_fields(enabled):
    with Background(enabled=enabled) as helper:
        job = helper.submit(_fail, "best_t.num")
        with pytest.raises(ConfigError) as info:
            job.result(timeout=60)
    assert (info.value.key, info.value.value, info.value.hint) == ("best_t.num", 3, "a hint")
    assert str(info.value) == "best_t.num=3 is not allowed: an even number (a hint)"


def test_config_error_pickles_by_its_fields():
    err = pickle.loads(pickle.dumps(ConfigError("t", "abc", "a number", "hint")))
    assert (err.key, err.value, err.allowed, err.hint) == ("t", "abc", "a number", "hint")


def test_the_worker_starts_and_preloads_at_creation(tmp_path, monkeypatch):
    """The preloads run as soon as the helper exists (analyze's main() creates it before Hydra
    composes the config, to overlap matplotlib's import with that), not at the first submit."""
    marker = tmp_path / "imported"
    (tmp_path / "marks_import.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the forked worker inherits sys.path
    with Background(["marks_import"]):
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the helper had not imported its preloads without a submitted call"
