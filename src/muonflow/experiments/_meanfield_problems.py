"""Problems and statistics shared by the mean-field experiments (chaos, stability).

- :func:`teacher_student_problem`: tanh neurons ``F(θ) = tanh(θX)`` on Gaussian data, squared
  risk against a teacher cloud;
- :func:`student_quantile`: quantiles of Student's t (confidence bands over independent runs).
"""

from __future__ import annotations

import torch

from ..meanfield import Neuron, ProbabilityObjective, teacher_student

F64 = torch.float64


def teacher_student_problem(
    d: int, width: int, points: int, teacher: int, gen: torch.Generator
) -> tuple[Neuron, ProbabilityObjective]:
    """Data ``X ~ N(0,1)^{d×B}``, ``F(θ) = tanh(θX)``, squared risk against a teacher cloud."""
    X = torch.randn(d, points, generator=gen, dtype=F64)
    feature = Neuron(X, width=width)  # tanh
    return feature, teacher_student(feature, feature.sample(teacher, generator=gen))


def student_quantile(p: float, dof: int) -> float:
    """The ``p``-quantile of Student's t with ``dof`` degrees of freedom."""
    import scipy.stats

    return float(scipy.stats.t.ppf(p, dof))
