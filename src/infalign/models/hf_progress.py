"""transformers' own progress bars ("Loading weights", "Writing model shards"), shown only where a load
or save takes a while.

A toy run loads three 0.6M-parameter models and saves one: each bar flashed for milliseconds and left
carriage-return lines in every run's and sweep's log. Weights of :data:`PROGRESS_BAR_BYTES` or more
(seconds to read or write) and hub names (which may download) keep their bars.

Outside the code digests (``TRAINING_CODE``, ``POOL_CODE``, ``TOY_CODE``): how loading is displayed
never changes a weight, so an edit here keeps every cached model, pool and policy valid.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PROGRESS_BAR_BYTES = 1 << 30


@contextlib.contextmanager
def hf_progress(show: bool):
    """transformers' progress bars off within the block unless ``show``, as they were after it. Never
    turned on: a user's choice wins -- bars switched off in code stay off, and with
    ``HF_HUB_DISABLE_PROGRESS_BARS`` set (either way) nothing is changed (huggingface_hub would warn
    that the variable has priority)."""
    from transformers.utils import logging as hf_logging

    quiet = not show and "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ and hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet:
            hf_logging.enable_progress_bar()


def slow_to_load(name_or_path: str | os.PathLike) -> bool:
    """Whether loading shows progress: a hub name, or a local directory whose weight files
    (``*.safetensors``, ``*.bin``) total :data:`PROGRESS_BAR_BYTES` or more."""
    path = Path(name_or_path)
    if not path.is_dir():
        return True
    return sum(f.stat().st_size for f in path.iterdir() if f.suffix in (".safetensors", ".bin")) >= PROGRESS_BAR_BYTES


def save_model(model, tokenizer, directory: str | os.PathLike) -> None:
    """``model.save_pretrained`` and ``tokenizer.save_pretrained`` into ``directory``; transformers'
    bar only for weights of :data:`PROGRESS_BAR_BYTES` or more."""
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    with hf_progress(size >= PROGRESS_BAR_BYTES):
        model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
