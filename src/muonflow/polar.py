r"""Matrix-function kernels for spectral maps, batched over ``[..., m, n]``.

A spectral map applies a scalar function to the singular values and keeps the singular
vectors:

.. math::
    \Phi(G) = U \,\mathrm{diag}(g(\sigma))\, V^\top, \qquad G = U \,\mathrm{diag}(\sigma)\, V^\top .

The regularized Muon map is the case :math:`g(\sigma) = \sigma/\sqrt{\sigma^2+\varepsilon^2}`,

.. math::  \nabla K_\varepsilon(G) = G\,(G^\top G + \varepsilon^2 I)^{-1/2}
           = (G G^\top + \varepsilon^2 I)^{-1/2} G ,

which tends to the Muon polar factor :math:`U V^\top` as :math:`\varepsilon \to 0`.

Methods (all batched; wide matrices use the ``r x r`` Gram matrix of the short side,
``r = min(m, n)``, ``M = max(m, n)``):

``"eigh"``
    Eigendecomposition of the small Gram matrix :math:`A = X^\top X` (:math:`X` the tall
    orientation), then :math:`\Phi(G) = X\, V \mathrm{diag}(w(\lambda)) V^\top` with
    :math:`w(\lambda) = g(\sigma)/\sigma`. Accuracy: an eigensolver's absolute eigenvalue error
    is about :math:`u\|A\|`, so the error of a singular direction of :math:`\Phi` is about
    :math:`\tfrac12 u (\|G\|/\varepsilon)^2` (relativistic map), plus :math:`u\|G\|/\varepsilon`
    from the final product. The working dtype is promoted to float64 when that bound exceeds
    the requested ``tol``.
``"svd"``
    ``torch.linalg.svd`` (thin); the reference path. Its error does not square the
    conditioning, so it is the path of last resort when float64 Gram paths miss ``tol``.
``"poly"`` (matmul-only)
    A coupled polynomial iteration on the normalized shifted Gram matrix
    :math:`Y_0 = (X^\top X + \varepsilon^2 I)/L`, whose spectrum lies in :math:`[\rho^2, 1]`
    with :math:`\rho = \varepsilon/\sqrt{L}` because :math:`L = \|A^2\|_F^{1/2} \ge
    \lambda_{max}(A)`:

    .. math::
        h_k = h_k(Y_k), \qquad Q_{k+1} = Q_k h_k, \qquad Y_{k+1} = Y_k h_k^2, \qquad
        \Phi(G) \approx X\, Q_K / \sqrt{L} .

    On the singular values :math:`\sigma = \sqrt{y}` of the augmented matrix
    :math:`[X; \varepsilon I]/\sqrt{L}` (SPEC §2) each step applies the odd polynomial
    :math:`p_k(\sigma) = \sigma h_k(\sigma^2)`, chosen as the minimax approximation of 1 on the
    current interval :math:`[\ell_k, u_k]` (Remez; Polar-Express-style greedy composition, whose
    greedy choice is optimal for compositions). The new interval is
    :math:`[1 - E_k, 1 + E_k]`; the degrees ``d in {1, 2, 4}`` of each step are chosen by a
    dynamic program minimizing the number of ``r x r`` products until :math:`E_K \le` the
    requested accuracy (:func:`poly_schedule`, cached). Every eigen-direction of
    :math:`A^{-1/2}` then has relative error :math:`\le E_K`, so the map has relative error
    :math:`\le E_K` in every singular direction (in exact arithmetic). Each step is either the
    minimax polynomial of its interval or, when that one's coefficients would amplify
    rounding too much (``amp`` of :func:`minimax_odd` above ``tol/(8u)``), the minimax
    polynomial of a narrower "cushioned" interval (Polar Express), which still maps the whole
    interval monotonically. Rounding adds the Gram term
    :math:`\tfrac12 u (\|G\|^2+\varepsilon^2)/\varepsilon^2` of ``"eigh"`` and about
    :math:`u \sum_k \mathrm{amp}_k` from the iteration, so float32 is used only when the
    former is ``<= tol/2`` and ``tol >= 64 u`` (3.8e-6); otherwise the path runs in float64.

``method="auto"`` (:func:`choose_method`): with ``tol=None`` (the default, eight unit
roundoffs) it is ``"eigh"``, the exact path. With a looser ``tol`` (the optimizer passes 1e-3)
it estimates :math:`\kappa^2 = (\|G\|^2+\varepsilon^2)/\varepsilon^2` from the Gram matrix
(power iteration), picks the working dtype (float32 if :math:`\tfrac12 u_{32} \kappa^2 \le
tol/2` and ``tol >= 64 u₃₂``, else float64; ``"svd"`` if even float64 misses), then the
cheaper of ``"eigh"`` and
``"poly"`` by the cost model below, in units of one ``r x r`` GEMM: ``poly`` = the schedule's
product count; ``eigh`` = ``1 + c_eig(r)`` with ``c_eig(r) = 5 + 1200/r`` on CPU (measured:
LAPACK ``syevd`` costs 6 GEMMs of its size at ``r = 1024`` and 15-60 below ``r = 128``, where
per-matrix overheads dominate; :func:`eigh_cost`) and ``inf`` on accelerators (their
eigensolvers are latency-bound; there the matmul-only path is taken whenever its precision is
reachable). On CPU this makes ``"poly"`` the choice for batched small matrices and for mild
regularization (ε ≳ ‖G‖/10), ``"eigh"`` for large single matrices at ε ≲ ‖G‖/30.

Cost model (flops per matrix; ``B`` matrices cost ``B`` times as much):

=========================  ==========================================================
limit (``XᵀX`` + product)  :math:`4 M r^2` -- the two GEMMs every Gram method needs
``eigh``                   :math:`4 M r^2 + 2 r^3 + c_{eig}(r) \cdot 2 r^3`
``poly``                   :math:`4 M r^2 + 2 N r^3 + O(K r^2)`; ``N`` products in ``K``
                           steps: a step of degree ``d`` costs ``[d≥2 or not last]`` (``Y²``)
                           ``+ [d=4]`` ``+ [not first]`` (``Q h``) ``+ 2·[not last]`` (``Y h²``,
                           1 for ``d = 1``); for ``tol = 1e-3``: ``N = 2-5`` at
                           ``ε = ‖G‖``, 9-10 at ``‖G‖/10``, 15-17 at ``‖G‖/100``
``svd``                    :math:`\approx 6 M r^2 + 20 r^3` (with a larger constant)
Muon Newton–Schulz, 5 it.  :math:`5 (4 M r^2 + 2 r^3)` (not an exact map; baseline only)
=========================  ==========================================================

Mixed precision: rounding the Gram iterate to a dtype with unit roundoff ``u`` perturbs its
smallest eigenvalues (:math:`\ell_k^2`) by about :math:`u u_k^2`, a relative error
:math:`\tfrac12 u (u_k/\ell_k)^2` of the result -- early steps, where :math:`u_k/\ell_k` is
large, are the *least* tolerant. A step runs in float16 only on accelerators and only when
that bound plus the coefficient amplification (``½u·amp``) is below ``tol/(4K)``
(:func:`step_dtypes`). With amp = 10-1000 for useful steps this never holds for
``tol <= 0.1`` (float16 roundoff is 4.9e-4): mixed precision does not pay for an
accuracy-controlled Gram iteration, only for crude Muon-like requests (``tol ≈ 0.5``). On CPU
half-precision GEMMs are 20-100x slower than float32 and are never used.

Every path first divides each matrix by a scale ``s`` and uses :math:`\varepsilon / s`: the
maps of this module are invariant under the joint scaling :math:`(G, \varepsilon) \to (G/s,
\varepsilon/s)`, so inputs from 1e-20 to 1e20 neither overflow nor underflow when squared.
``"eigh"``/``"svd"`` use the largest absolute entry; the ``"poly"``/``"auto"`` front uses a
power of two ``>= max(max|G_ij|, ε)`` (exact, and applied to the small Gram matrix and the
final ``r x r`` factor rather than to the input when ``2^-40 <= s <= 2^40``).
Half-precision inputs are computed in float32 and returned in their own dtype.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._checks import check_choice, check_finite, check_matrix, check_scale

__all__ = [
    "POLAR_METHODS",
    "AutoPlan",
    "PolySchedule",
    "PolyStep",
    "amp_limit",
    "choose_method",
    "default_tol",
    "eigh_cost",
    "float32_gemm_roundoff",
    "gram_eigh_map",
    "gram_floor",
    "gram_poly_inv_sqrt",
    "lmax_estimate",
    "minimax_odd",
    "plan_auto",
    "polar",
    "poly_schedule",
    "regularized_polar",
    "step_dtypes",
    "svd_map",
]

#: Weight function of a spectral map in Gram form: ``w(lam, eps) = g(sigma)/sigma`` with
#: ``lam = sigma**2``; ``eps`` broadcasts against ``lam`` (shape ``[..., 1]``).
WeightFn = Callable[[Tensor, Tensor], Tensor]


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype computations run in: float64 stays, everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def unit_roundoff(dtype: torch.dtype) -> float:
    """Unit roundoff ``u = eps_machine / 2`` of a floating dtype."""
    return torch.finfo(dtype).eps / 2


def default_tol(dtype: torch.dtype) -> float:
    """Default requested relative accuracy of a map returned in ``dtype``.

    Eight unit roundoffs of the output dtype: the result cannot be stored more accurately
    than one roundoff, and a handful more is what a well-conditioned float64 reference path
    reaches (float64 -> 8.9e-16, float32 -> 4.8e-7, bfloat16 -> 3.1e-2).
    """
    return 8 * unit_roundoff(dtype)


def gram_floor(kappa2: float, dtype: torch.dtype) -> float:
    r"""First-order error :math:`\tfrac12 u \kappa^2` of a Gram-matrix path run in ``dtype``.

    ``kappa2`` is :math:`\lambda_{max}/\lambda_{min}` of the (shifted) Gram matrix; an absolute
    eigenvalue error :math:`u\lambda_{max}` is a relative error :math:`u\kappa^2` of the smallest
    eigenvalue and half of it of its inverse square root.
    """
    return 0.5 * unit_roundoff(dtype) * kappa2


#: The iteration's own rounding is about ``u·Σ_k amp_k`` (a handful of steps with amp >= 8):
#: the matmul-only path runs in float32 only for ``tol >= 64 u₃₂`` (3.8e-6).
_ITER_ROUNDOFFS = 64


def float32_gemm_roundoff(device_type: str) -> float:
    """Unit roundoff of float32 GEMMs: IEEE float32 on CPU; on accelerators what
    ``torch.get_float32_matmul_precision()`` allows (``"high"``: TF32, 2^-11; ``"medium"``:
    bfloat16, 2^-8)."""
    if device_type == "cpu":
        return unit_roundoff(torch.float32)
    prec = torch.get_float32_matmul_precision()
    return {"high": 2.0**-11, "medium": 2.0**-8}.get(prec, unit_roundoff(torch.float32))


def _fits_float32(kappa2: float, tol: float, device_type: str) -> bool:
    """Whether a float32 Gram path meets ``tol``: ``½u κ² <= tol/2`` and ``tol >= 64u``."""
    u = float32_gemm_roundoff(device_type)
    return 0.5 * u * kappa2 <= tol / 2 and tol >= _ITER_ROUNDOFFS * u


def normalize(X: Tensor) -> tuple[Tensor, Tensor]:
    """Split ``X = s * X_hat`` with ``s = max|X_ij|`` per matrix (``s = 1`` for a zero matrix).

    Returns ``(X_hat, s)`` with ``s`` of shape ``[..., 1, 1]``.
    """
    s = X.abs().amax(dim=(-2, -1), keepdim=True)
    s = torch.where(s > 0, s, torch.ones_like(s))
    return X / s, s


def _tall(X: Tensor) -> tuple[Tensor, bool]:
    """Orient ``X`` so that ``m >= n``; returns (tall view, whether it was transposed)."""
    if X.shape[-2] < X.shape[-1]:
        return X.mT, True
    return X, False


def _gram(X: Tensor) -> Tensor:
    """``A = XᵀX`` of the tall orientation (``r x r``, ``r = min(m, n)``)."""
    Xt, _ = _tall(X)
    return Xt.mT @ Xt


def gram_eigh_map(
    X: Tensor,
    weight: Callable[[Tensor], Tensor],
    *,
    gram: Tensor | None = None,
    return_spectrum: bool = False,
) -> Any:
    r"""``X V diag(weight(lam)) V^T`` from the eigendecomposition of the small Gram matrix.

    ``X: [..., m, n]``; ``weight`` maps the Gram eigenvalues ``lam: [..., r]`` (ascending,
    clamped at 0) to ``g(sigma)/sigma``. Wide inputs are transposed, so the Gram matrix is
    ``r x r`` with ``r = min(m, n)``. ``gram``: ``XᵀX`` of the tall orientation if the caller
    has it already. With ``return_spectrum`` the Gram eigenvalues ``[..., r]`` come back too.
    """
    Xt, transposed = _tall(X)
    A = Xt.mT @ Xt if gram is None else gram  # A = Xᵀ X, [..., r, r]
    try:
        lam, V = torch.linalg.eigh(A)
    except torch.linalg.LinAlgError:  # eigensolver failed to converge: fall back to SVD
        _, S, Vh = torch.linalg.svd(Xt, full_matrices=False)
        lam, V = S.square(), Vh.mT
    w = weight(lam.clamp_min(0))
    M = (V * w.unsqueeze(-2)) @ V.mT  # M = V diag(w) Vᵀ
    out = Xt @ M
    out = out.mT if transposed else out
    return (out, lam) if return_spectrum else out


def _svd_where_eigh_inaccurate(
    out: Tensor, lam: Tensor, Xh: Tensor, e_vec: Tensor, weight: WeightFn, tol: float
) -> Tensor:
    """Recompute by SVD the matrices whose Gram-path result cannot be trusted.

    With the computed spectrum, the per-direction error of the Gram path is at most about
    ``½u·λ_max/(λ_min + ε²)`` (eigenvalue error ``u·λ_max`` through a weight of slope
    ``½(λ+ε²)^{-3/2}``, times ``σ``). Where that exceeds ``max(tol, √u)`` — rank-deficient
    inputs with ``ε`` far below ``‖G‖``, where the explicit ``V diag(w) Vᵀ`` loses the small
    weights — the SVD path, accurate to ``u`` per direction, is used instead.
    """
    u = unit_roundoff(lam.dtype)
    lam_c = lam.clamp_min(0)
    bound = 0.5 * u * lam_c[..., -1] / (lam_c[..., 0] + e_vec.square().squeeze(-1))
    bad = bound > max(tol, u**0.5)
    if not bool(bad.any()):
        return out
    eb = e_vec.expand(*bad.shape, 1)[bad]
    redo = svd_map(Xh[bad], lambda S: weight(S.square(), eb) * S)
    out = out.clone()
    out[bad] = redo.to(out.dtype)
    return out


def svd_map(X: Tensor, g: Callable[[Tensor], Tensor]) -> Tensor:
    """``U diag(g(sigma)) V^T`` from a thin SVD. ``X: [..., m, n]``."""
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    return (U * g(S).unsqueeze(-2)) @ Vh


def _eps_tensor(eps: float | Tensor, X: Tensor) -> Tensor:
    """Per-matrix eps as a tensor of shape ``[..., 1, 1]`` broadcastable against ``X``."""
    e = torch.as_tensor(eps, dtype=X.dtype, device=X.device)
    return e.reshape(*e.shape, 1, 1) if e.ndim else e


# -- spectral interval ----------------------------------------------------------------------
#: Power-iteration steps of :func:`lmax_estimate` and the safety factor on its Rayleigh
#: quotient (after 8 steps from a random start it is >= 0.85 lambda_max on Gaussian matrices,
#: whose spectra have no gap; with a gap it converges geometrically).
POWER_ITERS = 8
POWER_SAFETY = 1.3


@functools.lru_cache(maxsize=64)
def _start_vector_cpu(r: int) -> Tensor:
    g = torch.Generator().manual_seed(0x5EED)
    v = torch.randn(r, 1, generator=g, dtype=torch.float64)
    return v / torch.linalg.vector_norm(v)


def _start_vector(A: Tensor) -> Tensor:
    """A fixed pseudo-random unit start vector ``[r, 1]`` (deterministic across calls)."""
    return _start_vector_cpu(A.shape[-1]).to(dtype=A.dtype, device=A.device)


def lmax_estimate(A: Tensor, *, iters: int = POWER_ITERS) -> tuple[Tensor, Tensor]:
    r"""Estimates of :math:`\lambda_{max}` of symmetric PSD ``A: [..., r, r]``.

    Returns ``(theta, est)``, both ``[..., 1, 1]``: ``theta`` is the Rayleigh quotient after
    ``iters`` power steps from a fixed pseudo-random vector (a lower bound), ``est =
    min(||A||_F, 1.3 theta)`` the estimate used for precision decisions (``||A||_F`` is a
    rigorous upper bound). Cost ``2 r^2 (iters + 1)`` flops per matrix.
    """
    # A is symmetric: iterate on row vectors vᵀA when r >= 16 (much faster batched GEMV)
    row = A.shape[-1] >= 16
    v = _start_vector(A)
    v = v.mT.expand(*A.shape[:-2], 1, -1) if row else v.expand(*A.shape[:-1], 1)
    dim = -1 if row else -2
    tiny = torch.finfo(A.dtype).tiny
    for _ in range(iters):
        w = v @ A if row else A @ v  # w = A v
        v = w / torch.linalg.vector_norm(w, dim=dim, keepdim=True).clamp_min(tiny)
    Av = v @ A if row else A @ v
    theta = (v * Av).sum(dim=dim, keepdim=True).reshape(*A.shape[:-2], 1, 1)  # θ = vᵀAv
    frob = torch.linalg.vector_norm(A, dim=(-2, -1), keepdim=True)
    return theta, torch.minimum(frob, POWER_SAFETY * theta)


def spectral_map(
    G: Tensor,
    eps: float | Tensor,
    weight: WeightFn,
    *,
    method: str,
    tol: float | None,
    name: str = "G",
) -> Tensor:
    """Apply a 0-homogeneous spectral map ``(G, eps) -> U diag(g_eps(sigma)) V^T``.

    ``weight(lam, eps) = g_eps(sigma)/sigma``, evaluated on quantities divided by a power of
    two ``s >= max|G_ij|`` (exact, so promoting to float64 adds no input error). ``method``
    is ``"eigh"`` or ``"svd"``. The working dtype is promoted to float64 for ``"eigh"`` when
    the conditioning bound of the module docstring exceeds ``tol``: first checked with the
    Frobenius norm (free, rigorous), then, if that fails, with :func:`lmax_estimate` of the
    Gram matrix (which the eigh path needs anyway).
    """
    out_dtype = G.dtype
    X = G.to(work_dtype(G.dtype))
    if tol is None:
        tol = default_tol(out_dtype)
    s = _pow2_scale(X, torch.zeros((), dtype=X.dtype, device=X.device))
    Xh = X / s  # exact: a later float64 promotion sees the input itself
    e = _eps_tensor(eps, X) / s
    gram = None
    if method == "eigh" and X.dtype != torch.float64:
        # kappa^2 <= ||X_hat||_F^2 / eps_hat^2 bounds (||G||_op / eps)^2; see the module docs.
        kappa2 = Xh.square().sum(dim=(-2, -1), keepdim=True) / e.square()
        if gram_floor(float(kappa2.max()), X.dtype) > tol:
            gram = _gram(Xh)
            kappa2 = torch.minimum(kappa2, lmax_estimate(gram)[1] / e.square())
            if gram_floor(float(kappa2.max()), X.dtype) > tol:
                Xh, e, gram = Xh.double(), e.double(), None
    e_vec = e.squeeze(-1)  # [..., 1] broadcasts against the spectrum [..., r]
    if method == "eigh":
        out, lam = gram_eigh_map(
            Xh, lambda lam: weight(lam, e_vec), gram=gram, return_spectrum=True
        )
        out = _svd_where_eigh_inaccurate(out, lam, Xh, e_vec, weight, tol)
    elif method == "svd":
        out = svd_map(Xh, lambda S: weight(S.square(), e_vec) * S)
    else:  # pragma: no cover - callers validate
        raise ValueError(f"unknown method {method!r}")
    return out.to(out_dtype)


# -- minimax polynomial schedules -------------------------------------------------------------
#: Points of the Remez design grid (half geometric, half Chebyshev-spaced).
_GRID = 600
#: Degrees ``d`` of ``h`` tried per step (``p(σ) = σ h(σ²)`` has degree ``2d + 1``); a degree
#: ``d`` step needs ``Y²`` and, for ``d = 4``, one more product (Paterson–Stockmeyer).
POLY_DEGREES = (1, 2, 4)
#: The schedule grid: ``x = -ln(ρ)`` is rounded up to ``2^(k/32)`` (ρ down by <= 2.2 % of x);
#: the intermediate intervals of the planner use every ``_COARSE``-th point (4.4 %), which
#: halves the planning time for at most one extra product in the schedules of the tests.
_X_PER_OCTAVE = 32
_COARSE = 2
#: Smallest design ratio; below it the Gram paths' precision floor is hopeless anyway.
RHO_MIN = 1e-8
#: Smallest accuracy a schedule targets (float64 cannot verify errors below it).
TARGET_MIN = 1e-15
#: Relative safety margin on the extrema found on the (dense) verification grid.
_MARGIN = 1e-3
#: Design ratios offered as a "cushion" (Polar Express): designing a step for
#: ``[max(ρ, c), 1]`` grows the smallest values a little less but keeps ``h`` away from 0 at
#: the top of the spectrum, which bounds the rounding amplification ``amp`` of the step.
_CUSHIONS = (0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3)


@functools.lru_cache(maxsize=8192)
def minimax_odd(ratio: float, degree: int) -> tuple[tuple[float, ...], float, float, float]:
    r"""Best odd polynomial :math:`p(\sigma) = \sigma h(\sigma^2)`, ``deg h = degree``, for 1.

    Minimizes :math:`E = \max_{\sigma \in [\mathrm{ratio}, 1]} |1 - p(\sigma)|` by the Remez
    exchange (basis :math:`\sigma (\sigma^2 - 1)^j`, well conditioned for the narrow intervals
    near convergence). Returns ``(c, pmin, pmax, amp)``: the monomial coefficients ``c_j`` of
    :math:`h(y) = \sum_j c_j y^j`; the range ``[pmin, pmax]`` of ``p`` on the interval, found
    on a dense grid and widened by a relative margin of 1e-3 of the distance to 0 or 1; and the
    rounding amplification :math:`\mathrm{amp} = \sum_j |c_j| / \min_{[0,1]} h` (the relative
    error of a computed :math:`h(Y)` is about ``u·amp``). ``amp = inf`` marks an unsafe
    polynomial: not increasing on :math:`[0, \mathrm{ratio}]` (smaller singular values, e.g. of
    rank-deficient inputs, could change order or sign) or not positive.
    """
    lo, d = float(ratio), int(degree)
    n = d + 2
    t = np.linspace(0.0, 1.0, _GRID // 2)
    grid = np.unique(
        np.concatenate([lo ** (1.0 - t), lo + (1.0 - lo) * (1 - np.cos(np.pi * t)) / 2])
    )
    span = max(1.0 - lo * lo, 1e-300)
    basis = grid[:, None] * ((grid[:, None] ** 2 - 1.0) / span) ** np.arange(d + 1)
    signs = (-1.0) ** np.arange(n)
    ref = np.round(np.linspace(0, len(grid) - 1, n)).astype(int)
    a = np.zeros(d + 1)
    for _ in range(60):
        system = np.column_stack([basis[ref], signs])
        try:
            sol = np.linalg.solve(system, np.ones(n))
        except np.linalg.LinAlgError:
            sol = np.linalg.lstsq(system, np.ones(n), rcond=None)[0]
        a = sol[:-1]
        err = 1.0 - basis @ a
        sgn = np.where(err >= 0, 1, -1)
        cut = np.flatnonzero(np.diff(sgn)) + 1
        runs = zip(np.concatenate(([0], cut)), np.concatenate((cut, [len(grid)])), strict=True)
        ext = [s + int(np.argmax(np.abs(err[s:f]))) for s, f in runs]
        while len(ext) > n:  # drop the smaller end extremum until n alternating points remain
            ext.pop(0 if abs(err[ext[0]]) < abs(err[ext[-1]]) else -1)
        if len(ext) < n:
            break
        new = np.array(ext)
        done = np.array_equal(new, ref) or np.abs(err).max() <= abs(sol[-1]) * (1 + 1e-9)
        ref = new
        if done:
            break
    # monomials in y: h(y) = Σ_j a_j ((y - 1)/span)^j = Σ_k c_k y^k
    c = np.zeros(d + 1)
    for j in range(d + 1):
        for k in range(j + 1):
            c[k] += a[j] / span**j * math.comb(j, k) * (-1.0) ** (j - k)
    coeffs = tuple(float(x) for x in c)
    fine = np.concatenate([grid, np.linspace(lo, 1.0, 4 * _GRID)])  # verification points
    p = fine * np.polyval(c[::-1], fine**2)
    noise = 4e-16 * float(np.abs(c).sum())
    pmin, pmax = float(p.min()), float(p.max())
    pmin = max(pmin * (1 - _MARGIN), 1 - (1 - pmin) * (1 + _MARGIN)) - noise
    pmax = min(pmax * (1 + _MARGIN), 1 + (pmax - 1) * (1 + _MARGIN)) + noise
    s_low = np.linspace(0.0, lo, 257)
    slope = np.polyval((c * (2 * np.arange(d + 1) + 1))[::-1], s_low**2)  # p'(σ)
    hmin = min(float((p / fine).min()), float(np.polyval(c[::-1], s_low**2).min()))
    if not (np.all(slope > 0) and pmin > 0 and hmin > 0):
        return coeffs, pmin, pmax, math.inf
    return coeffs, pmin, pmax, float(np.abs(c).sum()) / hmin


def _p(coeffs: tuple[float, ...], sigma: float) -> float:
    """``p(σ) = σ h(σ²)``."""
    return sigma * float(np.polyval(np.asarray(coeffs)[::-1], sigma * sigma))


def _x_key(rho: float) -> int:
    """Grid index of ``x = -ln(rho)`` rounded up (the design ratio ``rho_k <= rho``)."""
    x = -math.log(min(max(rho, RHO_MIN), 1.0 - 1e-16))
    return math.ceil(_X_PER_OCTAVE * math.log2(x) - 1e-9)


def _rho_of(key: int) -> float:
    return math.exp(-(2.0 ** (key / _X_PER_OCTAVE)))


def _step_matmuls(degree: int, first: bool, last: bool) -> int:
    """``r x r`` products of one step (see the cost model in the module docstring)."""
    y2 = 1 if (degree >= 2 or first or not last) else 0  # Y² (the first step's is computed for L)
    ps = 1 if degree == 4 else 0  # h = (c0 + c1 Y) + Y² (c2 + c3 Y + c4 Y²)
    q = 0 if first else 1  # Q ← Q h
    y = 0 if last else (1 if degree == 1 else 2)  # Y ← (Y h) h; for d = 1, Y h = c0 Y + c1 Y²
    return y2 + ps + q + y


def _options(key: int, amp_max: float) -> list[tuple[int, int, float, float, float]]:
    """Admissible steps from the input ratio ``_rho_of(key)``: ``(d, design_key, lo', hi',
    amp)`` with ``[lo', hi']`` the image of ``[rho, 1]``; per degree the minimax design for
    ``[rho, 1]`` itself, or if its ``amp`` is too large the least cushioned one that fits."""
    rho = _rho_of(key)
    designs = [key, *sorted((_x_key(c) for c in _CUSHIONS if c > rho), reverse=True)]
    out = []
    for d in POLY_DEGREES:
        for kd in designs:
            coeffs, pmin, pmax, amp = minimax_odd(_rho_of(kd), d)
            if amp <= amp_max:  # p increases on [0, ratio]: the image's bottom is p(rho)
                out.append((d, kd, min(pmin, _p(coeffs, rho)), pmax, amp))
                break
    return out


@functools.lru_cache(maxsize=65536)
def _best_plan(
    key: int, first: bool, target: float, amp_max: float
) -> tuple[float, tuple[tuple[int, int], ...]]:
    """Fewest products from the input ratio ``_rho_of(key)`` to error ``<= target``; the plan
    is a tuple of ``(degree, design_key)``."""
    best: tuple[float, tuple[tuple[int, int], ...]] = (math.inf, ())
    for d, kd, lo, hi, _ in _options(key, amp_max):
        cand: tuple[float, tuple[tuple[int, int], ...]]
        if max(1.0 - lo, hi - 1.0) <= target:
            cand = (float(_step_matmuls(d, first, True)), ((d, kd),))
        else:
            nxt = -(-_x_key(lo / hi) // _COARSE) * _COARSE  # rounded up to the coarse grid
            if nxt >= key:  # no progress at this grid resolution
                continue
            cost, rest = _best_plan(nxt, False, target, amp_max)
            cand = (_step_matmuls(d, first, False) + cost, ((d, kd), *rest))
        if cand[0] < best[0]:
            best = cand
    return best


@dataclass(frozen=True)
class PolyStep:
    r"""One step :math:`\sigma \mapsto \sigma h(\sigma^2)` of a schedule.

    ``coeffs``: :math:`h(y) = \sum_j c_j y^j` for inputs :math:`\sigma \in [lo, hi]` (already
    rescaled by ``hi``); the outputs lie in ``[out_lo, out_hi]``; ``design``: the ratio the
    minimax polynomial was designed for (``>= lo/hi``; larger = a cushion); ``amp``: its
    rounding amplification (:func:`minimax_odd`).
    """

    degree: int
    coeffs: tuple[float, ...]
    lo: float
    hi: float
    out_lo: float
    out_hi: float
    design: float
    amp: float

    @property
    def err(self) -> float:
        """``max |1 - p(σ)|`` over the step's input interval."""
        return max(1.0 - self.out_lo, self.out_hi - 1.0)


