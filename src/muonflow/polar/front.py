r"""The Gram front shared by every Gram path: precision, scaling, the shifted Gram matrix,
its spectral bound and the a-posteriori rounding bound.

For ``G: [..., m, n]`` (tall orientation ``X``, ``r = min(m, n)``) and ``ε >= 0`` per matrix:

.. math::
    A = X^\top X + \varepsilon^2 I, \qquad L \ge \lambda_{max}(A), \qquad
    \kappa^2 = L / \varepsilon^2 \ \ (\ge \lambda_{max}/\lambda_{min}).

Rounding ``A`` to unit roundoff ``u`` perturbs its eigenvalues by about ``u·λ_max``, a
relative error ``½u·λ_max/λ_min`` of the map in the smallest direction
(:func:`gram_rounding_bound`): a priori with ``λ_min >= ε²``, a posteriori with the computed
spectrum. Derivations: ``docs/polar.md``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "GramFront",
    "default_tol",
    "float32_gemm_roundoff",
    "gram_floor",
    "gram_front",
    "gram_rounding_bound",
    "lmax_estimate",
    "tighten",
    "unit_roundoff",
    "work_dtype",
]


# -- precision ------------------------------------------------------------------------------
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


def gram_rounding_bound(lmax: Tensor, lmin: Tensor, dtype: torch.dtype) -> Tensor:
    r"""Per-matrix first-order error :math:`\tfrac12 u\,\lambda_{max}/\lambda_{min}` of a Gram path.

    The a-posteriori check of every Gram path: ``lmax``/``lmin`` are the largest and smallest
    eigenvalues of the shifted Gram matrix (a bound and ``ε²`` before the map; the computed
    spectrum after ``eigh``); ``dtype`` the one the Gram matrix was formed and factored in.
    """
    return 0.5 * unit_roundoff(dtype) * lmax / lmin


def float32_gemm_roundoff(device_type: str) -> float:
    """Unit roundoff of float32 GEMMs: IEEE float32 on CPU; on accelerators what
    ``torch.get_float32_matmul_precision()`` allows (``"high"``: TF32, 2^-11; ``"medium"``:
    bfloat16, 2^-8)."""
    if device_type == "cpu":
        return unit_roundoff(torch.float32)
    prec = torch.get_float32_matmul_precision()
    return {"high": 2.0**-11, "medium": 2.0**-8}.get(prec, unit_roundoff(torch.float32))


def gemm_roundoff(dtype: torch.dtype, device_type: str) -> float:
    """Unit roundoff of GEMMs in ``dtype`` on ``device_type`` (float32: see
    :func:`float32_gemm_roundoff`)."""
    if dtype == torch.float32:
        return float32_gemm_roundoff(device_type)
    return unit_roundoff(dtype)


# -- the shifted Gram matrix and its spectral bound -----------------------------------------------
#: Relative margin on the spectral bound ``L``: the rounding of ``‖A²‖_F`` (r² terms, each
#: relatively ``~u``) is far below it for ``r <= 1e4`` in float32.
BOUND_MARGIN = 1e-3
#: The Gram matrix of the unscaled input is used when its largest diagonal entry lies in
#: ``[2^-E, 2^E]`` with ``E`` = this fraction of the dtype's exponent range (float32:
#: ``2^±96``): no entry of ``XᵀX`` overflowed or lost precision to underflow. Otherwise the
#: input is first divided by a power of two (exact) and the Gram matrix formed again.
_RANGE_FRACTION = 0.75


def _safe_exponent(dtype: torch.dtype) -> float:
    return _RANGE_FRACTION * math.log2(torch.finfo(dtype).max)


@dataclass
class GramFront:
    r"""The start of a Gram path for one batched call (all tensors flattened to ``[B, ...]``).

    The maps are invariant under the joint scaling :math:`(X, \varepsilon) \to (X/s,
    \varepsilon/s)`. ``A`` and ``e2`` are those of the pair divided by a power of two
    ``s >= max(‖x_j‖, ε)`` (``x_j`` the columns of the tall orientation), so ``A``'s entries
    are at most 1 and its products cannot overflow; the inverse square root of the caller's
    shifted Gram matrix is ``inv_s`` times that of ``A``.
    """

    X: Tensor | None  #: ``[B, m, n]`` input in the working dtype; ``None`` for a given Gram
    wide: bool  #: ``m < n``: the Gram matrix is ``X Xᵀ`` and factors apply from the left
    e2: Tensor  #: ``[B, 1, 1]`` scaled ``ε²`` (``(ε/s)²``)
    A: Tensor  #: ``[B, r, r]`` scaled shifted Gram matrix ``(XᵀX + ε² I)/s²`` (tall orientation)
    A2: Tensor | None  #: ``A @ A`` when the spectral bound used it
    L: Tensor  #: ``[B, 1, 1]`` upper bound of ``λ_max(A)`` (:data:`BOUND_MARGIN` included)
    inv_s: Tensor  #: ``[B, 1, 1]`` ``1/s`` (a power of two)
    kappa2: float  #: ``max_b L_b / e2_b`` (``inf`` when some ``ε_b = 0``)
    rho: float  #: ``min_b sqrt(e2_b / L_b)``: normalized singular values lie in ``[rho, 1]``

    @property
    def dtype(self) -> torch.dtype:
        return self.A.dtype

    def apply(self, M: Tensor) -> Tensor:
        r"""``X M'`` (tall) or ``M' X`` (wide) with :math:`M' = M/s` for ``M = A^{-1/2}``-like
        symmetric ``[B, r, r]`` factors of the scaled Gram matrix (``M`` is overwritten)."""
        assert self.X is not None
        M = M.mul_(self.inv_s) if not M.requires_grad else M * self.inv_s
        return torch.bmm(M, self.X) if self.wide else torch.bmm(self.X, M)


def _gram(X: Tensor, wide: bool) -> Tensor:
    return torch.bmm(X, X.mT) if wide else torch.bmm(X.mT, X)  # A = XᵀX (tall orientation)


def _eps(eps: float | Tensor, B: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    e = torch.as_tensor(eps, dtype=dtype, device=device)
    e = e.reshape(-1, 1, 1) if e.ndim else e.reshape(1, 1, 1)
    if e.shape[0] not in (1, B):
        raise ValueError(f"eps must have one value per matrix ({B}), got {e.shape[0]}")
    return e.expand(B, 1, 1)


def _pow2_at_least(a: Tensor) -> Tensor:
    """A power of two ``>= min(a, M/4)`` elementwise (1 where ``a = 0``), ``a >= 0``; ``M``
    the largest finite number of ``a``'s dtype, so the power of two is finite (and ``a/2^e
    <= 4``): float64 inputs up to 1.8e308 are scaled to ``O(1)``, not by a fixed cap."""
    a = a.clamp_max(torch.finfo(a.dtype).max / 4)
    return torch.ldexp(torch.ones_like(a), torch.frexp(a).exponent)  # 2^e >= m 2^e = a


def gram_front(
    G: Tensor, eps: float | Tensor, dtype: torch.dtype, *, bound: str = "A2"
) -> GramFront:
    r"""Form the shifted Gram matrix of ``G: [..., m, n]`` in ``dtype`` and bound its spectrum.

    ``bound="A2"``: :math:`L = \|A^2\|_F^{1/2}` (one ``r x r`` product, kept in ``A2`` for the
    polynomial path; at most :math:`r^{1/4}\lambda_{max}`); ``"A"``: :math:`L = \|A\|_F`
    (free; at most :math:`\sqrt r\,\lambda_{max}`). One host synchronization (``kappa2``,
    ``rho``).
    """
    m, n = G.shape[-2:]
    X = G.reshape(-1, m, n).to(dtype)
    wide = m < n
    e = _eps(eps, X.shape[0], dtype, X.device)
    front = _finish_front(X, wide, _gram(X, wide), e, bound)
    if front is None:  # XᵀX left the safe range: divide the input by a power of two first
        a = torch.linalg.vector_norm(X, float("inf"), dim=(-2, -1), keepdim=True)
        s = _pow2_at_least(a)
        X, e = X / s, e / s
        front = _finish_front(X, wide, _gram(X, wide), e, bound, check=False)
    assert front is not None
    return front


def front_from_gram(
    A: Tensor, eps: float | Tensor, dtype: torch.dtype, *, bound: str = "A2"
) -> GramFront:
    """The front of a given unshifted Gram matrix ``A: [B, r, r]`` (``X`` is ``None``)."""
    A = A.to(dtype)
    e = _eps(eps, A.shape[0], dtype, A.device)
    front = _finish_front(None, False, A.clone(), e, bound, check=False)
    assert front is not None
    return front


def _finish_front(
    X: Tensor | None, wide: bool, A: Tensor, e: Tensor, bound: str, *, check: bool = True
) -> GramFront | None:
    """Scale, shift, bound and summarize; ``None`` when ``check`` finds ``A`` out of range."""
    d = A.diagonal(dim1=-2, dim2=-1).amax(-1, keepdim=True).unsqueeze(-1)  # max ‖x_j‖²
    s = _pow2_at_least(torch.maximum(d.sqrt(), e))  # s >= max(‖x_j‖, ε), a power of two
    inv_s = s.reciprocal()
    e2 = (e * inv_s).square()  # (ε/s)²
    grad = torch.is_grad_enabled() and A.requires_grad
    A = A * inv_s.square() if grad else A.mul_(inv_s.square())  # A = XᵀX/s² (exact)
    if grad:
        A = A + e2 * torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    else:
        A.diagonal(dim1=-2, dim2=-1).add_(e2.reshape(-1, 1))  # A += (ε/s)² I
    if bound == "A2":
        A2: Tensor | None = torch.bmm(A, A)  # A²
        L = torch.linalg.vector_norm(A2, dim=(-2, -1), keepdim=True).sqrt()  # ‖A²‖_F^{1/2}
    else:
        A2 = None
        L = torch.linalg.vector_norm(A, dim=(-2, -1), keepdim=True)  # ‖A‖_F
    L = L * (1 + BOUND_MARGIN)
    k2 = L / e2  # κ² per matrix (inf where ε = 0)
    stats = torch.stack((k2.amax(), d.amax(), d.amin(), L.amin())).detach()
    kappa2, d_max, d_min, l_min = stats.tolist()  # one host synchronization
    if check:
        lim = 2.0 ** _safe_exponent(A.dtype)
        if not (d_max <= lim and (d_min >= 1 / lim or d_max == 0)) or kappa2 != kappa2:
            return None
    if l_min == 0:
        L = torch.where(L > 0, L, 1.0)  # L = 0 only for A = 0 (ε = 0 and G = 0)
    rho = (1.0 / kappa2) ** 0.5 if kappa2 > 0 else 1.0
    return GramFront(X, wide, e2, A, A2, L, inv_s, kappa2, rho)


def tighten(front: GramFront) -> GramFront:
    """Replace a ``bound="A"`` front's bound by ``‖A²‖_F^{1/2}`` (computing ``A2``; one sync)."""
    if front.A2 is not None:
        return front
    A2 = torch.bmm(front.A, front.A)  # A²
    L = torch.linalg.vector_norm(A2, dim=(-2, -1), keepdim=True).sqrt() * (1 + BOUND_MARGIN)
    L = torch.minimum(L, front.L)
    kappa2 = float((L / front.e2).amax().detach())
    rho = (1.0 / kappa2) ** 0.5 if kappa2 > 0 else 1.0
    return GramFront(front.X, front.wide, front.e2, front.A, A2, L, front.inv_s, kappa2, rho)


