r"""Functional kernels of RegMuon: the map, the update as pre → map → post, AdamW, the energy.

For a bucket of same-shape matrices (:mod:`~muonflow.optim.plan`) with momentum :math:`M` and
gradient :math:`g`:

- **pre** (elementwise, on new tensors): :math:`M' = \beta M + g` (EMA:
  :math:`\beta M + (1-\beta) g`) and the map input :math:`X = M'`, or with Nesterov
  :math:`\beta M' + g` (EMA: :math:`\beta M' + (1-\beta) g`);
- **map**: :math:`D = \nabla K_\varepsilon(X)` per matrix (:func:`mirror_map`), batched, in
  chunks, or distributed for DTensors;
- **post** (the commit, in place): :math:`M \leftarrow M'`,
  :math:`W \leftarrow (1-\eta\lambda) W - \eta\rho D`.

Every bucket's pre and map run before any post, so an exception anywhere before the commit
(the map, a user ``map_fn``, a collective, memory) leaves parameters and state untouched.
``map_fn`` defaults to :func:`mirror_map` looked up at call time: the one place to intercept
the optimizer's map calls.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor

from .._checks import check_choice
from .options import DEFAULTS, LAYOUTS, RegMuonOptions, as_float
from .plan import Bucket, build_plan, is_dtensor, local, matrix_shape, relative_eps

__all__ = ["adamw", "kinetic_energy", "mirror_map", "orthogonalize", "regmuon"]

MapFn = Callable[[Tensor], Tensor]


def mirror_map(X: Tensor, options: RegMuonOptions = DEFAULTS, /, **overrides: Any) -> Tensor:
    r""":math:`\nabla K_{\varepsilon_i}(X_i)` of the options' potential for every matrix of a
    stack ``X: [B, m, n]`` (any leading dims): what RegMuon's step maps.

    ``eps_mode="absolute"``: :math:`\varepsilon_i = \varepsilon`; ``"relative"``:
    :math:`\varepsilon_i = \varepsilon\,\|X_i\|_F/\sqrt{\min(m,n)}` (``eps`` times the RMS
    singular value of each matrix, so the map is invariant under :math:`X_i \to c X_i`).
    For the default potential this is :math:`X (X^\top X + \varepsilon^2 I)^{-1/2}`; ``nuclear``
    gives the polar factor, ``quadratic`` the identity (see ``docs/theory.md``).
    """
    o = options.replace(**overrides) if overrides else options
    kinetic = o.kinetic
    e: float | Tensor = o.eps
    if kinetic.uses_eps and o.eps_mode == "relative":
        work = torch.float64 if X.dtype == torch.float64 else torch.float32
        e = relative_eps(torch.linalg.vector_norm(X, dim=(-2, -1), dtype=work), min(X.shape[-2:]),
                         o.eps)  # fmt: skip
    return kinetic.at(e).grad(X, method=o.method, tol=o.tol)


def orthogonalize(X: Tensor, **options: Any) -> Tensor:
    """Deprecated name of :func:`mirror_map` (it orthogonalizes only for ``nuclear``)."""
    warnings.warn("muonflow.optim.orthogonalize is deprecated: use mirror_map(X, options)",
                  DeprecationWarning, stacklevel=2)  # fmt: skip
    return mirror_map(X, DEFAULTS.replace(**options))


# -- the update over a plan ----------------------------------------------------------------------
@dataclass
class Work:
    """One bucket's tensors for a step: ``[k_i, m, n]`` views of the members' parameters,
    gradients and momenta (local shards for DTensors); ``stack``: the stacked momentum when
    ``ms`` are views of it; ``copies``: (tensor, copy) pairs to write back after the commit."""

    b: Bucket
    ws: list[Tensor]
    gs: list[Tensor]
    ms: list[Tensor]
    stack: Tensor | None = None
    copies: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    #: the new momentum, rounded once, where the state's dtype is not the parameters'
    new_momentum: list[Tensor] = field(default_factory=list)

    @classmethod
    def of(cls, b: Bucket, params: Sequence[Tensor], grads: Sequence[Tensor],
           bufs: Sequence[Tensor], stack: Tensor | None = None) -> Work:  # fmt: skip
        """The work of bucket ``b`` from its members' tensors (in ``b.members`` order)."""
        (ws, wc), (gs, _), (ms, mc) = (b.mats(ts) for ts in (params, grads, bufs))
        return cls(b, ws, gs, ms, stack, wc + mc)


