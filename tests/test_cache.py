"""infra/cache.py: canonical content keys, atomic writes, checksummed tensors, code fingerprints."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_content_key_does_not_depend_on_dict_order():
    """Keys are canonical: the same settings in another insertion order (an override given elsewhere) hit."""
    from infalign.infra.cache import content_key

    assert content_key({"a": 1, "b": {"x": 1, "y": 2}}) == content_key({"b": {"y": 2, "x": 1}, "a": 1})


def test_content_key_keys_numbers_by_value_and_booleans_apart():
    """Review finding: ``transform.t=4`` on the command line (an int) and ``t: 4.0`` in a config file gave
    two policy keys for one setting. Integral floats are keyed as the int they equal -- inside configs too --
    while a boolean is never the number it subclasses."""
    from omegaconf import OmegaConf

    from infalign.infra.cache import content_key

    assert content_key({"t": 4, "lr": 1e-4}) == content_key({"t": 4.0, "lr": 0.0001})
    assert content_key(OmegaConf.create({"x": [1, {"y": -0.0}]})) == content_key({"x": [1.0, {"y": 0}]})
    assert content_key({"t": 4}) != content_key({"t": 4.5})
    assert content_key(True) != content_key(1) and content_key(False) != content_key(0.0)
    assert content_key(float("inf")) != content_key(float("nan"))


def test_a_write_that_fails_midway_leaves_no_file_under_the_final_name(tmp_path):
    """atomic_path: the block writes a temp file; a crash before the rename leaves nothing (or the old file)."""
    from infalign.infra.cache import atomic_path, atomic_write_text

    final = tmp_path / "entry.json"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("crash")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    atomic_write_text(final, "complete")
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("crash")
    assert final.read_text() == "complete"


def test_tensor_bytes_that_no_longer_match_their_checksum_are_corrupt(tmp_path):
    """A readable file whose tensor bytes changed (bit rot, a partial overwrite) is never silently used."""
    import torch

    from infalign.infra.cache import CorruptCacheError, load_tensors, save_tensors

    path = tmp_path / "entry.pt"
    save_tensors(path, {"w": torch.arange(4, dtype=torch.float32)}, key="k")
    payload = torch.load(path, weights_only=True)
    payload["tensors"]["w"][0] = 7.0  # same structure, same stored sha256, other bytes
    torch.save(payload, path)
    with pytest.raises(CorruptCacheError, match="checksum"):
        load_tensors(path, "k")


@pytest.mark.parametrize("tensors", [{"a": 3}, [1, 2], {"a": "text"}])
def test_a_readable_file_of_another_layout_is_corrupt_and_rebuilt(tmp_path, tensors):
    """A file torch loads but whose ``tensors`` are not a dict of tensors (a review wrote ``{'a': 3}``)
    raised a raw AttributeError/TypeError from the checksum, which ``cached`` does not catch: it is corrupt,
    and ``cached`` rebuilds it."""
    import torch

    from infalign.infra.cache import CorruptCacheError, cached, load_tensors, save_tensors

    path = tmp_path / "entry.pt"
    torch.save({"tensors": tensors, "meta": {}, "sha256": "x", "key": "k"}, path)
    with pytest.raises(CorruptCacheError, match="unreadable"):
        load_tensors(path, "k")
    value, hit = cached(path, lambda: {"w": torch.ones(2)}, lambda v, p: save_tensors(p, v, key="k"),
                        lambda p: load_tensors(p, "k")[0])
    assert hit is False and torch.equal(value["w"], torch.ones(2))
    assert torch.equal(load_tensors(path, "k")[0]["w"], torch.ones(2))


def test_code_fingerprint_strips_only_docstrings_not_a_leading_statement():
    """A function whose first statement is an expression (a call) is code: editing it retires cache entries."""
    from infalign.infra.cache import code_fingerprint

    assert code_fingerprint("def f(x):\n    x.append(1)\n    return x\n") != \
        code_fingerprint("def f(x):\n    x.append(2)\n    return x\n")
    assert code_fingerprint("torch.manual_seed(0)\n") != code_fingerprint("torch.manual_seed(1)\n")
    assert code_fingerprint('def f():\n    """doc"""\n    return 1\n') == code_fingerprint("def f():\n    return 1\n")



MESSAGE_CODE = """
def g(x, side):
    if side not in ("left", "right"):
        raise ValueError(f"bad side {side!r}")
    require(x > 1, "g.x", x, "more than 1")
    require_type("g.side", side, str)
    assert x < 9, f"{x} too large"
    if x > 5:
        log.warning("x=%s is large", x)
        warnings.warn("large x", UserWarning)
    return x * 2
