r"""Functional kernels of RegMuon: per-parameter lists in, parameters and state updated in place.

:func:`regmuon` is shaped like torch.optim's functional kernels (``torch.optim._muon.muon``):
``regmuon(params, grads, momentum_buffers, *, lr, momentum, eps, ...)``. It validates every
shape before changing anything, groups same-shape matrices into stacks and maps each stack in
one batched call (or a few chunks of it, by the ``max_batch_bytes`` rule). :func:`adamw` is the
built-in AdamW (torch.optim.AdamW's arithmetic). Their defaults come from
:data:`~muonflow.optim.defaults.DEFAULTS`, as the class's do.

Every map call goes through one function, the ``map_fn(X) -> D`` of :func:`regmuon` (default
:func:`orthogonalize` with the call's options): a distributed or instrumented variant replaces
that one function. :func:`orthogonalize` itself calls ``muonflow.optim.regularized_polar``,
looked up at call time, so counting or profiling the optimizer's map calls is one patch.
"""

from __future__ import annotations

import functools
import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._checks import check_choice
from ..polar import POLAR_METHODS, polar
from ..spectral import POTENTIALS, Huber
from .defaults import DEFAULTS

__all__ = [
    "ADJUST_LR",
    "AUTO_WORKSPACE_FLOOR",
    "MAP_WORKSPACE_MN",
    "MAP_WORKSPACE_RR",
    "MATRIX_VIEWS",
    "adamw",
    "auto_chunk_rows",
    "auto_workspace_cap",
    "lr_factor",
    "map_workspace_bytes",
    "matrix_shape",
    "orthogonalize",
    "regmuon",
]

#: Shape-aware learning-rate factors ``rho(m, n)`` (``m`` = fan-out rows, ``n`` = fan-in cols).
ADJUST_LR: dict[str, Callable[[int, int], float]] = {
    # Keller Jordan's Muon: the update's RMS matches across aspect ratios, sqrt(max(1, m/n)).
    "original": lambda m, n: math.sqrt(max(1.0, m / n)),
    # Moonshot ("Muon is scalable"): RMS of an AdamW update, 0.2 sqrt(max(m, n)).
    "match_rms_adamw": lambda m, n: 0.2 * math.sqrt(max(m, n)),
    # The spectral condition of µP (Yang, Simon & Bernstein 2023): sqrt(fan_out/fan_in).
    "spectral": lambda m, n: math.sqrt(m / n),
    "none": lambda m, n: 1.0,
}

MOMENTUM_FORMS = ("sum", "ema")
EPS_MODES = ("absolute", "relative")
LAYOUTS = ("out_in", "in_out")
#: How a parameter is seen as matrices (:func:`matrix_shape`); ``"split:K"`` (e.g. ``"split:3"``
#: for a packed q/k/v projection) is accepted too.
MATRIX_VIEWS = ("auto", "conv", "batch")
_SPLIT = re.compile(r"split:([1-9][0-9]*)")

#: ``max_batch_bytes="auto"``: the workspace a map call may use is that of mapping the
#: optimizer's largest matrix alone (what any per-matrix method pays anyway, so batching adds
#: no memory at the peak), or this many bytes if more: a stack of same-shape matrices is mapped
#: in one call unless its estimated workspace exceeds that cap, and then in the fewest chunks
#: that fit. 1 MiB lets stacks of small matrices (MoE experts, heads) share a call: below
#: ~100 KiB of workspace per matrix the map's fixed cost per call (~1 ms on a CPU core) dominates.
AUTO_WORKSPACE_FLOOR = 2**20

#: Workspace of one map call on an ``m x n`` matrix with ``r = min(m, n)``: about
#: ``MAP_WORKSPACE_MN · m·n + MAP_WORKSPACE_RR · r²`` float64 numbers (the working dtype may be
#: float64 whatever the input's; the matmul-only and ``eigh`` paths both keep a few copies of
#: the matrix and several Gram-sized ``r x r`` workspaces). Fitted as an upper bound to the
#: measured peak of live temporaries of :func:`orthogonalize` (output included) over square,
#: tall and wide shapes, float32/float64 inputs, float32 and float64 matmul-only and ``eigh``
#: paths: the largest measured peak is 0.95 of it (square, float64 path). Kernel-internal
#: workspaces (LAPACK's) are not counted. See :func:`map_workspace_bytes`.
MAP_WORKSPACE_MN = 3
MAP_WORKSPACE_RR = 7  # see MAP_WORKSPACE_MN


