r"""The ``method="auto"`` policy: working dtype and path from shape, device, ``tol`` and κ².

A pure function (:func:`choose_method`) of ``r``, the dtype, the device, ``tol`` and
:math:`\kappa^2 = L/\varepsilon^2` (the front's spectral bound), so it is cheap to call and to
test. Costs are in ``r x r`` GEMMs of the same batch; the Gram matrix and the final product,
common to both Gram paths, are left out. The cost table and the measurements behind
:func:`eigh_cost` are in ``docs/polar.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch

from .front import gemm_roundoff, gram_floor, work_dtype
from .schedules import RHO_MIN, PolySchedule, poly_schedule

__all__ = ["AutoPlan", "best_restart", "choose_method", "eigh_cost", "fits", "poly_target"]

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
    matmuls: int  #: predicted r x r products of the poly path (both phases of a restart)
    cost_poly: float  #: the cheapest poly option meeting tol, in float32 r x r GEMMs
    cost_eigh: float  #: the cheapest eigh option meeting tol (float64 extras included)
    restart: int = 0  #: poly: restart after this many steps (0: no restart)
    phase2: torch.dtype | None = None  #: dtype of the restarted phase (None: ``dtype``)


#: Cost of a float64 GEMM or eigendecomposition in float32 units on CPUs (measured 2.0-2.5
#: for bmm and 1.7-2.0 for eigh, r = 16..1024); accelerators are assumed no better.
FLOAT64_FACTOR = 2.0


def poly_rho(kappa2: float) -> float:
    """The schedule's design ratio ``ρ = 1/√κ²`` (clamped to the schedules' range)."""
    return min(max(1.0 / math.sqrt(max(kappa2, 1.0)), RHO_MIN), 1.0)


def poly_cost(kappa2: float, tol: float, dtype: torch.dtype) -> int:
    """``r x r`` products of the schedule for ``ρ = 1/√κ²`` and :func:`poly_target`."""
    return poly_schedule(poly_rho(kappa2), poly_target(tol), dtype).matmuls


#: Cost of one product of the polynomial path in GEMMs on CPU: each step's elementwise passes
#: (one or two per step, each 10-15 % of a product at r = 128 where the batch leaves the
#: caches) and its folded scalars; measured 1.15-1.3 for r = 64..256.
POLY_PRODUCT_COST = 1.2
#: Cost of a GEMM in float16/bfloat16 relative to float32 on accelerators (tensor cores;
#: float32 there is IEEE, ``torch.get_float32_matmul_precision() == "highest"``).
LOW_FACTOR = 0.25


def best_restart(
    kappa2: float,
    tol: float,
    dtype: torch.dtype,
    device_type: str,
    phase2: torch.dtype | None = None,
) -> tuple[int, int] | None:
    """``(k, matmuls)`` of the cheapest restart of the float32 schedule whose
    :func:`~muonflow.polar.polynomial.restart_bound` (with the device's GEMM roundoffs; the
    second phase in ``phase2``, default ``dtype``) is at most ``tol/2``; ``None`` if there is
    none. ``matmuls`` counts both phases' ``r x r`` products plus the restart's ``V²``."""
    from .polynomial import restart_bound, restart_cushion

    u = gemm_roundoff(dtype, device_type)
    dt2 = dtype if phase2 is None else phase2
    u2 = gemm_roundoff(dt2, device_type)
    target = poly_target(tol)
    sched = poly_schedule(poly_rho(kappa2), target, dtype)
    best: tuple[int, int] | None = None
    for k in range(1, len(sched.steps)):
        c = restart_cushion(sched, k, u)
        nxt = sched.steps[k]
        try:
            second = poly_schedule(nxt.lo * (1 - c) / (nxt.hi * (1 + c)), target, dt2)
        except ValueError:  # no schedule with this dtype's rounding amplification limit
            continue
        if restart_bound(sched, k, u, u2=u2, second=second) > tol / 2:
            continue
        first = PolySchedule(sched.rho, sched.target, sched.steps[:k]).matmuls
        n = first + second.matmuls + 1
        if best is None or n < best[1]:
            best = (k, n)
    return best


@functools.lru_cache(maxsize=4096)
def choose_method(
    *,
    r: int,
    dtype: torch.dtype,
    device_type: str,
    tol: float | None,
    kappa2: float,
    aspect: float = 1.0,
    restart: bool = True,
) -> AutoPlan:
    r"""The ``method="auto"`` policy, a pure function of shape, dtype, device, tol and κ².

    ``kappa2`` is :math:`L/\varepsilon^2` with :math:`L \ge \lambda_{max}(G^\top G +
    \varepsilon^2 I)` (max over the batch; the front rounds it up to a grid, so results are
    cached); ``aspect`` is ``max(m, n)/r`` (the Gram matrix and
    the final product cost ``aspect`` r x r GEMMs each); ``restart``: whether a restarted
    iteration is possible (it needs the input matrix).

    1. ``tol=None``: ``"eigh"`` (exact to the dtype; it picks its own precision).
    2. Candidates meeting ``tol``: float32 (for every non-float64 input) ``"poly"`` and
       ``"eigh"`` if :func:`fits`; float32 ``"poly"`` restarted (:func:`best_restart`) if
       that bound fits; float64 ``"poly"``/``"eigh"`` if ``½u₆₄κ² <= tol/2``; else ``"svd"``.
    3. The cheapest by the cost model (``docs/polar.md``): ``poly`` its product count (times
       :data:`POLY_PRODUCT_COST` on CPU; a restart adds ``2·aspect`` for the restarted iterate
       and its Gram matrix), ``eigh``
       ``1 + eigh_cost(r)``; float64 multiplies by :data:`FLOAT64_FACTOR` and adds the
       float64 Gram matrix and final product.
    """
    work = work_dtype(dtype)
    if tol is None:
        return AutoPlan("eigh", work, kappa2, 0, math.nan, math.nan)
    eigh32 = 1.0 + eigh_cost(r, device_type)
    pf = POLY_PRODUCT_COST if device_type == "cpu" else 1.0
    options: list[tuple[float, AutoPlan]] = []
    if work == torch.float32:
        if fits(kappa2, tol, work, device_type):
            n = poly_cost(kappa2, tol, work)
            cp = pf * n
            options.append((cp, AutoPlan("poly", work, kappa2, n, cp, eigh32)))
            options.append((eigh32, AutoPlan("eigh", work, kappa2, n, n, eigh32)))
        elif restart and tol >= ITER_ROUNDOFFS * gemm_roundoff(work, device_type):
            rs = best_restart(kappa2, tol, work, device_type)
            if rs is not None:
                cost = pf * rs[1] + 2 * aspect
                options.append((cost, AutoPlan("poly", work, kappa2, rs[1], cost, eigh32, rs[0])))
        if restart and device_type not in ("cpu", "meta"):
            # accelerators: the restarted phase in half precision where its rounding fits
            for low in (torch.bfloat16, torch.float16):
                rs = best_restart(kappa2, tol, work, device_type, phase2=low)
                if rs is not None:
                    k = rs[0]
                    n1 = PolySchedule(
                        1.0, 1.0, poly_schedule(poly_rho(kappa2), poly_target(tol), work).steps[:k]
                    ).matmuls
                    cost = n1 + aspect + LOW_FACTOR * (rs[1] - n1 + 2 * aspect)
                    plan = AutoPlan("poly", work, kappa2, rs[1], cost, eigh32, k, low)
                    options.append((cost, plan))
    if gram_floor(kappa2, torch.float64) <= tol / 2:
        extra = (FLOAT64_FACTOR - 1) * 2 * aspect if work == torch.float32 else 0.0
        f64 = FLOAT64_FACTOR if work == torch.float32 else 1.0
        n = poly_cost(kappa2, tol, torch.float64)
        cp, ce = f64 * pf * n + extra, f64 * eigh32 + extra
        options.append((cp, AutoPlan("poly", torch.float64, kappa2, n, cp, ce)))
        options.append((ce, AutoPlan("eigh", torch.float64, kappa2, n, cp, ce)))
    if not options:
        return AutoPlan("svd", torch.float64, kappa2, 0, math.nan, math.nan)
    best = min(options, key=lambda o: o[0])[1]
    cost_poly = min((c for c, p in options if p.method == "poly"), default=math.inf)
    cost_eigh = min((c for c, p in options if p.method == "eigh"), default=math.inf)
    return dataclasses.replace(best, cost_poly=cost_poly, cost_eigh=cost_eigh)
