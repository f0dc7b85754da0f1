r"""Exact spectral maps: eigendecomposition of the small Gram matrix, and the SVD.

.. math::
    \Phi(G) = U\,\mathrm{diag}(g(\sigma))\,V^\top = X\, V \mathrm{diag}(w(\lambda)) V^\top,
    \qquad w(\lambda) = g(\sigma)/\sigma,\ \lambda = \sigma^2,

with :math:`X^\top X = V \mathrm{diag}(\lambda) V^\top` (tall orientation). The eigh path's
error per direction is :func:`~muonflow.polar.front.gram_rounding_bound`; where the computed
spectrum says it exceeds the requested accuracy, the SVD (accurate to ``u`` per direction)
recomputes those matrices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .autodiff import (
    ScalarFn,
    eigh_function,
    inv_sqrt_divided_difference,
    singular_value_function,
)
from .front import (
    GramFront,
    _pow2_at_least,
    default_tol,
    gram_floor,
    gram_rounding_bound,
    unit_roundoff,
    work_dtype,
)

__all__ = [
    "WeightFn",
    "eigh_inv_sqrt",
    "gram_eigh_map",
    "spectral_map",
    "svd_floor",
    "svd_map",
]

#: Weight function of a spectral map in Gram form: ``w(lam, eps) = g(sigma)/sigma`` with
#: ``lam = sigma**2``; ``eps`` broadcasts against ``lam`` (shape ``[..., 1]``).
WeightFn = Callable[[Tensor, Tensor], Tensor]


def svd_map(X: Tensor, g: Callable[[Tensor], Tensor]) -> Tensor:
    """``U diag(g(sigma)) V^T`` from a thin SVD. ``X: [..., m, n]``; ``g`` odd, elementwise.

    Differentiable in ``X`` at every point (:mod:`.autodiff`); tensors ``g`` closes over get
    no gradient (:func:`spectral_map` differentiates ``eps``).
    """
    return singular_value_function(X, None, lambda S, _: g(S))


def _tall(X: Tensor) -> tuple[Tensor, bool]:
    """Orient ``X`` so that ``m >= n``; returns (tall view, whether it was transposed)."""
    if X.shape[-2] < X.shape[-1]:
        return X.mT, True
    return X, False


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
    Differentiable in ``X`` at every point (Daleckii–Krein, :mod:`.autodiff`).
    """
    out, lam = _gram_eigh(X, None, lambda lam, _: weight(lam), gram)
    return (out, lam) if return_spectrum else out