def directions(work: Work, o: RegMuonOptions, map_fn: MapFn | None = None) -> list[Tensor]:
    """Pre and map of one bucket: ``D`` per chunk. Changes nothing."""
    beta, ema, b = o.momentum, o.momentum_form == "ema", work.b
    mapper = map_fn or (lambda X: mirror_map(X, o))  # looked up at call time: patchable
    if b.layout is not None:  # DTensors: the full matrices' map, from local shards
        mapper = functools.partial(b.layout.map, map_fn=mapper, options=o)
    out, dtype = [], work.gs[0].dtype
    state_dtype = dtype if work.stack is None else work.stack.dtype
    low = state_dtype != dtype  # e.g. bfloat16 momentum
    work.new_momentum = []
    for lo, hi in b.chunks():
        gs = b.rows(work.gs, lo, hi)
        if work.stack is not None:  # in the parameters' dtype (a no-op unless ``low``)
            M = work.stack[lo:hi].to(dtype)
            X = M.clone() if ema or low else M * beta
            if low and not ema:
                X.mul_(beta)
        else:
            X = torch.cat(b.rows(work.ms, lo, hi))
            if not ema:
                X.mul_(beta)
        pieces = list(X.split([g.shape[0] for g in gs]))
        if ema:
            torch._foreach_lerp_(pieces, gs, 1 - beta)  # M' = βM + (1-β)g
        else:
            torch._foreach_add_(pieces, gs)  # M' = βM + g
        if low:
            work.new_momentum.append(X.to(state_dtype))  # rounded once
        if o.nesterov:
            X.mul_(beta)
            torch._foreach_add_(pieces, gs, alpha=1 - beta if ema else 1.0)  # X = βM' + g
        out.append(mapper(X))  # D = ∇K(X)
    return out


def commit(work: Work, ds: Sequence[Tensor], o: RegMuonOptions, cautious: float = 0.0,
           own: Sequence[tuple[int, float]] = ()) -> None:  # fmt: skip
    """Post of one bucket: ``M ← M'``, ``W ← (1 - ηλ)W - ηρD``, in place; with ``cautious =
    λ_c`` also ``W ← W − ηλ_c 1[D ⊙ W ≥ 0] ⊙ W`` (from the ``W`` before the step): decay only
    where the step moves the entry toward 0; each member at a position ``j`` of ``own``'s pairs
    ``(j, λ_j)`` also gets its own ``W ← (1 - ηλ_j)W`` before the step."""
    beta, lr, b = o.momentum, as_float(o.lr), work.b
    if work.new_momentum:  # M ← M', computed in pre and rounded once to the state's dtype
        assert work.stack is not None
        torch._foreach_copy_(list(work.stack.split([m.shape[0] for m in work.new_momentum])),
                             work.new_momentum)  # fmt: skip
    elif o.momentum_form == "ema":
        torch._foreach_lerp_(work.ms, work.gs, 1 - beta)
    else:
        torch._foreach_mul_(work.ms, beta)
        torch._foreach_add_(work.ms, work.gs)
    if o.weight_decay != 0:
        torch._foreach_mul_(work.ws, 1 - lr * o.weight_decay)  # decoupled decay
    for lam in sorted({lam for _, lam in own}):  # one foreach per distinct own decay
        torch._foreach_mul_([work.ws[j] for j, x in own if x == lam], 1 - lr * lam)
    for (lo, hi), D in zip(b.chunks(), ds, strict=True):
        ws = b.rows(work.ws, lo, hi)
        Ds = list(D.split([w.shape[0] for w in ws]))
        if cautious:  # kept: W where D ⊙ W < 0 (the step grows |W|), so W ← W − ηλ(W − kept)
            kept = torch._foreach_mul(Ds, ws)
            torch._foreach_neg_(kept)
            torch._foreach_sign_(kept)
            torch._foreach_clamp_min_(kept, 0.0)
            torch._foreach_mul_(kept, ws)
            torch._foreach_mul_(ws, 1 - lr * cautious)
            torch._foreach_add_(ws, kept, alpha=lr * cautious)
        torch._foreach_add_(ws, Ds, alpha=-lr * b.rho)
    for t, copy in work.copies:
        t.copy_(copy.view(t.shape))


