r"""Entry points: the regularized Muon map, the polar factor, and the map from a given Gram
matrix. Every path starts from the same Gram front (:mod:`muonflow.polar.front`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, Literal, overload

import torch
from torch import Tensor

from .._checks import check_choice, check_finite, check_matrix, check_scale
from .autodiff import singular_value_function
from .calibration import HostRates, host_rates
from .exact import eigh_bad, eigh_inv_sqrt, spectral_map, svd_exact
from .front import (
    GramFront,
    default_tol,
    front_from_gram,
    gemm_roundoff,
    gram_floor,
    gram_front,
    lmax_estimate,
    tighten,
    unit_roundoff,
    work_dtype,
)
from .mixed import mixed_map, mixed_plan
from .planning import (
    ITER_ROUNDOFFS,
    AutoPlan,
    best_restart,
    choose_method,
    fits,
    poly_rho,
    poly_target,
)
from .polynomial import poly_inv_sqrt, poly_restart, step_dtypes
from .schedules import RHO_MIN, PolySchedule, kappa2_on_grid, poly_schedule

__all__ = [
    "POLAR_FLOOR",
    "POLAR_METHODS",
    "inv_sqrt_from_gram",
    "plan_auto",
    "polar",
    "polar_factor",
    "regularized_polar",
]


def _relativistic_weight(lam: Tensor, eps: Tensor) -> Tensor:
    # g(σ)/σ = 1/√(σ² + ε²)
    return torch.rsqrt(lam + eps.square())


def _finish(out: Tensor, G: Tensor) -> Tensor:
    return out.reshape(G.shape).to(G.dtype)


# -- the two Gram inverse square roots, on a front -----------------------------------------------
def _kappa2(f: GramFront) -> float:
    """The front's κ² on the schedules' grid (what plans and schedules are built from)."""
    return kappa2_on_grid(f.kappa2)


def _schedule(f: GramFront, tol: float) -> PolySchedule:
    return poly_schedule(poly_rho(_kappa2(f)), poly_target(tol), f.dtype)


def _poly(f: GramFront, tol: float) -> Tensor:
    """``A^{-1/2}`` by the schedule for the front's ``ρ`` and :func:`poly_target` of ``tol``."""
    f = tighten(f)
    sched = _schedule(f, tol)
    return poly_inv_sqrt(f, sched, step_dtypes(sched, tol, f.dtype, f.A.device.type))


def _poly_map(f: GramFront, tol: float, restart: int, phase2: torch.dtype | None = None) -> Tensor:
    """The map ``[B, m, n]`` by the polynomial path, restarted after ``restart`` steps if > 0
    (the restarted phase in ``phase2``)."""
    if restart:
        f = tighten(f)
        sched = _schedule(f, tol)
        return poly_restart(f, sched, restart, target=poly_target(tol), phase2=phase2)
    return f.apply(_poly(f, tol))


def _eigh(f: GramFront, tol: float) -> tuple[Tensor, Tensor | None, Tensor]:
    """``(A^{-1/2}, bad, lam)``: eigh, the matrices the a-posteriori bound rejects (``None``
    when the a-priori bound already guarantees ``tol``) and the computed spectrum."""
    M, lam = eigh_inv_sqrt(f)
    if gram_floor(f.kappa2, f.dtype) <= tol:  # a priori: ½u L/ε² >= the computed ratio
        return M, None, lam
    return M, eigh_bad(f, lam, tol), lam


def _svd_redo(out: Tensor, f: GramFront, bad: Tensor | None, tol: float) -> Tensor:
    """Recompute the ``bad`` matrices of ``out`` by SVD of the front's (scaled) input."""
    if bad is None or not bool(bad.any()):
        return out
    assert f.X is not None
    X = f.X[bad] * f.inv_s[bad]  # with ε/s: e2 = (ε/s)² (exact scaling)
    e2 = f.e2[bad]
    kappa2 = X.square().sum(dim=(-2, -1), keepdim=True) / e2  # >= (‖X‖_2/ε)²
    g = lambda S, e2: S * torch.rsqrt(S.square() + e2)  # noqa: E731  σ/√(σ²+ε²)
    redo = svd_exact(X, e2.reshape(-1, 1), g, kappa2, tol)
    out = out.clone()
    out[bad] = redo.to(out.dtype)
    return out


