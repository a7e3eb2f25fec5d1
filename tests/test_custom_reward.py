"""A reward added as a config entry: a custom scorer (``reward._target_``; docs/architecture.md §6).

Extension walkthrough: ``reward=<entry>`` with a ``_target_`` was silently ignored -- the run trained and
evaluated with the toy world's reward model, loaded from earlier runs' caches, while its metrics.json
recorded the custom entry. Now the entry's scorer is the run's reward, its scores are checked as a reward
model's are, and its fingerprint (the entry and its code) keys every pool and policy it scored."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from infalign.errors import ConfigError
from infalign.pipeline import custom_reward as custom_mod
from infalign.pipeline import world as world_mod
from pipeline_helpers import compose_train

EXTRA_CONF = f"hydra.searchpath=[file://{Path(__file__).parent / 'extra_conf'}]"


def cfg_with(tmp_path, cache, *overrides):
    return compose_train(cache, tmp_path / "run", "reward=length", EXTRA_CONF, *overrides)


def test_the_entry_is_the_runs_reward_and_keys_its_caches(tmp_path, tiny_cache):
    world = world_mod.load_world(cfg_with(tmp_path, tiny_cache), tiny_cache)
    prompts, responses = world.eval_prompts[:3], ["a b c", "", "one two"]
    scores = world.reward.score(prompts, responses)
    assert scores.dtype == torch.float32 and torch.allclose(scores, torch.tensor([0.3, 0.0, 0.2]))
    assert world.stats["reward_input_format"].startswith("custom scorer length_scorer.LengthScorer")
    other = world_mod.load_world(cfg_with(tmp_path, tiny_cache, "reward.scale=0.2"), tiny_cache)
    model = world_mod.load_world(compose_train(tiny_cache, tmp_path / "run"), tiny_cache)
    fingerprints = {world.reward_fingerprint, other.reward_fingerprint, model.reward_fingerprint}
    assert len(fingerprints) == 3  # another setting, or the toy reward model: other pools, policies, world ids
    assert len({w.stats["world_id"] for w in (world, other, model)}) == 3
    assert world.reference_fingerprint == model.reference_fingerprint and world.gold is not None


@pytest.mark.parametrize(("override", "key"), [
    ("reward._target_=length_scorer.NoSuchScorer", "reward._target_"),
    ("reward._target_=no_such_module.Scorer", "reward._target_"),
    ("+reward.name_or_path=some/model", "reward.name_or_path"),  # e.g. an experiment entry's reward model
    ("+reward.max_length=64", "reward.max_length"),
    ("+reward.scael=0.2", "reward.scael"),  # a typo of an argument: the target's signature lacks it
])
def test_an_unimportable_target_or_a_reward_model_setting_beside_it_is_refused(tmp_path, override, key):
    with pytest.raises(ConfigError) as err:
        world_mod.check_world_config(cfg_with(tmp_path, tmp_path / "cache", override))
    assert err.value.key == key


def test_a_scorer_is_held_to_one_finite_float_per_pair():
    from infalign.models.reward import CheckedScorer

    class Fixed:
        def __init__(self, out):
            self.out = out

        def score(self, prompts, responses):
            return self.out

    assert torch.equal(CheckedScorer(Fixed([1, 2]), "f").score(["p", "q"], ["a", "b"]), torch.tensor([1.0, 2.0]))
    assert CheckedScorer(Fixed(torch.ones(2, dtype=torch.float64)), "f").score(["p", "q"], ["a", "b"]).dtype == \
        torch.float32
    with pytest.raises(ValueError, match="reward scorer f returned scores of shape \\(3,\\) for 2 pairs"):
        CheckedScorer(Fixed([1, 2, 3]), "f").score(["p", "q"], ["a", "b"])
    with pytest.raises(FloatingPointError, match="reward scorer f produced 1 non-finite"):
        CheckedScorer(Fixed([1.0, float("nan")]), "f").score(["p", "q"], ["a", "b"])
    with pytest.raises(TypeError, match="has no score"):
        CheckedScorer(object(), "f")


@pytest.mark.slow
def test_a_run_trains_and_evaluates_on_the_entrys_scorer(tmp_path, tiny_cache):
    import length_scorer
    from infalign.apps import train as train_app

    length_scorer.CALLS.clear()
    metrics = train_app.run(cfg_with(tmp_path, tiny_cache, "policy_cache=false"))
    assert metrics["status"] == "finished"
    assert metrics["world"]["reward_input_format"].startswith("custom scorer length_scorer.LengthScorer")
    cfg = cfg_with(tmp_path, tiny_cache)
    # calibration pool, every RL step's rollout, the two evaluation pools: each scored by the entry's scorer
    scored = sum(length_scorer.CALLS)
    assert scored >= (int(cfg.data.train_prompts) * int(cfg.calibration.K)
                      + 2 * int(cfg.data.eval_prompts) * int(cfg.eval.samples))


def test_reward_model_keys_left_unset_beside_the_target_are_not_its_arguments(tmp_path):
    """Review finding: ``+reward.max_length=null`` or ``+reward.train.enabled=false`` passed the check (unset) and
    were then passed to the scorer's constructor (an unexpected keyword). Its own arguments only; a set one is
    still refused."""
    for override in ("+reward.max_length=null", "+reward.train.enabled=false", "+reward.pad_token=null"):
        cfg = cfg_with(tmp_path, tmp_path / "cache", override)
        world_mod.check_world_config(cfg)
        scorer, _ = custom_mod.custom_scorer(cfg)
        assert scorer.scorer.scale == 0.1
    with pytest.raises(ConfigError) as err:
        world_mod.check_world_config(cfg_with(tmp_path, tmp_path / "cache", "+reward.train.enabled=true"))
    assert err.value.key == "reward.train.enabled"


def test_a_scorer_runs_as_a_reward_model_does_without_graph_or_autocast():
    """Review finding: a scorer holding a torch model was called inside Lightning's bf16 autocast (its scores
    rounded to bfloat16, as 0b5177c fixed for reward models) and with a graph; its model did not follow the run
    to its device. It runs without either, and its module is the one the stages move."""
    from infalign.models.reward import CheckedScorer

    class Linear:
        def __init__(self):
            torch.manual_seed(0)
            self.model = torch.nn.Linear(4, 1)

        def score(self, prompts, responses):
            assert not torch.is_grad_enabled()  # (its output is detached anyway: the graph is what costs)
            x = torch.tensor([[len(r), len(p), 1.0, 0.5] for p, r in zip(prompts, responses)])
            return self.model(x)[:, 0]

    scorer = CheckedScorer(Linear(), "linear")
    prompts, responses = ["a prompt"] * 3, ["x", "a longer response", "mid one"]
    plain = scorer.score(prompts, responses)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = scorer.score(prompts, responses)
    assert torch.equal(under, plain) and not plain.requires_grad and scorer.model is scorer.scorer.model
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():  # (the check can see rounding)
        assert not torch.equal(Linear().score(prompts, responses).float(), plain)
    assert CheckedScorer(type("NoModel", (), {"model": "not a module", "score": Linear.score})(), "x").model is None


def test_the_fingerprint_follows_the_scorers_code_and_its_own_fingerprint(tmp_path, monkeypatch):
    """Review finding: nothing checked that the key holds the scorer's code (dropping it passed every test). An
    edit of the scorer's module, or a change of the fingerprint a scorer gives for what its entry does not show
    (weights read from a path), gives another key; the same code and entry the same one."""
    import importlib
    import sys

    module = tmp_path / "my_rule.py"
    code = ("class Rule:\n    fingerprint = 'weights-v1'\n    def __init__(self, k=1.0):\n        self.k = k\n"
            "    def score(self, prompts, responses):\n        return [self.k * len(r) for r in responses]\n")
    module.write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    cfg = compose_train(tmp_path / "cache", tmp_path / "run", "reward=length", EXTRA_CONF,
                        "reward._target_=my_rule.Rule", "~reward.scale")
    first, again = custom_mod.custom_scorer(cfg)[1], custom_mod.custom_scorer(cfg)[1]
    assert first == again
    sys.modules["my_rule"].Rule.fingerprint = "weights-v2"
    assert custom_mod.custom_scorer(cfg)[1] != first
    sys.modules["my_rule"].Rule.fingerprint = "weights-v1"
    module.write_text(code.replace("self.k * len(r)", "self.k * len(r.split())"))
    assert custom_mod.custom_scorer(cfg)[1] != first


def test_a_helper_module_beside_the_scorer_is_part_of_its_key(tmp_path, monkeypatch):
    """Walkthrough finding: a scorer importing a rule from a helper module beside it kept its key when the helper
    changed -- cached calibration pools (old rule) were mixed with fresh policy scores (new rule), a bon4 win
    rate 0.547 -> 0.081. Every module imported from the scorer's own place is in the key; infalign's and
    installed packages' are not."""
    import importlib

    (tmp_path / "textrules.py").write_text("def repeats(text):\n    return len(text.split())\n")
    (tmp_path / "lazyrules.py").write_text("def sign():\n    return 1.0\n")
    (tmp_path / "unrelated.py").write_text("X = 1\n")
    (tmp_path / "proxy2.py").write_text("import os\nimport numpy\nfrom textrules import repeats\n\nclass Proxy:\n"
                                        "    def score(self, prompts, responses):\n"
                                        "        from lazyrules import sign  # imported when it first scores\n"
                                        "        return [sign() * repeats(r) for r in responses]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("infalign.IMPORTED_AT", time.time() + 60)  # the files predate this "process start": no
    importlib.invalidate_caches()                                  # stale-import mark (infra/cache.py) on import
    cfg = compose_train(tmp_path / "cache", tmp_path / "run", "reward=length", EXTRA_CONF,
                        "reward._target_=proxy2.Proxy", "~reward.scale")
    first = custom_mod.custom_scorer(cfg)[1]
    # read from the source, not from what the process imported: the same before and after it scored, and
    # beside an unrelated module of the same place (review finding: the key followed sys.modules)
    assert custom_mod.scorer_code_modules("proxy2") == ["lazyrules", "proxy2", "textrules"]
    custom_mod.custom_scorer(cfg)[0].score(["p"], ["a b"])
    import unrelated  # noqa: F401
    assert custom_mod.custom_scorer(cfg)[1] == first
    (tmp_path / "textrules.py").write_text("def repeats(text):\n    return len(set(text.split()))\n")
    second = custom_mod.custom_scorer(cfg)[1]
    assert second != first
    (tmp_path / "lazyrules.py").write_text("def sign():\n    return -1.0\n")
    assert custom_mod.custom_scorer(cfg)[1] != second
    beside = custom_mod.scorer_code_modules("length_scorer")  # tests/: the test modules imported from there
    assert "length_scorer" in beside and not [m for m in beside if m.startswith(("infalign", "torch", "numpy"))]


@pytest.mark.parametrize(("target", "why"), [
    ("length_scorer", "it is a module"),
    ("collections.OrderedDict", "without a score method"),
    ("test_custom_reward.score_words", "a scoring function itself"),
])
def test_a_target_that_builds_no_scorer_is_refused_before_compute(tmp_path, target, why):
    """Walkthrough finding: a module, a class without score or a bare scoring function as _target_ passed the check
    and failed after the world stage (exit 1)."""
    cfg = cfg_with(tmp_path, tmp_path / "cache", f"reward._target_={target}", "~reward.scale")
    with pytest.raises(ConfigError, match=why) as err:
        world_mod.check_world_config(cfg)
    assert err.value.key == "reward._target_"


def score_words(prompts, responses):
    return [float(len(r.split())) for r in responses]


class CappedLength:
    """A scorer whose own argument is named like a reward-model setting."""

    def __init__(self, max_length: int = 10) -> None:
        self.max_length = max_length

    def score(self, prompts, responses):
        return [float(min(len(r.split()), self.max_length)) for r in responses]


def test_an_argument_the_scorer_names_is_its_own_even_if_a_reward_model_has_one_so_named(tmp_path):
    """Walkthrough finding: CappedLength(max_length=12) was refused ("an experiment entry sets it"). A key the
    scorer's signature names is its argument; one it does not name is a reward-model setting, refused when set."""
    cfg = cfg_with(tmp_path, tmp_path / "cache", "reward._target_=test_custom_reward.CappedLength", "~reward.scale",
                   "+reward.max_length=2")
    world_mod.check_world_config(cfg)
    scorer, _ = custom_mod.custom_scorer(cfg)
    assert scorer.scorer.max_length == 2 and scorer.score(["p"], ["a b c"]).tolist() == [2.0]


def test_a_scorer_reads_the_dataset_prompt_and_says_what_it_returned_that_is_no_number():
    """Walkthrough findings: a custom scorer got the policy's chat-templated prompt where a reward model reads the
    dataset's text; a dict or None returned gave torch's "Could not infer dtype of dict" naming nothing."""
    from infalign.models.reward import CheckedScorer

    class Echo:
        seen: list = []

        def score(self, prompts, responses):
            Echo.seen = list(prompts)
            return [1.0] * len(prompts)

    scorer = CheckedScorer(Echo(), "echo", dataset_prompts={"<|user|> hi <|assistant|>": "Human: hi\n\nAssistant:"})
    scorer.score(["<|user|> hi <|assistant|>"], ["a"])
    assert Echo.seen == ["Human: hi\n\nAssistant:"]
    # a prompt the map lacks: its dataset text is unknown -- a KeyError, as a reward model's scorer raises (it
    # had been passed through as the rendering)
    with pytest.raises(KeyError, match="not among the world's prompts.*'plain'"):
        scorer.score(["<|user|> hi <|assistant|>", "plain"], ["a", "b"])

    class Odd:
        def __init__(self, out):
            self.out = out

        def score(self, prompts, responses):
            return self.out

    for out in ({"a": 1.0}, None, ["x", "y"]):
        with pytest.raises(ValueError, match=f"reward scorer odd returned a {type(out).__name__} that is not numbers"):
            CheckedScorer(Odd(out), "odd").score(["p", "q"], ["a", "b"])


def test_the_toy_reward_models_figures_are_not_a_custom_rewards(tmp_path, tiny_cache):
    """Walkthrough finding: a custom-scorer run recorded the toy reward model's validation accuracy as its own
    (world.reward_val_accuracy -> W&B reward_model/val_accuracy)."""
    custom = world_mod.load_world(cfg_with(tmp_path, tiny_cache), tiny_cache)
    model = world_mod.load_world(compose_train(tiny_cache, tmp_path / "run"), tiny_cache)
    assert "reward_val_accuracy" in model.stats and not set(world_mod.TOY_REWARD_MODEL_STATS) & set(custom.stats)


def test_every_reward_model_setting_of_an_experiment_is_named_at_once(tmp_path):
    """Walkthrough finding: with experiment=hh_harmless_won (a reward model's name, input, prompt format) the
    conflicts came one key per run, and with the toy world the prompt-format check asked for 'full' instead of
    saying the key is unread. One ConfigError names them all, with the overrides that drop them."""
    from infalign.pipeline.settings import model_settings

    cfg = cfg_with(tmp_path, tmp_path / "cache", "+reward.name_or_path=org/rm", "+reward.input=pair",
                   "+reward.prompt_format=last_user_turn")
    model_settings(cfg)  # (the reward-model checks are not a custom scorer's)
    with pytest.raises(ConfigError) as err:
        world_mod.check_world_config(cfg)
    assert err.value.key == "reward.name_or_path"
    assert "drop ~reward.name_or_path ~reward.input ~reward.prompt_format" in str(err.value)


def test_a_scorer_in_a_namespace_package_keys_its_sibling_helpers_and_one_in_main_is_refused(tmp_path, monkeypatch):
    """Review findings: in a namespace package (no __init__.py) the place was the scorer's own folder, leaving a
    helper in a sibling folder out (a silent collision); a scorer defined in the script run as __main__ failed
    with a raw error after the world loaded."""
    import importlib

    (tmp_path / "nspkg" / "sub").mkdir(parents=True)
    (tmp_path / "nspkg" / "other").mkdir()
    (tmp_path / "nspkg" / "other" / "rules.py").write_text("def f(r):\n    return float(len(r))\n")
    (tmp_path / "nspkg" / "sub" / "sc.py").write_text("from ..other.rules import f\n\nclass Scorer:\n"
                                                      "    def score(self, prompts, responses):\n"
                                                      "        return [f(r) for r in responses]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert custom_mod.scorer_code_modules("nspkg.sub.sc") == ["nspkg.other.rules", "nspkg.sub.sc"]
    with pytest.raises(ValueError, match="not the script run as __main__"):
        custom_mod.scorer_code_modules("__main__")


@pytest.mark.parametrize(("fingerprint", "ok"), [
    ("weights-v1", True), (3, True), ("method", True), ("property-raising", False), ("a-list", False)])
def test_a_scorers_own_fingerprint_is_a_string_or_number_read_once(tmp_path, fingerprint, ok):
    """Review finding: a fingerprint method's repr (a fresh address per process) became part of the key, and a
    property's error escaped raw. A value or a method returning one is read; anything else is a ConfigError."""
    class Scorer:
        def score(self, prompts, responses):
            return [0.0] * len(responses)

    if fingerprint == "method":
        Scorer.fingerprint = lambda self: "weights-v2"
    elif fingerprint == "property-raising":
        Scorer.fingerprint = property(lambda self: open(tmp_path / "missing.bin").read())
    elif fingerprint == "a-list":
        Scorer.fingerprint = ["w"]
    else:
        Scorer.fingerprint = fingerprint
    if ok:
        assert custom_mod._own_fingerprint(Scorer(), "t") == {"method": "weights-v2"}.get(fingerprint, str(fingerprint))
    else:
        with pytest.raises(ConfigError) as err:
            custom_mod._own_fingerprint(Scorer(), "t")
        assert err.value.key == "reward._target_"
    assert custom_mod._own_fingerprint(type("Plain", (), {})(), "t") is None



def test_the_scorers_place_is_its_sys_path_entry_its_packages_and_links_count_and_nothing_outside_is_imported(
        tmp_path, monkeypatch):
    """Review findings: a package scorer's helper beside its package (the same sys.path entry) was left out, so
    were the packages above it (their __init__ runs on import) and a helper reached through a symlink; and reading
    the imports imported modules outside the scorer's place (an ``if False: from transformers import ...`` cost
    2 s). An installed scorer keeps its own package (it dropped out of the key)."""
    import importlib
    import sys

    proj, shared = tmp_path / "proj", tmp_path / "shared"
    (proj / "pk" / "sub").mkdir(parents=True)
    (proj / "pk" / "helpers").mkdir()
    shared.mkdir()
    (proj / "pk" / "__init__.py").write_text("X = 1\n")
    (proj / "pk" / "sub" / "__init__.py").write_text("")
    (proj / "pk" / "helpers" / "__init__.py").write_text("")
    (proj / "pk" / "helpers" / "rules.py").write_text("def f(r):\n    return 1.0\n")
    (proj / "beside.py").write_text("def g():\n    return 2\n")
    (shared / "linked.py").write_text("def h():\n    return 3\n")
    (proj / "linked.py").symlink_to(shared / "linked.py")
    (proj / "pk" / "sub" / "scorer.py").write_text(
        "from pk.helpers.rules import f\nimport beside\nimport linked\nif False:\n    from http import server\n"
        "    from scipy import optimize\ntry:\n    from missing_pkg import x\nexcept ImportError:\n    pass\n"
        "class S:\n    def score(self, prompts, responses):\n        return [f(r) for r in responses]\n")
    monkeypatch.syspath_prepend(str(proj))
    importlib.invalidate_caches()
    before = set(sys.modules)
    modules = custom_mod.scorer_code_modules("pk.sub.scorer")
    assert modules == ["beside", "linked", "pk", "pk.helpers", "pk.helpers.rules", "pk.sub", "pk.sub.scorer"]
    assert not {m for m in set(sys.modules) - before if not m.startswith("pk")} & {"scipy.optimize", "http.server"}
    installed = custom_mod.scorer_code_modules("_pytest.python")  # (a module of an installed package)
    assert "_pytest.python" in installed and all(m.startswith("_pytest") for m in installed)


def test_the_modules_are_found_by_where_they_are_without_running_any_of_them(tmp_path, monkeypatch):
    """Review findings: a local utils.py was left out when an installed distribution also claims the name
    ``utils``; reading ``from helpers import Thing`` ran helpers (find_spec imports a dotted name's parents); a
    namespace package split over two sys.path entries lost the helper beside the scorer."""
    import importlib
    import sys

    site, proj, a, b = (tmp_path / n for n in ("site", "proj", "a", "b"))
    (site / "sloppy-1.0.dist-info").mkdir(parents=True)
    (site / "sloppy-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: sloppy\nVersion: 1.0\n")
    (site / "sloppy-1.0.dist-info" / "top_level.txt").write_text("utils\n")
    proj.mkdir()
    (proj / "utils.py").write_text("def u():\n    return 1\n")
    (proj / "helpers.py").write_text("import builtins\nbuiltins.HELPERS_RAN = True\n\nclass Thing:\n    pass\n")
    (proj / "scorer_w.py").write_text(
        "from typing import TYPE_CHECKING\nimport utils\nif TYPE_CHECKING:\n    from helpers import Thing\n\n"
        "class S:\n    def score(self, prompts, responses):\n        return [0.0] * len(responses)\n")
    (a / "nsw").mkdir(parents=True)
    (b / "nsw").mkdir(parents=True)
    (a / "nsw" / "other.py").write_text("X = 1\n")
    (b / "nsw" / "helper.py").write_text("Y = 2\n")
    (b / "nsw" / "scorer.py").write_text("from . import helper\n")
    for path in (site, proj, a, b):
        monkeypatch.syspath_prepend(str(path))
    importlib.invalidate_caches()
    assert custom_mod.scorer_code_modules("scorer_w") == ["helpers", "scorer_w", "utils"]
    assert not getattr(__import__("builtins"), "HELPERS_RAN", False) and "helpers" not in sys.modules
    assert custom_mod.scorer_code_modules("nsw.scorer") == ["nsw.helper", "nsw.scorer"]
