"""One module per claim of the paper; importing this package registers them all.

``REGISTRY`` maps experiment names to :class:`~muonflow.experiments.base.Experiment` in the
order of the report. Each experiment is a frozen config, ``simulate(config, progress) ->
series`` (saved to disk), ``checks(series, config)`` and ``figure(series, config)`` (pure
functions of the saved series); see :mod:`muonflow.experiments.base`.
"""

# The import order is the registry's (and the report's) order: keep it, not alphabetical.
# isort: off
from . import smoothing  # noqa: F401  (registers)
from . import dissipation  # noqa: F401  (registers)
from . import discrete_monotonicity  # noqa: F401  (registers)
from . import continuous_limit  # noqa: F401  (registers)
from . import exponential_convergence  # noqa: F401  (registers)
from . import convergence_rates  # noqa: F401  (registers)
from . import no_gradient_dominance  # noqa: F401  (registers)
from . import eps_sweep  # noqa: F401  (registers)
from . import energy_ledger  # noqa: F401  (registers)
from . import chaos  # noqa: F401  (registers)
from . import stability  # noqa: F401  (registers)
from . import particles_vs_pde  # noqa: F401  (registers)
from . import teacher_student  # noqa: F401  (registers)
from . import moe_flow  # noqa: F401  (registers)
from . import practical_training  # noqa: F401  (registers)
# isort: on
from .base import (
    KINDS,
    PROFILES,
    REGISTRY,
    Check,
    Experiment,
    at_least,
    at_most,
    experiment,
    within,
)

__all__ = [
    "KINDS",
    "PROFILES",
    "REGISTRY",
    "Check",
    "Experiment",
    "at_least",
    "at_most",
    "experiment",
    "within",
]
