"""One module per claim of the paper; importing this package registers them all.

``REGISTRY`` maps experiment names to :class:`~muonflow.experiments.base.Experiment` in the
order of the report.
"""

from . import smoothing  # noqa: F401  (registers)
from .base import PROFILES, REGISTRY, Check, Context, Experiment, Result, experiment

__all__ = ["PROFILES", "REGISTRY", "Check", "Context", "Experiment", "Result", "experiment"]
