"""muonflow: regularized Muon as a damped Hamiltonian flow.

Public names only; see the README for a tour. Names are imported on first use (module-level
``__getattr__``), so ``import muonflow`` costs next to nothing on top of ``import torch`` and
loads none of the research dependencies (SciPy, POT, matplotlib, tqdm, scikit-learn).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Eager, unlike the rest: the maps are the core (a few ms: torch and numpy only).
# ``muonflow.polar`` is the package; calling it is the deprecated name of ``polar_factor``.
from .polar import POLAR_METHODS, polar_factor, regularized_polar

# public name -> the module that defines it
_LAZY = {
    "INTEGRATORS": ".dynamics",
    "HamiltonianFlow": ".dynamics",
    "NonFiniteStateError": ".dynamics",
    "Objective": ".dynamics",
    "Trajectory": ".dynamics",
    "integrate": ".dynamics",
    "ProbabilityObjective": ".meanfield",
    "moe_objective": ".meanfield.moe",
    "MoEFeedForward": ".models.moe",
    "RegMuon": ".optim",
    "POTENTIALS": ".spectral",
    "Huber": ".spectral",
    "Nuclear": ".spectral",
    "Quadratic": ".spectral",
    "Relativistic": ".spectral",
    "SpectralPotential": ".spectral",
    "potential": ".spectral",
}
_SUBMODULES = frozenset({
    "data", "distributed", "dynamics", "experiments", "meanfield", "models", "optim", "polar",
    "report", "spectral", "training",
})  # fmt: skip

if TYPE_CHECKING:
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
    from .spectral import (
        POTENTIALS,
        Huber,
        Nuclear,
        Quadratic,
        Relativistic,
        SpectralPotential,
        potential,
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        if name == "models":  # as before: `mf.models.moe` reachable after `import muonflow`
            importlib.import_module(".models.moe", __name__)
        return module
    raise AttributeError(f"module 'muonflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})


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
    "polar_factor",
    "potential",
    "regularized_polar",
]
