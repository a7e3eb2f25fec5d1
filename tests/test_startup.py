"""infra/startup.import_frozen: the first import of heavy modules runs with the cyclic GC paused and
freezes what it created; a later call freezes nothing (earlier jobs' garbage stays collectable).

Each check runs in a fresh interpreter (~0.1 s: only gc, importlib and the helper are loaded), so
freezing never touches the test worker's own heap and the "not imported yet" state is real."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HELPER = str(Path(__file__).resolve().parents[1] / "src")


def run_py(tmp_path: Path, body: str) -> None:
    """Run ``body`` in a new interpreter whose ``sys.path`` holds ``tmp_path`` (modules the test
    writes) and the package; the checks are asserts inside ``body``."""
    code = "import gc, sys, weakref\n" + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": f"{tmp_path}:{HELPER}", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture
def probe(tmp_path):
    """A module that records whether the GC ran enabled while it was imported, and allocates."""
    (tmp_path / "probe_mod.py").write_text(textwrap.dedent("""
        import gc
        GC_ENABLED_DURING_IMPORT = gc.isenabled()
        TABLE = [[i] for i in range(1000)]  # 1000 tracked containers, alive as long as the module
    """))
    (tmp_path / "broken_mod.py").write_text("raise RuntimeError('broken import')\n")
    return tmp_path


def test_a_first_import_runs_without_gc_and_freezes_what_is_alive(probe):
    run_py(probe, """
        from infalign.infra.startup import import_frozen

        assert gc.isenabled() and gc.get_freeze_count() == 0
        import_frozen("probe_mod")
        import probe_mod
        assert probe_mod.GC_ENABLED_DURING_IMPORT is False
        assert gc.isenabled()  # restored
        # the module's 1000 lists (and everything else alive) are in the permanent generation
        assert gc.get_freeze_count() >= 1000
        unfrozen = {id(o) for o in gc.get_objects()}  # generations 0-2: what a collection walks
        assert not any(id(x) in unfrozen for x in probe_mod.TABLE)
    """)


def test_a_module_already_imported_freezes_nothing(probe):
    """A second job in the same process: its predecessor's cyclic garbage must stay collectable."""
    run_py(probe, """
        from infalign.infra.startup import import_frozen

        import probe_mod  # imported before, as by an earlier job
        class Node: pass
        a, b = Node(), Node()
        a.other, b.other = b, a  # a reference cycle: only the cyclic GC frees it
        ref = weakref.ref(a)
        del a, b
        import_frozen("probe_mod")
        assert gc.get_freeze_count() == 0
        gc.collect()
        assert ref() is None
    """)


def test_any_new_module_among_several_freezes_once(probe):
    run_py(probe, """
        from infalign.infra.startup import import_frozen

        import json  # already there
        import_frozen("json", "probe_mod")
        assert "probe_mod" in sys.modules and gc.get_freeze_count() > 0
    """)


def test_the_gc_state_is_restored_when_the_import_fails(probe):
    run_py(probe, """
        from infalign.infra.startup import import_frozen

        try:
            import_frozen("broken_mod")
        except RuntimeError as e:
            assert "broken import" in str(e)
        else:
            raise AssertionError("the import error was swallowed")
        assert gc.isenabled()
        assert gc.get_freeze_count() == 0  # nothing frozen: the next job retries and must not freeze this one's garbage
        gc.disable()  # a caller that had the GC off keeps it off
        import_frozen("probe_mod")
        assert not gc.isenabled()
    """)


def test_the_train_app_imports_its_stages_frozen(monkeypatch, tmp_path):
    """apps/train.run reaches the heavy stages through import_frozen (after validation), not a plain import."""
    from infalign.apps import train as train_app

    calls = []
    monkeypatch.setattr(train_app, "import_frozen", lambda *names: calls.append(names))
    monkeypatch.setattr(train_app, "validate", lambda cfg: (None, None, None))
    monkeypatch.setattr(train_app, "name_run", lambda *a: "run")

    class Stop(Exception):
        pass

    from infalign.apps import train_stages

    def stop(*a):
        raise Stop

    monkeypatch.setattr(train_stages, "run_stages", stop)
    monkeypatch.setattr(train_app, "check_run_dir", lambda cfg, out: None)
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"paths": {"run_dir": str(tmp_path / "run")}})
    with pytest.raises(Stop):
        train_app.run(cfg)
    assert calls == [("infalign.apps.train_stages",)]


def test_the_calibration_app_imports_its_pipeline_frozen(monkeypatch):
    """apps/calibration.diagnose imports the pools/world pipeline through import_frozen before anything else."""
    from infalign.apps import calibration

    class Stop(Exception):
        pass

    def spy(*names):
        calls.append(names)
        raise Stop

    calls = []
    monkeypatch.setattr(calibration, "import_frozen", spy)
    with pytest.raises(Stop):
        calibration.diagnose(None)
    assert calls and "infalign.pipeline.pools" in calls[0] and "infalign.pipeline.world" in calls[0]
