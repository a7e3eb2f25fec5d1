"""Content-addressed, atomic, corruption-checked artefact cache.

Every artefact (toy models, reference pools and calibration tables, trained policies) is keyed by a hash of
*everything that determines it* (``content_key``), never by run name, so every job of a sweep
reuses it. Files are written to a temporary name in the same directory and ``os.replace``-d into
place (atomic on POSIX), so a crash never leaves a partial file under the final name. Tensor
payloads carry a SHA-256 of their bytes; a file whose checksum does not match is reported as
corrupt, deleted and rebuilt -- never silently used. A per-key lock file serialises concurrent
builders (two jobs of a joblib sweep), so the second one waits and then reads the first's result.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import fcntl
import functools
import hashlib
import importlib.util
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
T = TypeVar("T")


LOG_METHODS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})


class _MessagesBlanked(ast.NodeTransformer):
    """Drop what only words a message: the arguments of a raised exception (``raise X(...)`` ->
    ``raise X()``), an ``assert``'s message, the arguments of ``log.<level>(...)`` and
    ``warnings.warn(...)``, all of ``require(ok, key, value, allowed, hint)`` but ``ok``, and the key of
    ``require_type(key, value, kind)``. What is raised (the class), when (every condition, ``ok``,
    ``kind``), that a warning is given, and every other string stay."""

    def visit_Raise(self, node: ast.Raise) -> ast.AST:
        if isinstance(node.exc, ast.Call):
            node.exc.args, node.exc.keywords = [], []
        return self.generic_visit(node)

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        node.msg = None
        return self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else None
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and (
                (func.value.id == "log" and func.attr in LOG_METHODS) or (func.value.id, func.attr) == ("warnings",
                                                                                                       "warn")):
            node.args, node.keywords = [], []
        elif name == "require" and node.args:
            node.args, node.keywords = node.args[:1], []
        elif name == "require_type" and node.args:
            node.args = node.args[1:]
        return self.generic_visit(node)


@functools.lru_cache(maxsize=256)
def code_fingerprint(source: str) -> bytes:
    """The syntax tree of ``source`` without docstrings and without the wording of its messages
    (:class:`_MessagesBlanked`: raised exceptions' arguments, log and warning arguments, ``require``'s key
    and wording); comments and positions never enter ast.dump. So rewording an error, a warning or a
    docstring keeps every cache entry, while a change to what is computed -- or to when a check
    raises or warns -- retires them.

    A pure function of the text, memoised: every run of a process (a multirun, the tests) re-reads
    the modules but parses each version of a file once (parsing all of them cost ~0.1 s CPU per run)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(_MessagesBlanked().visit(tree)).encode()


def modules_digest(modules: Sequence[str], listed_in: str) -> str:
    """SHA-256 (16 hex digits) over the code of ``modules`` (:func:`code_fingerprint` of each file,
    read now: a module the process imports later runs the file as it is now): the part of a cache
    key that retires an entry when the code that computed it changes. A module that cannot be found
    is an error naming ``listed_in``, the list to update.

    A module this process has already imported whose *code* changed on disk since (an edit, or another
    branch checked out, while a run or a sweep's worker was alive) runs the code as imported, not the
    file: the file's digest would store the old code's results under the new code's key, for every
    later run to load. Such a digest gets this process's own mark instead (:func:`_stale_mark`; a
    warning says so once): its results are computed and cached as usual, but under a key no other
    process builds. What "the code as imported" is, :func:`_imported_code_changed` decides."""
    h = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"cache key: module {name!r} not found (update {listed_in})")
        fingerprint = code_fingerprint(Path(spec.origin).read_text())
        h.update(fingerprint)
        if name in sys.modules and _imported_code_changed(name, spec.origin, fingerprint):
            h.update(_stale_mark(name, spec.origin))
    return h.hexdigest()[:16]


_IMPORTED_CODE: dict[str, bytes] = {}  # module -> the code_fingerprint of what this process imported


