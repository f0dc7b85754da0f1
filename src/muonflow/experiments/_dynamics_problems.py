r"""Small problems, fits and round-off bounds shared by the dynamics experiments.

The experiments of the damped Hamiltonian flow (dissipation, discrete monotonicity, continuous
limit, convergence rates, ε limits, energy ledger) run on tiny float64 matrices; this module
keeps their common pieces in one place:

- :func:`spd`: a random symmetric matrix with prescribed eigenvalues;
- :class:`QuadraticObjective`: :math:`J(W) = \tfrac12\langle W - W_*, A(W - W_*)\rangle` with ``A``
  acting on the left, its force :math:`-A(W - W_*)` in closed form (no autograd: twice as fast
  on 8×4 matrices) and per-matrix values for batched states;
- :func:`log_slope`: least-squares slope of ``log y`` against ``log x`` (fitted orders, rates);
- :func:`energy_roundoff`: a bound on the float64 error of evaluating ``H`` at a state;
- :func:`linear_rate` and :func:`muon_linear_rate`: the asymptotic decay rate of ``H`` of the
  flow linearized at a minimizer with Hessian eigenvalues ``a_j``, and of its ``muon`` scheme;
- :func:`single_thread`: the matrices are tiny, one thread avoids oversubscription.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

F64 = torch.float64
#: unit roundoff of float64, ``u = eps_machine / 2``.
U64 = float(np.finfo(np.float64).eps) / 2


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the block with one torch thread (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def spd(eigs: Sequence[float], gen: torch.Generator) -> Tensor:
    """A random symmetric ``[m, m]`` matrix ``Q diag(eigs) Qᵀ`` (``Q`` Haar-like, from QR)."""
    m = len(eigs)
    Q, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=F64))
    return Q @ torch.diag(torch.tensor(list(eigs), dtype=F64)) @ Q.T


class QuadraticObjective:
    r""":math:`J(W) = \tfrac12 \sum_{\text{batch}} \langle W - W_*, A (W - W_*)\rangle`.

    ``A: [m, m]`` symmetric acts on the left of ``W: [..., m, n]``; ``W_*`` (default 0) is the
    minimizer when ``A`` is positive definite. Implements the objective protocol of
    :mod:`muonflow.dynamics` with the closed-form force :math:`-A(W - W_*)`.
    """

    def __init__(self, A: Tensor, W_star: Tensor | None = None) -> None:
        self.A = A
        self.W_star = W_star

    def _diff(self, W: Tensor) -> Tensor:
        return W if self.W_star is None else W - self.W_star

    def per_matrix(self, W: Tensor) -> Tensor:
        """``J`` of each matrix of a batch: ``[..., m, n] -> [...]``."""
        D = self._diff(W)
        return 0.5 * (D * (self.A @ D)).sum((-2, -1))

    def value(self, W: Tensor) -> Tensor:
        return self.per_matrix(W).sum()

    def value_and_force(self, W: Tensor) -> tuple[Tensor, Tensor]:
        D = self._diff(W)
        AD = self.A @ D
        return 0.5 * (D * AD).sum(), -AD  # J = ½⟨D, AD⟩, F = −AD

    def kinetic_weight(self, W: Tensor) -> float:
        return 1.0

    def __repr__(self) -> str:
        return f"QuadraticObjective(A: {tuple(self.A.shape)})"


def log_slope(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (a fitted order or exponent)."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def energy_roundoff(J_abs: Tensor, P: Tensor) -> Tensor:
    """Bound on the float64 error of evaluating ``H = J(W) + K(P)`` at states ``P: [..., m, n]``.

    ``J_abs`` (``[...]``) is the objective evaluated with absolute values
    (``½ Σ |D|(|A||D|)`` for a quadratic): a sum of ``m + mn`` rounded products has relative
    error ``<= (m + mn) u`` of it. ``K``: a backward-stable SVD moves each singular value by at
    most ``8 max(m, n) u ‖P‖₂`` (a small multiple of the dimension), ``k`` is 1-Lipschitz for
    the relativistic and Huber profiles, and ``r`` terms are summed:
    ``|δK| <= r (8 max(m, n) + 1) u ‖P‖₂``. Returns ``[...]``.
    """
    m, n = P.shape[-2:]
    r = min(m, n)
    P2 = torch.linalg.matrix_norm(P, 2)
    return (m + m * n) * U64 * J_abs + r * (8 * max(m, n) + 1) * U64 * P2


class FactorizationObjective:
    r""":math:`J(W) = \tfrac14 \|W W^\top - M\|_F^2` (nonconvex), force :math:`-(WW^\top - M)W`.

    ``M: [m, m]`` symmetric (e.g. ``B Bᵀ`` of low rank); ``W: [m, n]``.
    """

    def __init__(self, M: Tensor) -> None:
        self.M = M

    def value(self, W: Tensor) -> Tensor:
        return 0.25 * (W @ W.mT - self.M).square().sum()

    def value_and_force(self, W: Tensor) -> tuple[Tensor, Tensor]:
        R = W @ W.mT - self.M  # residual WWᵀ − M
        return 0.25 * R.square().sum(), -(R @ W)  # ∇J = (WWᵀ − M) W

    def kinetic_weight(self, W: Tensor) -> float:
        return 1.0

    def __repr__(self) -> str:
        return f"FactorizationObjective(M: {tuple(self.M.shape)})"


def linear_rate(eigs: np.ndarray | Sequence[float], gamma: float, eps: float) -> float:
    r"""``2 max_j Re λ_j^slow``, ``λ = (−γ ± √(γ² − 4a_j/ε))/2``: the decay rate of ``H``.

    Near a minimizer with Hessian eigenvalues ``a_j`` and ``∇K(P) ≈ P/ε`` every mode obeys
    :math:`\varepsilon\ddot w + \gamma\varepsilon\dot w + a_j w = 0`.
    """
    a = np.asarray(eigs, float)
    disc = gamma**2 - 4 * a / eps
    slow = np.where(disc > 0, (-gamma + np.sqrt(np.abs(disc))) / 2, -gamma / 2)
    return float(2 * slow.max())


def muon_linear_rate(
    eigs: np.ndarray | Sequence[float], gamma: float, eps: float, h: float
) -> float:
    r"""``2 log max_j ρ(M_j) / h``: the decay rate of ``H`` per unit time of the ``muon`` scheme.

    Linearized (``∇K(P) ≈ P/ε``), each mode ``(w, p)`` is mapped by
    :math:`p' = c\,p - h a_j w`, :math:`w' = w + (h/\varepsilon) p'`, ``c = 1 − γh``:
    :math:`M_j = \begin{pmatrix} 1 - h^2 a_j/\varepsilon & hc/\varepsilon \\ -h a_j & c
    \end{pmatrix}`; ``H`` (a quadratic form) decays like :math:`\rho(M)^{2k}`.
    """
    c = 1 - gamma * h
    rho = 0.0
    for a in np.asarray(eigs, float):
        M = np.array([[1 - h * h * a / eps, h * c / eps], [-h * a, c]])
        rho = max(rho, float(np.abs(np.linalg.eigvals(M)).max()))
    return 2 * math.log(rho) / h