# -- methods ---------------------------------------------------------------------------------------
def _eigh_method(G: Tensor, eps: float | Tensor, tol: float | None) -> Tensor:
    tol = default_tol(G.dtype) if tol is None else tol
    work = work_dtype(G.dtype)
    f = gram_front(G, eps, work, bound="A")
    if work == torch.float32 and gram_floor(f.kappa2, work) > tol:
        f = tighten(f)  # one r x r product for a tighter κ² before paying for float64
        if gram_floor(f.kappa2, work) > tol:
            f = gram_front(G, eps, torch.float64, bound="A")
    try:
        M, bad, _ = _eigh(f, tol)
    except torch.linalg.LinAlgError:  # eigensolver failed to converge: exact SVD path
        return _svd_method(G, eps, tol)
    return _finish(_svd_redo(f.apply(M), f, bad, tol), G)


def _svd_method(G: Tensor, eps: float | Tensor, tol: float | None) -> Tensor:
    return spectral_map(G, eps, _relativistic_weight, method="svd", tol=tol)


def _poly_method(G: Tensor, eps: float | Tensor, tol: float | None) -> Tensor:
    """Matmul-only path: float32 work where its rounding fits ``tol`` (restarted if that is
    what it takes, :func:`~muonflow.polar.planning.best_restart`), else float64; where even
    float64 does not fit a priori, the result is verified (:func:`_poly_error_estimate`)
    and refused if it misses :func:`poly_floor_tol`."""
    tol = default_tol(G.dtype) if tol is None else tol
    work = work_dtype(G.dtype)
    f = gram_front(G, eps, work)
    restart = 0
    if work == torch.float32 and not fits(f.kappa2, tol, work, G.device.type):
        rs = None
        if tol >= ITER_ROUNDOFFS * gemm_roundoff(work, G.device.type):
            rs = best_restart(f.kappa2, tol, work, G.device.type)
        if rs is None:
            f = gram_front(G, eps, torch.float64)
        else:
            restart = rs[0]
    want = poly_floor_tol(tol)
    if f.dtype == torch.float64 and not fits(f.kappa2, want, f.dtype, G.device.type):
        A, L = f.A.detach().clone(), f.L  # _poly consumes f.A
        M = _poly(f, want)
        est = _poly_error_estimate(A, L, M)
        if not bool((est <= want).all()):  # NaN counts as a miss
            raise ValueError(_poly_refusal(f, est, tol, want))
        return _finish(f.apply(M), G)
    return _finish(_poly_map(f, tol, restart), G)


def poly_floor_tol(tol: float) -> float:
    """The accuracy ``"poly"`` promises for a request ``tol``: ``max(tol, 64 u₆₄)`` (its
    iteration's own rounding, :data:`~muonflow.polar.planning.ITER_ROUNDOFFS` float64
    roundoffs, is the floor of a matmul-only path)."""
    return max(tol, ITER_ROUNDOFFS * unit_roundoff(torch.float64))


def _poly_error_estimate(A: Tensor, L: Tensor, M: Tensor) -> Tensor:
    r"""Estimated relative error ``[B]`` of the map from the polynomial ``M ≈ A^{-1/2}`` of
    the front's scaled ``A: [B, r, r]`` with spectral bound ``L``.

    A posteriori, for fronts where no dtype fits a priori. In the eigenbasis of ``A`` the
    map's relative error per direction is :math:`e_i` with :math:`\lambda_i m_i^2 = (1+e_i)^2`,
    so the iteration's error is :math:`\max|e_i| \approx \tfrac12\|MAM - I\|_2 \le
    \tfrac12\|MAM - I\|_F`; forming ``A`` and the first step's rounding add
    :math:`\tfrac12 u L/\lambda_{min}` each, :math:`\lambda_{min} \ge 1/\|M\|_2^2`
    (:func:`~muonflow.polar.front.lmax_estimate` of ``M``), which also bounds the check's own
    rounding. Two ``r x r`` products and a few matrix-vector ones.
    """
    with torch.no_grad():
        Md = M.detach()
        E = Md @ A @ Md
        E.diagonal(dim1=-2, dim2=-1).sub_(1.0)  # M A M − I
        m2 = lmax_estimate(Md)[1].reshape(-1).square()  # ≈ ‖M‖_2² >= 1/λ_min
        floor = unit_roundoff(A.dtype) * L.reshape(-1) * m2  # 2 · ½u L/λ_min
        return 0.5 * torch.linalg.matrix_norm(E) + floor