def _imported_code_changed(name: str, path: str, fingerprint: bytes) -> bool:
    """Whether the imported module ``name`` runs other code than its file now holds (``fingerprint``).
    The first digest of a module in this process records its file's code as the imported code when
    the file was last written (its mtime) and last replaced or changed (its ctime, which ``cp -p``,
    ``rsync -a`` and ``tar x`` cannot backdate) at least :data:`STALE_SLACK_S` before
    ``infalign.IMPORTED_AT`` (the process's start; the slack: file systems that keep times to the
    second) -- or when its mtime is in the future (a clock ahead of this one: an NFS server, an
    archive), which says nothing about an edit; later digests compare with that record, so a ``touch``
    or a comment-only edit changes nothing. A file changed after the start before any digest recorded
    it may hold other code: changed."""
    known = _IMPORTED_CODE.get(name)
    if known is not None:
        return fingerprint != known
    from infalign import IMPORTED_AT

    try:
        st = os.stat(path)
    except OSError:
        return False
    if max(st.st_mtime, st.st_ctime) <= IMPORTED_AT - STALE_SLACK_S or st.st_mtime > time.time() + 1.0:
        _IMPORTED_CODE[name] = fingerprint
        return False
    return True


STALE_SLACK_S = 1.0  # _imported_code_changed: a file changed this close to the process's start may be newer


@functools.cache
def _stale_mark(name: str, path: str) -> bytes:
    """What :func:`modules_digest` adds for a module whose code changed on disk after this process
    imported it (:func:`_imported_code_changed`): the process's id and start, so no other process's
    key matches; warned once per module."""
    from infalign import IMPORTED_AT

    log.warning("%s changed on disk after this process imported it (%s): results computed now come from the "
                "code as imported, so they are cached under a key of this process's own, never served to a "
                "run of the edited code", name, path)
    return f"stale:{name}:{os.getpid()}:{IMPORTED_AT!r}".encode()


