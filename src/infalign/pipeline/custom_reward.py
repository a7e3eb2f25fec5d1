"""A reward given as a config entry: a custom scorer (``conf/reward/<entry>.yaml`` with a ``_target_``;
docs/architecture.md §6, "A reward").

:func:`check_custom_reward` checks the entry before compute (the target imports and builds a scorer, its
arguments bind to its signature, no reward-model setting stands beside it set); :func:`custom_scorer`
builds it (:class:`~infalign.models.reward.CheckedScorer`) with its fingerprint -- its arguments, the code of
:func:`scorer_code_modules` (its module, the packages above it and the modules it imports from its own place,
found without importing anything) and the scorer's own ``fingerprint`` -- which keys every pool and policy it
scored and the run's ``world_id``.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from infalign.errors import ConfigError
from infalign.infra.cache import content_key, modules_digest

# reward.* settings of a reward *model*: a custom scorer (reward._target_) reads none of them
REWARD_MODEL_KEYS = ("name_or_path", "revision", "dtype", "max_length", "input", "prompt_format", "pad_token", "train")


def custom_reward(cfg: DictConfig) -> bool:
    """Whether the ``reward`` entry is a custom scorer (a ``_target_``, ``conf/reward/<entry>.yaml``;
    docs/architecture.md §6) rather than a reward model (the toy world's own, or ``name_or_path``)."""
    return cfg.reward.get("_target_") is not None


def _scorer_target(cfg: DictConfig):
    """``(target name, the object it imports, its signature or None)``; a ConfigError of ``reward._target_``
    when it does not import, or imports something that builds no scorer (a module, a class without
    ``score``, a bare scoring function)."""
    import inspect

    from hydra.utils import get_object

    target = str(cfg.reward._target_)
    allowed = ("an importable class (or a function returning an object) with score(prompts, responses) -> one "
               "float per pair, as module.Name")
    try:
        obj = get_object(target)
    except Exception as exc:  # noqa: BLE001 - ImportError, AttributeError, ValueError: all the same to the user
        raise ConfigError("reward._target_", target, allowed, f"{type(exc).__name__}: {exc}") from exc
    if not callable(obj) or (isinstance(obj, type) and not callable(getattr(obj, "score", None))):
        raise ConfigError("reward._target_", target, allowed, f"it is a {type(obj).__name__}"
                          + (" without a score method" if isinstance(obj, type) else ""))
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):  # (a builtin without one: its call says)
        signature = None
    if signature is not None and not isinstance(obj, type) and {"prompts", "responses"} <= set(signature.parameters):
        raise ConfigError("reward._target_", target, allowed, "it is a scoring function itself: wrap it in a class "
                          "whose score(prompts, responses) calls it")
    return target, obj, signature


def _scorer_arguments(cfg: DictConfig, signature) -> dict:
    """The entry's keys the scorer is built with: every key but ``_target_`` -- except a reward-model key
    (:data:`REWARD_MODEL_KEYS`) the signature does not name, which is not its argument: unset (null,
    ``train.enabled: false``), it is left out; set, it is a ConfigError (an experiment entry's reward model,
    silently unread otherwise)."""
    target, entry = cfg.reward._target_, OmegaConf.to_container(cfg.reward, resolve=True)
    named = set(signature.parameters) if signature is not None else set()
    out, refused = {}, {}
    for key, value in entry.items():
        if str(key).startswith("_"):
            continue
        if key in REWARD_MODEL_KEYS and key not in named:
            if key == "train" and isinstance(value, dict):
                key, value = "train.enabled", value.get("enabled")
            if value not in (None, False):
                refused[f"reward.{key}"] = value
            continue
        out[key] = value
    if refused:  # all of them at once (an experiment entry sets several)
        first = next(iter(refused))
        raise ConfigError(first, refused[first], f"unset with reward._target_={target} (a custom scorer reads no "
                          "reward-model setting)", "an experiment entry sets them for its reward model; drop "
                          + " ".join(f"~{k}" for k in refused) + ", or choose a reward model instead")
    return out


def check_custom_reward(cfg: DictConfig) -> None:
    """A custom scorer's ``reward._target_`` imports and builds a scorer (:func:`_scorer_target`), the entry's
    other keys bind to its signature (a typo, or a required argument missing, is a ConfigError naming the
    key) and no reward-model setting it does not take stands beside it set (:func:`_scorer_arguments`)."""
    target, obj, signature = _scorer_target(cfg)
    arguments = _scorer_arguments(cfg, signature)
    _scorer_modules(target, obj)  # (its code is read for the key: a __main__ or zip scorer is refused here)
    if signature is None:
        return
    try:
        signature.bind(**arguments)
    except TypeError as exc:  # an argument it does not take (a typo), or one it needs and the entry lacks
        unknown = [k for k in arguments if k not in signature.parameters]
        key = f"reward.{unknown[0]}" if unknown and not any(
            p.kind is p.VAR_KEYWORD for p in signature.parameters.values()) else "reward._target_"
        raise ConfigError(key, cfg.reward.get(key.removeprefix("reward.")), f"the arguments {target} takes: "
                          f"{', '.join(signature.parameters) or 'none'}", str(exc)) from exc


