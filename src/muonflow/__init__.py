"""muonflow: regularized Muon as a damped Hamiltonian flow.

Public names only; see the README for a tour.
"""

from .dynamics import (
    INTEGRATORS,
    HamiltonianFlow,
    NonFiniteStateError,
    Objective,
    Trajectory,
    integrate,
)
from .meanfield import ProbabilityObjective
from .meanfield.moe import moe_objective
from .models.moe import MoEFeedForward
from .optim import RegMuon
from .polar import POLAR_METHODS, polar, regularized_polar
from .spectral import (
    POTENTIALS,
    Huber,
    Nuclear,
    Quadratic,
    Relativistic,
    SpectralPotential,
    potential,
)

__version__ = "0.1.0"

__all__ = [
    "INTEGRATORS",
    "POLAR_METHODS",
    "POTENTIALS",
    "HamiltonianFlow",
    "Huber",
    "MoEFeedForward",
    "NonFiniteStateError",
    "Nuclear",
    "Objective",
    "ProbabilityObjective",
    "Quadratic",
    "RegMuon",
    "Relativistic",
    "SpectralPotential",
    "Trajectory",
    "__version__",
    "integrate",
    "moe_objective",
    "polar",
    "potential",
    "regularized_polar",
]
