r"""Minimax polynomial schedules for the matmul-only map (:mod:`muonflow.polar.polynomial`).

A schedule is a composition of odd polynomials :math:`p_k(\sigma) = \sigma h_k(\sigma^2)`,
each the minimax approximation of 1 on the current interval :math:`[\ell_k, u_k]` of
normalized singular values (Remez exchange; Polar-Express-style greedy composition, whose
greedy choice is optimal for compositions), with the step degrees chosen by a dynamic program
that minimizes the number of ``r x r`` products until the guaranteed error is below the
target. Schedules are cached per (rounded) interval ratio and target. The design, the cost
model and the rounding analysis are in ``docs/polar.md``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_scale
from .front import unit_roundoff

__all__ = [
    "POLY_DEGREES",
    "RHO_MIN",
    "TARGET_MIN",
    "PolySchedule",
    "PolyStep",
    "amp_limit",
    "kappa2_on_grid",
    "minimax_odd",
    "poly_schedule",
]

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
#: Largest design ratio: intervals narrower than ``[0.9, 1]`` use its schedule.
RHO_MAX = 0.9
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


def kappa2_on_grid(kappa2: float) -> float:
    """``κ²`` rounded up to a power of ``2^(1/64)`` (at most 1.1 %, ``ρ`` down by at most
    0.55 %): plans built on it are cached across calls, and rounding up only makes them more
    conservative (:func:`poly_schedule` rounds ``ρ`` onto its own, coarser grid)."""
    if not (0.0 < kappa2 < math.inf):
        return kappa2
    return 2.0 ** (math.ceil(64 * math.log2(kappa2)) / 64)


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

    ``rho`` is rounded down to a grid (``x = -ln ρ`` up by at most 2.2 %; at most
    :data:`RHO_MAX`) and ``tol`` down to
    a power of ``2^(1/4)``, so schedules are shared and cached; the first call for a new
    ``(rho, tol)`` runs a few dozen 6x6 Remez solves (tens of milliseconds).
    """
    check_scale(rho, "rho", allow_zero=False)
    check_scale(tol, "tol", allow_zero=False)
    target = max(2.0 ** (math.floor(4 * math.log2(tol)) / 4), TARGET_MIN)
    return _schedule(_x_key(min(rho, RHO_MAX)), target, amp_limit(target, dtype))
