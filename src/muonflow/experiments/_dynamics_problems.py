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
- :func:`single_thread`: the matrices are tiny, one thread avoids oversubscription;
- references that share no code with the library under test: the closed-form map
  :func:`svd_relativistic`, SciPy's DOP853 on a closed-form vector field (:func:`dop853`,
  :func:`hamiltonian_field`) and the ``muon`` scheme written out (:func:`symplectic_euler`);
- :func:`optimizer_map_errors`, :func:`map_checks`: RegMuon's fast map against the closed form on
  the momenta a training run recorded (the training experiments).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

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


# -- references that share no code with the library under test ---------------------------------
def svd_relativistic(P: Tensor, eps: float | Tensor) -> Tensor:
    r"""The closed-form regularized map by ``torch.linalg.svd`` (batched over ``[..., m, n]``),

    .. math:: \nabla K_\varepsilon(P) = U\mathrm{diag}(\sigma/\sqrt{\sigma^2+\varepsilon^2})V^\top

    a reference that uses neither :mod:`muonflow.polar` nor :mod:`muonflow.spectral`. ``eps``: a
    float or one value per matrix (``[...]``).
    """
    U, S, Vh = torch.linalg.svd(P, full_matrices=False)
    e = eps.unsqueeze(-1) if isinstance(eps, Tensor) else eps
    return (U * (S / torch.sqrt(S * S + e * e)).unsqueeze(-2)) @ Vh


