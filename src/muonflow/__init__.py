"""muonflow: regularized Muon as a damped Hamiltonian flow.

Public names only; see the README for a tour.
"""

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
    "POLAR_METHODS",
    "POTENTIALS",
    "Huber",
    "Nuclear",
    "Quadratic",
    "Relativistic",
    "SpectralPotential",
    "__version__",
    "polar",
    "potential",
    "regularized_polar",
]