def _poly_refusal(f: GramFront, est: Tensor, tol: float, want: float) -> str:
    bad = ~(est <= want)
    worst = float(est.nan_to_num(math.inf).amax())
    return (
        f"method='poly' cannot meet tol={tol:g} (a matmul-only path promises max(tol, 64u₆₄) "
        f"= {want:.3g}) on {int(bad.sum())} of {bad.numel()} matrices: estimated error up to "
        f"{worst:.3g}, their shifted Gram matrices are too ill-conditioned (κ² <= "
        f"{f.kappa2:.3g}); use method='auto' or 'svd', or a larger tol"
    )


def _mixed(G: Tensor, eps: float | Tensor, f: GramFront, tol: float, low: torch.dtype) -> Tensor:
    """The mixed map on a float32 front (:mod:`~muonflow.polar.mixed`); the matrices whose
    rounding estimate (plus the restart's) exceeds ``tol/2`` are recomputed by the float32
    ``"auto"`` plan, as are all where no mixed plan exists."""
    f = tighten(f)
    u32 = gemm_roundoff(torch.float32, G.device.type)
    plan = mixed_plan(poly_rho(_kappa2(f)), poly_target(tol), low, u32)
    if plan is None:
        return _auto(G, eps, tol, mixed=False)
    out, est = mixed_map(f, plan)
    bad = est + plan.restart_error > tol / 2
    if bool(bad.any()):
        m, n = G.shape[-2:]
        flat = G.reshape(-1, m, n)
        e = eps.reshape(-1) if isinstance(eps, Tensor) else eps
        e_bad = e[bad] if isinstance(e, Tensor) and e.numel() > 1 else e
        out = out.clone()
        out[bad] = _auto(flat[bad], e_bad, tol, mixed=False).to(out.dtype)
    return _finish(out, G)


def _mixed_method(G: Tensor, eps: float | Tensor, tol: float | None) -> Tensor:
    """The mixed path pinned (bfloat16 steps even where bfloat16 is emulated or slow)."""
    tol = default_tol(G.dtype) if tol is None else tol
    if work_dtype(G.dtype) == torch.float64:
        return _poly_method(G, eps, tol)
    return _mixed(G, eps, gram_front(G, eps, torch.float32), tol, torch.bfloat16)


#: Registry of methods computing the relativistic map: name -> fn(G, eps, tol).
POLAR_METHODS: dict[str, Callable[[Tensor, float | Tensor, float | None], Tensor]] = {
    "eigh": _eigh_method,
    "svd": _svd_method,
    "poly": _poly_method,
    "mixed": _mixed_method,
}


# -- auto ------------------------------------------------------------------------------------------
def _plan_front(
    f: GramFront,
    r: int,
    dtype: torch.dtype,
    tol: float,
    aspect: float = 1.0,
    *,
    rates: HostRates,
    mixed: bool = True,
) -> tuple[AutoPlan, GramFront]:
    """The plan for a ``bound="A"`` front, tightening its bound (one ``r x r`` product) only
    where the best bound ``‖A²‖_F^{1/2}`` can give (``κ²/r^{1/4}``) could change the plan —
    except that float32 ``eigh`` is then tried directly, checked a posteriori."""
    device = f.A.device.type

    def plan(kappa2: float) -> AutoPlan:
        return choose_method(
            r=r,
            dtype=dtype,
            device_type=device,
            tol=tol,
            kappa2=kappa2,
            aspect=aspect,
            restart=f.X is not None,
            batch=f.A.shape[0],
            rates=rates,
            mixed=mixed,
        )

    p = plan(_kappa2(f))
    if f.A2 is None:
        q = plan(kappa2_on_grid(f.kappa2 / r**0.25))
        if (q.method, q.dtype) == ("eigh", torch.float32) and q.dtype == f.dtype:
            # float32 eigh may do: try it and let its a-posteriori bound (the computed
            # spectrum, tighter than any a-priori one) send failures to the SVD
            return q, f
        if p.method == "poly" or (q.method, q.dtype, q.restart) != (p.method, p.dtype, p.restart):
            f = tighten(f)
            p = plan(_kappa2(f))
    return p, f


