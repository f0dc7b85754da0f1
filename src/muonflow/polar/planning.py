r"""The ``method="auto"`` policy: working dtype and path from shape, device, ``tol`` and κ².

A pure function (:func:`choose_method`) of ``r``, the dtype, the device, ``tol`` and
:math:`\kappa^2 = L/\varepsilon^2` (the front's spectral bound), so it is cheap to call and to
test. Costs are in ``r x r`` GEMMs of the same batch; the Gram matrix and the final product,
common to both Gram paths, are left out. The cost table and the measurements behind
:func:`eigh_cost` are in ``docs/polar.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .front import gemm_roundoff, gram_floor, work_dtype
from .schedules import RHO_MIN, poly_schedule

__all__ = ["AutoPlan", "choose_method", "eigh_cost", "fits", "poly_target"]

#: The iteration's own rounding is about ``u·Σ_k amp_k`` (a handful of steps with amp >= 8):
#: a matmul-only path runs in a dtype only for ``tol >= 64 u`` (float32: 3.8e-6).
ITER_ROUNDOFFS = 64


def fits(kappa2: float, tol: float, dtype: torch.dtype, device_type: str) -> bool:
    """Whether a Gram path in ``dtype`` meets ``tol``: ``½u κ² <= tol/2`` and ``tol >= 64u``
    (``u`` of the device's GEMMs in ``dtype``)."""
    u = gemm_roundoff(dtype, device_type)
    return 0.5 * u * kappa2 <= tol / 2 and tol >= ITER_ROUNDOFFS * u


def poly_target(tol: float) -> float:
    """The schedule's share of ``tol`` (exact-arithmetic error): half; the Gram rounding
    ``½uκ²`` has the other half (:func:`fits`)."""
    return tol / 2


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
    kappa2: float  #: the spectral bound over ε², max over the batch
    matmuls: int  #: predicted r x r products of the poly path
    cost_poly: float  #: in r x r GEMMs
    cost_eigh: float  #: in r x r GEMMs


def poly_cost(kappa2: float, tol: float, dtype: torch.dtype) -> int:
    """``r x r`` products of the schedule for ``ρ = 1/√κ²`` and :func:`poly_target`."""
    rho = min(max(1.0 / math.sqrt(max(kappa2, 1.0)), RHO_MIN), 1.0)
    return poly_schedule(rho, poly_target(tol), dtype).matmuls


def choose_method(
    *,
    r: int,
    dtype: torch.dtype,
    device_type: str,
    tol: float | None,
    kappa2: float,
) -> AutoPlan:
    r"""The ``method="auto"`` policy, a pure function of shape, dtype, device, tol and κ².

    ``kappa2`` is :math:`L/\varepsilon^2` with :math:`L \ge \lambda_{max}(G^\top G +
    \varepsilon^2 I)` (max over the batch).

    1. ``tol=None``: ``"eigh"`` (exact to the dtype; it picks its own precision).
    2. Working dtype: float32 (for every non-float64 input) if :func:`fits`, else float64; if
       float64 also misses, ``"svd"`` (its error does not square the conditioning).
    3. ``"poly"`` if its product count (:func:`poly_cost`) is below ``1 + eigh_cost(r)``
       (``eigh`` plus the product ``V diag(w) Vᵀ``), else ``"eigh"``.
    """
    work = work_dtype(dtype)
    if tol is None:
        return AutoPlan("eigh", work, kappa2, 0, math.nan, math.nan)
    if work == torch.float32 and not fits(kappa2, tol, work, device_type):
        work = torch.float64
    if gram_floor(kappa2, work) > tol / 2:
        return AutoPlan("svd", work, kappa2, 0, math.nan, math.nan)
    matmuls = poly_cost(kappa2, tol, work)
    cost_eigh = 1.0 + eigh_cost(r, device_type)
    method = "poly" if matmuls < cost_eigh else "eigh"
    return AutoPlan(method, work, kappa2, matmuls, float(matmuls), cost_eigh)
