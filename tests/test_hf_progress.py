"""models/hf_progress.py: transformers' loading/saving bars only where loading takes a while."""

from __future__ import annotations

import pytest
from transformers.utils import logging as hf_logging

from infalign.models import hf_progress as hp
from infalign.models.builders import build_toy_lm, load_causal_lm
from infalign.toy.world import ToyWorld


def test_a_local_dir_shows_progress_only_from_the_threshold_and_a_hub_name_always(tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    weights = model_dir / "model.safetensors"
    with weights.open("wb") as f:
        f.truncate(hp.PROGRESS_BAR_BYTES - 1)  # sparse: the size is what counts, no disk used
    assert not hp.slow_to_load(model_dir)
    with weights.open("r+b") as f:
        f.truncate(hp.PROGRESS_BAR_BYTES)
    assert hp.slow_to_load(model_dir)
    assert hp.slow_to_load("gpt2")  # a hub name: it may download


def test_bars_are_turned_off_within_the_block_and_back_on_after_it_also_on_an_error(monkeypatch):
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    hf_logging.enable_progress_bar()
    with pytest.raises(RuntimeError), hp.hf_progress(False):
        assert not hf_logging.is_progress_bar_enabled()
        raise RuntimeError
    assert hf_logging.is_progress_bar_enabled()
    with hp.hf_progress(True):
        assert hf_logging.is_progress_bar_enabled()


@pytest.mark.parametrize("env", [None, "0", "1"])
def test_a_users_choice_wins(monkeypatch, recwarn, env):
    """Bars switched off in code are never turned on (``show`` only leaves them as they are); with
    ``HF_HUB_DISABLE_PROGRESS_BARS`` set either way nothing is touched (no "variable has priority" warning)."""
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    try:
        if env is None:
            hf_logging.disable_progress_bar()
            with hp.hf_progress(True):
                assert not hf_logging.is_progress_bar_enabled()
            assert not hf_logging.is_progress_bar_enabled()
        else:
            hf_logging.enable_progress_bar()
            monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", env)
            with hp.hf_progress(False):
                assert hf_logging.is_progress_bar_enabled()  # (transformers' own flag: untouched)
            assert not [w for w in recwarn if "progress bars" in str(w.message)]
    finally:
        monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
        hf_logging.enable_progress_bar()


def test_a_small_model_saves_and_loads_without_a_bar(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    tok = ToyWorld(seed=0).tokenizer()
    model = build_toy_lm(tok, "tiny")
    hf_logging.enable_progress_bar()  # transformers' default
    hp.save_model(model, tok, tmp_path / "m")
    with hp.hf_progress(hp.slow_to_load(tmp_path / "m")):
        load_causal_lm(tmp_path / "m")
    err = capfd.readouterr().err
    assert "Writing model shards" not in err and "Loading weights" not in err, err
    monkeypatch.setattr(hp, "PROGRESS_BAR_BYTES", 1)  # the same model counted as large: the bars are back
    hp.save_model(model, tok, tmp_path / "m2")
    with hp.hf_progress(hp.slow_to_load(tmp_path / "m2")):
        load_causal_lm(tmp_path / "m2")
    err = capfd.readouterr().err
    assert "Writing model shards" in err and "Loading weights" in err, err