def _first_bound(r: int, device_type: str) -> str:
    """``"A2"`` where the polynomial path is the likely plan (accelerators; ``r <= 64`` on CPU,
    where ``eigh`` costs more than any float32 schedule), so its ``A²`` is formed with the
    front's one synchronization; else the free ``"A"``, tightened only if it matters."""
    return "A2" if device_type != "cpu" or r <= 64 else "A"


def plan_auto(G: Tensor, eps: float | Tensor, tol: float | None = None) -> AutoPlan:
    """The :class:`AutoPlan` ``regularized_polar(G, eps, method="auto", tol=tol)`` follows."""
    G = check_matrix(G, "G")
    r = min(G.shape[-2:])
    if tol is None:
        return choose_method(
            r=r, dtype=G.dtype, device_type=G.device.type, tol=None, kappa2=math.nan
        )
    f = gram_front(G, eps, work_dtype(G.dtype), bound=_first_bound(r, G.device.type))
    return _plan_front(f, r, G.dtype, tol, max(G.shape[-2:]) / r, rates=host_rates(G.device))[0]


def _auto(G: Tensor, eps: float | Tensor, tol: float | None, *, mixed: bool = True) -> Tensor:
    if tol is None:
        return _eigh_method(G, eps, None)
    r = min(G.shape[-2:])
    f = gram_front(G, eps, work_dtype(G.dtype), bound=_first_bound(r, G.device.type))
    rates = host_rates(G.device)
    plan, f = _plan_front(f, r, G.dtype, tol, max(G.shape[-2:]) / r, rates=rates, mixed=mixed)
    if plan.method == "svd":
        return _svd_method(G, eps, tol)
    if plan.method == "mixed":
        assert plan.low is not None
        return _mixed(G, eps, f, tol, plan.low)
    if plan.dtype != f.dtype:
        f = gram_front(G, eps, plan.dtype, bound="A2" if plan.method == "poly" else "A")
    if plan.method == "poly":
        return _finish(_poly_map(f, tol, plan.restart, plan.phase2), G)
    try:
        M, bad, _ = _eigh(f, tol)
    except torch.linalg.LinAlgError:  # eigensolver failed to converge: exact SVD path
        return _svd_method(G, eps, tol)
    return _finish(_svd_redo(f.apply(M), f, bad, tol), G)


