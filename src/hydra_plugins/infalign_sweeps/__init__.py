"""Put the repository's ``sweeps/`` folder on Hydra's search path for infalign's own apps.

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
        if (root / "sweeps").is_dir():
            search_path.append(provider="infalign-sweeps", path=f"file://{root}")
