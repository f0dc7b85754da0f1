"""Problems and statistics shared by the mean-field experiments (chaos, stability).

- :func:`teacher_student_problem`: tanh neurons ``F(θ) = tanh(θX)`` on Gaussian data, squared
  risk against a teacher cloud;
- :func:`student_quantile`: quantiles of Student's t (confidence bands over independent runs);
- :func:`tanh_force`, :func:`tanh_force_constants`: that problem's mean-field force and its
  a-priori constants written out from the formulas, sharing no code with the library;
- :data:`SCALAR`, :func:`scalar_problem` and :func:`scalar_reference`: the scalar teacher–student
  problem of the PDE comparisons, from the library (for the particles) and written out (for
  the PDE).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..meanfield import Neuron, ProbabilityObjective, ScalarModel, teacher_student
from ..meanfield.risks import SquaredRisk

F64 = torch.float64


def teacher_student_problem(
    d: int, width: int, points: int, teacher: int, gen: torch.Generator
) -> tuple[Neuron, ProbabilityObjective]:
    """Data ``X ~ N(0,1)^{d×B}``, ``F(θ) = tanh(θX)``, squared risk against a teacher cloud."""
    X = torch.randn(d, points, generator=gen, dtype=F64)
    feature = Neuron(X, width=width)  # tanh
    return feature, teacher_student(feature, feature.sample(teacher, generator=gen))


def targets(obj: ProbabilityObjective) -> Tensor:
    """The targets ``y`` of a teacher–student objective with the squared risk."""
    risk = obj.risk
    assert isinstance(risk, SquaredRisk)
    return risk.target


def student_quantile(p: float, dof: int) -> float:
    """The ``p``-quantile of Student's t with ``dof`` degrees of freedom."""
    import scipy.stats

    return float(scipy.stats.t.ppf(p, dof))


#: sup|tanh'| and sup|tanh''| (at h = ±artanh(1/√3): 4/(3√3)).
TANH_D1, TANH_D2 = 1.0, 4 / (3 * math.sqrt(3))


