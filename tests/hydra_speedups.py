"""Hydra's compose, made cheaper for a process that composes hundreds of times (the test workers).

The suite composes ~450 times per worker (``make test-fast``: a quarter of its CPU time, py-spy
2026-12-05), and each compose redoes work whose result cannot change within the process. Three
patches, installed by :func:`speed_up_composes` (tests only: the CLIs compose once per process):

* **Each config file parsed once.** Hydra reads and parses every file of the defaults tree at
  every compose (its caching repository lives for one compose): ``conf/``'s ~50 files through
  ``FileConfigSource`` and Hydra's own (``hydra/conf``: the ``hydra`` node's job, logging,
  launcher and sweeper entries) through ``ImportlibResourcesConfigSource``, by PyYAML's pure-Python
  loader. The ``load_config`` of both is wrapped so a file -- its source, its path and its bytes,
  read each time (the reading is cheap, the parsing is the cost), so an edited file is parsed again
  -- is parsed once; every compose gets its own copy of the parsed config (``pickle``, ~5x faster
  than ``copy.deepcopy`` for an OmegaConf config and as complete), free to change.
* **No interpolation map where nothing interpolates.** Hydra builds an OmegaConf config of every
  known choice for each defaults list it expands (``defaults_list._create_interpolation_map``), for
  the entries of that list that interpolate (``group: ${other}``); none of ours do, so the map is
  built only for a list that holds such an entry, as only those entries read it (~22 % of a
  compose).
* **The ConfigStore shared, not copied.** Every compose deep-copies its config repository (so that
  re-initialising its sources leaves the original alone), and each structured-config source in it
  holds the process's ``ConfigStore`` singleton: the copy duplicated every registered schema at every
  compose (~8 %). The store is a singleton that hands out deep copies of its nodes
  (``ConfigStore.load``), so a copy of a repository shares it. (The patch is class-wide: Hydra's
  ``Singleton.get_state``, which the joblib launcher's jobs and Hydra's ``hydra_restore_singletons``
  fixture use, then shares the live store too; no test uses either in-process.)

Per compose: 83 ms -> 55 ms (``train`` with the hydra node, 2026-12-05). A compose's result is the
same: test_config_entries compares composes with all three against Hydra's own, under
:func:`hydra_as_shipped` (values, order of keys, struct flag, the ``hydra`` node)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import pickle

_ORIGINALS: dict[tuple[object, str], object] = {}  # (owner, attribute) -> Hydra's own, while patched


def speed_up_composes() -> None:
    """Install the three patches in this process (idempotent). Hydra's plugin scan
    (``Plugins.instance()``, once per process) executes its core plugins' modules again, defining new
    source classes: the scan runs first, and the classes it registered are the ones patched."""
    from hydra.core.plugins import Plugins

    Plugins.instance()
    if _ORIGINALS:
        return
    from hydra._internal import defaults_list
    from hydra._internal.core_plugins.file_config_source import FileConfigSource
    from hydra._internal.core_plugins.importlib_resources_config_source import ImportlibResourcesConfigSource
    from hydra.core.config_store import ConfigStore
    from hydra.core.default_element import InputDefault

    def file_bytes(source, config_path: str):
        path = os.path.realpath(os.path.join(source.path, source._normalize_file_name(config_path)))
        with open(path, "rb") as handle:
            return path, handle.read()

    def package_bytes(source, config_path: str):
        from importlib import resources

        resource = resources.files(source.path).joinpath(source._normalize_file_name(config_path))
        return str(resource), resource.read_bytes()

    _patch(FileConfigSource, "load_config", _parsed_once(FileConfigSource.load_config, file_bytes))
    _patch(ImportlibResourcesConfigSource, "load_config",
           _parsed_once(ImportlibResourcesConfigSource.load_config, package_bytes))

    build_map = defaults_list._create_interpolation_map

    def interpolation_map(overrides, defaults, self_added):
        if not any(isinstance(d, InputDefault) and d.is_interpolation() for d in defaults):
            return None  # (read only by the list's interpolating entries: there are none)
        return build_map(overrides, defaults, self_added)

    _patch(defaults_list, "_create_interpolation_map", interpolation_map)
    _patch(ConfigStore, "__deepcopy__", lambda self, memo: self)


@contextlib.contextmanager
def hydra_as_shipped():
    """Hydra without the patches inside the block (the reference the tests compare with)."""
    patched = {key: getattr(*key) for key in _ORIGINALS}
    for (owner, name), original in _ORIGINALS.items():
        if original is _ABSENT:
            delattr(owner, name)
        else:
            setattr(owner, name, original)
    try:
        yield
    finally:
        for (owner, name), value in patched.items():
            setattr(owner, name, value)


_ABSENT = object()


def _patch(owner, name: str, value) -> None:
    _ORIGINALS[(owner, name)] = vars(owner).get(name, _ABSENT)
    setattr(owner, name, value)


def _parsed_once(load, read):
    """``load_config`` wrapped: ``read(source, config_path) -> (path, bytes)`` names the file and reads
    it; the parse of each ``(provider, source path, path, bytes)`` is kept (``parsed``, pickled) and
    copied out. A file ``read`` cannot read (missing, a dir, ...) goes to Hydra's own ``load_config``,
    for Hydra's own error."""
    parsed = {}

    def load_config(self, config_path: str):
        try:
            path, text = read(self, config_path)
        except (OSError, ValueError, TypeError, ModuleNotFoundError):
            return load(self, config_path)  # Hydra's own error
        key = (self.provider, self.path, path, text)  # by content: a file rewritten in place is parsed again
        if key not in parsed:
            result = load(self, config_path)
            if read(self, config_path)[1] != text:  # rewritten between the two reads: not kept
                return result
            try:
                parsed[key] = (result, pickle.dumps(result.config))
            except (pickle.PicklingError, TypeError, AttributeError):
                parsed[key] = (result, None)
        result, pickled = parsed[key]
        config = pickle.loads(pickled) if pickled is not None else copy.deepcopy(result.config)
        return dataclasses.replace(result, config=config, header=dict(result.header))

    load_config.parsed = parsed
    return load_config