# -- matrix views and the workspace rule ---------------------------------------------------------
def check_matrix_view(view: Any) -> str:
    """Return ``view`` if it is one of :data:`MATRIX_VIEWS` or ``"split:K"``; raise otherwise."""
    if isinstance(view, str) and (view in MATRIX_VIEWS or _SPLIT.fullmatch(view)):
        return view
    raise ValueError(f"unknown matrix_view {view!r}; valid: 'auto', 'batch', 'conv', 'split:K'")


def matrix_shape(shape: Sequence[int], view: str = "auto") -> tuple[int, int, int]:
    """How a parameter of ``shape`` is seen as a stack of matrices: ``(count, m, n)``.

    ``"batch"``: ``[..., m, n]`` is a batch of ``prod(...)`` matrices (stacked experts, heads);
    ``"conv"``: ``[out, *rest]`` is one ``out x prod(rest)`` matrix (conv kernels);
    ``"split:K"``: ``[..., K·m, n]`` is ``prod(...)·K`` matrices ``m x n`` (a packed projection,
    e.g. ``nn.MultiheadAttention.in_proj_weight`` = q, k, v stacked by rows: ``"split:3"``);
    ``"auto"``: 2-D and 3-D tensors are batches (3-D = stacked experts ``[E, m, n]``), 4-D+
    tensors are conv kernels (``Conv2d``/``Conv3d``). ``Conv1d`` weights ``[out, in, k]`` need
    ``"conv"`` (``RegMuon(model)`` knows it from the module type).
    """
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"a matrix parameter needs ndim >= 2, got shape {shape}")
    check_matrix_view(view)
    if view == "conv" or (view == "auto" and len(shape) >= 4):
        return 1, shape[0], math.prod(shape[1:])
    split = _SPLIT.fullmatch(view)
    if split:
        k = int(split.group(1))
        if shape[-2] % k:
            raise ValueError(
                f"matrix_view {view!r} needs a row count divisible by {k}, got shape {shape}"
            )
        return math.prod(shape[:-2]) * k, shape[-2] // k, shape[-1]
    return math.prod(shape[:-2]), shape[-2], shape[-1]


def lr_factor(m: int, n: int, layout: str, adjust_lr: str) -> float:
    """``ρ`` of an ``m x n`` matrix: ``ADJUST_LR[adjust_lr](fan_out, fan_in)``.

    ``layout="out_in"`` (``nn.Linear``): rows are the fan-out; ``"in_out"`` (HF ``Conv1D``,
    ``[in, out]``): columns are.
    """
    fan_out, fan_in = (n, m) if layout == "in_out" else (m, n)
    return ADJUST_LR[adjust_lr](fan_out, fan_in)


def map_workspace_bytes(m: int, n: int) -> int:
    """Estimated peak bytes of the temporaries of one map call, per ``m x n`` matrix.

    ``8 · (MAP_WORKSPACE_MN · m·n + MAP_WORKSPACE_RR · min(m, n)² + 32)``: float64 copies of
    the matrix and of its Gram matrix (see :data:`MAP_WORKSPACE_MN`) plus 32 float64 per-matrix
    scalars (scales, ε, κ² estimates), which dominate only for tiny matrices.
    """
    r = min(m, n)
    return 8 * (MAP_WORKSPACE_MN * m * n + MAP_WORKSPACE_RR * r * r + 32)


