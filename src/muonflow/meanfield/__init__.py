r"""The mean-field particle system: probability objectives :math:`J(\rho) = R(\int F\,d\rho)`.

* :mod:`.objective` — :class:`ProbabilityObjective` (value, first variation, mean-field
  forces) and :func:`teacher_student`;
* :mod:`.features` — feature maps on a fixed dataset (:class:`Neuron`, :class:`SubNetwork`,
  :class:`RandomFeatures`) with explicit pullbacks;
* :mod:`.risks` — squared, Huber, logistic and cross-entropy risks with explicit gradients;
* :mod:`.measures` — Wasserstein distances (POT), propagation of chaos by synchronous
  coupling, stability of the flow;
* :mod:`.pde` — an independent Eulerian solver of the phase-space PDE for scalar parameters.
"""

from .features import ACTIVATIONS, Activation, Feature, Neuron, RandomFeatures, SubNetwork
from .measures import (
    ChaosResult,
    StabilityResult,
    coupling_distance,
    fit_power_law,
    phase_space,
    propagation_of_chaos,
    stability,
    wasserstein2,
)
from .objective import ProbabilityObjective, teacher_student
from .pde import LIMITERS, PDESolution, PhaseGrid, ScalarModel, solve_vlasov
from .risks import RISKS, CrossEntropyRisk, HuberRisk, LogisticRisk, Risk, SquaredRisk, make_risk

__all__ = [
    "ACTIVATIONS",
    "LIMITERS",
    "RISKS",
    "Activation",
    "ChaosResult",
    "CrossEntropyRisk",
    "Feature",
    "HuberRisk",
    "LogisticRisk",
    "Neuron",
    "PDESolution",
    "PhaseGrid",
    "ProbabilityObjective",
    "RandomFeatures",
    "Risk",
    "ScalarModel",
    "SquaredRisk",
    "StabilityResult",
    "SubNetwork",
    "coupling_distance",
    "fit_power_law",
    "make_risk",
    "phase_space",
    "propagation_of_chaos",
    "solve_vlasov",
    "stability",
    "teacher_student",
    "wasserstein2",
]
