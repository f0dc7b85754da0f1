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

from .front import (
    GramFront,
    _pow2_at_least,
    default_tol,
    gram_floor,
    gram_rounding_bound,
    unit_roundoff,
    work_dtype,
)

__all__ = ["WeightFn", "eigh_inv_sqrt", "gram_eigh_map", "spectral_map", "svd_map"]

#: Weight function of a spectral map in Gram form: ``w(lam, eps) = g(sigma)/sigma`` with
#: ``lam = sigma**2``; ``eps`` broadcasts against ``lam`` (shape ``[..., 1]``).
WeightFn = Callable[[Tensor, Tensor], Tensor]


def svd_map(X: Tensor, g: Callable[[Tensor], Tensor]) -> Tensor:
    """``U diag(g(sigma)) V^T`` from a thin SVD. ``X: [..., m, n]``."""
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    return (U * g(S).unsqueeze(-2)) @ Vh


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


def eigh_inv_sqrt(front: GramFront) -> tuple[Tensor, Tensor]:
    r"""``(A^{-1/2}, lam)`` of the front's shifted Gram matrix by ``eigh``.

    Eigenvalues are clamped at ``ε²`` (the shift: smaller ones are rounding); ``lam: [B, r]``
    is the computed spectrum, for :func:`eigh_bad`. Raises ``torch.linalg.LinAlgError`` if the
    eigensolver does not converge.
    """
    lam, V = torch.linalg.eigh(front.A)
    w = torch.rsqrt(torch.maximum(lam, front.e2.reshape(-1, 1)))  # w = λ^{-1/2}
    return (V * w.unsqueeze(-2)) @ V.mT, lam  # V diag(w) Vᵀ


def eigh_bad(front: GramFront, lam: Tensor, tol: float) -> Tensor:
    """Matrices whose eigh result misses ``tol`` by the a-posteriori bound ``[B]`` (bool).

    :func:`~muonflow.polar.front.gram_rounding_bound` with the computed extreme eigenvalues
    (the smallest no lower than the shift ``ε²``), against ``max(tol, √u)``: below ``√u``
    the first-order bound is not trusted to decide.
    """
    e2 = front.e2.reshape(-1)
    bound = gram_rounding_bound(lam[..., -1], torch.maximum(lam[..., 0], e2), lam.dtype)
    return bound > max(tol, unit_roundoff(lam.dtype) ** 0.5)


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
    are recomputed by SVD.
    """
    out_dtype = G.dtype
    X = G.to(work_dtype(G.dtype))
    if tol is None:
        tol = default_tol(out_dtype)
    s = _pow2_at_least(torch.linalg.vector_norm(X, float("inf"), dim=(-2, -1), keepdim=True))
    Xh = X / s  # exact: a later float64 promotion sees the input itself
    e = torch.as_tensor(eps, dtype=X.dtype, device=X.device)
    e = (e.reshape(*e.shape, 1, 1) if e.ndim else e) / s
    gram = None
    if method == "eigh" and X.dtype != torch.float64:
        # κ² <= ||X_hat||_F² / ε_hat² bounds (||G||_op / ε)²: free, rigorous; if that misses,
        # the tighter ||A²||_F^{1/2} / ε² (one r x r product on the Gram matrix eigh needs)
        kappa2 = Xh.square().sum(dim=(-2, -1), keepdim=True) / e.square()
        if gram_floor(float(kappa2.max()), X.dtype) > tol:
            Xt, _ = _tall(Xh)
            gram = Xt.mT @ Xt
            L = torch.linalg.matrix_norm(gram @ gram, keepdim=True).sqrt()
            kappa2 = torch.minimum(kappa2, L / e.square())
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


def _svd_where_eigh_inaccurate(
    out: Tensor, lam: Tensor, Xh: Tensor, e_vec: Tensor, weight: WeightFn, tol: float
) -> Tensor:
    """Recompute by SVD the matrices whose Gram-path result cannot be trusted.

    The a-posteriori bound :func:`~muonflow.polar.front.gram_rounding_bound` with the computed
    spectrum, ``λ_min`` taken as ``λ_min + ε²`` (the weights' scale), against ``max(tol, √u)``:
    rank-deficient inputs with ``ε`` far below ``‖G‖``, where the explicit ``V diag(w) Vᵀ``
    loses the small weights, go to the SVD path, accurate to ``u`` per direction.
    """
    lam_c = lam.clamp_min(0)
    e2 = e_vec.square().squeeze(-1)
    bound = gram_rounding_bound(lam_c[..., -1], lam_c[..., 0] + e2, lam.dtype)
    bad = bound > max(tol, unit_roundoff(lam.dtype) ** 0.5)
    if not bool(bad.any()):
        return out
    eb = e_vec.expand(*bad.shape, 1)[bad]
    redo = svd_map(Xh[bad], lambda S: weight(S.square(), eb) * S)
    out = out.clone()
    out[bad] = redo.to(out.dtype)
    return out
