"""Put the repository's ``sweeps/`` folder (and nothing else) on Hydra's search path for infalign's own apps.

Then ``infalign-train -m +sweeps=bon_transforms`` composes ``sweeps/bon_transforms.yaml``. Other
Hydra apps in the same environment are left alone (the path is added only when the primary
config directory is infalign's ``conf/``).
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class InfalignSweepsSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        try:
            from infalign.apps.config import CONFIG_DIR
        except Exception:  # infalign not importable / no config tree: nothing to add
            return
        ours = Path(CONFIG_DIR).resolve()
        if not any(e.path and Path(e.path.replace("file://", "")).resolve() == ours for e in search_path.get_path()):
            return
        root = ours.parent  # repository root: holds sweeps/
        if not (root / "sweeps").is_dir():
            return
        # A dir whose only entry is sweeps/ (a symlink to the repository's): the repository root itself
        # would make every top-level dir a config group -- .venv's ~50k files walked by --help.
        # Where symlinks were not checked out (or not packaged), the root, as before.
        only = Path(__file__).resolve().parent / "searchpath"
        linked = only / "sweeps"
        use = only if linked.is_dir() and linked.resolve() == (root / "sweeps").resolve() else root
        search_path.append(provider="infalign-sweeps", path=f"file://{use}")