def _gram_eigh(
    X: Tensor, e: Tensor | None, weight: ScalarFn, gram: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``(X V diag(weight(lam, e)) Vᵀ, lam)``; an eigensolver failure falls back to the SVD."""
    Xt, transposed = _tall(X)
    A = Xt.mT @ Xt if gram is None else gram  # A = Xᵀ X, [..., r, r]
    try:
        M, lam = eigh_function(A, e, weight)  # M = V diag(w) Vᵀ, λ clamped at 0
    except torch.linalg.LinAlgError:  # eigensolver failed to converge: fall back to SVD
        out = singular_value_function(Xt, e, lambda S, e: weight(S.square(), e) * S)
        lam = torch.linalg.svdvals(Xt.detach()).square().flip(-1)
        return (out.mT if transposed else out), lam
    out = Xt @ M
    return (out.mT if transposed else out), lam


def eigh_inv_sqrt(front: GramFront) -> tuple[Tensor, Tensor]:
    r"""``(A^{-1/2}, lam)`` of the front's shifted Gram matrix by ``eigh``.

    Eigenvalues are clamped at ``ε²`` (the shift: smaller ones are rounding); ``lam: [B, r]``
    is the computed spectrum, for :func:`eigh_bad`. Differentiable at every point (the divided
    differences of ``λ^{-1/2}`` in closed form). Raises ``torch.linalg.LinAlgError`` if the
    eigensolver does not converge.
    """
    return eigh_function(
        front.A,
        None,
        lambda lam, _: torch.rsqrt(lam),  # w = λ^{-1/2}
        lo=front.e2.reshape(-1, 1),
        exact=inv_sqrt_divided_difference,
    )


def eigh_bad(front: GramFront, lam: Tensor, tol: float) -> Tensor:
    """Matrices whose eigh result misses ``tol`` by the a-posteriori bound ``[B]`` (bool).

    :func:`~muonflow.polar.front.gram_rounding_bound` with the computed extreme eigenvalues
    (the smallest no lower than the shift ``ε²``), against ``tol`` itself.
    """
    e2 = front.e2.reshape(-1)
    bound = gram_rounding_bound(lam[..., -1], torch.maximum(lam[..., 0], e2), lam.dtype)
    return bound > tol


#: Dimension factor of the SVD path's constant error term, per ``max(m, n)`` (LAPACK's
#: ``p(m, n)``, "a modestly growing function"; measured up to 5.2 on 150 random shapes up to
#: 12x12, float64 ``gesdd``, against a 32-digit reference).
SVD_DIM_FACTOR = 8
#: Factor of the SVD path's conditioning term ``u‖G‖/ε`` (measured up to 1.3, same runs).
SVD_KAPPA_FACTOR = 2


def svd_floor(kappa: float, dtype: torch.dtype, size: int) -> float:
    r"""Relative error :math:`u(8 n + 2\kappa)` of the SVD path in ``dtype``
    (:math:`\kappa \ge \|G\|_2/\varepsilon`, ``size`` :math:`n = \max(m, n)`).

    The SVD is backward stable (the exact SVD of :math:`G + \delta G`, :math:`\|\delta G\|
    \le p(m, n)\,u\|G\|`) and the map is :math:`1/\varepsilon`-Lipschitz, so its error is
    about :math:`u\|G\|/\varepsilon` — the conditioning of the map itself: no method reaches
    below it from the rounded input — plus a few ``u`` per dimension from forming
    :math:`U g(\Sigma) V^\top` (:data:`SVD_DIM_FACTOR`, :data:`SVD_KAPPA_FACTOR`).
    """
    return unit_roundoff(dtype) * (SVD_DIM_FACTOR * size + SVD_KAPPA_FACTOR * kappa)


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
    is ``"eigh"`` or ``"svd"``. For ``"eigh"`` the working dtype is promoted to float64 when
    :func:`~muonflow.polar.front.gram_floor` of ``κ² <= ‖X‖_F²/ε²`` exceeds ``tol``; after the
    eigendecomposition, matrices whose a-posteriori bound (computed spectrum) misses ``tol``
    are recomputed by SVD. The SVD runs in float64 where :func:`svd_floor` of float32 misses
    ``tol``. Accuracy: ``max(tol, svd_floor(‖G‖_F/ε, float64, max(m, n)))`` per the
    contract of :func:`~muonflow.polar.regularized_polar` (``docs/polar.md`` §7).
    Differentiable in ``G`` and a tensor ``eps`` at every point (:mod:`.autodiff`).
    """
    out_dtype = G.dtype
    X = G.to(work_dtype(G.dtype))
    if tol is None:
        tol = default_tol(out_dtype)
    s = _pow2_at_least(torch.linalg.vector_norm(X, float("inf"), dim=(-2, -1), keepdim=True))
    Xh = X / s  # exact: a later float64 promotion sees the input itself
    e = torch.as_tensor(eps, dtype=X.dtype, device=X.device)
    e = (e.reshape(*e.shape, 1, 1) if e.ndim else e) / s
    if method == "svd":
        return _svd_exact(Xh, e, weight, tol).to(out_dtype)
    gram = None
    if X.dtype != torch.float64:
        # κ² <= ||X_hat||_F² / ε_hat² bounds (||G||_op / ε)²: free, rigorous; if that misses,
        # the tighter ||A²||_F^{1/2} / ε² (one r x r product on the Gram matrix eigh needs)
        kappa2 = Xh.square().sum(dim=(-2, -1), keepdim=True) / e.square()
        if gram_floor(float(kappa2.detach().max()), X.dtype) > tol:
            Xt, _ = _tall(Xh)
            gram = Xt.mT @ Xt
            L = torch.linalg.matrix_norm(gram @ gram, keepdim=True).sqrt()
            kappa2 = torch.minimum(kappa2, L / e.square())
            if gram_floor(float(kappa2.detach().max()), X.dtype) > tol:
                Xh, e, gram = Xh.double(), e.double(), None
    out, lam = _gram_eigh(Xh, e.squeeze(-1), weight, gram)
    return _svd_where_eigh_inaccurate(out, lam, Xh, e, weight, tol).to(out_dtype)


def _svd_exact(Xh: Tensor, e: Tensor, weight: WeightFn, tol: float) -> Tensor:
    """The SVD path on the scaled ``Xh: [..., m, n]`` with ``e: [..., 1, 1]``."""
    kappa2 = Xh.square().sum(dim=(-2, -1), keepdim=True) / e.square()  # >= (‖Xh‖_2/ε)²
    return svd_exact(Xh, e.squeeze(-1), lambda S, e: weight(S.square(), e) * S, kappa2, tol)


def svd_exact(X: Tensor, p: Tensor, g: ScalarFn, kappa2: Tensor, tol: float) -> Tensor:
    """``U diag(g(σ, p)) Vᵀ`` of ``X: [..., m, n]`` (``p`` broadcasting against ``σ``), run in
    float64 where :func:`svd_floor` of ``κ = √max(kappa2)`` (``kappa2 >= (‖X‖_2/ε)²``) in
    float32 misses ``tol``. Differentiable at every point (:mod:`.autodiff`)."""
    kappa = float(kappa2.detach().max()) ** 0.5
    if X.dtype != torch.float64 and svd_floor(kappa, X.dtype, max(X.shape[-2:])) > tol:
        X, p = X.double(), p.double()
    return singular_value_function(X, p, g)


def _svd_where_eigh_inaccurate(
    out: Tensor, lam: Tensor, Xh: Tensor, e: Tensor, weight: WeightFn, tol: float
) -> Tensor:
    """Recompute by SVD the matrices whose Gram-path result cannot be trusted.

    The a-posteriori bound :func:`~muonflow.polar.front.gram_rounding_bound` with the computed
    spectrum, ``λ_min`` taken as ``λ_min + ε²`` (the weights' scale), against ``tol``:
    ill-conditioned inputs, e.g. rank-deficient ones with ``ε`` far below ``‖G‖``, where the
    explicit ``V diag(w) Vᵀ`` loses the small weights, go to the SVD path (:func:`_svd_exact`).
    """
    lam_c = lam.clamp_min(0)
    e2 = e.square()[..., 0, 0]  # e: [..., 1, 1]
    bound = gram_rounding_bound(lam_c[..., -1], lam_c[..., 0] + e2, lam.dtype)
    bad = bound > tol
    if not bool(bad.any()):
        return out
    eb = e.expand(*bad.shape, 1, 1)[bad]
    redo = _svd_exact(Xh[bad], eb, weight, tol)
    out = out.clone()
    out[bad] = redo.to(out.dtype)
    return out
