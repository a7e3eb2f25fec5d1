"""The algorithm registry: ``algo.name`` -> class (docs/architecture.md §6, "An algorithm").

Importing this package registers every algorithm module below; :func:`make_algorithm` builds one
from the ``algo`` config.
"""

from infalign.training.algorithms import bon_sft, ipo, ppo, rloo  # noqa: F401 (register)
from infalign.training.algorithms.base import (
    ALGORITHMS,
    AlgoConfig,
    Algorithm,
    OfflineAlgorithm,
    OnlineAlgorithm,
    make_algorithm,
    register_algorithm,
)

__all__ = ["ALGORITHMS", "AlgoConfig", "Algorithm", "OfflineAlgorithm", "OnlineAlgorithm", "make_algorithm",
           "register_algorithm"]