"""


@pytest.mark.parametrize("edit", [
    ('f"bad side {side!r}"', '"side must be left or right"'),
    ('"g.x", x, "more than 1"', '"g.xx", x, "above one", "a hint"'),
    ('require_type("g.side"', 'require_type("g.other"'),
    ('f"{x} too large"', '"large"'),
    ('"x=%s is large", x', '"x %d", x'),
    ('"large x"', '"x is large"'),
    ('side):\n', 'side):\n    """Twice x."""\n'),
    ('"bad side {side!r}"', '"bad side {side!r}", side, "left or right"'),
    ('x, "more than 1")', 'x, "more than 1", hint="a hint")'),
], ids=["raise", "require", "require_type", "assert", "log", "warn", "docstring", "raise-arguments", "require-hint"])
def test_code_fingerprint_ignores_the_wording_of_messages(edit):
    """docs/architecture.md §5: rewording an error, a warning or a check keeps every cache entry."""
    from infalign.infra.cache import code_fingerprint

    assert edit[0] in MESSAGE_CODE
    assert code_fingerprint(MESSAGE_CODE.replace(*edit)) == code_fingerprint(MESSAGE_CODE)


@pytest.mark.parametrize("edit", [
    ('("left", "right")', '("left", "up")'),  # a string that decides, not one that words a message
    ("raise ValueError(", "raise TypeError("),
    ("require(x > 1,", "require(x >= 1,"),
    ("side, str)", "side, bytes)"),
    ("assert x < 9", "assert x < 8"),
    ("if x > 5:", "if x > 4:"),
    ("        warnings.warn", "        pass  # warnings.warn"),
    ("return x * 2", "return x * 3"),
], ids=["decision", "raised-class", "require-condition", "require-type-kind", "assert-condition",
        "warning-condition", "warning-given", "result"])
def test_code_fingerprint_keeps_what_is_checked_raised_and_computed(edit):
    from infalign.infra.cache import code_fingerprint

    assert edit[0] in MESSAGE_CODE
    assert code_fingerprint(MESSAGE_CODE.replace(*edit)) != code_fingerprint(MESSAGE_CODE)


def _tree(path):
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


def _write_dir(final, files):
    from infalign.infra.cache import atomic_dir

    with atomic_dir(final) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)


OLD, NEW = {"a": "old", "b": "old"}, {"a": "new", "c": "new"}


def test_replacing_a_dir_that_fails_between_its_steps_never_loses_it(tmp_path, monkeypatch):
    """Review finding: atomic_dir removed the old dir, then renamed the new one in: a failure or kill while
    removing left half a dir, one between the two steps none. The old dir is now renamed aside, the new one
    renamed in, then the old one deleted: a failure of the second rename puts the old dir back, one while
    deleting the old dir leaves the new one whole."""
    import os
    import shutil

    from infalign.infra import cache

    final = tmp_path / "policy"
    _write_dir(final, OLD)
    real_replace, real_rmtree = os.replace, shutil.rmtree

    def failing_replace(src, dst):
        if "tmp" in str(src):  # the new dir moving in
            raise OSError("killed between the steps")
        return real_replace(src, dst)

    monkeypatch.setattr(cache.os, "replace", failing_replace)
    with pytest.raises(OSError, match="killed between"):
        _write_dir(final, NEW)
    monkeypatch.setattr(cache.os, "replace", real_replace)
    assert _tree(final) == OLD

    def half_rmtree(path, *args, **kwargs):  # deletes one file of the old dir, then dies
        if (Path(path) / "b").exists():
            (Path(path) / "b").unlink()
            raise OSError("killed while deleting")
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(cache.shutil, "rmtree", half_rmtree)
    _write_dir(final, NEW)
    monkeypatch.setattr(cache.shutil, "rmtree", real_rmtree)
    assert _tree(final) == NEW
    _write_dir(final, OLD)  # the next write deletes what was left aside
    assert _tree(final) == OLD and sorted(p.name for p in tmp_path.iterdir()) == ["policy"]


def test_a_dir_a_kill_left_aside_is_moved_back_before_anything_reads_or_replaces_it(tmp_path):
    """A kill between atomic_dir's two renames leaves no ``final`` and its previous version whole aside
    (``.<name>.old``): the next atomic_dir of it, or cached() looking for the entry, moves it back -- a cache
    entry is a hit, not a rebuild, and a write that then fails leaves it as it was."""
    from infalign.infra.cache import aside_dir, atomic_dir, cached

    final = tmp_path / "entry"
    _write_dir(final, OLD)
    final.rename(aside_dir(final))  # the state a kill between the renames leaves
    with pytest.raises(RuntimeError), atomic_dir(final):
        raise RuntimeError("crash while writing")
    assert _tree(final) == OLD and not aside_dir(final).exists()
    final.rename(aside_dir(final))

    def build():
        raise AssertionError("rebuilt")

    value, hit = cached(final, build, lambda v, p: None, _tree)
    assert hit and value == OLD


def test_an_entry_deleted_between_the_check_and_the_read_is_a_miss(tmp_path):
    """Review finding: the unlocked read checks ``exists()`` and then loads; another process that
    deleted a corrupt entry in between made the load raise FileNotFoundError, which killed the run
    instead of rebuilding under the lock."""
    from infalign.infra.cache import cached

    path = tmp_path / "entry.txt"
    path.write_text("stale")
    calls = []

    def load(p):
        calls.append("load")
        if len(calls) == 1:
            p.unlink()  # another process removes it right after our exists() check
            raise FileNotFoundError(p)
        return p.read_text()

    value, hit = cached(path, lambda: "fresh", lambda v, p: p.write_text(v), load)
    assert (value, hit) == ("fresh", False) and path.read_text() == "fresh"


def test_json_files_are_strict_json_with_null_for_non_finite_numbers(tmp_path):
    """atomic_write_json: NaN and +-inf -- at any depth, in lists, tuples and configs -- are written as
    ``null`` (RFC 8259 has no NaN); everything else is written as json.dumps writes it."""
    import json
    import math

    import numpy as np
    from omegaconf import OmegaConf

    from infalign.infra.cache import atomic_write_json, json_safe

    obj = {"a": math.nan, "b": [1.5, math.inf, (-math.inf, 2)], "c": {"d": np.float64("nan"), "e": True, "f": 3},
           "g": OmegaConf.create({"h": math.nan, "i": "x"}), "j": tmp_path, "k": None}
    path = tmp_path / "out.json"
    atomic_write_json(path, obj)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.5, None, [None, 2]], "c": {"d": None, "e": True, "f": 3},
                                "g": {"h": None, "i": "x"}, "j": str(tmp_path), "k": None}
    plain = {"x": [0.1, 2, "s", False], "y": {"z": -1e300}}
    assert json_safe(plain) == plain  # finite values pass unchanged
    with pytest.raises(TypeError, match="object has no JSON form"):
        atomic_write_json(path, {"x": object()})


def test_a_module_edited_after_the_process_imported_it_keys_its_results_apart(tmp_path, monkeypatch, caplog):
    """The digest reads files, but an imported module runs the code as imported: after an edit on disk
    the file's digest would store the old code's results under the new code's key, served to every
    later run (a reviewer showed a fresh process loading such a pool). Such a digest gets this
    process's mark (warned once). A touch or a comment-only edit changes no code and no key; a file
    dated in the future (a clock ahead) says nothing about an edit; a module not imported yet runs the
    file as it is."""
    import importlib
    import os
    import sys
    import time
    import types

    import infalign
    from infalign.infra import cache

    def probe(name: str, text: str, mtime: float):
        path = tmp_path / f"{name}.py"
        path.write_text(text)
        os.utime(path, (mtime, mtime))
        return path

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cache, "_IMPORTED_CODE", {})  # this test's records only (restored after it)
    for name in ("infalign_stale_probe", "infalign_stale_probe_late", "infalign_stale_probe_future"):
        monkeypatch.delitem(sys.modules, name, raising=False)
        monkeypatch.setitem(sys.modules, name, None)  # (registers the entry: monkeypatch removes it after)
        monkeypatch.delitem(sys.modules, name)
    # the process "starts" after the probes below are written (their ctime: now), and the cache's clock
    # reads a minute later, so "recent" lies between the start and now
    t0 = time.time()
    monkeypatch.setattr(infalign, "IMPORTED_AT", t0 + 2 * cache.STALE_SLACK_S)
    monkeypatch.setattr(cache, "time", types.SimpleNamespace(time=lambda: t0 + 60))
    past, recent = infalign.IMPORTED_AT - 60, infalign.IMPORTED_AT + 30  # before / after the start
    path = probe("infalign_stale_probe", "def f():\n    return 1\n", past)
    clean = cache.modules_digest(["infalign_stale_probe"], "X")  # not imported: the file's digest
    importlib.import_module("infalign_stale_probe")
    assert cache.modules_digest(["infalign_stale_probe"], "X") == clean  # imported, recorded as imported
    probe("infalign_stale_probe", "def f():\n    return 1  # a comment\n", recent)  # touched: same code
    assert cache.modules_digest(["infalign_stale_probe"], "X") == clean
    probe("infalign_stale_probe", "def f():\n    return 2\n", recent)  # an edit: other code than imported
    with caplog.at_level("WARNING", logger="infalign.infra.cache"):
        stale = cache.modules_digest(["infalign_stale_probe"], "X")
        assert cache.modules_digest(["infalign_stale_probe"], "X") == stale  # one mark per process
    assert stale != clean
    assert sum("changed on disk after this process imported it" in r.getMessage() for r in caplog.records) == 1
    del sys.modules["infalign_stale_probe"]  # a process that imports it now runs the file
    assert cache.modules_digest(["infalign_stale_probe"], "X") != stale
    # modified after the start, before any digest recorded it: its imported code is unknown -> marked
    probe("infalign_stale_probe_late", "x = 1\n", past)
    importlib.import_module("infalign_stale_probe_late")
    probe("infalign_stale_probe_late", "x = 2\n", recent)
    assert cache._imported_code_changed("infalign_stale_probe_late", str(tmp_path / "infalign_stale_probe_late.py"),
                                        b"") is True
    # dated in the future (a clock ahead of this one): not an edit
    probe("infalign_stale_probe_future", "y = 1\n", t0 + 3600)
    importlib.import_module("infalign_stale_probe_future")
    future = cache.modules_digest(["infalign_stale_probe_future"], "X")
    del sys.modules["infalign_stale_probe_future"]
    assert cache.modules_digest(["infalign_stale_probe_future"], "X") == future
    assert path.exists()
    # review finding: copied in after the start keeping an old mtime (cp -p, rsync -a, tar x): its ctime says
    # it changed, so its code as imported is unknown -> marked (the mtime alone read it as the imported code)
    monkeypatch.setattr(infalign, "IMPORTED_AT", t0 - 10)
    probe("infalign_stale_probe_copied", "z = 1\n", infalign.IMPORTED_AT - 60)
    monkeypatch.delitem(sys.modules, "infalign_stale_probe_copied", raising=False)
    importlib.import_module("infalign_stale_probe_copied")
    try:
        assert cache._imported_code_changed("infalign_stale_probe_copied",
                                            str(tmp_path / "infalign_stale_probe_copied.py"), b"") is True
    finally:
        del sys.modules["infalign_stale_probe_copied"]


def test_a_file_system_without_flock_builds_unlocked_instead_of_failing(tmp_path, monkeypatch, caplog):
    """run_dir_lock went on without flock (Lustre noflock, NFS without lockd), but every cache miss
    raised OSError(ENOSYS) there, so no world, pool or reward model could be built (a review's find):
    the entry is now built and written (atomically) without the lock, with a warning."""
    import errno

    import torch

    from infalign.infra import cache

    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(cache.fcntl, "flock", no_flock)
    with caplog.at_level("WARNING", logger="infalign.infra.cache"):
        value, hit = cache.cached(tmp_path / "entry.pt", lambda: {"x": torch.arange(3.0)},
                                  lambda v, p: cache.save_tensors(p, v, key="k"),
                                  lambda p: cache.load_tensors(p, "k")[0])
    assert not hit and torch.equal(value["x"], torch.arange(3.0)) and (tmp_path / "entry.pt").is_file()
    assert any("without the lock" in r.getMessage() for r in caplog.records)
    again, hit = cache.cached(tmp_path / "entry.pt", lambda: pytest.fail("rebuilt"), lambda v, p: None,
                              lambda p: cache.load_tensors(p, "k")[0])
    assert hit and torch.equal(again["x"], value["x"])


def test_a_manifest_of_another_key_or_without_a_required_entry_is_corrupt(tmp_path):
    """read_manifest is a cache hit only for its own key (a dir another setting wrote is not this
    one's) and only when every ``required`` entry is listed (``"reference/"``: some file under it) --
    a directory whose checksums all match but which lacks a part is half-written, never a hit."""
    from infalign.infra.cache import CorruptCacheError, read_manifest, write_manifest

    (tmp_path / "policy.pt").write_text("weights")
    write_manifest(tmp_path, "k1")
    assert read_manifest(tmp_path, "k1")["files"].keys() == {"policy.pt"}
    with pytest.raises(CorruptCacheError, match="key"):
        read_manifest(tmp_path, "k2")
    with pytest.raises(CorruptCacheError, match="lists no reference/"):
        read_manifest(tmp_path, "k1", required=("reference/",))
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "pool.pt").write_text("pool")
    write_manifest(tmp_path, "k1")
    assert "reference/pool.pt" in read_manifest(tmp_path, "k1", required=("reference/",))["files"]