def tanh_force(X: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
    r"""The mean-field force of tanh neurons and the squared risk, written out (no muonflow).

    ``F(θ) = tanh(θX)`` (``θ: [N, w, d]``, ``X: [d, B]``), ``R(m) = |m − y|²/(2B)``:
    :math:`\mathrm{force}_i = -\big(\nabla R(m) \odot (1 - \tanh^2(\theta_i X))\big) X^\top`,
    :math:`\nabla R(m) = (m - y)/B`, ``m = mean_i tanh(θ_i X)``.
    """
    B = X.shape[1]

    def force(theta: Tensor) -> Tensor:
        S = torch.tanh(theta @ X)  # [N, w, B]
        g = (S.mean(0) - y) / B  # ∇R(m): [w, B]
        return -((g * (1 - S * S)) @ X.T)

    return force


def tanh_force_constants(X: Tensor, y: Tensor, width: int) -> tuple[float, float]:
    r"""A-priori constants ``(a, c)`` of :func:`tanh_force`, derived here from the formula.

    ``a``: for two clouds coupled particle by particle, RMS force difference ``<= a`` × RMS
    ``θ`` difference: the own-particle term moves by ``<= sup|σ''|·g·‖X‖₂²`` per unit of ``θ``
    (``g = sup|∇R|`` entrywise ``<= (1 + max|y|)/B`` as ``|m| <= 1``), the mean-field term by
    ``sup|σ'|²·‖X‖₂²/B`` (``|δm| <= sup|σ'|·‖X‖₂ D_θ``, ``Lip ∇R = 1/B``). ``c``: the RMS
    force error of an i.i.d. mean, ``<= sup|σ'|·‖X‖₂·√(width·B)/B / √N`` (``E|F|² <= width·B``).
    """
    B = X.shape[1]
    x_op = float(torch.linalg.matrix_norm(X, 2))
    g = (1.0 + float(y.abs().max())) / B
    a = TANH_D2 * g * x_op**2 + TANH_D1**2 * x_op**2 / B
    c = TANH_D1 * x_op * math.sqrt(width * B) / B
    return a, c


@dataclass(frozen=True)
class ScalarSetup:
    """The scalar teacher–student problem that particles are compared on with the PDE."""

    points: int = 8  # data points B, evenly spaced in [−x_max, x_max]
    x_max: float = 2.0
    teacher: tuple[float, ...] = (-1.5, 0.5, 2.0)  # teacher particles (scalars θ_t)
    eps: float = 0.5  # ε of the relativistic kinetic energy
    gamma: float = 1.0  # damping γ
    theta_std: float = 0.6  # μ₀ = N(0, theta_std²) ⊗ N(p_mean, p_std²)
    p_mean: float = 0.4  # a mean momentum ≠ 0
    p_std: float = 0.5
    theta_box: float = 4.0  # PDE domain [−theta_box, theta_box] × [−p_box, p_box]
    p_box: float = 3.5  # (> 6 sd about μ₀'s mean)


#: the problem's defaults, used by particles_vs_pde and by chaos
SCALAR = ScalarSetup()


def scalar_problem(points: int, x_max: float, teacher: tuple[float, ...]) -> ProbabilityObjective:
    """Scalar particles ``θ: [N, 1, 1]``, built from the library: ``J(ρ) = (1/2B) Σ_b
    (∫tanh(θ x_b) dρ − y_b)²`` on ``B`` points evenly spaced in ``[−x_max, x_max]``, with ``y``
    made by the teacher particles."""
    X = torch.linspace(-x_max, x_max, points, dtype=F64).reshape(1, -1)  # [d=1, B]
    return teacher_student(Neuron(X), torch.tensor(teacher, dtype=F64).reshape(-1, 1, 1))


def scalar_reference(
    points: int, x_max: float, teacher: tuple[float, ...], eps: float
) -> ScalarModel:
    r"""The same problem for the PDE, written from the formulas (docs/theory.md §1, §5) alone.

    :math:`F(\theta)_b = \tanh(\theta x_b)`, :math:`F'(\theta)_b = x_b(1 - \tanh^2(\theta
    x_b))`, :math:`y_b = \frac{1}{N_t}\sum_t \tanh(\theta_t x_b)`, :math:`R(m) = \frac{1}{2B}
    \sum_b (m_b - y_b)^2`, :math:`\nabla R(m) = (m - y)/B`, the mean-field force
    :math:`f(\theta; m) = -\sum_b F'(\theta)_b \nabla R(m)_b`, and the relativistic kinetic
    energy :math:`k(P) = \sqrt{P^2+\varepsilon^2} - \varepsilon`,
    :math:`k'(P) = P/\sqrt{P^2+\varepsilon^2}`. No muonflow feature, risk, force or map code.
    """
    x = torch.linspace(-x_max, x_max, points, dtype=F64)  # [B]
    y = torch.tanh(torch.tensor(teacher, dtype=F64)[:, None] * x).mean(0)  # [B]

    def feature(th: Tensor) -> Tensor:  # [n] -> [n, B]
        return torch.tanh(th[:, None] * x)

    def force(th: Tensor, m: Tensor) -> Tensor:  # −Σ_b F'(θ)_b (m_b − y_b)/B
        dF = x * (1 - torch.tanh(th[:, None] * x) ** 2)  # [n, B]
        return -(dF * ((m.reshape(-1) - y) / points)).sum(1)

    def risk(m: Tensor) -> Tensor:
        return 0.5 * ((m.reshape(-1) - y) ** 2).sum() / points

    return ScalarModel(
        feature=feature,
        force=force,
        risk=risk,
        kinetic=lambda p: torch.sqrt(p * p + eps * eps) - eps,
        velocity=lambda p: p / torch.sqrt(p * p + eps * eps),
    )
