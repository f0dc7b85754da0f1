r"""The mixed-precision map: a Newton–Schulz-like iteration on ``X``, bfloat16 where it may.

The regularized map is the top block of the polar factor of the augmented matrix
:math:`Z = [X; \varepsilon I]`. The Gram iteration (:mod:`.polynomial`) squares its
conditioning: rounding ``A = XᵀX + ε²I`` to unit roundoff ``u`` costs
:math:`\tfrac12 u\kappa^2`, hopeless in bfloat16. Iterating on ``X`` itself,

.. math::
    S_j = X_j^\top X_j + Q_j B Q_j, \qquad h_j = h_j(S_j), \qquad
    X_{j+1} = X_j h_j, \qquad Q_{j+1} = Q_j h_j \qquad (Q_0 = I),

recomputes every Gram matrix from the iterate, so rounding only rotates the result a little
(:func:`rounding_estimate`). Its Gram matrices are rounded too, by about :math:`u\lambda_{max}`
per eigenvalue; a step runs in bfloat16 only where that stays below a quarter of the smallest
eigenvalue, :math:`\ell^2 \ge 4u` (``S_j`` stays positive definite). So the map runs in two
phases (:func:`mixed_plan`): the first ``k`` steps of the float32 schedule as the Gram
iteration, until the interval :math:`[\ell_k, u_k]` of the augmented singular values is that
narrow; a float32 restart :math:`X_1 = XV`, :math:`B = \varepsilon^2 V^2`
(:func:`~muonflow.polar.polynomial.restart_iterate`); then the iteration above in bfloat16
(float32 accumulation) on :math:`[X_1; \varepsilon V]`, whose top block ``X_J`` is the map.
Callers recompute by a float32 path the matrices whose a-posteriori estimate misses the
tolerance. Derivation and measurements: ``docs/polar.md``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .front import GramFront, unit_roundoff
from .polynomial import restart_cushion, restart_iterate, restart_profile
from .schedules import PolySchedule, poly_schedule

__all__ = ["HIGH_MARGIN", "MIXED_ROUNDOFFS", "MixedPlan", "mixed_map", "mixed_plan",
           "rounding_estimate"]  # fmt: skip

#: A low-precision step needs its interval's ends to satisfy ``(lo/hi)² >= 4u``.
HIGH_MARGIN = 4.0
#: The mixed path is offered for ``tol >= 16 u_low`` (bfloat16: 0.0625): its rounding, 3-6 u
#: on the spectra of ``docs/polar.md``, then fits the rounding share of ``tol`` with room.
MIXED_ROUNDOFFS = 16
#: Independent roundings per low-precision step that move the result like one of ``X_j``:
#: the operands ``X_j`` and ``h_j`` of the product and its rounded output.
ROUNDINGS_PER_STEP = 3
#: First-order weight of the Gram phase's rounding at a restart (``6 u T_k``, as
#: :func:`~muonflow.polar.polynomial.restart_bound`).
_T_WEIGHT = 6.0


@dataclass(frozen=True)
class MixedPlan:
    """The two phases of the mixed map for one design ratio and target."""

    first: PolySchedule  #: float32 schedule; its first ``k`` steps run as the Gram iteration
    k: int  #: steps before the restart (0: the low-precision iteration starts on ``X``)
    lo: float  #: the restarted interval of augmented singular values (cushioned)
    hi: float
    second: PolySchedule  #: the low-precision iteration's schedule, for ``lo/hi``
    low: torch.dtype
    restart_error: float  #: first-order rounding of the float32 phase, ``6 u T_k``


@functools.lru_cache(maxsize=1024)
def mixed_plan(
    rho: float, target: float, low: torch.dtype, u32: float = unit_roundoff(torch.float32)
) -> MixedPlan | None:
    """The cheapest split: the fewest float32 Gram steps after which ``(lo/hi)² >= 4 u_low``
    (:data:`HIGH_MARGIN`); ``None`` if the float32 schedule never gets there. ``u32``: the
    roundoff of the device's float32 GEMMs (TF32: 2^-11, which the restart error shows)."""
    u = unit_roundoff(low)
    first = poly_schedule(rho, target, torch.float32)
    for k in range(len(first.steps)):
        if k == 0:
            lo, hi = first.rho, 1.0
        else:
            c = restart_cushion(first, k, u32)
            if c >= 1:  # the float32 phase's rounding could cover the whole interval
                continue
            lo, hi = first.steps[k].lo * (1 - c), first.steps[k].hi * (1 + c)
        if (lo / hi) ** 2 >= HIGH_MARGIN * u:
            err = _T_WEIGHT * u32 * restart_profile(first, k)[0] if k else 0.0
            return MixedPlan(first, k, lo, hi, poly_schedule(lo / hi, target, low), low, err)
    return None


@functools.lru_cache(maxsize=1024)
def _inverse_growth(schedule: PolySchedule) -> tuple[float, ...]:
    r""":math:`\theta_j = \max_{\sigma\in[\rho,1]} \sigma / p_{<j}(\sigma)` per step (how much
    smaller than at the start an iterate's singular value can be; about 1)."""
    s = np.geomspace(schedule.rho, 1.0, 2000)
    p = s.copy()
    out = []
    for step in schedule.steps:
        out.append(float((s / p).max()))
        p = p * np.polyval(np.asarray(step.coeffs)[::-1], p * p)
    return tuple(out)