def auto_chunk_rows(count: int, m: int, n: int, cap: int) -> int | None:
    """Matrices per map call when a call's workspace may reach ``cap`` bytes; ``None``: all.

    With ``w = map_workspace_bytes(m, n)`` (:func:`map_workspace_bytes`), a stack of ``count``
    matrices is split only when ``count · w > cap``, into chunks of ``max(1, cap // w)``
    matrices. ``RegMuon`` with ``max_batch_bytes="auto"`` uses ``cap`` =
    :func:`auto_workspace_cap` of its matrices.
    """
    per_matrix = map_workspace_bytes(m, n)
    if count * per_matrix <= cap:
        return None
    return max(1, cap // per_matrix)


def auto_workspace_cap(shapes: Iterable[tuple[int, int]]) -> int:
    """The workspace cap of ``max_batch_bytes="auto"`` for matrices of the ``(m, n)`` shapes.

    ``max(AUTO_WORKSPACE_FLOOR, max map_workspace_bytes(m, n))``: the peak of a per-matrix
    loop (see :data:`AUTO_WORKSPACE_FLOOR`).
    """
    return max([AUTO_WORKSPACE_FLOOR, *(map_workspace_bytes(m, n) for m, n in shapes)])


def chunk_rows(
    count: int, m: int, n: int, itemsize: int, max_batch_bytes: int | str | None, cap: int | None
) -> int | None:
    """Matrices per map call for a stack of ``count`` ``m x n`` matrices (``None``: all).

    ``max_batch_bytes="auto"``: :func:`auto_chunk_rows` under the workspace ``cap``; an int:
    ``max(1, max_batch_bytes // (m·n·itemsize))`` (a cap on one map input's bytes); ``None``.
    """
    if max_batch_bytes == "auto":
        assert cap is not None
        return auto_chunk_rows(count, m, n, cap)
    if max_batch_bytes is None:
        return None
    assert isinstance(max_batch_bytes, int)
    return max(1, max_batch_bytes // (m * n * itemsize))


# -- validation of options -----------------------------------------------------------------------
def check_number(value: Any, name: str, lo: float, hi: float, *, hi_open: bool = False) -> float:
    """``float(value)`` if it is a real number in ``[lo, hi]`` (``[lo, hi)``); raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    v = float(value)
    bad = not (math.isfinite(v) and lo <= v <= hi) or (hi_open and v == hi)
    if bad:
        interval = f"[{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return v


def check_max_batch_bytes(value: Any) -> int | str | None:
    """``"auto"``, ``None`` or a positive int; raise otherwise."""
    if value is None or value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_batch_bytes must be a positive int, 'auto' or None, got {value!r}")
    return value


def validate_regmuon_options(
    *,
    lr: Any,
    momentum: Any,
    eps: Any,
    eps_mode: Any,
    potential: Any,
    momentum_form: Any,
    nesterov: Any,
    weight_decay: Any,
    adjust_lr: Any,
    tol: Any,
    method: Any,
) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the option and the value if one is invalid."""
    check_number(lr, "lr", 0.0, math.inf)
    check_number(weight_decay, "weight_decay", 0.0, math.inf)
    form = check_choice(momentum_form, "momentum_form", MOMENTUM_FORMS)
    # Sum form allows β = 1 (no damping: the conservative flow γ = 0); EMA needs β < 1.
    check_number(momentum, "momentum", 0.0, 1.0, hi_open=form == "ema")
    if check_number(eps, "eps", 0.0, math.inf) == 0:
        raise ValueError(f"eps must be > 0, got {eps!r} (use potential='nuclear')")
    check_choice(eps_mode, "eps_mode", EPS_MODES)
    pot = check_choice(potential, "potential", POTENTIALS)
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov must be a bool, got {nesterov!r}")
    check_choice(adjust_lr, "adjust_lr", ADJUST_LR)
    if tol is not None and check_number(tol, "tol", 0.0, math.inf) == 0:
        raise ValueError(f"tol must be > 0 or None, got {tol!r}")
    methods = {"auto", *POLAR_METHODS} if pot == "relativistic" else {"auto", "eigh", "svd"}
    check_choice(method, f"method (potential {pot!r})", methods)


def validate_adamw_options(*, lr: Any, betas: Any, eps: Any, weight_decay: Any) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the option and the value if one is invalid."""
    check_number(lr, "lr", 0.0, math.inf)
    check_number(weight_decay, "weight_decay", 0.0, math.inf)
    if not (isinstance(betas, tuple | list) and len(betas) == 2):
        raise ValueError(f"betas must be a pair of floats, got {betas!r}")
    for i, b in enumerate(betas):
        check_number(b, f"betas[{i}]", 0.0, 1.0, hi_open=True)
    if check_number(eps, "adamw_eps", 0.0, math.inf) == 0:
        raise ValueError(f"adamw_eps must be > 0, got {eps!r}")


def _per_param(value: str | Sequence[str], n: int, name: str) -> list[str]:
    if isinstance(value, str):
        return [value] * n
    out = list(value)
    if len(out) != n:
        raise ValueError(f"{name} has {len(out)} entries for {n} parameters")
    return out


def _check_lists(n: int, **lists: Sequence[Any]) -> None:
    for name, seq in lists.items():
        if len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} parameters")


def _check_like(i: int, p: Any, others: dict[str, Any]) -> None:
    """Parameter ``i`` is a real floating tensor and every ``others`` tensor matches it."""
    if not isinstance(p, Tensor):
        raise TypeError(f"params[{i}] must be a Tensor, got {type(p).__name__}")
    if p.is_complex() or not p.is_floating_point():
        raise TypeError(f"params[{i}] must be a real floating tensor, got {p.dtype}")
    for name, t in others.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}[{i}] must be a Tensor, got {type(t).__name__}")
        if t.shape != p.shape or t.dtype != p.dtype or t.device != p.device:
            raise ValueError(
                f"{name}[{i}] is {t.dtype} {tuple(t.shape)} on {t.device}; params[{i}] is "
                f"{p.dtype} {tuple(p.shape)} on {p.device}"
            )
        if t.is_sparse or t.layout != torch.strided:
            raise RuntimeError(f"{name}[{i}] has a {t.layout} layout; only strided is supported")


# -- DTensor parameters (FSDP2; muonflow.distributed) ---------------------------------------------
def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a DTensor (imports nothing unless DTensors can exist)."""
    if "torch.distributed.tensor" not in sys.modules:
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def dtensor_layout(p: Tensor, view: str = "auto") -> Any:
    """``None`` for a plain tensor; for a DTensor matrix (stack) its
    :class:`muonflow.distributed.MatrixLayout`: how its matrices lie over the ranks."""
    if not is_dtensor(p):
        return None
    from ..distributed.dtensor import matrix_layout

    return matrix_layout(p, view)


def first_nonfinite(tensors: Sequence[Tensor]) -> int | None:
    """Index of the first tensor with a NaN/Inf entry, or ``None``: one fused norm per device.

    The 2-norm is NaN or Inf if any entry is, so one foreach kernel and one host sync per
    device decide (on CPU ``_foreach_norm(·, 2)`` is ~25x faster than the ∞-norm). It can also
    overflow for finite entries beyond ~1e19 (float32): only then, or on a real failure, each
    tensor is checked exactly. With DTensors every rank gets the same answer (their local
    shards are checked and the flags all-reduced: a NaN on one rank stops every rank).
    """
    live = [i for i, t in enumerate(tensors) if t.numel()]
    if not live:
        return None
    if any(is_dtensor(t) for t in tensors):  # every rank must agree: one small all-reduce
        from ..distributed.dtensor import first_nonfinite as agreed

        return agreed(tensors)
    norms = torch._foreach_norm([tensors[i] for i in live], 2)
    by_device: dict[torch.device, list[Tensor]] = {}
    for t in norms:
        by_device.setdefault(t.device, []).append(t.float())
    if all(bool(torch.isfinite(torch.stack(ns)).all()) for ns in by_device.values()):
        return None
    return next((i for i in live if not bool(torch.isfinite(tensors[i]).all())), None)


# -- the map --------------------------------------------------------------------------------------
def _regularized_polar(G: Tensor, eps: float | Tensor, *, method: str, tol: float | None) -> Tensor:
    # ``muonflow.optim.regularized_polar``, looked up at call time: the one name to patch to
    # observe (count, time) the optimizer's map calls.
    fn: Callable[..., Tensor] = sys.modules[__package__].regularized_polar
    return fn(G, eps, method=method, tol=tol)


def orthogonalize(
    X: Tensor,
    *,
    potential: str = DEFAULTS.potential,
    eps: float = DEFAULTS.eps,
    eps_mode: str = DEFAULTS.eps_mode,
    tol: float | None = DEFAULTS.tol,
    method: str = DEFAULTS.method,
) -> Tensor:
    r"""The map of the update, :math:`\nabla K_{\varepsilon_i}(X_i)` for every matrix of a stack.

    ``X: [B, m, n]`` (any leading dims). ``eps_mode="absolute"``:
    :math:`\varepsilon_i = \varepsilon`; ``"relative"``:
    :math:`\varepsilon_i = \varepsilon\,\|X_i\|_F/\sqrt{\min(m,n)}` (``eps`` times the RMS
    singular value of each matrix, so the map is invariant under :math:`X_i \to c X_i`).
    ``nuclear`` is the exact polar factor (SVD), ``quadratic`` the identity (returns ``X``).
    """
    if potential == "quadratic":
        return X
    if potential == "nuclear":
        return polar(X)
    if eps_mode == "relative":
        work = torch.float64 if X.dtype == torch.float64 else torch.float32
        rms = torch.linalg.vector_norm(X, dim=(-2, -1), dtype=work) / math.sqrt(min(X.shape[-2:]))
        # A zero matrix maps to zero for every ε > 0; any positive value keeps ε valid there.
        e_rel = eps * rms
        e: float | Tensor = torch.where(e_rel > 0, e_rel, torch.full_like(rms, eps))
    else:
        e = eps
    if potential == "relativistic":
        return _regularized_polar(X, e, method=method, tol=tol)
    if potential == "huber":
        return Huber(e).grad(X, method=method, tol=tol)
    raise ValueError(f"unknown potential {potential!r}")  # pragma: no cover - validated


# -- RegMuon ---------------------------------------------------------------------------------------
def _segments(counts: Sequence[int], a: int, b: int) -> list[tuple[int, int, int, int, int]]:
    """Pieces of the rows ``[a, b)`` of a stack split by ``counts``.

    Returns ``(i, lo, hi, clo, chi)``: rows ``lo:hi`` of piece ``i`` are rows ``clo:chi`` of the
    chunk.
    """
    out = []
    start = 0
    for i, k in enumerate(counts):
        end = start + k
        lo, hi = max(a, start), min(b, end)
        if lo < hi:
            out.append((i, lo - start, hi - start, lo - a, hi - a))
        start = end
    return out


def _as_stack(bufs: Sequence[Tensor], total: int, m: int, n: int) -> Tensor | None:
    """``[total, m, n]`` view of ``bufs`` if they are consecutive contiguous pieces of one storage.

    That is how :class:`~muonflow.optim.RegMuon` stores the momentum of a stack (its state
    buffers are views of one packed tensor); then the kernel updates the stack in place, no copy.
    """
    first = bufs[0]
    ptr = first.untyped_storage().data_ptr()
    offset = first.storage_offset()
    for b in bufs:
        if (
            not b.is_contiguous()
            or b.storage_offset() != offset
            or b.untyped_storage().data_ptr() != ptr
        ):
            return None
        offset += b.numel()
    return first.as_strided((total, m, n), (m * n, n, 1), first.storage_offset())


def _regmuon_stack(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    bufs: Sequence[Tensor],
    counts: Sequence[int],
    m: int,
    n: int,
    *,
    lr: float,
    momentum: float,
    momentum_form: str,
    nesterov: bool,
    weight_decay: float,
    lr_ratio: float,
    chunk: int | None,
    map_fn: Callable[[Tensor], Tensor],
    dlayout: Any = None,
    map_options: dict[str, Any] | None = None,
) -> None:
    """One stack of same-shape matrices (parameter ``i`` holds ``counts[i]`` of them).

    ``dlayout``: the :class:`muonflow.distributed.MatrixLayout` of DTensor parameters; the
    elementwise work is then done on the local shards and the map is that of the full matrices
    (:func:`muonflow.distributed.map_sharded`, with ``map_options`` = ``map_fn``'s options).
    """
    mapper = map_fn
    if dlayout is not None:  # DTensors: their local shards, seen as [k_local, rows, cols]
        params, grads, bufs = ([dlayout.local(t) for t in ts] for ts in (params, grads, bufs))
        k_mn = [dlayout.local_shape(p) for p in params]
        counts, (m, n) = [k for k, _, _ in k_mn], k_mn[0][1:]
        mapper = functools.partial(dlayout.map, map_fn=map_fn, **(map_options or {}))
        if chunk is not None:  # each rank maps about chunk / world whole matrices
            chunk *= dlayout.world
    total = sum(counts)
    mats, copies = [], []
    for p, k in zip(params, counts, strict=True):
        try:
            mats.append(p.view(k, m, n))
        except RuntimeError:  # non-viewable strides: update a copy and write it back
            mats.append(p.reshape(k, m, n).clone())
            copies.append((p, mats[-1]))
    gs = [g.reshape(k, m, n) for g, k in zip(grads, counts, strict=True)]
    M = _as_stack(bufs, total, m, n)
    packed = M is not None
    if M is None:  # separate buffers: work on a stacked copy and write it back at the end
        M = torch.cat([b.reshape(k, m, n) for b, k in zip(bufs, counts, strict=True)])
    pieces = list(M.split(list(counts)))
    beta = momentum
    if momentum_form == "sum":
        torch._foreach_mul_(pieces, beta)  # M = βM
        torch._foreach_add_(pieces, gs)  # M = βM + g
    else:
        torch._foreach_lerp_(pieces, gs, 1 - beta)  # M = βM + (1-β)g
    if weight_decay != 0:
        torch._foreach_mul_(mats, 1 - lr * weight_decay)  # W = (1-ηλ)W (decoupled)
    rows = total if chunk is None else max(1, chunk)
    for a in range(0, total, rows):  # one batched map per chunk; the chunks split the stack
        b = min(total, a + rows)
        segs = _segments(counts, a, b)
        if nesterov:
            X = M[a:b] * beta  # X = βM
            xs = [X[c0:c1] for _, _, _, c0, c1 in segs]
            g_pieces = [gs[i][lo:hi] for i, lo, hi, _, _ in segs]
            alpha = 1.0 if momentum_form == "sum" else 1 - beta
            torch._foreach_add_(xs, g_pieces, alpha=alpha)  # X = βM + g  (or (1-β)g)
        else:
            X = M[a:b]
        D = mapper(X)  # D = ∇K(X)
        torch._foreach_add_(
            [mats[i][lo:hi] for i, lo, hi, _, _ in segs],
            [D[c0:c1] for _, _, _, c0, c1 in segs],
            alpha=-lr * lr_ratio,
        )  # W = W - ηρ ∇K(X)
    if not packed:
        for buf, piece in zip(bufs, pieces, strict=True):
            buf.copy_(piece.view(buf.shape))
    for p, mat in copies:
        p.copy_(mat.view(p.shape))


def regmuon(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: Sequence[Tensor],
    *,
    lr: float = DEFAULTS.lr,
    momentum: float = DEFAULTS.momentum,
    eps: float = DEFAULTS.eps,
    eps_mode: str = DEFAULTS.eps_mode,
    potential: str = DEFAULTS.potential,
    momentum_form: str = DEFAULTS.momentum_form,
    nesterov: bool = DEFAULTS.nesterov,
    weight_decay: float = DEFAULTS.weight_decay,
    adjust_lr: str = DEFAULTS.adjust_lr,
    tol: float | None = DEFAULTS.tol,
    method: str = DEFAULTS.method,
    layout: str | Sequence[str] = DEFAULTS.layout,
    matrix_view: str | Sequence[str] = DEFAULTS.matrix_view,
    max_batch_bytes: int | str | None = DEFAULTS.max_batch_bytes,
    workspace_cap: int | None = None,
    map_fn: Callable[[Tensor], Tensor] | None = None,
    check_finite: bool = True,
) -> None:
    r"""Functional RegMuon: update ``params`` and ``momentum_buffers`` in place.

    For each parameter, seen as matrices by ``matrix_view`` (:func:`matrix_shape`), with
    gradient :math:`g` and momentum :math:`M`:

    .. math::
        \begin{aligned}
        &M \leftarrow \beta M + g \quad\text{(sum)} \qquad\text{or}\qquad
         M \leftarrow \beta M + (1-\beta) g \quad\text{(ema)} \\
        &X = \begin{cases} g + \beta M & \text{nesterov, sum} \\
                          (1-\beta) g + \beta M & \text{nesterov, ema} \\
                          M & \text{otherwise} \end{cases} \\
        &W \leftarrow (1 - \eta\lambda) W - \eta\,\rho(m, n)\, \nabla K_{\varepsilon}(X)
        \end{aligned}

    with :math:`\nabla K_\varepsilon` applied to each ``m x n`` matrix separately
    (:func:`orthogonalize`) and :math:`\rho` = :func:`lr_factor` (``adjust_lr``, ``layout``).
    Matrices of the same ``(m, n)``, dtype, device and ``ρ`` are stacked and mapped in one
    batched call, or in chunks under ``max_batch_bytes`` (the result does not depend on the
    chunks beyond round-off; a chunk never splits a matrix).

    Every input is checked before anything changes: ``grads[i]`` and ``momentum_buffers[i]``
    must have ``params[i]``'s shape, dtype and device (zeros for a fresh buffer), the views must
    fit the shapes, the options must be valid, and (``check_finite=True``) gradients and
    buffers must be finite. Parameters with no elements are left alone.

    Args:
        params, grads, momentum_buffers: one tensor per parameter (``[..., m, n]``, or a conv
            kernel with ``matrix_view="conv"``).
        lr, momentum, eps, eps_mode, potential, momentum_form, nesterov, weight_decay,
            adjust_lr, tol, method: as in :class:`~muonflow.optim.RegMuon` (same defaults).
        layout, matrix_view: one value for all parameters or one per parameter.
        max_batch_bytes: ``"auto"``, an int or ``None``, as in :class:`~muonflow.optim.RegMuon`.
        workspace_cap: with ``"auto"``, the cap on one call's workspace estimate (default
            :func:`auto_workspace_cap` of this call's matrices; the class passes its own).
        map_fn: ``X [B, m, n] -> ∇K(X)``; default :func:`orthogonalize` with these options.
            With DTensor parameters (FSDP2) the kernel works on their local shards and maps the
            full matrices through :func:`muonflow.distributed.map_sharded` (collective), whose
            Gram scheme computes ``∇K`` from these options: ``map_fn`` must agree with them.
        check_finite: raise ``ValueError`` (nothing changed) on a NaN/Inf gradient or buffer.
    """
    n_params = len(params)
    _check_lists(n_params, grads=grads, momentum_buffers=momentum_buffers)
    views = _per_param(matrix_view, n_params, "matrix_view")
    layouts = _per_param(layout, n_params, "layout")
    validate_regmuon_options(
        lr=lr, momentum=momentum, eps=eps, eps_mode=eps_mode, potential=potential,
        momentum_form=momentum_form, nesterov=nesterov, weight_decay=weight_decay,
        adjust_lr=adjust_lr, tol=tol, method=method,
    )  # fmt: skip
    check_max_batch_bytes(max_batch_bytes)
    if len({id(p) for p in params}) != n_params:
        raise ValueError("params lists the same tensor twice")
    shapes = []
    for i in range(n_params):
        _check_like(i, params[i], {"grads": grads[i], "momentum_buffers": momentum_buffers[i]})
        check_choice(layouts[i], "layout", LAYOUTS)
        shapes.append(matrix_shape(params[i].shape, views[i]))
    live = [i for i in range(n_params) if params[i].numel()]
    if check_finite:
        bad = first_nonfinite([*grads, *momentum_buffers])
        if bad is not None:
            what = "grads" if bad < n_params else "momentum_buffers"
            raise ValueError(
                f"{what}[{bad % n_params}] has NaN or Inf entries; nothing was changed"
            )
    if map_fn is None:
        map_fn = functools.partial(
            orthogonalize, potential=potential, eps=eps, eps_mode=eps_mode, tol=tol, method=method
        )
    buckets: dict[tuple[Any, ...], list[int]] = {}
    for i in live:
        _, m, n = shapes[i]
        rho = lr_factor(m, n, layouts[i], adjust_lr)
        dl = dtensor_layout(params[i], views[i])  # DTensors: how the matrices lie on the ranks
        buckets.setdefault((m, n, params[i].dtype, params[i].device, rho, dl), []).append(i)
    if max_batch_bytes == "auto" and workspace_cap is None:
        workspace_cap = auto_workspace_cap(shapes[i][1:] for i in live)
    map_options = {"potential": potential, "eps": eps, "eps_mode": eps_mode, "tol": tol,
                   "method": method}  # fmt: skip
    for (m, n, dtype, _, rho, dl), idx in buckets.items():
        counts = [shapes[i][0] for i in idx]
        _regmuon_stack(
            [params[i] for i in idx],
            [grads[i] for i in idx],
            [momentum_buffers[i] for i in idx],
            counts,
            m,
            n,
            lr=lr,
            momentum=momentum,
            momentum_form=momentum_form,
            nesterov=nesterov,
            weight_decay=weight_decay,
            lr_ratio=rho,
            chunk=chunk_rows(sum(counts), m, n, dtype.itemsize, max_batch_bytes, workspace_cap),
            map_fn=map_fn,
            dlayout=dl,
            map_options=map_options,
        )


# -- AdamW ----------------------------------------------------------------------------------------
def adamw(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[int],
    *,
    lr: float = DEFAULTS.adamw_lr,
    betas: tuple[float, float] = DEFAULTS.adamw_betas,
    eps: float = DEFAULTS.adamw_eps,
    weight_decay: float = DEFAULTS.weight_decay,
) -> None:
    r"""Functional AdamW (decoupled weight decay), the same arithmetic as ``torch.optim.AdamW``.

    .. math::
        \begin{aligned}
        &W \leftarrow (1 - \eta\lambda) W, \quad m \leftarrow \beta_1 m + (1-\beta_1) g, \quad
         v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
        &W \leftarrow W - \frac{\eta}{1-\beta_1^t}
         \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}
        \end{aligned}

    ``steps[i]`` is ``t`` of parameter ``i`` (already incremented for this step, ``>= 1``).
    Every input is checked before anything changes (shapes, dtypes, devices, ``t``); the
    caller checks finiteness. Parameters with no elements are left alone.
    """
    n_params = len(params)
    _check_lists(n_params, grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs, steps=steps)
    validate_adamw_options(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    for i in range(n_params):
        _check_like(
            i,
            params[i],
            {"grads": grads[i], "exp_avgs": exp_avgs[i], "exp_avg_sqs": exp_avg_sqs[i]},
        )
        t = steps[i]
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ValueError(f"steps[{i}] must be an int >= 1, got {t!r}")
    live = [i for i in range(n_params) if params[i].numel()]
    if not live:
        return
    ps = [params[i] for i in live]
    gs = [grads[i] for i in live]
    ms = [exp_avgs[i] for i in live]
    vs = [exp_avg_sqs[i] for i in live]
    beta1, beta2 = betas
    if weight_decay != 0:
        torch._foreach_mul_(ps, 1 - lr * weight_decay)
    torch._foreach_lerp_(ms, gs, 1 - beta1)
    torch._foreach_mul_(vs, beta2)
    torch._foreach_addcmul_(vs, gs, gs, 1 - beta2)
    step_size = [-lr / (1 - beta1 ** steps[i]) for i in live]
    bias2_sqrt = [(1 - beta2 ** steps[i]) ** 0.5 for i in live]
    denom = torch._foreach_sqrt(vs)
    torch._foreach_div_(denom, bias2_sqrt)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(ps, ms, denom, step_size)