# -- a lower bound of λ_max, for the ε = 0 polar factor ------------------------------------------
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


def lmax_estimate(A: Tensor, *, iters: int = POWER_ITERS) -> tuple[Tensor, Tensor]:
    r"""Estimates of :math:`\lambda_{max}` of symmetric PSD ``A: [..., r, r]``.

    Returns ``(theta, est)``, both ``[..., 1, 1]``: ``theta`` is the Rayleigh quotient after
    ``iters`` power steps from a fixed pseudo-random vector (a lower bound), ``est =
    min(||A||_F, 1.3 theta)`` an estimate (``||A||_F`` is a rigorous upper bound). Cost
    ``2 r^2 (iters + 1)`` flops per matrix.
    """
    v = _start_vector_cpu(A.shape[-1]).to(dtype=A.dtype, device=A.device)
    v = v.mT.expand(*A.shape[:-2], 1, -1)  # row vectors: vᵀA (A is symmetric)
    tiny = torch.finfo(A.dtype).tiny
    for _ in range(iters):
        w = v @ A  # w = A v
        v = w / torch.linalg.vector_norm(w, dim=-1, keepdim=True).clamp_min(tiny)
    theta = (v * (v @ A)).sum(dim=-1, keepdim=True)  # θ = vᵀAv
    frob = torch.linalg.vector_norm(A, dim=(-2, -1), keepdim=True)
    return theta, torch.minimum(frob, POWER_SAFETY * theta)
