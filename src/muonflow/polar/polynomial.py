r"""The matmul-only inverse square root: a coupled minimax polynomial iteration.

On the normalized shifted Gram matrix :math:`Y_0 = A/L` (spectrum in :math:`[\rho^2, 1]`):

.. math::
    h_k = h_k(Y_k), \qquad Q_{k+1} = Q_k h_k, \qquad Y_{k+1} = Y_k h_k^2, \qquad
    A^{-1/2} \approx Q_K / \sqrt{L},

where :math:`p_k(\sigma) = \sigma h_k(\sigma^2)` are the steps of a
:class:`~muonflow.polar.schedules.PolySchedule`. Every iterate is a polynomial in ``Y_0``, so all
commute, and every eigen-direction of :math:`Q_K Y_0^{1/2}` ends within the schedule's error
of 1. Cost and rounding analysis: ``docs/polar.md``.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .front import GramFront, unit_roundoff
from .schedules import PolySchedule, poly_schedule

__all__ = ["gram_poly_inv_sqrt", "poly_inv_sqrt", "restart_iterate", "step_dtypes"]


@functools.lru_cache(maxsize=32)
def _eye(r: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.eye(r, dtype=dtype, device=device)


def _add_diag(M: Tensor, c: float, inplace: bool) -> Tensor:
    if inplace:
        M.diagonal(dim1=-2, dim2=-1).add_(c)  # M += c I
        return M
    return M + c * _eye(M.shape[-1], M.dtype, M.device)


def _lin(X: Tensor, a: float, Y: Tensor | None, b: float, out: Tensor | None) -> Tensor:
    """``a X + b Y`` (``Y`` optional) into ``out`` (new if ``None``), one pass when ``a = 1``."""
    if Y is None:
        return torch.mul(X, a, out=out) if out is not None else X * a
    if a == 1.0:
        return torch.add(X, Y, alpha=b, out=out) if out is not None else torch.add(X, Y, alpha=b)
    R = torch.mul(X, a, out=out) if out is not None else X * a
    return R.add_(Y, alpha=b)


class _Pool:
    """Recycled ``[B, r, r]`` work buffers (CPU: a fresh large tensor is page-faulted in,
    which costs about as much as the elementwise work on it)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.free: list[Tensor] = []

    def get(self, like: Tensor) -> Tensor | None:
        if not self.enabled:
            return None
        for i, b in enumerate(self.free):
            if b.dtype == like.dtype:
                return self.free.pop(i)
        return torch.empty_like(like)

    def put(self, *ts: Tensor | None) -> None:
        if self.enabled:
            self.free.extend(t for t in ts if t is not None)


def _leading(c: list[float]) -> float:
    """The factor ``β`` the step's ``h`` is divided by: its leading coefficient (so the
    computed ``ĥ = h/β`` is monic), unless that is tiny; then 1."""
    lead = c[-1]
    return lead if abs(lead) >= 1e-6 * max(abs(x) for x in c) else 1.0


def _mm(A: Tensor, B: Tensor, alpha: float, out: Tensor | None) -> Tensor:
    """``alpha · A @ B``, the scalar folded into the product (into ``out`` if given)."""
    if out is not None:
        return torch.baddbmm(out, A, B, beta=0.0, alpha=alpha, out=out)
    return torch.bmm(A, B) if alpha == 1.0 else torch.bmm(A, B) * alpha


