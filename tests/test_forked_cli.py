"""The test helper that forks console-script runs from a pre-imported interpreter (``forked_cli``):
it must refuse what a fork cannot reproduce and exit as CPython would."""

from __future__ import annotations

import pytest

import forked_cli


def test_only_run_time_variables_may_differ_from_the_zygotes_environment():
    base = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    assert forked_cli.forkable_env(base, dict(base))
    assert forked_cli.forkable_env(base, {**base, "WANDB_MODE": "disabled", "INFALIGN_ROOT": "/x",
                                          "WORLD_SIZE": "2"})
    assert forked_cli.forkable_env(base, {k: v for k, v in base.items() if k != "WANDB_MODE"})
    # read when torch / huggingface_hub / Lightning / apps.config are imported: a fork keeps the zygote's
    assert not forked_cli.forkable_env(base, {**base, "OMP_NUM_THREADS": "2"})
    assert not forked_cli.forkable_env(base, {k: v for k, v in base.items() if k != "HF_HUB_OFFLINE"})
    assert not forked_cli.forkable_env(base, {**base, "RANK": "1"})  # Lightning's rank_zero_only.rank
    assert not forked_cli.forkable_env(base, {**base, "INFALIGN_CONFIG_DIR": "/conf"})
    assert not forked_cli.forkable_env(base, {**base, "RANKING": "1"})  # names, not prefixes
    assert forked_cli.forkable_env(base, {**base, "RANK": "0", "LOCAL_RANK": "0"})  # what unset means


def test_exit_codes_follow_cpython(capsys):
    assert forked_cli._exit_code(SystemExit()) == 0
    assert forked_cli._exit_code(SystemExit(143)) == 143
    assert forked_cli._exit_code(SystemExit("bad")) == 1
    assert "bad" in capsys.readouterr().err


def test_a_script_that_is_not_forkable_runs_as_a_real_process():
    proc = forked_cli.start(["true"], {"PATH": "/usr/bin:/bin"}, {})
    assert proc.wait(timeout=30) == 0 and not isinstance(proc, forked_cli.ForkedProcess)


def test_a_zygote_that_cannot_start_processes_gives_way_to_real_ones(monkeypatch):
    """If the zygote dies (say a new library version starts a thread at import, which its check
    refuses), the tests still run the console script, as real processes, with a warning."""
    class Dead:
        def __init__(self, env):
            pass

        def alive(self):
            return False

        def start(self, *args):
            raise RuntimeError("the CLI zygote did not start the process (it exited or hung)")

    monkeypatch.setattr(forked_cli, "_Zygote", Dead)
    monkeypatch.setattr(forked_cli, "_zygotes", {})
    monkeypatch.setattr(forked_cli, "_unusable", set())
    monkeypatch.setattr(forked_cli, "FORKABLE", {"true": ("os", "getpid")})
    env = {"PATH": "/usr/bin:/bin"}
    with pytest.warns(UserWarning, match="real processes from now on"):
        proc = forked_cli.start(["true"], env, env)
    assert not isinstance(proc, forked_cli.ForkedProcess) and proc.wait(timeout=30) == 0
    assert forked_cli._unusable  # later calls go straight to a real process
