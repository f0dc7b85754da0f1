r"""The ``method="auto"`` policy: working dtype and path from shape, device, ``tol`` and κ².

A pure function (:func:`choose_method`) of the shape, the dtype, the device, ``tol``,
:math:`\kappa^2 = L/\varepsilon^2` (the front's spectral bound) and the host's measured rates
(:class:`~muonflow.polar.calibration.HostRates`), so it is cheap to call and to test. Every
candidate meeting ``tol`` is priced in predicted seconds (its GEMMs, eigendecompositions,
elementwise passes and operator calls) and the cheapest wins. The cost model and its numbers
are in ``docs/polar.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch

from .calibration import HostRates, reference_rates
from .front import gemm_roundoff, gram_floor, unit_roundoff, work_dtype
from .mixed import MIXED_ROUNDOFFS, MixedPlan, mixed_plan
from .schedules import RHO_MIN, PolySchedule, poly_schedule

__all__ = [
    "AutoPlan",
    "Costs",
    "best_restart",
    "choose_method",
    "fits",
    "poly_target",
]

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


@dataclass(frozen=True)
class AutoPlan:
    """What ``method="auto"`` does for one call (:func:`choose_method`)."""

    method: str  #: "eigh", "poly", "mixed" or "svd"
    dtype: torch.dtype  #: working dtype (mixed: of the Gram front and the leading steps)
    kappa2: float  #: the spectral bound over ε², max over the batch
    matmuls: int  #: predicted r x r products of the poly path (both phases of a restart)
    cost_poly: float  #: predicted seconds of the cheapest poly option meeting tol
    cost_eigh: float  #: predicted seconds of the cheapest eigh option meeting tol
    restart: int = 0  #: poly: restart after this many steps (0: no restart)
    phase2: torch.dtype | None = None  #: dtype of the restarted phase (None: ``dtype``)
    cost_mixed: float = math.inf  #: predicted seconds of the mixed path (inf: not offered)
    low: torch.dtype | None = None  #: mixed: the dtype of its low-precision steps

    @property
    def label(self) -> str:
        """``"poly float32, restart 2"``, ``"mixed bfloat16"``: the plan in words."""
        if self.method == "mixed":
            return f"mixed {str(self.low)[6:]}"
        text = f"{self.method} {str(self.dtype)[6:]}"
        if self.restart:
            text += f", restart {self.restart}"
        return text + (f" +{str(self.phase2)[6:]}" if self.phase2 else "")


def poly_rho(kappa2: float) -> float:
    """The schedule's design ratio ``ρ = 1/√κ²`` (clamped to the schedules' range)."""
    return min(max(1.0 / math.sqrt(max(kappa2, 1.0)), RHO_MIN), 1.0)


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


@dataclass(frozen=True)
class Costs:
    """Predicted seconds of the pieces of a path, for ``batch`` matrices ``r x M`` on a host
    with ``rates`` (:class:`~muonflow.polar.calibration.HostRates`)."""

    rates: HostRates
    batch: int
    r: int
    M: float  #: the long side, ``aspect * r``

    def gemm(self, dtype: torch.dtype, m: float, k: float, n: float) -> float:
        return self.rates.gemm(dtype, self.batch, m, k, n)

    def rr(self, dtype: torch.dtype, count: float = 1.0) -> float:
        """``count`` ``r x r`` products."""
        return count * self.gemm(dtype, self.r, self.r, self.r)

    def passes(self, count: float, dtype: torch.dtype, numel: float | None = None) -> float:
        """``count`` elementwise passes over ``[batch, r, r]`` (or ``numel`` per matrix)."""
        n = self.r * self.r if numel is None else numel
        return self.rates.passes(count, self.batch * n, dtype)

    def ends(self, dtype: torch.dtype) -> float:
        """The Gram matrix, the final product ``X M`` and the front's passes (scale, shift,
        bound), common to the Gram paths."""
        r, M = self.r, self.M
        return self.gemm(dtype, r, M, r) + self.gemm(dtype, M, r, r) + self.passes(3, dtype)

    def poly(self, dtype: torch.dtype, matmuls: int, steps: int) -> float:
        """A schedule: its products and about two elementwise passes per step."""
        return self.rr(dtype, matmuls) + self.passes(2 * steps + 1, dtype)

    def eigh(self, dtype: torch.dtype) -> float:
        """``V diag(w) Vᵀ`` from ``eigh``: the decomposition, one product, two passes."""
        return self.rates.eigh(dtype, self.batch, self.r) + self.rr(dtype) + self.passes(2, dtype)

    def mixed(self, plan: MixedPlan) -> float:
        """The mixed map (:mod:`.mixed`): float32 front and Gram phase, the restart ``X V``
        and ``V²``, casts, then per low step the iterate's Gram matrix, ``Q B Q`` (2), ``h``,
        ``X h`` and ``Q h``."""
        r, M, f32, low = self.r, self.M, torch.float32, plan.low
        t = self.gemm(f32, r, M, r) + self.rr(f32) + self.passes(4, f32)  # front, A²
        if plan.k:
            n1 = PolySchedule(1.0, 1.0, plan.first.steps[: plan.k]).matmuls - 1
            t += self.poly(f32, n1, plan.k) + self.gemm(f32, M, r, r) + self.rr(f32)
        t += self.passes(2, low, M * r) + self.passes(2, low)  # casts of X_1 and B
        for j, step in enumerate(plan.second.steps):
            t += self.gemm(low, r, M, r) + self.gemm(low, M, r, r)  # X_jᵀX_j, X_j h
            t += self.rr(low, {1: 0, 2: 1, 4: 2}[step.degree] + (3 if j else 0))
            t += self.passes(step.degree + 1, low)
        return t + self.passes(2, f32, M * r) + self.passes(4, f32)


def _gram_options(
    c: Costs, work: torch.dtype, tol: float, kappa2: float, device_type: str, restart: bool
) -> list[tuple[float, AutoPlan]]:
    """Priced Gram-path candidates meeting ``tol`` (``docs/polar.md``): float32 poly and eigh
    where :func:`fits`; float32 poly restarted; its restarted phase in half precision on
    accelerators; float64 poly and eigh where ``½u₆₄κ² <= tol/2``."""
    options: list[tuple[float, AutoPlan]] = []
    f32 = torch.float32
    if work == f32:
        if fits(kappa2, tol, work, device_type):
            sched = poly_schedule(poly_rho(kappa2), poly_target(tol), work)
            cp = c.ends(f32) + c.poly(f32, sched.matmuls, len(sched.steps))
            ce = c.ends(f32) + c.eigh(f32)
            options.append((cp, AutoPlan("poly", work, kappa2, sched.matmuls, cp, ce)))
            options.append((ce, AutoPlan("eigh", work, kappa2, sched.matmuls, cp, ce)))
        elif restart and tol >= ITER_ROUNDOFFS * gemm_roundoff(work, device_type):
            rs = best_restart(kappa2, tol, work, device_type)
            if rs is not None:  # the restart adds X V, its Gram matrix and V²
                extra = c.gemm(f32, c.M, c.r, c.r) + c.gemm(f32, c.r, c.M, c.r)
                cost = c.ends(f32) + c.poly(f32, rs[1], 6) + extra
                options.append((cost, AutoPlan("poly", work, kappa2, rs[1], cost, math.inf, rs[0])))
        if restart and device_type not in ("cpu", "meta"):
            for low in (torch.bfloat16, torch.float16):
                rs = best_restart(kappa2, tol, work, device_type, phase2=low)
                if rs is None:
                    continue
                sched = poly_schedule(poly_rho(kappa2), poly_target(tol), work)
                n1 = PolySchedule(1.0, 1.0, sched.steps[: rs[0]]).matmuls
                cost = (c.gemm(f32, c.r, c.M, c.r) + c.poly(f32, n1, rs[0])
                        + c.gemm(f32, c.M, c.r, c.r) + c.gemm(low, c.r, c.M, c.r)
                        + c.poly(low, rs[1] - n1, 4) + c.gemm(low, c.M, c.r, c.r))  # fmt: skip
                options.append((cost, AutoPlan("poly", work, kappa2, rs[1], cost, math.inf,
                                               rs[0], low)))  # fmt: skip
    if gram_floor(kappa2, torch.float64) <= tol / 2:
        f64 = torch.float64
        sched = poly_schedule(poly_rho(kappa2), poly_target(tol), f64)
        cast = c.passes(2, f64, c.M * c.r) if work != f64 else 0.0
        cp = cast + c.ends(f64) + c.poly(f64, sched.matmuls, len(sched.steps))
        ce = cast + c.ends(f64) + c.eigh(f64)
        options.append((cp, AutoPlan("poly", f64, kappa2, sched.matmuls, cp, ce)))
        options.append((ce, AutoPlan("eigh", f64, kappa2, sched.matmuls, cp, ce)))
    return options


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
    batch: int = 1,
    rates: HostRates | None = None,
    mixed: bool = True,
) -> AutoPlan:
    r"""The ``method="auto"`` policy, a pure function of shape, dtype, device, tol, κ² and rates.

    ``kappa2`` is :math:`L/\varepsilon^2` with :math:`L \ge \lambda_{max}(G^\top G +
    \varepsilon^2 I)` (max over the batch; the front rounds it up to a grid, so results are
    cached); ``aspect`` is ``max(m, n)/r``, ``batch`` the number of matrices; ``restart``:
    whether the input matrix is at hand (restarts and the mixed path need it); ``rates`` the
    host's (default: :func:`~muonflow.polar.calibration.reference_rates` of the device);
    ``mixed``: whether the mixed path may be offered.

    1. ``tol=None``: ``"eigh"`` (exact to the dtype; it picks its own precision).
    2. Candidates meeting ``tol`` (:func:`_gram_options`), and the mixed path
       (:mod:`.mixed`) where bfloat16 is native (``rates.gemm_low``), the input is not
       float64 and ``tol >= 16 u_bf16``; none: ``"svd"``.
    3. The cheapest by predicted seconds (:class:`Costs`).
    """
    work = work_dtype(dtype)
    if tol is None:
        return AutoPlan("eigh", work, kappa2, 0, math.nan, math.nan)
    rates = reference_rates(device_type) if rates is None else rates
    c = Costs(rates, batch, r, aspect * r)
    options = _gram_options(c, work, tol, kappa2, device_type, restart)
    low = torch.bfloat16
    if (mixed and restart and rates.low_native and work == torch.float32
            and tol >= MIXED_ROUNDOFFS * unit_roundoff(low)):  # fmt: skip
        u32 = gemm_roundoff(torch.float32, device_type)
        mp = mixed_plan(poly_rho(kappa2), poly_target(tol), low, u32)
        if mp is not None and mp.restart_error <= tol / 4:
            cm = c.mixed(mp)
            n = len(mp.second.steps)
            options.append((cm, AutoPlan("mixed", work, kappa2, n, math.inf, math.inf, mp.k,
                                         None, cm, low)))  # fmt: skip
    if not options:
        return AutoPlan("svd", torch.float64, kappa2, 0, math.nan, math.nan)
    best = min(options, key=lambda o: o[0])[1]
    cost_poly = min((t for t, p in options if p.method == "poly"), default=math.inf)
    cost_eigh = min((t for t, p in options if p.method == "eigh"), default=math.inf)
    cost_mixed = min((t for t, p in options if p.method == "mixed"), default=math.inf)
    return dataclasses.replace(
        best, cost_poly=cost_poly, cost_eigh=cost_eigh, cost_mixed=cost_mixed
    )