def _poly_kernel(
    Y: Tensor,
    Y2: Tensor | None,
    schedule: PolySchedule,
    dtypes: tuple[torch.dtype, ...] | None,
    *,
    consume: bool,
    gamma: float = 1.0,
) -> tuple[Tensor, float]:
    r"""``(Q̂, δ)`` with :math:`\delta\,\hat Q \approx Y^{-1/2}`.

    Scalars are kept out of elementwise passes: each step's polynomial is computed monic,
    :math:`h = \beta \hat h` (``β`` its leading coefficient), and ``β`` is folded into the
    products that follow (``Y ← β² (Y ĥ) ĥ``, ``Q ← β Q ĥ`` as GEMM ``alpha``), so a step
    costs its products plus one or two elementwise passes. ``gamma``: the schedule's input
    is ``gamma * Y`` (``Y2`` then ``Y @ Y``); it is folded into the first step's coefficients
    and product. ``consume``: ``Y``/``Y2`` may be overwritten (and no autograd graph is being
    recorded).
    """
    work = Y.dtype
    inplace = consume and not (torch.is_grad_enabled() and Y.requires_grad)
    pool = _Pool(inplace)
    K = len(schedule.steps)
    delta = 1.0
    Q: Tensor | None = None
    own_y = own_y2 = inplace  # whether Y / Y2 may be recycled
    for k, step in enumerate(schedule.steps):
        last = k == K - 1
        dt = work if dtypes is None else dtypes[k]
        if Y.dtype != dt:  # restore the true scale before rounding to another dtype
            Y2 = None if Y2 is None else (Y2 * gamma**2).to(dt)
            Y, gamma, own_y, own_y2 = (Y * gamma).to(dt), 1.0, False, False
        d = step.degree
        c = [cj * gamma**j for j, cj in enumerate(step.coeffs)]  # h in terms of Ŷ = Y/γ
        beta = _leading(c)
        a = [cj / beta for cj in c]  # ĥ = h / β (monic: a[d] = 1 unless β = 1)
        if Y2 is None and (d >= 2 or not last):
            Y2, own_y2 = torch.bmm(Y, Y, out=pool.get(Y)), inplace  # Ŷ²
        if d == 1:  # ĥ = a1 Ŷ + a0 I
            H = _add_diag(_lin(Y, a[1], None, 0.0, pool.get(Y)), a[0], inplace)
        elif d == 2:  # ĥ = a2 Ŷ² + a1 Ŷ + a0 I
            assert Y2 is not None
            H = _add_diag(_lin(Y2, a[2], Y, a[1], pool.get(Y)), a[0], inplace)
        else:  # d = 4: ĥ = (a2 Ŷ² + a1 Ŷ + a0 I) + Ŷ² (a4 Ŷ² + a3 Ŷ)  (Paterson–Stockmeyer)
            assert Y2 is not None
            T = _lin(Y2, a[4], Y, a[3], pool.get(Y))
            if abs(a[1]) >= 1e-3 * max(abs(a[2]), 1.0):  # fold a1 into the product's beta
                H = _add_diag(_lin(Y, 1.0, Y2, a[2] / a[1], pool.get(Y)), a[0] / a[1], inplace)
                H = H.baddbmm_(Y2, T, beta=a[1])
            else:
                H = _add_diag(_lin(Y2, a[2], Y, a[1], pool.get(Y)), a[0], inplace)
                H = H.baddbmm_(Y2, T)
            pool.put(T)
        if not last:
            assert Y2 is not None
            if d == 1:  # Ŷĥ = a1 Ŷ² + a0 Ŷ  (Ŷ² known)
                T = _lin(Y2, a[1], Y, a[0], pool.get(Y))
            else:
                T = torch.bmm(Y, H, out=pool.get(Y))  # Ŷ ĥ
            Y_new = _mm(T, H, gamma * beta * beta, pool.get(Y))  # Y h² = γβ² Ŷ ĥ² (true)
            pool.put(T)
            if own_y:
                pool.put(Y)
            if own_y2:
                pool.put(Y2)
            Y, Y2, own_y, own_y2, gamma = Y_new, None, inplace, False, 1.0
        Hw = H if H.dtype == work else H.to(work)
        if Q is None:
            Q, delta = Hw, beta  # Q = β ĥ, β kept aside
        else:
            Q_new = _mm(Q, Hw, beta, pool.get(Q))  # Q ← Q h = β Q ĥ
            pool.put(Q, Hw)
            Q = Q_new
        if Hw is not H:
            pool.put(H)
    assert Q is not None
    return Q, delta