# -- public entry points ---------------------------------------------------------------------------
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
        method: ``"auto"`` (:func:`~muonflow.polar.planning.choose_method`: exact ``"eigh"``
            for ``tol=None``, else the cheapest path meeting ``tol``) or a key of
            :data:`POLAR_METHODS`.
        tol: requested relative accuracy per singular direction (hence also in the Frobenius
            norm); default :func:`~muonflow.polar.front.default_tol` of ``G.dtype`` (eight
            unit roundoffs). ``"poly"``/``"auto"`` split it: ``<= tol/2`` from the polynomial
            schedule (exact arithmetic) and a first-order rounding term ``½ u κ² <= tol/2`` by
            the choice of working dtype, ``κ² = L/ε² >= (||G||² + ε²)/ε²``.

    Returns:
        ``[..., m, n]`` tensor of ``G``'s dtype and device. Differentiable by autograd on
        every path, at repeated and zero singular values too (:mod:`.autodiff`; first
        derivatives). Every finite input is in range (scaled by powers of two first).

    Accuracy promised (relative error in the Frobenius norm against the exact map of ``G`` as
    given; ``t = tol``, ``u_out`` the unit roundoff of ``G.dtype``, ``u₆₄ = 1.1e-16``,
    ``κ_F = ||G||_F/ε``, ``n = max(m, n)``; ``docs/polar.md`` §7, held by
    ``tests/test_polar_accuracy.py`` on twelve-decade spectra):

    - ``"eigh"``, ``"svd"``, ``"auto"``: ``<= max(t, u₆₄(8n + 2κ_F)) + u_out``. ``u‖G‖/ε``
      is the map's own conditioning: no method reaches below it from a rounded input. float32
      work runs only where its own floor fits ``t``; ``eigh`` results whose a-posteriori
      bound misses ``t`` are redone by SVD.
    - ``"poly"``: ``<= max(t, 64u₆₄) + u_out`` (checked a posteriori where no dtype fits a
      priori), else ``ValueError`` naming the estimated error.
    """
    G = check_matrix(G, "G", finite=False)
    method = check_choice(method, "method", {"auto", *POLAR_METHODS})
    # one host synchronization validates G (NaN and ±inf propagate) and a tensor ε
    ext = [*torch.aminmax(G.detach())]
    if isinstance(eps, Tensor):
        if eps.is_complex() or not eps.is_floating_point():
            raise TypeError(f"eps must be a real floating tensor, got {eps.dtype}")
        ext += [*torch.aminmax(eps.detach())] if eps.numel() else []
    if any(v.dtype != ext[0].dtype for v in ext):
        ext = [v.to(torch.float64) for v in ext]
    vals = torch.stack(ext).tolist()
    if not all(math.isfinite(v) for v in vals[:2]):
        check_finite(G, "G")  # raises, counting the bad entries
    if isinstance(eps, Tensor):
        if len(vals) < 4 or not (math.isfinite(vals[3]) and vals[2] > 0):
            check_scale(eps.detach(), "eps", allow_zero=False)  # raises with the value
    else:
        eps = check_scale(eps, "eps", allow_zero=True)
    if tol is not None:
        check_scale(tol, "tol", allow_zero=False)
    if isinstance(eps, Tensor) and eps.numel() not in (1, G[..., 0, 0].numel()):
        raise ValueError(
            f"eps must be a float or hold one value per matrix ({G[..., 0, 0].numel()}), "
            f"got shape {tuple(eps.shape)}"
        )
    if isinstance(eps, float) and eps == 0.0:
        return polar_factor(G, method="poly" if method == "poly" else "svd", tol=tol)
    if method == "auto":
        return _auto(G, eps, tol)
    return POLAR_METHODS[method](G, eps, tol)


@overload
def inv_sqrt_from_gram(
    A: Tensor,
    eps: float | Tensor,
    *,
    tol: float | None = ...,
    method: str = ...,
    return_ok: Literal[False] = ...,
    validate: bool = ...,
) -> Tensor: ...
@overload
def inv_sqrt_from_gram(
    A: Tensor,
    eps: float | Tensor,
    *,
    tol: float | None = ...,
    method: str = ...,
    return_ok: Literal[True],
    validate: bool = ...,
) -> tuple[Tensor, Tensor]: ...
def inv_sqrt_from_gram(
    A: Tensor,
    eps: float | Tensor,
    *,
    tol: float | None = None,
    method: str = "auto",
    return_ok: bool = False,
    validate: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    r""":math:`(A + \varepsilon^2 I)^{-1/2}` of a precomputed Gram matrix ``A = XᵀX``, batched.

    For a matrix ``X`` whose Gram matrix is assembled elsewhere (e.g. all-reduced over the row
    shards of a tall ``X``), the regularized map is then ``X_local @ inv_sqrt_from_gram(A, ε)``
    on each shard. Same front, policy and accuracy control as :func:`regularized_polar`:
    ``A: [..., r, r]`` symmetric positive semi-definite up to the rounding of a Gram matrix in
    its dtype (else ``ValueError``: :func:`_gram_tolerance`; ``validate=False`` skips that
    check for a Gram matrix the caller formed itself, saving a Cholesky factorization on the
    matmul-only path); ``eps > 0`` a float or one value per
    matrix; ``tol`` the relative accuracy per eigen-direction (default
    :func:`~muonflow.polar.front.default_tol` of ``A.dtype``); ``method`` ``"auto"``, ``"eigh"``
    or ``"poly"``. The working dtype is promoted to float64 where ``½u κ²`` misses ``tol``, and
    ``"eigh"`` results the a-posteriori bound rejects are recomputed in float64. Accuracy is
    relative to the ``A`` given: the rounding committed when ``A`` was formed (about
    ``½ u_A κ²``) is the caller's. Returns ``[..., r, r]`` in ``A``'s dtype; differentiable.
    With ``return_ok=True`` returns ``(M, ok)``, ``ok: [...]`` bool, False where even the
    float64 eigh result misses ``tol`` by the a-posteriori bound (nearly rank-deficient ``A``
    with ``ε`` far below its scale): no Gram path can do those; map them from ``X`` by SVD.
    """
    A = check_matrix(A, "A", finite=False)
    if A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must be square [..., r, r], got shape {tuple(A.shape)}")
    check_finite(A.detach(), "A")
    if isinstance(eps, Tensor):
        check_scale(eps.detach(), "eps", allow_zero=False)
    else:
        eps = check_scale(eps, "eps", allow_zero=False)
    method = check_choice(method, "method", {"auto", "eigh", "poly"})
    if tol is not None:
        check_scale(tol, "tol", allow_zero=False)
    want = default_tol(A.dtype) if tol is None else float(tol)
    r = A.shape[-1]
    flat = A.reshape(-1, r, r)
    e = eps.reshape(-1) if isinstance(eps, Tensor) else eps
    tolerance = _gram_tolerance(flat, A.dtype, e) if validate else None
    f = front_from_gram(flat, e, work_dtype(A.dtype), bound="A")
    if method == "auto":
        plan, f = _plan_front(f, r, A.dtype, want, rates=host_rates(A.device))
        choice, dtype = ("eigh" if plan.method == "svd" else plan.method), plan.dtype
    else:
        choice, dtype = method, f.dtype
        if dtype == torch.float32:
            f = tighten(f)
            if not fits(f.kappa2, want, dtype, A.device.type):
                dtype = torch.float64
    if dtype != f.dtype:
        f = front_from_gram(flat, e, dtype, bound="A")
    if choice == "poly":
        if tolerance is not None:
            _check_gram(flat, *tolerance, lam=None, front=f)  # before f.A is consumed
        M, bad = _gram_poly(f, want)
    else:
        M, bad, lam = _eigh(f, want)
        if tolerance is not None:
            _check_gram(flat, *tolerance, lam=lam, front=f)
    final = choice == "eigh" and f.dtype == torch.float64  # its rejections are final
    M, rejected = _redo_in_float64_eigh(flat, e, _unscale(M, f), bad, want, final)
    M = M.reshape(A.shape).to(A.dtype)
    if return_ok:
        return M, ~rejected.reshape(A.shape[:-2])
    return M


def _gram_tolerance(flat: Tensor, dtype: torch.dtype, e: float | Tensor) -> tuple[Tensor, Tensor]:
    r"""``(δ, asym)``: per matrix of ``flat: [B, r, r]`` the tolerance of :func:`_check_gram`
    and ``max |A_ij − A_ji| / δ`` (no host synchronization).

    :math:`\delta = \sqrt{u}\,\mathrm{tr}|A| + r u \varepsilon^2` (``u`` of ``dtype``,
    ``tr|A|`` the sum of :math:`|A_{ii}|`): forming :math:`X^\top X` with inner dimension ``M``
    perturbs it by at most :math:`\gamma_M \mathrm{tr}(A)` in the 2-norm, :math:`\gamma_M
    \approx Mu` in the worst case and :math:`\approx \sqrt M u` typically, so :math:`\delta`
    admits typical rounding for any :math:`M \le 1/u` (worst case :math:`M \le u^{-1/2}`) and
    refuses asymmetry or a negative eigenvalue of relative size :math:`\sqrt u` (float32:
    2.4e-4) and more; :math:`r u \varepsilon^2` is the rounding of the shift (``A = 0`` is PSD).
    """
    A = flat.detach().to(work_dtype(dtype))
    e2 = torch.as_tensor(e, dtype=A.dtype, device=A.device).detach().square()
    u = unit_roundoff(dtype)
    delta = u**0.5 * A.diagonal(dim1=-2, dim2=-1).abs().sum(-1) + A.shape[-1] * u * e2
    asym = (A - A.mT).abs().amax(dim=(-2, -1)) / delta
    return delta, asym


def _check_gram(
    flat: Tensor, delta: Tensor, asym: Tensor, *, lam: Tensor | None, front: GramFront
) -> None:
    r"""Refuse ``flat: [B, r, r]`` unless symmetric and positive semi-definite up to ``δ``
    (:func:`_gram_tolerance`): :math:`|A_{ij} - A_{ji}| \le \delta` and :math:`\lambda_{min}(A)
    \ge -\delta`, the latter from the spectrum ``lam`` of the ``front``'s scaled shifted matrix
    where ``eigh`` computed it (free: :math:`\lambda_{min}(A) = (\lambda_{min} - \varepsilon^2/s^2)
    s^2`), else by a Cholesky factorization of :math:`A + \delta I` (it exists iff
    :math:`\lambda_{min}(A) > -\delta`; :math:`r^3/3` flops). One host synchronization.
    """
    if lam is not None:
        s2 = front.inv_s.reshape(-1).square()
        low = (lam[..., 0] - front.e2.reshape(-1)) / s2 < -delta.to(lam.dtype)
    else:
        A = flat.detach().to(delta.dtype)
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        low = torch.linalg.cholesky_ex(A + delta.reshape(-1, 1, 1) * eye).info > 0
    worst, k_asym, any_low = torch.stack(
        (asym.amax(), asym.argmax().to(asym.dtype), low.any().to(asym.dtype))
    ).tolist()
    if worst > 1:  # NaN-free: A was checked finite
        k = int(k_asym)
        raise ValueError(
            f"A must be symmetric: matrix {k} has max |A_ij - A_ji| = {worst:.3g} δ, δ = "
            f"{float(delta[k]):.3g} (√u tr|A| + r u ε²: the rounding of a Gram matrix in its "
            "dtype)"
        )
    if any_low:
        k = int(low.nonzero()[0, 0])
        raise ValueError(
            f"A must be positive semi-definite: matrix {k} has an eigenvalue below "
            f"-{float(delta[k]):.3g} (-√u tr|A| - r u ε², beyond the rounding of a Gram matrix "
            "in its dtype)"
        )


def _gram_poly(f: GramFront, tol: float) -> tuple[Tensor, Tensor | None]:
    """``(A^{-1/2}, bad)`` by the polynomial path; where no dtype fits a priori the result is
    verified, ``bad`` marking the matrices that miss :func:`poly_floor_tol` (else ``None``)."""
    want = poly_floor_tol(tol)
    if f.dtype != torch.float64 or fits(f.kappa2, want, f.dtype, f.A.device.type):
        return _poly(f, tol), None
    A, L = f.A.detach().clone(), f.L  # _poly consumes f.A
    M = _poly(f, want)
    return M, ~(_poly_error_estimate(A, L, M) <= want)


def _redo_in_float64_eigh(
    flat: Tensor,
    e: float | Tensor,
    M: Tensor,
    bad: Tensor | None,
    tol: float,
    final: bool,
) -> tuple[Tensor, Tensor]:
    """``(M, rejected)``: the ``bad`` matrices of ``M`` recomputed by float64 ``eigh``; those
    whose float64 ``eigh`` bound misses ``tol`` too are ``rejected`` (``[B]`` bool). With
    ``final`` (``M`` is float64 ``eigh`` already) the ``bad`` ones are rejected as they are."""
    rejected = torch.zeros(flat.shape[0], dtype=torch.bool, device=flat.device)
    if bad is None or not bool(bad.any()):
        return M, rejected
    if final:
        return M, bad
    e_bad = e[bad] if isinstance(e, Tensor) else e
    sub = front_from_gram(flat[bad], e_bad, torch.float64, bound="A")
    M64, bad64, _ = _eigh(sub, tol)
    M = M.clone()
    M[bad] = _unscale(M64, sub).to(M.dtype)
    if bad64 is not None:
        rejected[bad] = bad64
    return M, rejected


def _unscale(M: Tensor, f: GramFront) -> Tensor:
    """Undo the front's scaling: ``(A + ε²I)^{-1/2} = (A/s² + (ε/s)² I)^{-1/2} / s``."""
    return M * f.inv_s


