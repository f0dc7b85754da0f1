r"""Matrix-function kernels for spectral maps, batched over ``[..., m, n]``.

A spectral map applies a scalar function to the singular values and keeps the singular
vectors:

.. math::
    \Phi(G) = U \,\mathrm{diag}(g(\sigma))\, V^\top, \qquad G = U \,\mathrm{diag}(\sigma)\, V^\top .

The regularized Muon map is the case :math:`g(\sigma) = \sigma/\sqrt{\sigma^2+\varepsilon^2}`,

.. math::  \nabla K_\varepsilon(G) = G\,(G^\top G + \varepsilon^2 I)^{-1/2}
           = (G G^\top + \varepsilon^2 I)^{-1/2} G ,

which tends to the Muon polar factor :math:`U V^\top` as :math:`\varepsilon \to 0`.

Two exact paths are provided (both batched, wide matrices handled by transposition):

``"eigh"``
    Eigendecomposition of the small Gram matrix :math:`A = X^\top X` (:math:`X` the tall
    orientation, :math:`r = \min(m, n)` columns), then
    :math:`\Phi(G) = X\, V \mathrm{diag}(w(\lambda)) V^\top` with
    :math:`w(\lambda) = g(\sigma)/\sigma`.
    Cost :math:`\approx 2 m r^2 + 9 r^3 + 2 m r^2` flops per matrix (two GEMMs plus the
    eigensolver). Accuracy: an eigensolver's absolute eigenvalue error is about
    :math:`u\|A\|`, so the error of a singular direction of :math:`\Phi` is bounded by about
    :math:`\tfrac12 u (\|G\|/\varepsilon)^2` (relativistic map), plus :math:`u\|G\|/\varepsilon`
    from the final product. The working dtype is promoted to float64 when that bound exceeds
    the requested ``tol``.
``"svd"``
    ``torch.linalg.svd`` (thin); the reference path. Cost :math:`O(m r^2)` with a larger
    constant than eigh on CPU.

Every path first divides each matrix by its largest absolute entry ``s`` and uses
:math:`\varepsilon / s`: the maps of this module are invariant under the joint scaling
:math:`(G, \varepsilon) \to (G/s, \varepsilon/s)`, so inputs from 1e-20 to 1e20 neither overflow
nor underflow when squared. Half-precision inputs are computed in float32 and returned in
their own dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._checks import check_choice, check_matrix, check_scale

__all__ = [
    "POLAR_METHODS",
    "default_tol",
    "gram_eigh_map",
    "polar",
    "regularized_polar",
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


def gram_eigh_map(X: Tensor, weight: Callable[[Tensor], Tensor]) -> Tensor:
    r"""``X V diag(weight(lam)) V^T`` from the eigendecomposition of the small Gram matrix.

    ``X: [..., m, n]``; ``weight`` maps the Gram eigenvalues ``lam: [..., r]`` (ascending,
    clamped at 0) to ``g(sigma)/sigma``. Wide inputs are transposed, so the Gram matrix is
    ``r x r`` with ``r = min(m, n)``.
    """
    Xt, transposed = _tall(X)
    A = Xt.mT @ Xt  # A = Xᵀ X, [..., r, r]
    try:
        lam, V = torch.linalg.eigh(A)
    except torch.linalg.LinAlgError:  # eigensolver failed to converge: fall back to SVD
        _, S, Vh = torch.linalg.svd(Xt, full_matrices=False)
        lam, V = S.square(), Vh.mT
    w = weight(lam.clamp_min(0))
    M = (V * w.unsqueeze(-2)) @ V.mT  # M = V diag(w) Vᵀ
    out = Xt @ M
    return out.mT if transposed else out


def svd_map(X: Tensor, g: Callable[[Tensor], Tensor]) -> Tensor:
    """``U diag(g(sigma)) V^T`` from a thin SVD. ``X: [..., m, n]``."""
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    return (U * g(S).unsqueeze(-2)) @ Vh


def _eps_tensor(eps: float | Tensor, X: Tensor) -> Tensor:
    """Per-matrix eps as a tensor of shape ``[..., 1, 1]`` broadcastable against ``X``."""
    e = torch.as_tensor(eps, dtype=X.dtype, device=X.device)
    return e.reshape(*e.shape, 1, 1) if e.ndim else e


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

    ``weight(lam, eps) = g_eps(sigma)/sigma``, evaluated on normalized quantities. ``method``
    is ``"eigh"`` or ``"svd"``. The working dtype is promoted to float64 for ``"eigh"`` when
    the conditioning bound of the module docstring exceeds ``tol``.
    """
    out_dtype = G.dtype
    X = G.to(work_dtype(G.dtype))
    if tol is None:
        tol = default_tol(out_dtype)
    Xh, s = normalize(X)
    e = _eps_tensor(eps, X) / s
    if method == "eigh" and X.dtype != torch.float64:
        # kappa^2 <= ||X_hat||_F^2 / eps_hat^2 bounds (||G||_op / eps)^2; see the module docs.
        kappa2 = Xh.square().sum(dim=(-2, -1), keepdim=True) / e.square()
        if float(kappa2.max()) * unit_roundoff(X.dtype) * 0.5 > tol:
            Xh, e = Xh.double(), e.double()
    e_vec = e.squeeze(-1)  # [..., 1] broadcasts against the spectrum [..., r]
    if method == "eigh":
        out = gram_eigh_map(Xh, lambda lam: weight(lam, e_vec))
    elif method == "svd":
        out = svd_map(Xh, lambda S: weight(S.square(), e_vec) * S)
    else:  # pragma: no cover - callers validate
        raise ValueError(f"unknown method {method!r}")
    return out.to(out_dtype)


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
}


def _auto_method(G: Tensor, tol: float | None) -> str:
    """``method="auto"``: the Gram eigendecomposition, the fastest exact path on CPU."""
    return "eigh"


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
        method: ``"auto"`` (see :func:`_auto_method`) or a key of :data:`POLAR_METHODS`.
        tol: requested relative accuracy; default :func:`default_tol` of ``G.dtype``.

    Returns:
        ``[..., m, n]`` tensor of ``G``'s dtype and device.
    """
    G = check_matrix(G, "G")
    eps = check_scale(eps, "eps", allow_zero=not isinstance(eps, Tensor))
    method = check_choice(method, "method", {"auto", *POLAR_METHODS})
    if tol is not None:
        check_scale(tol, "tol", allow_zero=False)
    if isinstance(eps, float) and eps == 0.0:
        return polar(G)
    if method == "auto":
        method = _auto_method(G, tol)
    return POLAR_METHODS[method](G, eps, tol)


def polar(G: Tensor) -> Tensor:
    r"""The polar factor :math:`U V^\top` of ``G: [..., m, n]`` (idealized Muon, ``ε = 0``).

    Computed by SVD; singular directions with :math:`\sigma \le r\,u\,\sigma_{max}` (numerically
    zero) map to 0, so a rank-deficient input gives a partial isometry and ``0 -> 0``.
    """
    G = check_matrix(G, "G")
    out_dtype = G.dtype
    X, _ = normalize(G.to(work_dtype(G.dtype)))
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    cutoff = S[..., :1] * (min(X.shape[-2:]) * unit_roundoff(X.dtype))
    keep = (S > cutoff).to(X.dtype)
    return ((U * keep.unsqueeze(-2)) @ Vh).to(out_dtype)