def gram_poly_inv_sqrt(
    Y: Tensor,
    schedule: PolySchedule,
    *,
    Y2: Tensor | None = None,
    dtypes: tuple[torch.dtype, ...] | None = None,
) -> Tensor:
    r""":math:`Q \approx Y^{-1/2}` for symmetric ``Y: [B, r, r]``, spectrum in :math:`[\rho^2, 1]`.

    The coupled iteration of the module docstring. In exact arithmetic every eigenvalue of
    :math:`Q Y^{1/2}` lies in ``[1 - schedule.err, 1 + schedule.err]``. ``Y2`` is ``Y @ Y`` if
    known; ``dtypes[k]`` the dtype step ``k`` runs in (``Q`` stays in ``Y``'s dtype). Inputs
    are not modified. Cost: ``schedule.matmuls`` batched ``r x r`` products (one fewer when
    ``Y2`` is given). Differentiable by autograd.
    """
    Q, delta = _poly_kernel(Y, Y2, schedule, dtypes, consume=False)
    return Q * delta


def poly_inv_sqrt(
    front: GramFront, schedule: PolySchedule, dtypes: tuple[torch.dtype, ...] | None = None
) -> Tensor:
    r""":math:`A^{-1/2}` of the front's shifted Gram matrix (``front.A``/``A2`` are consumed).

    ``Y = A/L``, ``Y² = A²/L²`` (:attr:`GramFront.A2` is computed if missing), then the
    schedule, then :math:`A^{-1/2} = Q/\sqrt L`; ``schedule.rho`` must be ``<= front.rho``.
    """
    L = front.L
    grad = torch.is_grad_enabled() and front.A.requires_grad
    A2 = front.A2 if front.A2 is not None else torch.bmm(front.A, front.A)
    if grad:
        Y, Y2 = front.A / L, A2 / L.square()
    else:
        Y, Y2 = front.A.div_(L), A2.div_(L.square())  # Y = A/L, Y² = A²/L² (in place)
    Q, delta = _poly_kernel(Y, Y2, schedule, dtypes, consume=True)
    scale = L.rsqrt() * delta  # A^{-1/2} = δ Q̂ / √L
    return Q * scale if grad else Q.mul_(scale)


@functools.lru_cache(maxsize=1024)
def step_dtypes(
    schedule: PolySchedule, tol: float, work: torch.dtype, device_type: str
) -> tuple[torch.dtype, ...]:
    r"""Per-step dtypes: float16 where its rounding provably fits, else ``work``.

    Step ``k`` may run in a dtype of unit roundoff ``u`` if
    :math:`\tfrac12 u ((hi_k/lo_k)^2 + amp_k) \le tol/(4K)` (``docs/polar.md``), and only on
    accelerators (CPU float16 GEMMs are far slower than float32).
    """
    K = len(schedule.steps)
    out = []
    for s in schedule.steps:
        low_ok = device_type not in ("cpu", "meta") and work != torch.float16
        bound = 0.5 * unit_roundoff(torch.float16) * ((s.hi / s.lo) ** 2 + s.amp)
        out.append(torch.float16 if low_ok and bound <= tol / (4 * K) else work)
    return tuple(out)


# -- restarted iteration ---------------------------------------------------------------------------
#: Calibration of the first-order rounding model: with ``‖δY‖ ≈ u`` (normalized units) the
#: plain Gram path's worst direction errs by ``6 u T_K ≈ ½ u κ²`` (``T`` of
#: :func:`restart_profile` is ``≈ κ²/12`` for the full inverse square root), which makes the
#: restarted bound :func:`restart_bound` the same model as ``½ u κ²`` at ``k = K``.
_T_WEIGHT = 6.0