def scorer_code_modules(module: str) -> list[str]:
    """The modules whose code a custom scorer's key holds: its own ``module`` (always), the packages above it,
    and every module it imports -- read from the source (``import x``, ``from x import y``, relative imports,
    imports inside functions or under ``if`` / ``try``), followed through the modules found -- that lives in
    the same place: a top-level module or package found directly in the ``sys.path`` entry the scorer's own
    was found in (an installed scorer: its own package only). So a helper beside it (``from textrules import
    repeats``) retires its pools and policies when edited, whatever the process happens to have imported.
    Decided by where a module's file is, not by its name: the standard library and installed packages
    (site-packages), a project installed in development mode elsewhere, and infalign are left out; a local
    ``utils.py`` counts even where an installed distribution also claims ``utils``. Modules are looked up
    without importing anything. A ``module`` whose code is no ``.py`` file (the script run as ``__main__``, a
    zip) is a ValueError."""
    import ast

    spec = _module_spec(module)
    if spec is None or module in ("__main__", "__mp_main__"):
        raise ValueError(f"{module} is not a module file infalign can read (.py; not the script run as __main__, "
                         "not a zip): move the scorer into one")
    own_top = module.partition(".")[0]
    places = _scorer_places(own_top, spec)
    found: set[str] = set()
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:  # (cycles, and names imported from several modules)
            continue
        seen.add(name)
        top = name.partition(".")[0]
        if top == "infalign" or (top != own_top and not _top_in(top, places)):
            continue
        spec = _module_spec(name) if name != module else spec
        if spec is None or (name != module and not _inside(Path(spec.origin), places)):
            continue
        found.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # the packages above it run on import
        path = Path(spec.origin)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_bytes())):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1 parents
                    pkg = package.split(".") if package else []
                    if node.level - 1 >= len(pkg):
                        continue  # (beyond the top-level package: Python refuses it)
                    base = ".".join([*pkg[:len(pkg) - (node.level - 1)], *([node.module] if node.module else [])])
                if base:  # (from pkg import mod: mod may be a module too)
                    todo += [base, *(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")]
    return sorted(found)


def _scorer_places(top: str, spec) -> list[Path]:
    """Where a scorer's own code lives, as absolute and as resolved paths (a symlinked folder or file is the
    user's by either): the ``sys.path`` entry its top-level module or package was found in -- or, installed
    (site-packages, the standard library), its own package folder or module file alone."""
    origin = Path(spec.origin)
    top_spec = _find_spec(top) if top != spec.name else spec
    if top_spec is not None and top_spec.origin and top_spec.origin.endswith("__init__.py"):
        package = Path(top_spec.origin).parent
    elif top_spec is not None and top_spec.submodule_search_locations:  # a namespace package: the part of it
        locations = [Path(p) for p in top_spec.submodule_search_locations]  # that holds the scorer
        package = next((p for p in locations if _inside(origin, [p.absolute(), p.resolve()])), locations[0])
    else:
        package = origin  # a top-level module
    entry = package.parent
    place = package if _inside(entry / "x", _system_places()) else entry
    return sorted({place.absolute(), place.resolve()})


@functools.lru_cache(maxsize=1)
def _system_places() -> list[Path]:
    """The standard library's and the installed packages' folders (``sysconfig``, ``site``, the user's site):
    not a scorer's place, even where they sit under its folder (a venv inside the project)."""
    import site
    import sysconfig

    paths = {p for k, p in sysconfig.get_paths().items() if k in ("stdlib", "platstdlib", "purelib", "platlib")}
    for get in ("getsitepackages", "getusersitepackages"):
        try:
            found = getattr(site, get)()
        except AttributeError:  # (an old virtualenv's site module)
            continue
        paths |= {found} if isinstance(found, str) else set(found)
    return sorted({q for p in paths for q in (Path(p).absolute(), Path(p).resolve())})


def _inside(path: Path, places: list[Path]) -> bool:
    """Whether ``path`` (absolute or resolved) lies in one of ``places`` (or is one)."""
    candidates = {path.absolute(), path.resolve()}
    return any(p == place or place in p.parents for p in candidates for place in places)


def _top_in(top: str, places: list[Path]) -> bool:
    """Whether the top-level module or package ``top`` is found directly in the scorer's place (its file or
    folder's parent is the place), and not in a standard-library or installed folder -- where it is, not what
    it is called: a project installed in development mode elsewhere under the place is not the scorer's."""
    spec = _find_spec(top)
    if spec is None:
        return False
    if spec.origin and spec.origin not in ("built-in", "frozen"):
        where = [Path(spec.origin).parent if spec.origin.endswith("__init__.py") else Path(spec.origin)]
    else:
        where = [Path(p) for p in (spec.submodule_search_locations or [])]
    system = _system_places()
    return any(not _inside(w, system) and any(p.parent in places for p in (w.absolute(), w.resolve()))
               for w in where)


def _find_spec(name: str):
    """The spec of module ``name`` without importing anything (``importlib.util.find_spec`` imports a dotted
    name's parents, running their code): the top-level name by ``find_spec`` (which imports nothing), then each
    part looked up in its parent's folders as Python's path finder does -- a package folder, else a ``.py``
    file, else a namespace folder (:func:`_spec_in`); a module already imported gives its own spec. None when
    a part is no module or cannot be looked up."""
    import sys

    parts = name.split(".")
    try:
        loaded = sys.modules.get(parts[0])
        spec = getattr(loaded, "__spec__", None) if loaded is not None else importlib.util.find_spec(parts[0])
    except Exception:  # noqa: BLE001 - a broken module somewhere: not the scorer's to read
        return None
    for i in range(1, len(parts)):
        if spec is None or not spec.submodule_search_locations:
            return None
        full = ".".join(parts[:i + 1])
        loaded = sys.modules.get(full)
        spec = (loaded.__spec__ if loaded is not None and getattr(loaded, "__spec__", None) is not None
                else _spec_in(full, parts[i], [str(p) for p in spec.submodule_search_locations]))
    return spec


def _spec_in(full: str, part: str, locations: list[str]):
    """The spec of the module ``full`` (last part ``part``) in its parent's ``locations``, unimported."""
    namespace = []
    for location in locations:
        folder = Path(location) / part
        if (folder / "__init__.py").is_file():
            return importlib.util.spec_from_file_location(full, folder / "__init__.py",
                                                          submodule_search_locations=[str(folder)])
        if (Path(location) / f"{part}.py").is_file():
            return importlib.util.spec_from_file_location(full, Path(location) / f"{part}.py")
        if folder.is_dir():
            namespace.append(str(folder))
    if not namespace:
        return None
    spec = importlib.machinery.ModuleSpec(full, None, is_package=True)
    spec.submodule_search_locations = namespace
    return spec


def _module_spec(name: str):
    """:func:`_find_spec` of a module whose code is a readable ``.py`` file, else None (a name that is no module,
    a builtin, an extension, a namespace package, a module inside a zip)."""
    spec = _find_spec(name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py") or not Path(spec.origin).is_file():
        return None
    return spec


def custom_scorer(cfg: DictConfig, dataset_prompts: dict[str, str] | None = None):
    """The ``reward`` entry's custom scorer, built with its arguments (:func:`_scorer_arguments`) and checked
    (:class:`~infalign.models.reward.CheckedScorer`; ``dataset_prompts``: the dataset text of each policy
    prompt, read as a reward model reads it), and its fingerprint: the entry's arguments, the digest of the
    code of :func:`scorer_code_modules` and the scorer's own ``fingerprint`` if it gives one (what its code
    and arguments do not show: weights or data files it reads)."""
    from hydra.utils import instantiate

    from infalign.models.reward import CheckedScorer

    target, obj, signature = _scorer_target(cfg)
    arguments = _scorer_arguments(cfg, signature)
    scorer = CheckedScorer(instantiate({"_target_": target, **arguments}), target, dataset_prompts=dataset_prompts)
    own = _own_fingerprint(scorer.scorer, target)
    fingerprint = content_key("custom-scorer", target, arguments,
                              modules_digest(_scorer_modules(target, obj), "reward._target_"),
                              *([own] if own is not None else []))
    return scorer, fingerprint


def _scorer_modules(target: str, obj) -> list[str]:
    """:func:`scorer_code_modules` of the module ``obj`` (the ``_target_``) comes from; a ConfigError of
    ``reward._target_`` when its code cannot be read."""
    module = getattr(obj, "__module__", None) or target.rpartition(".")[0]
    try:
        return scorer_code_modules(module)
    except (ValueError, OSError, SyntaxError) as exc:
        raise ConfigError("reward._target_", target, "a scorer in a module file infalign can read (its code is "
                          "part of the cache key)", str(exc)) from exc


def _own_fingerprint(scorer, target: str) -> str | None:
    """The scorer's ``fingerprint`` (what its code and arguments do not show: weights read from a path): a string
    or number, or a method returning one; None without one. Anything else -- a bound method's repr would differ
    in every process -- or an error it raises is a ConfigError of ``reward._target_``."""
    if not hasattr(type(scorer), "fingerprint") and "fingerprint" not in getattr(scorer, "__dict__", {}):
        return None
    try:
        value = scorer.fingerprint
        value = value() if callable(value) else value
    except Exception as exc:  # noqa: BLE001 - the user's property: its error, named
        raise ConfigError("reward._target_", target, "a scorer whose fingerprint can be read",
                          f"its fingerprint raised {type(exc).__name__}: {exc}") from exc
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError("reward._target_", target, "a scorer whose fingerprint is a string or a number",
                          f"it is a {type(value).__name__}")
    return str(value)
