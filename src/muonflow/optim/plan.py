r"""The bucket plan: how a group's parameters are seen as matrices, stacked and mapped.

A parameter is seen as a stack of ``m x n`` matrices by its *matrix view*
(:func:`matrix_shape`) and gets the shape factor :math:`\rho(m, n)` of ``adjust_lr``
(:func:`lr_factor`). Matrices of one group with the same ``(m, n)``, dtype, device, :math:`\rho`
and DTensor layout form a :class:`Bucket` (the key of microsoft/dion's bucketing): one batched
map call per bucket, or a few chunks under the workspace rule (:func:`chunk_rows`). The plan is
built once per step and read by the kernel, the kinetic energy and the DTensor path; the
optimizer keeps each bucket's momentum in one stacked tensor (:class:`MomentumStacks`).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["ADJUST_LR", "MATRIX_VIEWS", "Bucket", "build_plan", "lr_factor", "matrix_shape"]

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

#: How a parameter is seen as matrices (:func:`matrix_shape`); ``"split:K"`` (e.g. ``"split:3"``
#: for a packed q/k/v projection) is accepted too.
MATRIX_VIEWS = ("auto", "conv", "batch")
_SPLIT = re.compile(r"split:([1-9][0-9]*)")


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
    ``"auto"``: 2-D and 3-D tensors are batches, 4-D+ tensors conv kernels. ``Conv1d`` weights
    ``[out, in, k]`` need ``"conv"`` (``RegMuon(model)`` knows it from the module type).
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


def relative_eps(fro: Tensor, r: int, eps: float) -> Tensor:
    r"""Relative ε of matrices with Frobenius norms ``fro``: :math:`\varepsilon\|X\|_F/\sqrt r`,
    ``eps`` times the RMS singular value (``r = min(m, n)``). A zero matrix maps to zero at
    every ε > 0; it gets ``eps`` itself (as does any matrix whose product underflows)."""
    e = eps * (fro / math.sqrt(r))
    return torch.where(e > 0, e, torch.full_like(e, eps))


# -- the workspace rule --------------------------------------------------------------------------
#: ``max_batch_bytes="auto"``: a map call may use the workspace of mapping the largest matrix
#: alone (what any per-matrix method pays anyway), or this many bytes if more. The fixed cost
#: of a call (~1 ms on a CPU core) is 40% of a 256² map at tol 0.1: at the former floor of
#: 1 MiB, 24 such matrices went one per call and a step on 24 x 256² + 8 x 512x128 took 1.4x
#: its time at 32 MiB (``benchmarks/bench_fast_map.py``'s step), which maps them 6 at a time.
#: Large models are unaffected: there the largest matrix's own workspace exceeds it.
AUTO_WORKSPACE_FLOOR = 32 * 2**20
#: Workspace of one map call on an ``m x n`` matrix, ``r = min(m, n)``: about
#: ``MAP_WORKSPACE_MN · m·n + MAP_WORKSPACE_RR · r²`` float64 numbers, fitted as an upper bound
#: of the measured peak of live temporaries over square, tall and wide shapes, float32/float64
#: inputs and every path (the largest measured peak is 0.95 of it; LAPACK's own not counted).
MAP_WORKSPACE_MN = 3
MAP_WORKSPACE_RR = 7  # see MAP_WORKSPACE_MN


def map_workspace_bytes(m: int, n: int) -> int:
    """Estimated peak bytes of the temporaries of one map call, per ``m x n`` matrix: float64
    copies of the matrix and its Gram matrix plus 32 per-matrix float64 scalars."""
    r = min(m, n)
    return 8 * (MAP_WORKSPACE_MN * m * n + MAP_WORKSPACE_RR * r * r + 32)


def auto_workspace_cap(shapes: Iterable[tuple[int, int]]) -> int:
    """``max_batch_bytes="auto"``'s cap: ``max(AUTO_WORKSPACE_FLOOR, max map_workspace_bytes)``."""
    return max([AUTO_WORKSPACE_FLOOR, *(map_workspace_bytes(m, n) for m, n in shapes)])