@functools.lru_cache(maxsize=4096)
def restart_profile(schedule: PolySchedule, k: int) -> tuple[float, float, float]:
    r"""First-order rounding profile of restarting ``schedule`` after ``k`` steps.

    The first ``k`` steps build :math:`W = f_k(Y)` with
    :math:`f_k(y) = \prod_{j<k} h_j(y_j)`; from the rounded Gram matrix :math:`Y + \delta Y`
    the restart sees :math:`Z f_k(Y + \delta Y)`, whose polar factor differs from the exact one
    (first order, in the eigenbasis of ``Y``) by

    .. math::  K_{ij} = \delta Y_{ij}\, f_k[y_i, y_j]\,
               \frac{\sqrt{y_i} - \sqrt{y_j}}{\sqrt{y_i} f_k(y_i) + \sqrt{y_j} f_k(y_j)}

    (``f[·,·]`` the divided difference): small where ``f_k`` is flat, i.e. early. Returns
    ``(T_k, F_k, ratio_k)``: :math:`T_k = \max_{ij} |K_{ij}/\delta Y_{ij}|` over
    :math:`y \in [\rho^2, 1]`, :math:`F_k = \max f_k` (a rounding ``δY`` moves the restarted
    spectrum by about :math:`u F_k^2`), and ``hi/lo`` of the interval the remaining steps
    start from (their Gram matrix costs ``½u·ratio²``). ``docs/polar.md`` has the derivation.
    """
    import numpy as np

    y = np.geomspace(schedule.rho**2, 1.0, 400)
    f = np.ones_like(y)
    yj = y.copy()
    for step in schedule.steps[:k]:
        h = np.polyval(np.asarray(step.coeffs)[::-1], yj)
        f *= h
        yj = yj * h * h
    dy = y[:, None] - y[None, :]
    df = f[:, None] - f[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        dd = np.where(dy != 0, df / np.where(dy != 0, dy, 1.0), 0.0)
    dd[np.diag_indices_from(dd)] = np.gradient(f, y)
    sy = np.sqrt(y)
    K = dd * (sy[:, None] - sy[None, :]) / (sy[:, None] * f[:, None] + sy[None, :] * f[None, :])
    nxt = schedule.steps[k] if k < len(schedule.steps) else schedule.steps[-1]
    return float(np.abs(K).max()), float(np.abs(f).max()), nxt.hi / nxt.lo


def restart_bound(
    schedule: PolySchedule,
    k: int,
    u: float,
    *,
    u2: float | None = None,
    second: PolySchedule | None = None,
) -> float:
    r"""First-order rounding error of ``schedule`` restarted after ``k`` steps.

    :math:`6u\,T_k` (the first phase, in unit roundoff ``u``; :func:`restart_profile`) plus
    the second phase in unit roundoff ``u2`` (default ``u``): its Gram matrix
    :math:`\tfrac12 u_2 (hi_k/lo_k)^2`, its steps :math:`\tfrac12 u_2 \sum_j amp_j` if the
    ``second`` schedule is given, and the final product and cast, :math:`2u_2`.
    """
    T, _, ratio = restart_profile(schedule, k)
    u2 = u if u2 is None else u2
    amp = 0.0 if second is None else sum(st.amp for st in second.steps)
    return _T_WEIGHT * u * T + 0.5 * u2 * (ratio**2 + amp) + 2 * u2


def restart_cushion(schedule: PolySchedule, k: int, u: float) -> float:
    """Relative widening of the restarted interval's ends: the rounded first phase moves the
    restarted spectrum by about ``u F_k²`` (:func:`restart_profile`), relative to its lower
    end ``lo_k²``; twice that, and at least 1e-3."""
    _, F, _ = restart_profile(schedule, k)
    lo = schedule.steps[k].lo if k < len(schedule.steps) else schedule.steps[-1].out_lo
    return max(2 * u * F * F / (lo * lo), 1e-3)


def restart_iterate(front: GramFront, schedule: PolySchedule, k: int) -> tuple[Tensor, Tensor]:
    r"""``(X_1, V)``: the first phase of a restart (``front.A``/``A2`` are consumed).

    :math:`V \approx f_k(A)` by the schedule's first ``k`` steps on ``Y = A/L`` (``A`` the
    front's scaled shifted Gram matrix), and the iterate :math:`X_1 = (X/s) V` (``X V/s`` tall,
    ``V X/s`` wide): the augmented matrix :math:`[X_1; \varepsilon V]` has its singular values
    in the schedule's ``[lo_k, hi_k]``.
    """
    assert front.X is not None
    grad = torch.is_grad_enabled() and front.A.requires_grad
    L = front.L
    A2 = front.A2 if front.A2 is not None else torch.bmm(front.A, front.A)
    if grad:
        Y, Y2 = front.A / L, A2 / L.square()
    else:
        Y, Y2 = front.A.div_(L), A2.div_(L.square())
    first = PolySchedule(schedule.rho, schedule.target, schedule.steps[:k])
    Q, delta = _poly_kernel(Y, Y2, first, None, consume=True)
    V = Q * (L.rsqrt() * delta)  # V ≈ f_k(A): V A V has spectrum in [lo_k², hi_k²]
    W = V * front.inv_s  # the input is X s: X_1 = (X/s) V = X W
    X1 = torch.bmm(W, front.X) if front.wide else torch.bmm(front.X, W)
    return X1, V


def poly_restart(
    front: GramFront,
    schedule: PolySchedule,
    k: int,
    *,
    target: float,
    phase2: torch.dtype | None = None,
) -> Tensor:
    r"""The map ``[B, m, n]`` by the schedule's first ``k`` steps, a restart, and a second
    schedule (``front.A``/``A2`` are consumed).

    Phase 1 builds :math:`V \approx f_k(A)` (``A`` the front's scaled shifted Gram matrix);
    the restart forms the iterate :math:`X_1 = X V/s` and its own Gram matrix
    :math:`Y' = X_1^\top X_1 + \varepsilon^2 V^2` from ``X_1`` — whose spectrum is the
    narrow interval ``[lo_k, hi_k]`` (widened by :func:`restart_cushion`), so its rounding
    costs ``½u (hi_k/lo_k)²`` instead of ``½u κ²`` — then a schedule for that interval
    (to ``target``) gives :math:`Y'^{-1/2}` and the map is :math:`X_1 Y'^{-1/2}`.
    ``phase2``: dtype of the restarted Gram matrix, iteration and final product (default the
    front's; float16/bfloat16 on accelerators, see :func:`restart_bound`).
    """
    work = front.dtype
    grad = torch.is_grad_enabled() and front.A.requires_grad
    X1, V = restart_iterate(front, schedule, k)
    u = unit_roundoff(work)
    c = restart_cushion(schedule, k, u)
    nxt = schedule.steps[k]
    lo, hi = nxt.lo * (1 - c), nxt.hi * (1 + c)
    dt = work if phase2 is None else phase2
    X1 = X1.to(dt)
    VV = torch.bmm(V, V).to(dt)
    G1 = torch.bmm(X1, X1.mT) if front.wide else torch.bmm(X1.mT, X1)  # X_1ᵀX_1
    G1 = G1.addcmul_(front.e2.to(dt), VV) if not grad else G1 + front.e2.to(dt) * VV
    second = poly_schedule(lo / hi, target, dt)
    Q2, delta2 = _poly_kernel(G1, None, second, None, consume=True, gamma=1.0 / hi**2)
    M = Q2 * (delta2 / hi)  # Y'^{-1/2} = δ Q̂ / hi
    out = torch.bmm(M, X1) if front.wide else torch.bmm(X1, M)
    return out.to(work)
