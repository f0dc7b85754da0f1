r"""A-priori constants of the mean-field force and the comparison recursion of the Muon scheme.

The stability statement they quantify: docs/theory.md §5.

For the tanh-neuron feature :math:`F(\theta) = \tanh(\theta X)` and a squared risk, the
particle force :math:`-DF(\theta_i)^\top\nabla R(m_\rho)` is Lipschitz in the RMS sense
over clouds coupled particle by particle (constant ``a``), and the force of an i.i.d. mean has
an RMS error ``c/√N`` (:func:`force_bounds`). With :math:`\nabla K_\varepsilon`
``1/ε``-Lipschitz, two coupled runs of the ``muon`` scheme obey a linear comparison recursion
(:func:`comparison_bound`), whose growth rate is :func:`comparison_rate`. Used by the chaos
(propagation of chaos) and stability (well-posedness) experiments; sure bounds, not estimates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .features import Neuron
from .objective import ProbabilityObjective
from .risks import SquaredRisk

__all__ = ["ForceBounds", "comparison_bound", "comparison_rate", "force_bounds"]


@dataclass(frozen=True)
class ForceBounds:
    r"""A-priori constants of the force :math:`-(\nabla R(m)\odot\sigma'(\theta X))X^\top`.

    ``lipschitz`` (``a``): for any two clouds coupled particle by particle, the RMS force
    difference is at most ``a`` times the RMS ``θ`` difference; ``source`` (``c``): the RMS
    force error of the i.i.d. mean :math:`\bar m_N` is at most ``c/√N``.
    """

    lipschitz: float
    source: float
    x_op: float  # ‖X‖₂
    grad_max: float  # sup |∇R(m)| entrywise


def force_bounds(feature: Neuron, objective: ProbabilityObjective) -> ForceBounds:
    r"""``a = σ''·g·‖X‖² + σ'²·Lip(∇R)·‖X‖²`` and ``c = σ'·‖X‖·Lip(∇R)·√(width·B)``.

    ``DF(θ)V = σ'(θX) ⊙ (VX)``, so ``‖DF‖ <= sup|σ'|·‖X‖₂``. Own-particle term: with ``∇R``
    fixed, the force moves by ``<= sup|σ''|·g·‖X‖₂²·|δθ_i|`` (``g = sup|∇R|`` entrywise
    ``= Lip(∇R)(1 + max|y|)`` since ``|m| <= sup|tanh| = 1``). Mean-field term: ``|δm| <=
    sup|σ'|‖X‖₂ D_θ`` moves ``∇R`` by ``Lip(∇R)|δm|``. Source: ``E|m̄_N − m̄|² <= E|F|²/N <=
    width·B/N``.
    """
    act, risk = feature.activation, objective.risk
    if act.name != "tanh" or not isinstance(risk, SquaredRisk):
        raise ValueError("force_bounds assumes tanh neurons (|σ| <= 1) and a squared risk")
    x_op = float(torch.linalg.matrix_norm(feature.X, 2))
    lip = risk.grad_lipschitz  # 1/B
    g = lip * (1.0 + float(risk.target.abs().max()))
    a = act.d2 * g * x_op**2 + act.d1**2 * lip * x_op**2
    width, points = feature.out_shape
    c = act.d1 * x_op * lip * math.sqrt(width * points)
    return ForceBounds(lipschitz=a, source=c, x_op=x_op, grad_max=g)


def comparison_bound(
    a: float,
    eps: float,
    gamma: float,
    h: float,
    steps: int,
    *,
    start: tuple[float, float] = (0.0, 0.0),
    source: float = 0.0,
) -> np.ndarray:
    r"""The comparison recursion of the ``muon`` scheme: ``[steps+1, 2]`` bounds on ``(D_θ, D_P)``.

    For two coupled runs of :math:`P' = (1-\gamma h)P + hF(\theta)`,
    :math:`\theta' = \theta + h\nabla K(P')` with an RMS force difference
    ``<= a D_θ + source`` and :math:`\nabla K_\varepsilon` ``1/ε``-Lipschitz:

    .. math::
        D_P' \le (1-\gamma h) D_P + h a D_\theta + h\,\mathrm{source}, \qquad
        D_\theta' \le D_\theta + \tfrac{h}{\varepsilon} D_P'

    (non-negative coefficients for ``γh <= 1``, so the recursion bounds every step).
    """
    if gamma * h > 1:
        raise ValueError(f"comparison_bound needs γh <= 1, got γh = {gamma * h}")
    out = np.empty((steps + 1, 2))
    bt, bp = start
    out[0] = start
    for k in range(steps):
        bp = (1 - gamma * h) * bp + h * a * bt + h * source
        bt = bt + h / eps * bp
        out[k + 1] = bt, bp
    return out


def comparison_rate(a: float, eps: float, gamma: float, h: float) -> float:
    """``log ρ(A)/h``: the growth rate of the homogeneous comparison recursion (its matrix A)."""
    A = np.array([[1 + h * h * a / eps, h * (1 - gamma * h) / eps], [h * a, 1 - gamma * h]])
    return float(np.log(np.max(np.abs(np.linalg.eigvals(A)))) / h)