Field = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def dop853(
    field: Field, W0: Tensor, P0: Tensor, t_end: float, *, rtol: float, atol: float,
    t_eval: Sequence[float] | None = None,
) -> tuple[Tensor, Tensor]:
    """Integrate ``(Ẇ, Ṗ) = field(W, P)`` by SciPy's DOP853 (float64), directly: no muonflow.

    Returns ``(W, P)`` at ``t_end`` (shapes of ``W0``), or stacked ``[T, ...]`` at ``t_eval``.
    """
    from scipy.integrate import solve_ivp

    shape, n = W0.shape, W0.numel()

    def fun(_t: float, y: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(y)
        dW, dP = field(x[:n].reshape(shape), x[n:].reshape(shape))
        return torch.cat([dW.reshape(-1), dP.reshape(-1)]).numpy()

    y0 = torch.cat([W0.reshape(-1), P0.reshape(-1)]).double().numpy()
    sol = solve_ivp(fun, (0.0, t_end), y0, method="DOP853", rtol=rtol, atol=atol,
                    t_eval=t_eval)  # fmt: skip
    if sol.status != 0:
        raise RuntimeError(f"DOP853 reference failed: {sol.message}")
    Y = torch.from_numpy(np.ascontiguousarray(sol.y.T))  # [T, 2n]
    if t_eval is None:
        Y = Y[-1:]
    W, P = Y[:, :n].reshape(-1, *shape), Y[:, n:].reshape(-1, *shape)
    return (W[0], P[0]) if t_eval is None else (W, P)


def hamiltonian_field(force: Callable[[Tensor], Tensor], eps: float, gamma: float) -> Field:
    """``(Ẇ, Ṗ) = (∇K_ε(P), F(W) − γP)`` with the closed-form map :func:`svd_relativistic`."""
    return lambda W, P: (svd_relativistic(P, eps), force(W) - gamma * P)


def symplectic_euler(
    force: Callable[[Tensor], Tensor], W: Tensor, P: Tensor, *, h: float, gamma: float,
    eps: float, steps: int, nesterov: bool = False,
) -> list[tuple[Tensor, Tensor]]:
    r"""The ``muon`` scheme written out (closed-form map), every iterate ``(W_k, P_k)``.

    :math:`P' = (1 - \gamma h)P + hF(W)`, :math:`W' = W + h\nabla K_\varepsilon(P')`; with
    ``nesterov`` the map sees the momentum advanced once more by the same force,
    :math:`W' = W + h\nabla K_\varepsilon((1 - \gamma h)P' + hF(W))` (docs/theory.md §3).
    """
    c = 1 - gamma * h
    out = [(W, P)]
    for _ in range(steps):
        F = force(W)
        P = c * P + h * F
        W = W + h * svd_relativistic(c * P + h * F if nesterov else P, eps)
        out.append((W, P))
    return out


def optimizer_map_errors(opt: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    r"""How well RegMuon's map (fast path, its ``tol``) did on the momenta it recorded.

    For every RegMuon matrix of ``opt`` with momentum ``X`` (``[m, n]``, or a stack): the map the
    optimizer applies with its group's options — probed by one step of a fresh ``RegMuon`` with
    those options, ``lr = 1``, ``momentum = 0`` from ``W = 0``, so that ``W' = −∇K_ε(X)`` — against
    the closed-form :func:`svd_relativistic` at the same ε (relative: ε‖X_i‖_F/√min(m, n), docs/
    theory.md §1). Returns ``{"fast": …, "polar": …, "tol": …}``: per matrix the relative
    Frobenius error of the optimizer's map and, for scale, of the ε = 0 polar factor.
    """
    from ..optim import RegMuon

    fast, polar, tols = [], [], []
    for g in opt.param_groups:
        if g.get("algorithm") != "regmuon" or g["potential"] != "relativistic":
            continue
        for p in g["params"]:
            X = opt.state[p]["momentum_buffer"].detach().double()
            X = X.reshape(-1, *X.shape[-2:])  # a stack of matrices [k, m, n]
            W = torch.nn.Parameter(torch.zeros_like(X))
            probe = RegMuon([W], lr=1.0, momentum=0.0, eps=g["eps"], eps_mode=g["eps_mode"],
                            tol=g["tol"], method=g["method"], momentum_form="sum",
                            nesterov=False, weight_decay=0.0, adjust_lr="none",
                            matrix_view="batch", adamw=())  # fmt: skip
            W.grad = X.clone()
            probe.step()
            D = -W.detach()
            e = torch.full((X.shape[0],), float(g["eps"]), dtype=X.dtype)
            if g["eps_mode"] == "relative":
                e = e * torch.linalg.matrix_norm(X) / math.sqrt(min(X.shape[-2:]))
            ref = svd_relativistic(X, e)
            U, _, Vh = torch.linalg.svd(X, full_matrices=False)
            den = torch.linalg.matrix_norm(ref)
            fast += (torch.linalg.matrix_norm(D - ref) / den).tolist()
            polar += (torch.linalg.matrix_norm(U @ Vh - ref) / den).tolist()
            tols += [float(g["tol"])] * X.shape[0]
    return {"fast": np.array(fast), "polar": np.array(polar), "tol": np.array(tols)}


def map_checks(errors: dict[str, np.ndarray], where: str) -> dict[str, Any]:
    """The claim that the optimizer's fast map is the regularized map on its own momenta, and
    the sanity check that this claim can see ε (the polar factor is far off there)."""
    from .base import at_least, at_most

    fast, polar, tol = (np.asarray(errors[k], dtype=float) for k in ("fast", "polar", "tol"))
    return {
        "fast_map_within_tol": at_most(
            float(np.max(fast / tol)), 1.0, kind="claim",
            why=f"{where}: max over the {len(fast)} RegMuon matrices of ‖map(X) − ∇K_ε(X)‖_F/"
            "‖∇K_ε(X)‖_F over the optimizer's tol, X the momentum it recorded and ∇K_ε the "
            "closed-form SVD map at the same ε: a relative accuracy tol per singular direction "
            "bounds the Frobenius one, so the optimizer applies the regularized map it claims.",
            catches="a fast map that is not ∇K_ε (the ε = 0 polar factor, a relative ε with the "
            "wrong normalization, a polynomial past its tolerance).",
        ),
        "fast_map_check_sees_eps": at_least(
            float(np.max(polar / tol)), 10.0, kind="sanity",
            why="max over the same matrices of ‖UVᵀ − ∇K_ε(X)‖_F/‖∇K_ε(X)‖_F over tol >= 10: "
            "σ_min(X) ≲ ε there, so an ε-blind map would fail the check above by >= 10×.",
            catches="momenta so well conditioned that the map check above cannot tell ε.",
        ),
    }
