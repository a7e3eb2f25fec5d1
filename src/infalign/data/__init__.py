"""Real preference data (Anthropic HH-RLHF, Reddit TL;DR comparisons): parsers with malformed-record
reports (:mod:`infalign.data.formats`), text batching (:mod:`infalign.data.batches`) and a
LightningDataModule (:mod:`infalign.data.modules`)."""

from infalign.data import formats
from infalign.data.formats import *  # noqa: F403 -- the parsers' public names (formats.__all__)
from infalign.data.modules import SPLITS, PreferenceDataModule

__all__ = [*formats.__all__, "SPLITS", "PreferenceDataModule"]