#: Default spectral floor of the matmul-only polar factor: singular values ``>= 1e-3 σ_max``
#: are mapped to within ``tol`` of 1 (the interval Polar Express designs for).
POLAR_FLOOR = 1e-3


def polar_factor(
    G: Tensor, *, method: str = "svd", tol: float | None = None, floor: float = POLAR_FLOOR
) -> Tensor:
    r"""The polar factor :math:`U V^\top` of ``G: [..., m, n]`` (idealized Muon, ``ε = 0``).

    ``method="svd"`` (default): singular directions with :math:`\sigma \le r\,u\,\sigma_{max}`
    (numerically zero) map to 0, so a rank-deficient input gives a partial isometry and
    ``0 -> 0``.

    ``method="poly"`` (matmul-only): the schedule of
    :func:`~muonflow.polar.schedules.poly_schedule` on :math:`A = X^\top X` with design interval
    :math:`[\mathrm{floor}\,\sigma_{max}, \sigma_{max}]`: singular values :math:`\ge`
    ``floor``·σ_max map to within ``tol`` of 1 (promoted to float64 when
    :math:`\tfrac12 u_{32} / \mathrm{floor}^2 > tol/2`), smaller ones to values in
    :math:`[0, 1]` increasing with σ, and 0 to 0.
    """
    G = check_matrix(G, "G")
    check_choice(method, "method", {"svd", "poly"})
    out_dtype = G.dtype
    if method == "poly":
        check_scale(floor, "floor", allow_zero=False)
        if tol is not None:
            check_scale(tol, "tol", allow_zero=False)
        want = default_tol(out_dtype) if tol is None else float(tol)
        work = work_dtype(out_dtype)
        if work == torch.float32 and not fits(1 / floor**2, want, work, G.device.type):
            work = torch.float64
        f = gram_front(G, 0.0, work)
        theta, _ = lmax_estimate(f.A)  # θ <= λ_max: singular values >= floor·σ_max are
        rho = float((floor * (theta / f.L).sqrt()).min())  # >= floor·√θ
        sched = poly_schedule(min(max(rho, RHO_MIN), 1.0), poly_target(want), work)
        M = poly_inv_sqrt(f, sched, step_dtypes(sched, want, work, G.device.type))
        return _finish(f.apply(M), G)
    X = G.to(work_dtype(G.dtype))
    s = torch.linalg.vector_norm(X, float("inf"), dim=(-2, -1), keepdim=True)
    X = X / torch.where(s > 0, s, 1.0)
    rel = min(X.shape[-2:]) * unit_roundoff(X.dtype)

    def keep(S: Tensor, _: Tensor | None) -> Tensor:  # 1 on σ > r u σ_max, else 0 (g' = 0)
        return (S > S[..., :1] * rel).to(S.dtype)

    return singular_value_function(X, None, keep).to(out_dtype)


def polar(*args: Any, **kwargs: Any) -> Tensor:
    """Deprecated name of :func:`polar_factor` (removed in the next release)."""
    warnings.warn("muonflow.polar(G) is deprecated: call muonflow.polar_factor(G)",
                  DeprecationWarning, stacklevel=2)  # fmt: skip
    return polar_factor(*args, **kwargs)