# -- the functional API --------------------------------------------------------------------------
def _per_param(value: str | Sequence[str], n: int, name: str) -> list[str]:
    out = [value] * n if isinstance(value, str) else list(value)
    if len(out) != n:
        raise ValueError(f"{name} has {len(out)} entries for {n} parameters")
    return out


def check_like(
    value: Any, p: Tensor, what: str, *, exact: bool = True, any_dtype: bool = False
) -> None:
    """``value`` is a real floating, strided tensor of ``p``'s shape, a DTensor iff ``p`` is
    (``exact``: and on its device, of its dtype unless ``any_dtype``); raise naming ``what``
    otherwise."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{what} must be a Tensor, got {type(value).__name__}")
    if value.is_complex() or not value.is_floating_point():
        raise TypeError(f"{what} must be a real floating tensor, got {value.dtype}")
    if value.shape != p.shape:
        raise ValueError(f"{what} has shape {tuple(value.shape)}, expected {tuple(p.shape)}")
    if is_dtensor(value) != is_dtensor(p):  # e.g. a single-process checkpoint into FSDP2
        kinds = ["a DTensor" if is_dtensor(t) else "a plain tensor" for t in (value, p)]
        raise ValueError(
            f"{what} is {kinds[0]} but the parameter is {kinds[1]}: load sharded state with "
            "torch.distributed.checkpoint.state_dict.set_state_dict (a single-process state "
            "dict with options=StateDictOptions(full_state_dict=True))"
        )
    if value.is_sparse or value.layout != torch.strided:
        raise ValueError(f"{what} has a {value.layout} layout; only strided is supported")
    if exact and ((value.dtype != p.dtype and not any_dtype) or value.device != p.device):
        raise ValueError(
            f"{what} is {value.dtype} on {value.device}; the parameter is {p.dtype} on {p.device}"
        )


def check_lists(params: Sequence[Any], **lists: Sequence[Any]) -> None:
    """Every list has one entry per parameter, and each tensor entry matches its parameter."""
    for name, seq in lists.items():
        if len(seq) != len(params):
            raise ValueError(f"{name} has {len(seq)} entries for {len(params)} parameters")
    for i, p in enumerate(params):
        check_like(p, p, f"params[{i}]")
        for name, seq in lists.items():
            if isinstance(seq[i], Tensor) or name != "steps":
                check_like(seq[i], p, f"{name}[{i}]")


def first_nonfinite(tensors: Sequence[Tensor]) -> int | None:
    """Index of the first tensor with a NaN/Inf entry, or ``None``: one fused 2-norm per device
    (NaN/Inf if any entry is; it can overflow for finite entries beyond ~1e19 in float32, and
    only then are those tensors checked exactly). With DTensors every rank gets the same
    answer (:func:`~muonflow.optim.dtensor.agree`)."""
    ts = [local(t) for t in tensors]
    live = [i for i, t in enumerate(ts) if t.numel()]
    bad: set[int] = set()
    by_device: dict[torch.device, list[tuple[int, Tensor]]] = {}
    norms = torch._foreach_norm([ts[i] for i in live], 2) if live else []
    for i, norm in zip(live, norms, strict=True):
        by_device.setdefault(norm.device, []).append((i, norm))
    for pairs in by_device.values():
        ok = torch.isfinite(torch.stack([norm.float() for _, norm in pairs]))
        if not bool(ok.all()):  # one sync per device
            bad |= {i for (i, _), good in zip(pairs, ok.tolist(), strict=True)
                    if not good and not bool(torch.isfinite(ts[i]).all())}  # fmt: skip
    flags = [i in bad for i in range(len(ts))]
    if any(is_dtensor(t) for t in tensors):  # every rank must agree: one small all-reduce
        from .dtensor import agree

        flags = agree(tensors, flags)
    return next((i for i, f in enumerate(flags) if f), None)


def regmuon(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: Sequence[Tensor],
    options: RegMuonOptions = DEFAULTS,
    /,
    *,
    layout: str | Sequence[str] | None = None,
    matrix_view: str | Sequence[str] | None = None,
    map_fn: MapFn | None = None,
    check_finite: bool = True,
    workspace_cap: int | None = None,
    **overrides: Any,
) -> None:
    r"""Functional RegMuon: update ``params`` and ``momentum_buffers`` in place.

    Per parameter, seen as matrices by ``matrix_view`` (:func:`~muonflow.optim.matrix_shape`),
    with gradient :math:`g` and momentum :math:`M` (module docstring):

    .. math::
        M \leftarrow \beta M + g, \quad X = g + \beta M \ (\text{Nesterov}), \quad
        W \leftarrow (1 - \eta\lambda) W - \eta\,\rho(m, n)\, \nabla K_{\varepsilon}(X)

    Matrices of the same ``(m, n)``, dtype, device and ``ρ`` are mapped in one batched call (or
    chunks under ``max_batch_bytes``; the result does not depend on them beyond round-off).

    Args:
        params, grads, momentum_buffers: one tensor each per parameter (zeros for a fresh
            buffer); gradients and buffers must match their parameter's shape, dtype, device.
        options: a :class:`~muonflow.optim.RegMuonOptions`; ``overrides`` replace some of it
            (``regmuon(ps, gs, ms, lr=0.1)``).
        layout, matrix_view: one value for all parameters or one per parameter (default: the
            options').
        map_fn: ``X [B, m, n] -> ∇K(X)`` (default :func:`mirror_map` with the options). For
            DTensor parameters it maps whole matrices on their owners (the Gram scheme computes
            ``∇K`` from the options: ``map_fn`` must agree with them).
        check_finite: raise ``ValueError`` on a NaN/Inf gradient or buffer.
        workspace_cap: the ``"auto"`` workspace cap (default: from these matrices).

    Everything is checked before anything changes, and an exception in the map changes nothing.
    """
    o = options.replace(**overrides) if overrides else options
    n = len(params)
    check_lists(params, grads=grads, momentum_buffers=momentum_buffers)
    views = _per_param(o.matrix_view if matrix_view is None else matrix_view, n, "matrix_view")
    layouts = _per_param(o.layout if layout is None else layout, n, "layout")
    if len({id(p) for p in params}) != n:
        raise ValueError("params lists the same tensor twice")
    for i in range(n):
        check_choice(layouts[i], "layout", LAYOUTS)
        matrix_shape(params[i].shape, views[i])
    if check_finite and (bad := first_nonfinite([*grads, *momentum_buffers])) is not None:
        what = "grads" if bad < n else "momentum_buffers"
        raise ValueError(f"{what}[{bad % n}] has NaN or Inf entries; nothing was changed")
    plan = build_plan(params, list(zip(views, layouts, strict=True)), o.adjust_lr,
                      o.max_batch_bytes, workspace_cap)  # fmt: skip
    works = []
    for b in plan:
        ps, gs, ms = ([ts[i] for i in b.members] for ts in (params, grads, momentum_buffers))
        works.append(Work.of(b, ps, gs, ms))
    ds = [directions(w, o, map_fn) for w in works]
    for w, d in zip(works, ds, strict=True):
        commit(w, d, o)


def adamw(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[int],
    options: RegMuonOptions = DEFAULTS,
    /,
    **overrides: Any,
) -> None:
    r"""Functional AdamW (decoupled weight decay), ``torch.optim.AdamW``'s arithmetic, with the
    options' ``adamw_lr``, ``adamw_betas``, ``adamw_eps`` and AdamW weight decay:

    .. math::
        W \leftarrow (1 - \eta\lambda) W, \quad m \leftarrow \beta_1 m + (1-\beta_1) g, \quad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2, \quad
        W \leftarrow W - \frac{\eta}{1-\beta_1^t} \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}

    ``steps[i]``: ``t`` of parameter ``i`` (already incremented, ``>= 1``). Everything is
    checked before anything changes; the caller checks finiteness.
    """
    o = options.replace(**overrides) if overrides else options
    n = len(params)
    check_lists(params, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs, steps=steps)
    for i in range(n):
        t = steps[i]
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ValueError(f"steps[{i}] must be an int >= 1, got {t!r}")
    live = [i for i in range(n) if params[i].numel()]
    if not live:
        return
    ps, gs, ms, vs = ([ts[i] for i in live] for ts in (params, grads, exp_avgs, exp_avg_sqs))
    lr, (beta1, beta2), wd = as_float(o.adamw_lr), o.adamw_betas, o.adamw_decay
    if wd != 0:
        torch._foreach_mul_(ps, 1 - lr * wd)
    torch._foreach_lerp_(ms, gs, 1 - beta1)
    torch._foreach_mul_(vs, beta2)
    torch._foreach_addcmul_(vs, gs, gs, 1 - beta2)
    denom = torch._foreach_sqrt(vs)
    torch._foreach_div_(denom, [(1 - beta2 ** steps[i]) ** 0.5 for i in live])
    torch._foreach_add_(denom, o.adamw_eps)
    torch._foreach_addcdiv_(ps, ms, denom, [-lr / (1 - beta1 ** steps[i]) for i in live])


# -- energy --------------------------------------------------------------------------------------
def kinetic_energy(
    momenta: Sequence[Tensor], specs: Sequence[tuple[str, str]], o: RegMuonOptions
) -> Tensor:
    r""":math:`\sum K_{\varepsilon_{dyn}}(P)` of a group's momentum buffers in dynamics units
    (float64 0-dim, CPU): per matrix, with step :math:`h = \eta\rho` (:math:`\sqrt{\eta\rho}`
    for a potential that is not scale-invariant), :math:`P = -hM` (sum-form :math:`M`; EMA
    buffers are divided by :math:`1-\beta`) and :math:`\varepsilon_{dyn} = h\,\varepsilon_M`
    (absolute, or relative to ``M``'s RMS singular value). See ``docs/theory.md``, §3."""
    full = [cast(Any, m).full_tensor() if is_dtensor(m) else m for m in momenta]  # whole
    total = torch.zeros((), dtype=torch.float64)
    kinetic = o.kinetic
    scale = 1 / (1 - o.momentum) if o.momentum_form == "ema" else 1.0
    for b in build_plan(full, specs, o.adjust_lr, None, None):
        M = torch.cat(b.mats([full[i] for i in b.members])[0]).double() * scale
        h = as_float(o.lr) * b.rho
        h = h if kinetic.scale_invariant else math.sqrt(h)
        e: float | Tensor = h * o.eps * scale
        if o.eps_mode == "relative":
            e = h * relative_eps(torch.linalg.vector_norm(M, dim=(-2, -1)), min(b.m, b.n), o.eps)
        total = total + kinetic.at(e).energy(-h * M).sum().cpu()
    return total
