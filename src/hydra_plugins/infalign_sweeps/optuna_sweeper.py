"""infalign's Optuna sweeper (Hydra loads sweeper plugins only from the ``hydra_plugins`` namespace).

:class:`OptunaSweeper` is Hydra's Optuna sweeper, except that a study whose every trial failed ends
like any other sweep with failed jobs: the plugin asks Optuna for the best trial at the end and
Optuna raises ``ValueError("No trials are completed yet.")`` -- a traceback after the failures had
been recorded, before ``infalign.apps.hydra_callbacks.FailedJobs`` could list them. Here the study
ends, the callback prints ``k of n jobs failed: <job>: <reason>; ...`` and the exit code is 1.
``sweeps/optuna_t.yaml`` selects it (``hydra.sweeper._target_``). Without the Optuna plugin (the
``sweep`` extra) this module defines nothing: Hydra imports every plugin module at start-up.
"""

from __future__ import annotations

import logging

# importing Optuna imports its database storage, whose alembic logs a dozen "setup plugin alembic..." INFO
# lines through Hydra's root logger (a walkthrough's console): not the user's news
logging.getLogger("alembic").setLevel(logging.WARNING)

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _HydraOptunaSweeper
except ImportError:  # the sweep extra is not installed
    _HydraOptunaSweeper = None

log = logging.getLogger(__name__)

NO_COMPLETED_TRIAL = "No trials are completed yet"  # optuna's message when a study has no best trial

if _HydraOptunaSweeper is not None:

    class OptunaSweeper(_HydraOptunaSweeper):
        """Hydra's ``OptunaSweeper`` whose study may end with no completed trial (module docstring)."""

        def sweep(self, arguments: list[str]) -> None:
            try:
                return super().sweep(arguments)
            except ValueError as exc:
                if NO_COMPLETED_TRIAL not in str(exc):
                    raise
                log.error("no trial of the Optuna study finished, so it has no best trial (each job's "
                          "failure.json says why)")
                return None
