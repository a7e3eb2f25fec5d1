"""The layers of docs/architecture.md §1, checked: lower layers never import higher ones, and the
math package runs without Hydra, Lightning or W&B."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import infalign
import infalign.math

PACKAGE = Path(infalign.__file__).parent
# layer of each top-level part of the package (docs/architecture.md §1)
LAYER = {"errors": 0, "math": 1, "infra": 1, "models": 2, "data": 2, "toy": 2, "training": 3,
         "pipeline": 4, "report": 4, "apps": 5, "bench": 5}
# imports that go up a layer on purpose (docs/architecture.md §1, "known exceptions")
ALLOWED_UP = {("toy", "training")}
FRAMEWORKS = ("hydra", "omegaconf", "lightning", "pytorch_lightning", "wandb", "transformers", "datasets")


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def _imports(path: Path) -> set[str]:
    """Every infalign module ``path`` imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "infalign":
                found |= {f"infalign.{a.name}" for a in node.names}
            elif node.module.startswith("infalign."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("infalign.")}
    return found


def _sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        part = rel.parts[0].removesuffix(".py")
        if part in LAYER:
            yield part, path


def test_every_part_of_the_package_has_a_layer():
    parts = {p.name.removesuffix(".py") for p in PACKAGE.iterdir()
             if not p.name.startswith("__") and (p.suffix == ".py" or p.is_dir() and p.name != "__pycache__")}
    assert parts <= set(LAYER), f"new top-level module(s) {sorted(parts - set(LAYER))}: give them a layer"


@pytest.mark.parametrize("part,path", list(_sources()), ids=lambda v: str(v).split("infalign/")[-1])
def test_no_import_goes_up_a_layer(part, path):
    for module in _imports(path):
        target = _part(module)
        if target in LAYER and (part, target) not in ALLOWED_UP:
            assert LAYER[target] <= LAYER[part], f"{path.name} ({part}, layer {LAYER[part]}) imports {module} " \
                                                 f"(layer {LAYER[target]})"


@pytest.mark.slow  # a clean interpreter; test_no_import_goes_up_a_layer is the fast (static) check
def test_math_package_imports_no_framework_in_a_clean_interpreter():
    modules = [f"infalign.math.{m.name}" for m in pkgutil.iter_modules(infalign.math.__path__)]
    assert len(modules) >= 8
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FRAMEWORKS!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"the math package pulled in {out.strip()}"


HEAVY = ("torch", "lightning", "pytorch_lightning", "transformers", "wandb")


@pytest.mark.slow  # a clean interpreter (starts a process)
def test_analyze_app_imports_no_torch_in_a_clean_interpreter():
    """``infalign-analyze`` is numpy-only theory: its import chain (apps/config.py -> toy/defaults.py
    -> toy/world.py) must not load torch (~2 s of its start-up) or any other ML framework."""
    code = (f"import sys\nimport infalign.apps.analyze\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"infalign.apps.analyze pulled in {out.strip()}"


@pytest.mark.slow  # a clean interpreter (~2.5 s); the errors themselves: test_train_pipeline's bad-config tests
def test_a_config_error_fails_before_lightning_or_transformers_are_imported(tmp_path):
    """``infalign-train`` validates its config before the heavy imports (apps/train.run ->
    apps/train_stages): a run with an invalid value fails with the ConfigError and its failure record
    in a clean interpreter that never loaded Lightning, transformers or W&B (~4-5 s of a start-up;
    a typo costs ~3 s instead of ~8). torch is allowed: the calibration scopes and RL objectives
    live beside torch code."""
    cases = {"algo.beta": ["algo.beta=0"], "threads": ["threads=two"],
             "logger.mode": ["logger=wandb", "logger.mode=onlin"],
             "algo.kl_target": ["transform=optimal", "algo.kl_target=0.3"],
             "data.train_prompts": ["data.train_prompts=0"]}
    code = (
        "import sys, json\n"
        "from hydra import compose, initialize_config_dir\n"
        "from infalign.apps import train\n"
        "from infalign.apps.config import CONFIG_DIR\n"
        "from infalign.errors import ConfigError\n"
        f"for key, overrides in {cases!r}.items():\n"
        "    with initialize_config_dir(CONFIG_DIR, version_base='1.3'):\n"
        "        cfg = compose('train', overrides=overrides)\n"
        f"    cfg.paths.run_dir = {str(tmp_path)!r} + '/' + key\n"
        "    try:\n"
        "        train.run(cfg)\n"
        "    except ConfigError as exc:\n"
        "        print(exc.key)\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}) - {{'torch'}}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == [*cases, "[]"], out
    for key in cases:
        assert json.loads((tmp_path / key / "metrics.json").read_text())["status"] == "failed"


def test_the_layer_check_sees_a_violation(tmp_path):
    """The import scanner finds function-level imports too (a check that cannot fail is no check)."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from infalign.apps.train import run\n    import infalign.pipeline.fit\n")
    assert _imports(bad) == {"infalign.apps.train", "infalign.pipeline.fit"}


ENTRY_POINTS = ("train", "analyze", "report", "calibration")


@pytest.mark.parametrize("app", ENTRY_POINTS)
def test_entry_points_do_not_import_each_other(app):
    """What two apps share (e.g. the trainer settings of infalign-train and infalign-calibration,
    pipeline/trainer.py) lives in a lower layer: an app imports no other entry point."""
    others = {f"infalign.apps.{name}" for name in ENTRY_POINTS if name != app}
    assert not _imports(PACKAGE / "apps" / f"{app}.py") & others