def chunk_rows(
    count: int, m: int, n: int, itemsize: int, max_batch_bytes: int | str | None, cap: int | None
) -> int | None:
    """Matrices per map call for a stack of ``count`` ``m x n`` matrices (``None``: all).

    ``"auto"``: all while ``count · map_workspace_bytes(m, n) <= cap``, else chunks of
    ``max(1, cap // map_workspace_bytes(m, n))``; an int: ``max(1, max_batch_bytes //
    (m·n·itemsize))`` (a cap on one map input's bytes); ``None``: all.
    """
    if max_batch_bytes == "auto":
        per = map_workspace_bytes(m, n)
        assert cap is not None
        return None if count * per <= cap else max(1, cap // per)
    if max_batch_bytes is None:
        return None
    assert isinstance(max_batch_bytes, int)
    return max(1, max_batch_bytes // (m * n * itemsize))


# -- the plan ------------------------------------------------------------------------------------
_DTENSOR: list[type] = []  # DTensor's class, once torch.distributed.tensor is imported


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a DTensor (imports nothing unless DTensors can exist; called per tensor
    per step, so the class is looked up once)."""
    if not _DTENSOR:
        if "torch.distributed.tensor" not in sys.modules:
            return False
        from torch.distributed.tensor import DTensor

        _DTENSOR.append(DTensor)
    return isinstance(t, _DTENSOR[0])


def local(t: Any) -> Tensor:
    """The local shard of a DTensor (a view), or ``t``."""
    return t.to_local() if is_dtensor(t) else t


@dataclass(frozen=True)
class Bucket:
    """Matrices of one group mapped together: member ``members[i]`` (an index into the group's
    parameter list) holds ``counts[i]`` matrices ``m x n`` (of its local shard, for DTensors,
    whose :class:`~muonflow.optim.dtensor.MatrixLayout` is ``layout``); factor ``rho``; at
    most ``chunk`` matrices per map call (``None``: all)."""

    members: tuple[int, ...]
    counts: tuple[int, ...]
    m: int
    n: int
    rho: float
    layout: Any = None
    chunk: int | None = None

    @property
    def total(self) -> int:
        return sum(self.counts)

    def mats(self, ts: Sequence[Any]) -> tuple[list[Tensor], list[tuple[Tensor, Tensor]]]:
        """``[k_i, m, n]`` views of the members' tensors ``ts`` (local shards for DTensors),
        and the ``(tensor, copy)`` pairs of those whose strides allow no view (copied: write
        the copy back after changing it)."""
        out, copies = [], []
        for t, k in zip((local(t) for t in ts), self.counts, strict=True):
            try:
                out.append(t.view(k, self.m, self.n))
            except RuntimeError:  # non-viewable strides
                out.append(t.reshape(k, self.m, self.n).clone())
                copies.append((t, out[-1]))
        return out, copies

    def rows(self, ts: Sequence[Tensor], a: int, b: int) -> list[Tensor]:
        """The pieces of the members' ``[k_i, ...]`` tensors ``ts`` that hold rows ``[a, b)`` of
        the bucket's stack, in order."""
        out, start = [], 0
        for t, k in zip(ts, self.counts, strict=True):
            lo, hi = max(a, start), min(b, start + k)
            if lo < hi:
                out.append(t[lo - start : hi - start])
            start += k
        return out

    def chunks(self) -> list[tuple[int, int]]:
        step = self.total if self.chunk is None else self.chunk
        return [(a, min(self.total, a + step)) for a in range(0, self.total, step)]


def build_plan(
    params: Sequence[Tensor],
    specs: Sequence[tuple[str, str]],
    adjust_lr: str,
    max_batch_bytes: int | str | None,
    cap: int | None,
    rhos: Sequence[float | None] | None = None,
) -> list[Bucket]:
    """The buckets of ``params`` (each seen by its ``(matrix view, layout)`` of ``specs``),
    keyed by ``(m, n, dtype, device, ρ, DTensor layout)``, in first-member order. Parameters
    without elements are left out. ``cap``: the ``"auto"`` workspace cap
    (default: :func:`auto_workspace_cap` of these matrices). ``rhos``: per parameter, a ρ
    that replaces ``adjust_lr``'s (``None``: ``adjust_lr``'s)."""
    keys: dict[tuple[Any, ...], list[tuple[int, int, tuple[int, int, int]]]] = {}
    for i, (p, (view, layout)) in enumerate(zip(params, specs, strict=True)):
        if not p.numel():
            continue
        dl = None
        if is_dtensor(p):  # how its matrices lie over the ranks
            from .dtensor import matrix_layout

            dl = matrix_layout(p, view)
        k, m, n = matrix_shape(p.shape, view)
        shard = (k, m, n) if dl is None else dl.local_shape(local(p))
        rho = rhos[i] if rhos is not None and rhos[i] is not None else None
        rho = lr_factor(m, n, layout, adjust_lr) if rho is None else rho
        keys.setdefault((m, n, p.dtype, p.device, rho, dl), []).append((i, k, shard))
    if max_batch_bytes == "auto" and cap is None:
        cap = auto_workspace_cap(key[:2] for key in keys)
    out = []
    for (m, n, dtype, _, rho, dl), ms in keys.items():
        chunk = chunk_rows(sum(k for _, k, _ in ms), m, n, dtype.itemsize, max_batch_bytes, cap)
        if chunk is not None and dl is not None:  # each rank maps about chunk / world
            chunk *= dl.world
        _, lm, ln = ms[0][2]
        out.append(Bucket(tuple(i for i, _, _ in ms), tuple(s[0] for _, _, s in ms), lm, ln,
                          rho, dl, chunk))  # fmt: skip
    return out


class MomentumStacks:
    """The optimizer's momentum storage: per bucket one stacked tensor ``[total, m, n]``, the
    members' ``state["momentum_buffer"]`` being views of it (DTensors wrapping views of the
    local stack), so the kernel reads a bucket's momentum without a copy.

    Reused while the members and their buffers are unchanged; otherwise (first step, after
    ``load_state_dict``, a member without gradient, a buffer replaced from outside) repacked,
    copying the existing buffers, so values never change.
    """

    def __init__(self) -> None:
        self._stacks: dict[tuple[Any, ...], tuple[tuple[Tensor, ...], Tensor, tuple[Any, ...]]]
        self._stacks = {}

    def stack(self, key: tuple[Any, ...], state: Any, params: Sequence[Any], b: Bucket,
              dtype: torch.dtype) -> tuple[Tensor, list[Tensor], Callable[[], None] | None]:
        """``(stack, member pieces [k_i, m, n], install)`` for ``params`` (``b``'s members),
        in ``dtype``.

        ``install`` is ``None`` when the cached stack is current; otherwise the new stack holds
        copies of the members' buffers (zeros where none) and ``install()`` makes the state's
        buffers views of it: call it at the commit, so that nothing changes before.
        """
        cached = self._stacks.get(key)
        if cached is not None:
            c_params, stacked, views = cached
            if len(c_params) == len(params) and all(
                a is p and state[a].get("momentum_buffer") is v
                for a, p, v in zip(c_params, params, views, strict=True)
            ):
                return stacked, list(stacked.split(list(b.counts))), None
        stacked = torch.zeros(b.total, b.m, b.n, dtype=dtype, device=local(params[0]).device)
        pieces = list(stacked.split(list(b.counts)))
        for p, piece in zip(params, pieces, strict=True):
            old = state[p].get("momentum_buffer") if p in state else None
            if old is not None:
                piece.copy_(local(old).reshape(piece.shape))

        def install() -> None:
            views = []
            for p, piece in zip(params, pieces, strict=True):
                view = piece.view(p.shape) if b.layout is None else b.layout.wrap(piece, p)
                state[p]["momentum_buffer"] = view
                views.append(view)
            if cached is not None:  # members that left: give them their own storage back
                keep = {id(p) for p in params}
                for p in cached[0]:
                    if id(p) not in keep and "momentum_buffer" in state[p]:
                        state[p]["momentum_buffer"] = state[p]["momentum_buffer"].clone()
            self._stacks[key] = (tuple(params), stacked, tuple(views))

        return stacked, pieces, install