def _h(S: Tensor, coeffs: tuple[float, ...]) -> Tensor:
    """``h(S) = Σ_j c_j S^j`` for degree 1, 2 or 4 (Paterson–Stockmeyer: two products)."""
    c = coeffs
    eye = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device)
    H = c[1] * S + c[0] * eye
    if len(c) == 2:
        return H
    S2 = torch.bmm(S, S)  # S²
    H = H + c[2] * S2
    if len(c) == 5:
        H = torch.baddbmm(H, S2, c[3] * S + c[4] * S2)  # + S² (c3 S + c4 S²)
    return H


def mixed_map(front: GramFront, plan: MixedPlan) -> tuple[Tensor, Tensor]:
    r"""The map ``[B, m, n]`` (front's dtype) by the two phases of :class:`MixedPlan`, and its
    low-precision rounding estimate ``[B]`` (:func:`rounding_estimate`; the plan's
    ``restart_error`` is not included).

    ``front``: a float32 Gram front (its ``A``/``A2`` are consumed) whose ``rho`` is at least
    the plan's. Cost: the Gram phase's products, ``X V`` and ``V²`` in float32; per
    low-precision step the iterate's Gram matrix, ``Q B Q`` (not at the first), ``h`` (0-2
    ``r x r`` products), ``X_j h`` and ``Q_j h``. Differentiable by autograd.
    """
    assert front.X is not None
    work, low = front.dtype, plan.low
    if plan.k:
        X1, V = restart_iterate(front, plan.first, plan.k)  # [X_1; εV]: σ in [lo, hi]
        B = (front.e2 / plan.hi**2) * torch.bmm(V, V)  # ε²V², normalized
        X1 = X1 / plan.hi
    else:
        X1 = front.X * (front.inv_s * front.L.rsqrt())  # [X; εI]/√L: σ in [ρ, 1]
        eye = torch.eye(front.A.shape[-1], dtype=work, device=front.A.device)
        B = (front.e2 / front.L) * eye
    Xj = (X1.mT if front.wide else X1).to(low)  # tall orientation [B, M, r]
    B = B.to(low)
    Q: Tensor | None = None
    traces = []
    for step in plan.second.steps:
        if Q is None:
            S = torch.bmm(Xj.mT, Xj) + B  # S_0 = X_1ᵀX_1 + ε²V²
        else:
            S = torch.baddbmm(torch.bmm(Q, torch.bmm(B, Q)), Xj.mT, Xj)  # X_jᵀX_j + Q B Q
        traces.append(S.diagonal(dim1=-2, dim2=-1).sum(-1, dtype=torch.float32))
        H = _h(S, step.coeffs)
        Xj = torch.bmm(Xj, H)  # X_{j+1} = X_j h_j
        Q = H if Q is None else torch.bmm(Q, H)  # Q_{j+1} = Q_j h_j
    assert Q is not None
    out = Xj.to(work)
    est = rounding_estimate(plan.second, unit_roundoff(low), traces, Q, out)
    return (out.mT if front.wide else out), est


def rounding_estimate(
    schedule: PolySchedule, u: float, traces: list[Tensor], Q: Tensor, out: Tensor
) -> Tensor:
    r"""First-order relative Frobenius error ``[B]`` that low-precision rounding adds.

    Rounding :math:`X_k` to unit roundoff ``u`` adds noise of variance :math:`u^2/3` per
    entry, which the remaining steps (about :math:`S_k^{-1/2}`) carry to the result:
    :math:`\mathbb E\|N_k S_k^{-1/2}\|_F^2 \approx \tfrac{u^2}{3}\,\mathrm{tr}(S_k)\,
    \mathrm{tr}(S_k^{-1})/r`. With :data:`ROUNDINGS_PER_STEP` such roundings per low step,
    :math:`\mathrm{tr}(S_k^{-1}) \le \min(\theta_k^2\,\mathrm{tr}(S_0^{-1}), r/\ell_k^2)`
    and :math:`\mathrm{tr}(S_0^{-1}) \approx \|Q_K\|_F^2` (``Q_K ≈ S_0^{-1/2}``), plus the
    output's own rounding :math:`u^2/3`:

    .. math::  \mathrm{est}^2 = \Big(\tfrac{u^2}{3}\|X_K\|_F^2 + \sum_{k\ \mathrm{low}}
               \tfrac{3u^2}{3}\,\tfrac{\mathrm{tr} S_k}{r}\,
               \min(\theta_k^2\|Q_K\|_F^2, r/\ell_k^2)\Big) / \|X_K\|_F^2 .

    ``traces``: ``tr S_j`` of every step (all in unit roundoff ``u``), ``Q = Q_J``, ``out =
    X_J``. Measured errors are 0.3-0.7x the estimate (``docs/polar.md``).
    """
    u2 = u * u / 3  # variance of a relative rounding error
    r = Q.shape[-1]
    trq = Q.float().square().sum((-2, -1))  # ‖Q_J‖_F² ≈ tr(S_0^{-1})
    norm2 = out.float().square().sum((-2, -1)).clamp_min(torch.finfo(torch.float32).tiny)
    theta = _inverse_growth(schedule)
    est2 = u2 * norm2
    for j, tr_s in enumerate(traces):
        tr_inv = torch.clamp(theta[j] ** 2 * trq, max=r / schedule.steps[j].lo ** 2)
        est2 = est2 + ROUNDINGS_PER_STEP * u2 * tr_s / r * tr_inv
    return (est2 / norm2).sqrt()
