"""Each YAML file of the config tree read and parsed once per test process, not once per compose.

Hydra's compose reads every file of the defaults tree again (its caching repository lives for one
compose): ~50 files of ``conf/`` parsed by PyYAML's pure-Python loader, about half of a compose's
~0.2 s, and the suite composes ~450 times per process. :func:`memoize_config_files` wraps
``FileConfigSource.load_config`` so a file (its real path and its bytes, read each time -- the
reading is cheap, the parsing is the cost -- so an edited file is parsed again) is parsed once;
every compose gets its own deep copy of the parsed config, which Hydra is free to change, so a
compose's result is the same (tested: test_config_entries). Tests only: the CLIs compose once per
process."""

from __future__ import annotations

import copy
import dataclasses
import os


def memoize_config_files() -> None:
    """Install the memo in this process (idempotent). Hydra's plugin scan (``Plugins.instance()``, once
    per process) executes its core plugins' modules again, defining a new ``FileConfigSource`` class:
    the scan runs first, and the class it registered is the one wrapped."""
    from hydra.core.plugins import Plugins

    Plugins.instance()
    from hydra._internal.core_plugins.file_config_source import FileConfigSource

    load = FileConfigSource.load_config
    if getattr(load, "memoized", False):
        return
    parsed = {}

    def load_config(self, config_path: str):
        path = os.path.realpath(os.path.join(self.path, self._normalize_file_name(config_path)))
        try:
            with open(path, "rb") as handle:
                text = handle.read()
        except OSError:
            return load(self, config_path)  # Hydra's own error
        key = (self.provider, self.path, path, text)  # by content: a file rewritten in place is parsed again
        if key not in parsed:
            parsed[key] = load(self, config_path)
        result = parsed[key]
        return dataclasses.replace(result, config=copy.deepcopy(result.config), header=dict(result.header))

    load_config.memoized = True
    load_config.parsed = parsed
    load_config.unwrapped = load
    FileConfigSource.load_config = load_config
