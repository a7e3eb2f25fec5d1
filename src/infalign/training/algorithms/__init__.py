"""The algorithm registry: ``algo.name`` -> class (docs/architecture.md §6, "An algorithm").

Importing this package imports every module beside ``base.py``, whose ``@register_algorithm``
classes register themselves -- adding an algorithm is one file here and one ``conf/algo`` entry.
:func:`make_algorithm` builds one from the ``algo`` config.
"""

import importlib
import pkgutil

from infalign.training.algorithms.base import (
    ALGORITHMS,
    AlgoConfig,
    Algorithm,
    OfflineAlgorithm,
    OnlineAlgorithm,
    make_algorithm,
    register_algorithm,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ALGORITHMS", "AlgoConfig", "Algorithm", "OfflineAlgorithm", "OnlineAlgorithm", "make_algorithm",
           "register_algorithm"]