def content_key(*parts: Any, length: int = 16, canonical_numbers: bool = True) -> str:
    """SHA-256 (hex, truncated) of a canonical JSON encoding of ``parts`` (dicts sorted by key; configs,
    paths and tensors as :func:`_json_default` encodes them).

    Numbers are keyed by value (:func:`canonical_numbers`): an integral float is encoded as the int it
    equals, so ``transform.t=4`` on the command line (an int) and ``t: 4.0`` in a config file (a float)
    give one key; booleans stay booleans. A setting whose *type* changes what it does (Lightning's
    ``limit_train_batches``: int = batches, float = fraction) must be tagged by the caller
    (``pipeline/policy_cache.policy_key``). ``canonical_numbers=False``: the encoding of keys written
    before numbers were canonical, for a key that is recorded as an identity rather than used to find
    a cache entry (``toy/build.ToyArtifacts.world_key``)."""
    if canonical_numbers:
        parts = canonical_number_values(parts)
    blob = json.dumps(parts, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def canonical_number_values(obj: Any) -> Any:
    """``obj`` with every integral finite float (``4.0``, ``-0.0``, ``1e20``) replaced by the int it
    equals, through dicts, lists, tuples and configs (converted as :func:`_json_default` converts them;
    paths and tensors likewise). Booleans -- ints in Python -- and every other value are kept as they
    are: ``True`` is never ``1``."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str | int):
        return obj
    if isinstance(obj, float):
        return int(obj) if obj.is_integer() else obj  # (NaN and infinities are not integral)
    if isinstance(obj, dict):
        return {k: canonical_number_values(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [canonical_number_values(v) for v in obj]
    return canonical_number_values(_json_default(obj))


def _json_default(obj: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, DictConfig | ListConfig):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a hard dependency
        pass
    if isinstance(obj, Path):
        return str(obj)
    torch = sys.modules.get("torch")  # not imported: obj is no tensor (infalign-analyze runs without torch)
    if torch is not None and isinstance(obj, torch.Tensor):
        return hashlib.sha256(obj.detach().cpu().numpy().tobytes()).hexdigest()
    raise TypeError(f"{type(obj).__name__} has no JSON form (cache keys and JSON files take configs, paths, "
                    "tensors and JSON values)")


def current_umask() -> int:
    """The process umask (read by setting and restoring it; there is no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _default_mode(path: Path) -> None:
    """Give a ``mkstemp`` / ``mkdtemp`` result (0600 / 0700) the mode ``open`` / ``mkdir`` would:
    ``0666 & ~umask`` for files, ``0777 & ~umask`` for directories."""
    base = 0o777 if path.is_dir() else 0o666
    os.chmod(path, base & ~current_umask())


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success rename it into place atomically."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix + ".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    _default_mode(tmp_path)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            if tmp_path.is_dir():
                shutil.rmtree(tmp_path, ignore_errors=True)
            else:
                tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; on success move it into place.

    An existing ``final`` is renamed aside (:func:`aside_dir`), the new dir renamed into place, then the old
    one deleted: a kill at any point leaves ``final`` whole -- the old dir or the new -- except between the
    two renames, which leaves no ``final`` and the old dir whole aside; :func:`recover_dir` (run first here,
    and by :func:`cached` before it looks for an entry) moves it back. A failure of the second rename puts
    the old dir back at once; one while deleting the old dir, the new one being in place, is logged (the
    next :func:`recover_dir` deletes the rest). A crash while the caller writes leaves only a hidden temp
    dir. Writers of one ``final`` must be serialised (:func:`cached`'s lock, a run dir's lock)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    _default_mode(tmp)
    try:
        yield tmp
        # what the caller wrote, as open / mkdir would have made it: safetensors (save_pretrained) writes its
        # weights 0600, which left a cache shared read-only unreadable to its other users (robustness walkthrough)
        for path in tmp.rglob("*"):
            if not path.is_symlink():
                _default_mode(path)
        aside = aside_dir(final)
        moved = final.exists()
        if moved:
            os.replace(final, aside)
        try:
            os.replace(tmp, final)
        except BaseException:
            if moved:
                os.replace(aside, final)
            raise
        if moved:
            try:
                shutil.rmtree(aside)
            except OSError as exc:
                log.warning("%s is in place; deleting the previous version aside failed (deleted by the next "
                            "write): %s", final, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def aside_dir(final: str | os.PathLike) -> Path:
    """Where :func:`atomic_dir` keeps the previous ``final`` while it moves the new one in: ``.<name>.old``
    beside it."""
    final = Path(final)
    return final.with_name(f".{final.name}.old")


def recover_dir(final: str | os.PathLike) -> None:
    """Undo what a kill in the middle of :func:`atomic_dir`'s swap left beside ``final``: without ``final``
    (killed between the two renames) its previous version, whole in :func:`aside_dir`, is moved back; with
    ``final`` (killed while the old one was being deleted) what is left aside is deleted."""
    final, aside = Path(final), aside_dir(final)
    if not aside.is_dir():
        return
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(aside, final)
        log.warning("%s: restored from %s, where an interrupted replacement left it", final, aside)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_safe(obj: Any, default: Callable[[Any], Any] | None = None) -> Any:
    """``obj`` as plain JSON values, every non-finite float (NaN, +-inf) replaced by ``None``.

    JSON (RFC 8259) has no NaN or Infinity: Python writes them as bare ``NaN`` / ``Infinity``,
    which strict readers (JavaScript's ``JSON.parse``, jq, most non-Python libraries) refuse, so a
    single undefined figure (e.g. a theory value where the grid does not resolve the tilted policy)
    would make a whole ``metrics.json`` unreadable to them. infalign's files therefore say
    ``null`` for "no value"; its own readers take ``null`` in a number field as missing
    (``report/naming.number``, ``pipeline/run_record``). Values JSON cannot hold are converted by
    ``default`` first (by default as in the cache keys: configs to containers, paths to strings,
    tensors to their hash; anything else is a ``TypeError``)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v, default) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v, default) for v in obj]
    if obj is None or isinstance(obj, str | int):
        return obj
    return json_safe((default or _json_default)(obj), default)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as strict JSON (:func:`json_safe`: NaN and infinities as ``null``), indented, keys
    sorted, written atomically."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_text(path, text + "\n")


def atomic_write_csv(path: str | os.PathLike, rows: list[dict], fieldnames: list[str] | None = None) -> None:
    """Rows as CSV (columns: ``fieldnames``, default the first row's keys; missing/None cells empty)."""
    cols = fieldnames if fieldnames is not None else (list(rows[0]) if rows else ["empty"])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{k: ("" if r.get(k) is None else r.get(k)) for k in cols} for r in rows])


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class CorruptCacheError(RuntimeError):
    """A cache file exists but its checksum or structure is wrong."""


MANIFEST = "manifest.json"


def write_manifest(directory: str | os.PathLike, key: str, name: str = MANIFEST, **extra: Any) -> dict:
    """Write ``directory/name``: the cache ``key``, ``extra`` fields, and ``files``, the SHA-256 of every
    file under ``directory`` (by relative path; the manifest itself left out). Called last, on a directory
    about to be moved into place (``atomic_dir``); :func:`read_manifest` checks it."""
    directory = Path(directory)
    files = {str(p.relative_to(directory)): sha256_file(p) for p in sorted(directory.rglob("*"))
             if p.is_file() and p != directory / name}
    manifest = {"key": key, **extra, "files": files}
    atomic_write_json(directory / name, manifest)
    return manifest


def read_manifest(directory: str | os.PathLike, key: str, name: str = MANIFEST, required: Sequence[str] = (),
                  verify: bool = True) -> dict:
    """The manifest :func:`write_manifest` wrote in ``directory``; :class:`CorruptCacheError` unless it
    exists, parses, carries ``key``, lists every ``required`` entry (a path, or ``"<dir>/"``: some file
    under it) and (``verify``) every listed file exists with its recorded checksum -- a truncated or
    altered file, or a directory left half-written, is never a cache hit."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / name).read_text())
        files, found_key = manifest["files"], manifest["key"]
        if not isinstance(files, dict):
            raise TypeError(f"files is a {type(files).__name__}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptCacheError(f"{directory}: bad manifest ({type(exc).__name__}: {exc})") from exc
    if found_key != key:
        raise CorruptCacheError(f"{directory}: manifest key {found_key!r} != {key!r}")
    for entry in required:
        if not (any(f.startswith(entry) for f in files) if entry.endswith("/") else entry in files):
            raise CorruptCacheError(f"{directory}: manifest lists no {entry}")
    if verify:
        for rel, digest in files.items():
            p = directory / rel
            if not p.is_file() or sha256_file(p) != digest:
                raise CorruptCacheError(f"{directory}: {rel} missing or checksum mismatch")
    return manifest


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(sys.modules["torch"].uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict | None = None,
                 key: str | None = None) -> None:
    """Atomically write ``tensors`` plus ``meta`` with a checksum of the tensor bytes and the cache
    ``key`` they belong to (checked by :func:`load_tensors`)."""
    payload = {"tensors": tensors, "meta": meta or {}, "sha256": _digest(tensors), "key": key}
    with atomic_path(path) as tmp:
        import torch

        torch.save(payload, tmp)


def load_tensors(path: str | os.PathLike, key: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a file written by :func:`save_tensors`; raise :class:`CorruptCacheError` if damaged or,
    when ``key`` is given, if the file was stored under another key (a file copied to the wrong name)."""
    try:
        import torch

        payload = torch.load(path, map_location="cpu", weights_only=True)
        tensors, meta, digest = payload["tensors"], payload["meta"], payload["sha256"]
        stored_key = payload.get("key")
        if not (isinstance(tensors, dict) and all(isinstance(t, torch.Tensor) for t in tensors.values())
                and isinstance(meta, dict)):
            raise TypeError("not a dict of tensors with a dict of metadata")
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated pickle, wrong structure, ...
        raise CorruptCacheError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from exc
    if _digest(tensors) != digest:
        raise CorruptCacheError(f"{path}: checksum mismatch")
    if key is not None and stored_key != key:
        raise CorruptCacheError(f"{path}: stored under key {stored_key!r}, expected {key!r}")
    return tensors, meta


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock (``fcntl.flock``) held for the duration of the block. On a file
    system without ``flock`` (Lustre mounted noflock, NFS without lockd: ``OSError`` ENOSYS, ENOLCK,
    EOPNOTSUPP) the block runs unlocked, with a warning once per process: concurrent builders of one
    entry may then both build it -- wasted work, never a torn entry (entries appear by atomic rename
    and are checked on load) -- where a raised error made every cache miss fail."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        except OSError as exc:
            _warn_no_lock(path.parent, str(exc))
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@functools.cache
def _warn_no_lock(where: Path, exc: str) -> None:
    log.warning("cannot lock cache entries under %s (%s): building without the lock (two jobs may build one "
                "entry twice; entries are still written atomically)", where, exc)


def cached(
    path: str | os.PathLike,
    build: Callable[[], T],
    save: Callable[[T, Path], None],
    load: Callable[[Path], T],
) -> tuple[T, bool]:
    """Return ``(artefact, hit)``: load ``path`` if valid, else build, save atomically, return.

    A complete entry is read without a lock (entries only ever appear by an atomic rename, so a
    reader sees all of one or nothing; a read-only cache works). On a miss, builders of the same
    key are serialised by a lock so concurrent jobs build once; a corrupt file is logged, deleted
    and rebuilt.
    """
    path = Path(path)
    if path.exists():
        try:
            return load(path), True
        except (CorruptCacheError, FileNotFoundError):
            # re-checked (and reported) under the lock: another builder may be replacing it -- or
            # have deleted a corrupt entry between our exists() and its load
            pass
    with file_lock(path.with_name(path.name + ".lock")):
        recover_dir(path)  # an entry a killed atomic_dir left aside
        if path.exists():
            try:
                return load(path), True
            except CorruptCacheError as exc:
                log.warning("corrupt cache entry, rebuilding: %s", exc)
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        value = build()
        save(value, path)
        return value, False