@dataclass(frozen=True)
class PolySchedule:
    """A composition of minimax steps valid for normalized singular values in ``[rho, 1]``."""

    rho: float
    target: float
    steps: tuple[PolyStep, ...]

    @property
    def err(self) -> float:
        """Guaranteed ``max |σ_K - 1|`` (relative error per singular direction)."""
        return self.steps[-1].err

    @property
    def matmuls(self) -> int:
        """``r x r`` products, including the ``Y²`` of the first step."""
        K = len(self.steps)
        return sum(_step_matmuls(s.degree, i == 0, i == K - 1) for i, s in enumerate(self.steps))

    def truncated(self, k: int) -> PolySchedule:
        """The first ``k >= 1`` steps (error ``steps[k-1].err``)."""
        if not 1 <= k <= len(self.steps):
            raise ValueError(f"k must be in [1, {len(self.steps)}], got {k}")
        return PolySchedule(self.rho, self.steps[k - 1].err, self.steps[:k])


@functools.lru_cache(maxsize=1024)
def _schedule(key: int, target: float, amp_max: float) -> PolySchedule:
    _, plan = _best_plan(key, True, target, amp_max)
    if not plan:
        raise ValueError(
            f"no polynomial schedule reaches {target:.3g} from rho={_rho_of(key):.3g} with "
            f"rounding amplification <= {amp_max:.3g}"
        )
    steps = []
    lo, hi = _rho_of(key), 1.0
    for i, (d, kd) in enumerate(plan):
        in_key = key if i == 0 else -(-_x_key(lo / hi) // _COARSE) * _COARSE
        coeffs, pmin, pmax, amp = minimax_odd(_rho_of(kd), d)
        out_lo = min(pmin, _p(coeffs, _rho_of(in_key)))
        # inputs σ ∈ [lo, hi] are fed as σ/hi: p(σ/hi) = σ Σ_j c_j hi^-(2j+1) σ^(2j)
        scaled = tuple(cj * hi ** -(2 * j + 1) for j, cj in enumerate(coeffs))
        steps.append(PolyStep(d, scaled, lo, hi, out_lo, pmax, _rho_of(kd), amp))
        lo, hi = out_lo, pmax
    return PolySchedule(_rho_of(key), target, tuple(steps))


def amp_limit(target: float, dtype: torch.dtype) -> float:
    """Largest rounding amplification a schedule may use: ``target/(8u)`` in ``[16, 1e4]``,
    a power of 2 (so a step's rounding error ``u·amp`` stays below ``target/8``)."""
    a = min(max(target / (8 * unit_roundoff(dtype)), 16.0), 1e4)
    return 2.0 ** math.floor(math.log2(a))


def poly_schedule(rho: float, tol: float, dtype: torch.dtype = torch.float64) -> PolySchedule:
    r"""The cheapest minimax composition mapping :math:`[\rho, 1]` into :math:`[1-E, 1+E]`,
    :math:`E \le` ``tol``, for iterations run in ``dtype`` (which bounds ``amp``).

    ``rho`` is rounded down to a grid (``x = -ln ρ`` up by at most 2.2 %) and ``tol`` down to
    a power of ``2^(1/4)``, so schedules are shared and cached; the first call for a new
    ``(rho, tol)`` runs a few dozen 6x6 Remez solves (tens of milliseconds).
    """
    check_scale(rho, "rho", allow_zero=False)
    check_scale(tol, "tol", allow_zero=False)
    target = max(2.0 ** (math.floor(4 * math.log2(tol)) / 4), TARGET_MIN)
    return _schedule(_x_key(rho), target, amp_limit(target, dtype))


# -- the matmul-only kernel --------------------------------------------------------------------
def _add_identity(M: Tensor, c: float) -> Tensor:
    M.diagonal(dim1=-2, dim2=-1).add_(c)  # M += c I (in place)
    return M


class _Pool:
    """Recycled ``[B, r, r]`` work buffers: on CPU every fresh large tensor is page-faulted in,
    which costs as much as the elementwise ops themselves."""

    def __init__(self) -> None:
        self.free: list[Tensor] = []

    def get(self, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        dtype = like.dtype if dtype is None else dtype
        for i, b in enumerate(self.free):
            if b.dtype == dtype:
                return self.free.pop(i)
        return torch.empty_like(like, dtype=dtype)

    def put(self, t: Tensor) -> None:
        self.free.append(t)


def gram_poly_inv_sqrt(
    Y: Tensor,
    schedule: PolySchedule,
    *,
    Y2: Tensor | None = None,
    dtypes: tuple[torch.dtype, ...] | None = None,
) -> Tensor:
    r""":math:`Q \approx Y^{-1/2}` for symmetric ``Y: [B, r, r]``, spectrum in :math:`[\rho^2, 1]`.

    The coupled iteration :math:`h_k = h_k(Y_k),\ Q_{k+1} = Q_k h_k,\ Y_{k+1} = Y_k h_k^2`
    (all iterates are polynomials in ``Y`` and commute). In exact arithmetic every eigenvalue
    of :math:`Q Y^{1/2}` lies in ``[1 - schedule.err, 1 + schedule.err]``. ``Y2`` is ``Y @ Y`` if
    known; ``dtypes[k]`` the dtype step ``k`` runs in (``Q`` stays in ``Y``'s dtype). Inputs
    are not modified. Cost: ``schedule.matmuls`` batched ``r x r`` products (one fewer when
    ``Y2`` is given), the scalar-matrix terms fused into them (``baddbmm``).
    """
    work = Y.dtype
    K = len(schedule.steps)
    pool = _Pool()
    Q: Tensor | None = None
    y_own = y2_own = False  # whether Y / Y2 are pool buffers (the caller's are never reused)
    for k, step in enumerate(schedule.steps):
        last = k == K - 1
        dt = work if dtypes is None else dtypes[k]
        if Y.dtype != dt:
            Y, Y2, y_own, y2_own = Y.to(dt), None if Y2 is None else Y2.to(dt), False, False
        c, d = step.coeffs, step.degree
        H = pool.get(Y)
        T = pool.get(Y)
        if d == 4 and Y2 is None:
            Y2, y2_own = torch.bmm(Y, Y, out=pool.get(Y)), True  # Y²
        if d == 1:
            _add_identity(torch.mul(Y, c[1], out=H), c[0])  # h = c0 I + c1 Y
            if not last and Y2 is not None:  # Y h = c0 Y + c1 Y²
                torch.mul(Y, c[0], out=T).add_(Y2, alpha=c[1])
            elif not last:
                torch.baddbmm(Y, Y, Y, beta=c[0], alpha=c[1], out=T)
        elif d == 2:  # h = c0 I + c1 Y + c2 Y²
            if Y2 is not None:
                torch.mul(Y, c[1], out=H).add_(Y2, alpha=c[2])
            else:
                torch.baddbmm(Y, Y, Y, beta=c[1], alpha=c[2], out=H)
            _add_identity(H, c[0])
        else:  # d = 4: h = c0 I + c1 Y + c3 Y² T', T' = (c2/c3) I + Y + (c4/c3) Y²
            assert Y2 is not None
            _add_identity(torch.add(Y, Y2, alpha=c[4] / c[3], out=T), c[2] / c[3])
            _add_identity(torch.baddbmm(Y, Y2, T, beta=c[1], alpha=c[3], out=H), c[0])
        if not last:
            if d >= 2:
                torch.bmm(Y, H, out=T)  # Y h
            Y_new = torch.bmm(T, H, out=pool.get(Y))  # Y ← (Y h) h = Y h²
            for t, own in ((Y, y_own), (Y2, y2_own)):
                if own and t is not None:
                    pool.put(t)
            Y, Y2, y_own, y2_own = Y_new, None, True, False
        pool.put(T)
        Hw = H if H.dtype == work else H.to(work)
        if Q is None:
            Q = Hw
        else:
            Q_new = torch.bmm(Q, Hw, out=pool.get(Q, work))  # Q ← Q h
            pool.put(Q)
            Q = Q_new
        if H is not Q:
            pool.put(H)
    assert Q is not None
    return Q


def step_dtypes(
    schedule: PolySchedule, tol: float, work: torch.dtype, device_type: str
) -> tuple[torch.dtype, ...]:
    r"""Per-step dtypes: float16 where its rounding provably fits, else ``work``.

    Step ``k`` may run in a dtype of unit roundoff ``u`` if
    :math:`\tfrac12 u ((hi_k/lo_k)^2 + amp_k) \le tol/(4K)` (module docstring), and only on
    accelerators (CPU half-precision GEMMs are slower than float32).
    """
    K = len(schedule.steps)
    out = []
    for s in schedule.steps:
        low_ok = device_type not in ("cpu", "meta") and work != torch.float16
        bound = 0.5 * unit_roundoff(torch.float16) * ((s.hi / s.lo) ** 2 + s.amp)
        out.append(torch.float16 if low_ok and bound <= tol / (4 * K) else work)
    return tuple(out)


# -- method selection ----------------------------------------------------------------------------
def eigh_cost(r: int, device_type: str) -> float:
    """Cost of a batched symmetric eigendecomposition, in ``r x r`` GEMMs of the same batch.

    CPU (LAPACK ``syevd`` via torch), measured single-threaded on a 2-core AVX2 host against
    ``bmm`` of the same shapes: 6.3 GEMMs at ``r = 1024``, 8.2 at 512, 10 at 256, 14.5 at 128,
    17-25 at 64, 51 at 32 (64 matrices), 66 at 16 (512 matrices), 33 at 8 (4096 matrices):
    modeled as ``5 + 1200/r`` (within 30 % from 32 to 1024; tiny matrices go to ``"poly"``
    either way). Accelerators: ``inf`` (latency-bound eigensolvers; never preferred).
    """
    return 5.0 + 1200.0 / r if device_type == "cpu" else math.inf


@dataclass(frozen=True)
class AutoPlan:
    """What ``method="auto"`` does for one call (:func:`choose_method`)."""

    method: str  #: "eigh", "poly" or "svd"
    dtype: torch.dtype  #: working dtype
    kappa2: float  #: estimate of (||G||² + ε²)/ε², max over the batch
    matmuls: int  #: predicted r x r products of the poly path
    cost_poly: float  #: in r x r GEMMs
    cost_eigh: float  #: in r x r GEMMs


#: The poly path's interval bound ``L = ||A²||_F^(1/2)`` overestimates ``λ_max`` by 1-3x on
#: Gaussian matrices (by ``r^(1/4)`` at most); the planner assumes this factor.
_L_OVER = 2.0


def choose_method(
    *,
    r: int,
    dtype: torch.dtype,
    device_type: str,
    tol: float | None,
    kappa2: float,
) -> AutoPlan:
    r"""The ``method="auto"`` policy, a pure function of shape, dtype, device, tol and κ².

    ``kappa2`` is :math:`(\|G\|^2+\varepsilon^2)/\varepsilon^2` (max over the batch).

    1. ``tol=None``: ``"eigh"`` (exact to the dtype; :func:`spectral_map` picks its precision).
    2. Working dtype: float32 (for every non-float64 input) if
       :math:`\tfrac12 u_{32}\kappa^2 \le tol/2` and ``tol >= 64 u₃₂`` (``u₃₂`` of the
       device's float32 GEMMs, :func:`float32_gemm_roundoff`), else float64; if float64 also
       misses, ``"svd"`` (its error does not square the conditioning).
    3. ``"poly"`` if its product count (schedule for :math:`\rho = 1/\sqrt{2\kappa^2}`, target
       ``tol/2``) is below ``1 + eigh_cost(r, device)``, else ``"eigh"``.
    """
    work = work_dtype(dtype)
    if tol is None:
        return AutoPlan("eigh", work, kappa2, 0, math.nan, math.nan)
    if work == torch.float32 and not _fits_float32(kappa2, tol, device_type):
        work = torch.float64
    if gram_floor(kappa2, work) > tol / 2:
        return AutoPlan("svd", work, kappa2, 0, math.nan, math.nan)
    sched = poly_schedule(1.0 / math.sqrt(_L_OVER * max(kappa2, 1.0)), tol / 2, work)
    cost_poly = float(sched.matmuls)
    cost_eigh = 1.0 + eigh_cost(r, device_type)
    method = "poly" if cost_poly < cost_eigh else "eigh"
    return AutoPlan(method, work, kappa2, sched.matmuls, cost_poly, cost_eigh)


# -- the Gram front shared by "poly" and "auto" ----------------------------------------------------
#: Scales ``s`` in ``[2^-40, 2^40]`` are applied to the small Gram matrix and to the final
#: ``r x r`` factor instead of to the ``m x n`` input: ``GᵀG`` cannot overflow or underflow
#: float32 there (entries ``<= 2^80 m``), and the power-of-two scaling is exact either way.
_SCALE_RANGE = 2.0**40


@dataclass
class _Front:
    X: Tensor  # [B, m, n] input in the working dtype, divided by `pre` (a power of two)
    s: Tensor  # [B, 1, 1] remaining power-of-two scale: the map is computed for (X/s, e)
    e: Tensor  # [B, 1, 1] normalized ε = ε/(pre·s) <= 1
    A: Tensor  # [B, r, r] = (XᵀX)/s² + e² I (tall orientation)
    kappa2: Tensor  # [B, 1, 1] estimate of λ_max(A)/e²
    theta: Tensor  # [B, 1, 1] Rayleigh quotient <= λ_max(A)


def _pow2_scale(G: Tensor, e: Tensor) -> Tensor:
    """A power of two ``>= max(max|G_ij|, e)`` per matrix (1 for zero), ``[B, 1, 1]``.

    Dividing by a power of two is exact, so a later promotion to float64 sees the input
    exactly (a rounded ``G/s`` would be an input error amplified by ``||G||/ε``).
    """
    a = torch.maximum(G.abs().amax(dim=(-2, -1), keepdim=True), e)
    p = torch.ldexp(torch.ones_like(a), torch.frexp(a).exponent)
    return torch.where(a > 0, torch.where(torch.isfinite(p), p, a), 1.0)


def _front(G: Tensor, eps: float | Tensor, dtype: torch.dtype) -> _Front:
    """Flatten the batch, scale jointly by a power of two ``s >= max(max|G_ij|, ε)`` (so
    ``ε/s <= 1`` cannot overflow when squared), form the shifted Gram matrix in ``dtype``."""
    m, n = G.shape[-2:]
    X = G.reshape(-1, m, n).to(dtype)
    e = torch.as_tensor(eps, dtype=dtype, device=G.device)
    e = e.reshape(*e.shape, 1, 1).expand(*G.shape[:-2], 1, 1).reshape(-1, 1, 1)
    s = _pow2_scale(X, e)
    if not (1 / _SCALE_RANGE <= float(s.min()) and float(s.max()) <= _SCALE_RANGE):
        X, e, s = X / s, e / s, torch.ones_like(s)  # extreme scales: normalize the input
    return _with_gram(X, s, e / s)


def _with_gram(X: Tensor, s: Tensor, e: Tensor, estimates: _Front | None = None) -> _Front:
    """The front of ``(X, s, e)``; ``estimates``: take κ² and θ from that front (converted)
    instead of power-iterating again."""
    A = _gram(X).mul_(s.square().reciprocal())  # A = (XᵀX)/s², exact power-of-two scaling
    A = _add_identity_batched(A, e.square())  # A += e² I
    if estimates is not None:
        return _Front(X, s, e, A, estimates.kappa2.to(A.dtype), estimates.theta.to(A.dtype))
    theta, est = lmax_estimate(A)
    tiny = torch.finfo(A.dtype).tiny
    return _Front(X, s, e, A, est / e.square().clamp_min(tiny), theta)


def _add_identity_batched(M: Tensor, c: Tensor) -> Tensor:
    M.diagonal(dim1=-2, dim2=-1).add_(c.reshape(-1, 1))  # M += c_b I per matrix
    return M


def _promote(f: _Front, dtype: torch.dtype) -> _Front:
    """``f`` in ``dtype``, keeping its κ² and θ: estimates of the same matrix, already used
    for the decision to promote (a second power iteration would cost ~a third of a small
    ``eigh``, and no consumer after a promotion reads them)."""
    if f.X.dtype == dtype:
        return f
    return _with_gram(f.X.to(dtype), f.s.to(dtype), f.e.to(dtype), estimates=f)


def _apply(f: _Front, M: Tensor) -> Tensor:
    """``(X/s) M`` in the tall orientation (``M`` symmetric; wide ``X``: ``M (X/s)``)."""
    M = M.mul_(f.s.reciprocal())  # fold 1/s into the small factor
    return M @ f.X if f.X.shape[-2] < f.X.shape[-1] else f.X @ M


def _eigh_inv_sqrt(A: Tensor, e: Tensor) -> Tensor:
    """``A^{-1/2}`` of the shifted Gram matrix by ``eigh`` (eigenvalues clamped at ``e²``)."""
    lam, V = torch.linalg.eigh(A)
    w = torch.rsqrt(torch.maximum(lam, e.squeeze(-1).square()))  # w = λ^{-1/2}
    return (V * w.unsqueeze(-2)) @ V.mT  # V diag(w) Vᵀ


def _interval(A: Tensor) -> tuple[Tensor, Tensor]:
    """``(A², L)`` with ``L = (1 + 1e-3) ||A²||_F^{1/2} >= λ_max(A)`` (rigorous up to rounding,
    which the 0.1 % margin covers for ``r <= 1e4`` in float32), ``[B, 1, 1]``."""
    A2 = A @ A  # A²
    L = torch.linalg.vector_norm(A2, dim=(-2, -1), keepdim=True).sqrt() * (1 + 1e-3)
    return A2, torch.where(L > 0, L, 1.0)  # L = 0 only for A = 0 (then Y = 0 and Q = h(0))


def _poly_inv_sqrt(
    A: Tensor, rho: Tensor | float, tol: float, schedule: PolySchedule | None = None
) -> Tensor:
    """``A^{-1/2}`` by the minimax schedule (``A`` is overwritten); ``rho / sqrt(L)`` bounds
    ``sqrt(λ_min(A)/L)`` from below."""
    A2, L = _interval(A)
    rho_min = float((rho / L.sqrt()).min()) if isinstance(rho, Tensor) else rho
    if schedule is None:
        schedule = poly_schedule(min(max(rho_min, RHO_MIN), 1.0), tol, A.dtype)
    dts = step_dtypes(schedule, tol, A.dtype, A.device.type)
    Y, Y2 = A.div_(L), A2.div_(L.square())  # Y = A/L (A is consumed), Y² = A²/L²
    Q = gram_poly_inv_sqrt(Y, schedule, Y2=Y2, dtypes=dts)  # Q ≈ (A/L)^{-1/2}
    return Q.mul_(L.rsqrt())  # A^{-1/2} = (A/L)^{-1/2} / √L


def _finish(out: Tensor, G: Tensor) -> Tensor:
    return out.reshape(G.shape).to(G.dtype)


def _poly_method(G: Tensor, eps: float | Tensor, tol: float | None) -> Tensor:
    """Matmul-only path; float32 work promoted to float64 when the Gram floor exceeds tol/2."""
    tol = default_tol(G.dtype) if tol is None else tol
    f = _front(G, eps, work_dtype(G.dtype))
    kappa2 = float(f.kappa2.max())
    if f.X.dtype == torch.float32 and not _fits_float32(kappa2, tol, G.device.type):
        f = _promote(f, torch.float64)
    M = _poly_inv_sqrt(f.A, f.e, tol / 2)
    return _finish(_apply(f, M), G)


def plan_auto(G: Tensor, eps: float | Tensor, tol: float | None = None) -> AutoPlan:
    """The :class:`AutoPlan` ``regularized_polar(G, eps, method="auto", tol=tol)`` follows."""
    G = check_matrix(G, "G")
    if tol is None:
        return choose_method(
            r=min(G.shape[-2:]),
            dtype=G.dtype,
            device_type=G.device.type,
            tol=None,
            kappa2=math.nan,
        )
    return _plan(_front(G, eps, work_dtype(G.dtype)), G, tol)


def _plan(f: _Front, G: Tensor, tol: float) -> AutoPlan:
    return choose_method(
        r=min(G.shape[-2:]),
        dtype=G.dtype,
        device_type=G.device.type,
        tol=tol,
        kappa2=float(f.kappa2.max()),
    )


def _auto(G: Tensor, eps: float | Tensor, tol: float | None) -> Tensor:
    if tol is None:
        return _eigh_method(G, eps, None)
    f = _front(G, eps, work_dtype(G.dtype))
    plan = _plan(f, G, tol)
    if plan.method == "svd":
        return _svd_method(G, eps, tol)
    f = _promote(f, plan.dtype)
    if plan.method == "poly":
        M = _poly_inv_sqrt(f.A, f.e, tol / 2)
    else:
        try:
            M = _eigh_inv_sqrt(f.A, f.e)
        except torch.linalg.LinAlgError:  # eigensolver failed to converge: exact SVD path
            return _svd_method(G, eps, tol)
    return _finish(_apply(f, M), G)


def _relativistic_weight(lam: Tensor, eps: Tensor) -> Tensor:
    # g(σ)/σ = 1/√(σ² + ε²)
    return torch.rsqrt(lam + eps.square())


def _eigh_method(G: Tensor, eps: float | Tensor, tol: float | None) -> Tensor:
    return spectral_map(G, eps, _relativistic_weight, method="eigh", tol=tol)


def _svd_method(G: Tensor, eps: float | Tensor, tol: float | None) -> Tensor:
    return spectral_map(G, eps, _relativistic_weight, method="svd", tol=tol)


#: Registry of methods computing the relativistic map: name -> fn(G, eps, tol).
POLAR_METHODS: dict[str, Callable[[Tensor, float | Tensor, float | None], Tensor]] = {
    "eigh": _eigh_method,
    "svd": _svd_method,
    "poly": _poly_method,
}


def regularized_polar(
    G: Tensor, eps: float | Tensor, *, method: str = "auto", tol: float | None = None
) -> Tensor:
    r"""The regularized Muon map :math:`G (G^\top G + \varepsilon^2 I)^{-1/2}`, batched.

    This is :math:`\nabla K_\varepsilon` of the relativistic potential
    :math:`K_\varepsilon(P) = \sum_i \sqrt{\sigma_i^2 + \varepsilon^2} - \varepsilon`:
    singular values are mapped by :math:`\sigma \mapsto \sigma/\sqrt{\sigma^2+\varepsilon^2} < 1`.

    Args:
        G: ``[..., m, n]`` real floating tensor; leading dims are a batch.
        eps: the regularization scale ``ε >= 0`` in singular-value units (a float, or a
            tensor of shape ``[...]`` with one ``ε > 0`` per matrix). ``eps == 0`` gives the
            polar factor ``U V^T`` (zero singular directions map to 0). Texts that write
            ``(GᵀG + εI)^{-1/2}`` use ``ε_theirs = ε**2``.
        method: ``"auto"`` (:func:`choose_method`: exact ``"eigh"`` for ``tol=None``, else the
            cheapest path meeting ``tol``) or a key of :data:`POLAR_METHODS`.
        tol: requested relative accuracy per singular direction (hence also in the Frobenius
            norm); default :func:`default_tol` of ``G.dtype``. ``"poly"``/``"auto"`` split it:
            ``<= tol/2`` from the polynomial schedule (exact arithmetic) and a first-order
            rounding term ``½ u κ² <= tol/2`` by the choice of working dtype,
            ``κ² = (||G||² + ε²)/ε²``; ``"poly"`` cannot beat float64's ``½ u₆₄ κ²`` (``"auto"``
            takes the SVD there).

    Returns:
        ``[..., m, n]`` tensor of ``G``'s dtype and device.
    """
    G = check_matrix(G, "G", finite=False)
    lo, hi = torch.aminmax(G)  # one pass; NaN and ±inf propagate
    if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
        check_finite(G, "G")  # raises, counting the bad entries
    eps = check_scale(eps, "eps", allow_zero=not isinstance(eps, Tensor))
    method = check_choice(method, "method", {"auto", *POLAR_METHODS})
    if tol is not None:
        check_scale(tol, "tol", allow_zero=False)
    if isinstance(eps, float) and eps == 0.0:
        return polar(G, method="poly" if method == "poly" else "svd", tol=tol)
    if method == "auto":
        return _auto(G, eps, tol)
    return POLAR_METHODS[method](G, eps, tol)


#: Default spectral floor of the matmul-only polar factor: singular values ``>= 1e-3 σ_max``
#: are mapped to within ``tol`` of 1 (the interval Polar Express designs for).
POLAR_FLOOR = 1e-3


def polar(
    G: Tensor, *, method: str = "svd", tol: float | None = None, floor: float = POLAR_FLOOR
) -> Tensor:
    r"""The polar factor :math:`U V^\top` of ``G: [..., m, n]`` (idealized Muon, ``ε = 0``).

    ``method="svd"`` (default): singular directions with :math:`\sigma \le r\,u\,\sigma_{max}`
    (numerically zero) map to 0, so a rank-deficient input gives a partial isometry and
    ``0 -> 0``.

    ``method="poly"`` (matmul-only): the schedule of :func:`poly_schedule` on
    :math:`A = X^\top X` with design interval :math:`[\mathrm{floor}\,\sigma_{max}, \sigma_{max}]`:
    singular values :math:`\ge` ``floor``·σ_max map to within ``tol`` of 1 (promoted to float64
    when :math:`\tfrac12 u_{32} / \mathrm{floor}^2 > tol/2`), smaller ones to values in
    :math:`[0, 1]` increasing with σ, and 0 to 0. Cost as ``"poly"`` in the module docstring.
    """
    G = check_matrix(G, "G")
    check_choice(method, "method", {"svd", "poly"})
    out_dtype = G.dtype
    if method == "poly":
        check_scale(floor, "floor", allow_zero=False)
        if tol is not None:
            check_scale(tol, "tol", allow_zero=False)
        want = default_tol(out_dtype) if tol is None else float(tol)
        work = work_dtype(out_dtype)
        if work == torch.float32 and not _fits_float32(1 / floor**2, want, G.device.type):
            work = torch.float64
        f = _front(G, 0.0, work)
        # θ <= λ_max: singular values >= floor·σ_max are >= floor·√θ
        M = _poly_inv_sqrt(f.A, floor * f.theta.sqrt(), want / 2)
        return _finish(_apply(f, M), G)
    X, _ = normalize(G.to(work_dtype(G.dtype)))
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    cutoff = S[..., :1] * (min(X.shape[-2:]) * unit_roundoff(X.dtype))
    keep = (S > cutoff).to(X.dtype)
    return ((U * keep.unsqueeze(-2)) @ Vh).to(out_dtype)
