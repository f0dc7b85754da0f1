r"""RegMuon on DTensor parameters (FSDP2 ``fully_shard``, HSDP): full-matrix maps from shards.

The map of a shard is not the shard of the map: :math:`\nabla K_\varepsilon` must see whole
matrices. A parameter placed ``Shard(d)`` on one mesh dimension (any other ``Replicate``) is seen
through its matrix view ``[k, m, n]`` as a :class:`MatrixLayout`: ``"local"`` (whole matrices on
each rank: experts split by expert, or replicated), or ``"rows"``/``"cols"`` (every matrix cut
into the row or column blocks of ``torch.chunk``, :func:`shard_sizes`). Two exact schemes map a
stack of cut matrices (:func:`map_sharded`):

- **gather** (microsoft/dion's design): matrix ``j`` is owned by rank ``(o + j) mod W`` (the
  offset ``o`` advancing with every call); an all-to-all sends each block to its owner, the
  owner maps whole matrices in one batched call, a second all-to-all returns the result blocks;
- **gram** (a tall matrix cut along its long side, potentials with a Gram form): with
  :math:`X = [X_1; \dots; X_W]`, :math:`\Phi(X)_q = X_q (\sum_p X_p^\top X_p +
  \varepsilon^2 I)^{-1/2}`: the float64 local Grams are reduce-scattered to owners, which
  compute the inverse square roots (:func:`muonflow.polar.inv_sqrt_from_gram`), all-gathered
  back; matrices the Gram path cannot do are gathered.

``scheme="auto"`` (:func:`choose_scheme`) takes the one that sends fewer bytes (exact counts:
:func:`scheme_bytes`). Momentum buffers are DTensors placed as the parameters, views of one local
stack per bucket, so optimizer memory per rank is about ``1/W`` and
``torch.distributed.checkpoint`` reshards them like parameters. Not supported (a clear error at
the first step): sharding on two mesh dimensions, ``_StridedShard``/``Partial`` placements, a
conv kernel sharded past its input channels. Design notes and measured costs:
``docs/distributed.md``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .._collective import DistributedError, collective
from .options import RegMuonOptions
from .plan import relative_eps

__all__ = [
    "SCHEMES",
    "MatrixLayout",
    "agree",
    "agree_on",
    "choose_scheme",
    "comm_stats",
    "map_sharded",
    "matrix_layout",
    "reset_comm_stats",
    "scheme",
    "scheme_bytes",
    "shard_sizes",
]

#: ``"auto"`` (fewer bytes, :func:`choose_scheme`), ``"gather"`` or ``"gram"`` (where it
#: applies; elsewhere gather).
SCHEMES = ("auto", "gather", "gram")
_SCHEME = ["auto"]



@contextlib.contextmanager
def scheme(name: str) -> Iterator[None]:
    """Force the scheme of :func:`map_sharded` inside a ``with`` block (benchmarks, tests).

    Every rank must use the same scheme (it decides which collectives run).
    """
    if name not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {name!r}")
    old = _SCHEME[0]
    _SCHEME[0] = name
    try:
        yield
    finally:
        _SCHEME[0] = old


# -- communication accounting ----------------------------------------------------------------------
_STATS: dict[str, float] = {}


def _count(kind: str, nbytes: float) -> None:
    _STATS[kind + "_calls"] = _STATS.get(kind + "_calls", 0) + 1
    _STATS[kind + "_bytes"] = _STATS.get(kind + "_bytes", 0) + nbytes


def comm_stats() -> dict[str, float]:
    """Calls and bytes **sent by this rank** per collective kind since :func:`reset_comm_stats`.

    Counted from the collectives :func:`map_sharded` issues: all-to-all, the bytes to other
    ranks; reduce-scatter and all-gather, ``(W-1)/W`` of the full buffer (a ring: what each
    rank sends); the non-finite agreement's all-reduce, ``2(W-1)/W`` of its flags.
    ``minimum_bytes``: the least each rank must send, on average, for the schemes chosen:
    gather, the blocks of each matrix not on the rank holding its largest block, there and
    back; Gram, a ring all-reduce of the ``r(r+1)/2`` float64 Gram entries.
    """
    return dict(_STATS)


def reset_comm_stats() -> None:
    """Zero the counters of :func:`comm_stats`."""
    _STATS.clear()


# -- layouts ---------------------------------------------------------------------------------------
def shard_sizes(size: int, world: int) -> tuple[int, ...]:
    """Sizes of ``Shard`` blocks of a dimension of ``size`` over ``world`` ranks.

    ``torch.chunk`` semantics (DTensor and FSDP2): ``ceil(size/world)`` per rank while it
    lasts, so the last ranks may hold fewer, or none (``size=5, world=4``: 2, 2, 1, 0).
    """
    full = -(-size // world)
    return tuple(max(0, min(full, size - q * full)) for q in range(world))


@dataclass(frozen=True)
class MatrixLayout:
    """How the matrices ``[k, m, n]`` of a DTensor parameter lie over the ranks.

    ``kind``: ``"local"`` (whole matrices on each rank), ``"rows"`` or ``"cols"`` (each matrix
    cut into blocks of ``splits[q]`` rows/columns on rank ``q`` of ``group``, size ``world``).
    ``conv``: the matrix view of a conv kernel ``[out, *rest]`` (one ``out x prod(rest)``
    matrix). Equal layouts (same kind, group and blocks) stack into one bucket.
    """

    kind: str
    m: int
    n: int
    conv: bool = False
    splits: tuple[int, ...] = ()
    rank: int = 0
    group: Any = field(default=None, repr=False)

    @property
    def world(self) -> int:
        return len(self.splits) if self.splits else 1

    def local_shape(self, local: Tensor) -> tuple[int, int, int]:
        """``(k_local, rows, cols)`` of the local shard ``local`` seen as matrices."""
        if self.conv:
            return 1, local.shape[0], math.prod(local.shape[1:])
        return math.prod(local.shape[:-2]), local.shape[-2], local.shape[-1]

    def wrap(self, local: Tensor, like: Any) -> Any:
        """A DTensor with ``like``'s mesh, placements and shape whose local shard is ``local``
        (a view: no copy), e.g. a momentum buffer in the optimizer's stacked storage."""
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(
            local.view(like.to_local().shape), like.device_mesh, like.placements,
            shape=like.shape, stride=like.stride(), run_check=False,
        )  # fmt: skip

    @staticmethod
    def local(t: Any) -> Tensor:
        """The local shard of DTensor ``t`` (a view: updating it updates ``t``)."""
        return t.to_local()

    def map(self, X: Tensor, map_fn: Callable[[Tensor], Tensor], options: RegMuonOptions) -> Tensor:
        """:func:`map_sharded` of ``X`` under this layout."""
        return map_sharded(X, self, map_fn, options)


def matrix_layout(p: Any, view: str = "auto") -> MatrixLayout:
    """The :class:`MatrixLayout` of DTensor ``p`` under the matrix view ``view``.

    ``view`` as in :func:`muonflow.optim.matrix_shape` (``"auto"``: conv kernels for 4-D and
    more). Raises ``NotImplementedError`` naming the placements for unsupported layouts.
    """
    from torch.distributed.tensor import Replicate, Shard

    shape = tuple(p.shape)
    ndim = len(shape)
    conv = view == "conv" or (view == "auto" and ndim >= 4)
    m, n = (shape[0], math.prod(shape[1:])) if conv else (shape[-2], shape[-1])
    placements = tuple(p.placements)
    mesh = p.device_mesh
    # mesh dimensions of size 1 (e.g. a 1 x W HSDP mesh) split nothing
    shards = [(i, pl) for i, pl in enumerate(placements)
              if not isinstance(pl, Replicate) and mesh.size(i) > 1]  # fmt: skip
    what = f"a parameter of shape {shape} placed {placements} on a mesh {tuple(mesh.shape)}"
    if not shards:
        return MatrixLayout("local", m, n, conv)
    if len(shards) > 1:
        raise NotImplementedError(
            f"RegMuon maps full matrices of DTensors sharded on one mesh dimension; {what} is "
            "sharded on several (e.g. FSDP2 + tensor parallel). Shard it on one mesh dimension "
            "(FSDP2, HSDP) or use DDP."
        )
    mesh_dim, pl = shards[0]
    if type(pl) is not Shard:  # Partial, _StridedShard, ...
        raise NotImplementedError(f"RegMuon does not support the placement {pl!r} of {what}")
    d = pl.dim % ndim
    world = mesh.size(mesh_dim)
    group = mesh.get_group(mesh_dim)
    rank = mesh.get_local_rank(mesh_dim)
    if conv:
        if d >= 2:
            raise NotImplementedError(
                f"{what}: a conv kernel sharded along dimension {d} cuts its matrix "
                f"[{shape[0]}, {math.prod(shape[1:])}] into strided columns; shard dimension 0 "
                "or 1"
            )
        kind = "rows" if d == 0 else "cols"
        unit = 1 if d == 0 else math.prod(shape[2:])
    else:
        if d < ndim - 2:
            return MatrixLayout("local", m, n, conv)  # whole matrices (experts) per rank
        kind = "rows" if d == ndim - 2 else "cols"
        unit = 1
    splits = tuple(s * unit for s in shard_sizes(shape[d], world))
    got = p.to_local().shape[d] * unit
    if got != splits[rank]:
        raise NotImplementedError(
            f"{what}: the local shard has {got} {kind} on mesh coordinate {rank}, not "
            f"{splits[rank]} as torch.chunk would give; this sharding is not supported"
        )
    if world > 1 and dist.get_rank(group) != rank:  # pragma: no cover - a DeviceMesh invariant
        raise DistributedError(f"{what}: the mesh group's rank order is not the mesh order")
    return MatrixLayout(kind, m, n, conv, splits, rank, group)


# -- the scheme ------------------------------------------------------------------------------------
def scheme_bytes(layout: MatrixLayout, count: int, itemsize: int) -> dict[str, float]:
    """Bytes each rank sends, on average, to map ``count`` matrices of ``layout`` per scheme.

    ``gather``: :math:`2\\,c\\,mn\\,s\\,(W-1)/W^2` (two all-to-alls, each moving the blocks
    not already on their destination; ``s = itemsize``); ``gram``:
    :math:`2\\,c_W\\,(r(r+1)/2+1)\\cdot 8\\,(W-1)/W` (reduce-scatter + all-gather of packed
    float64 ``r x r`` matrices and one flag each, ``c_W = W·ceil(c/W)``).
    Exact per-rank figures, uneven shards included, are in :func:`comm_stats`.
    """
    W, m, n = layout.world, layout.m, layout.n
    r = min(m, n)
    c_pad = W * -(-count // W)
    return {
        "gather": 2 * count * m * n * itemsize * (W - 1) / W**2,
        "gram": 2 * c_pad * (r * (r + 1) // 2 + 1) * 8 * (W - 1) / W,
    }


def _gram_applies(layout: MatrixLayout, options: RegMuonOptions) -> bool:
    tall_rows = layout.kind == "rows" and layout.m >= layout.n
    wide_cols = layout.kind == "cols" and layout.n >= layout.m
    return options.method in options.kinetic.gram_methods and (tall_rows or wide_cols)


def choose_scheme(layout: MatrixLayout, count: int, itemsize: int, options: RegMuonOptions) -> str:
    """``"gram"`` or ``"gather"`` for ``count`` matrices of ``layout``: where the Gram scheme
    applies, the one of fewer bytes by :func:`scheme_bytes` (see the module docstring)."""
    if not _gram_applies(layout, options) or _SCHEME[0] == "gather":
        return "gather"
    if _SCHEME[0] == "gram":
        return "gram"
    b = scheme_bytes(layout, count, itemsize)
    return "gram" if b["gram"] < b["gather"] else "gather"


_OFFSETS: dict[int, int] = {}


def _owner_offset(layout: MatrixLayout, count: int) -> int:
    """Round-robin start for this call; advances by ``count`` (the same on every rank)."""
    key = id(layout.group)
    off = _OFFSETS.get(key, 0)
    _OFFSETS[key] = (off + count) % layout.world
    return off


def map_sharded(
    X: Tensor, layout: MatrixLayout | None, map_fn: Callable[[Tensor], Tensor],
    options: RegMuonOptions,
) -> Tensor:  # fmt: skip
    r"""The local shards of the map of full matrices, from local shards.

    ``X: [c, a, b]``: this rank's blocks of ``c`` matrices laid out as ``layout`` says (``c``
    equal on every rank of a cut layout); ``map_fn``: the single-process map of a stack of full
    matrices (e.g. :func:`~muonflow.optim.mirror_map` with ``options``); ``options`` decide
    whether the Gram scheme applies and parametrize it. Returns this rank's blocks of
    ``map_fn`` of the full matrices (to round-off). Collective over ``layout.group`` for cut
    layouts; ``None``, ``"local"`` or a pointwise map: ``map_fn(X)``.
    """
    if layout is None or layout.kind == "local" or layout.world == 1 or options.kinetic.elementwise:
        return map_fn(X)  # whole matrices here, or an entrywise map
    c = X.shape[0]
    which = choose_scheme(layout, c, X.element_size(), options)
    W, m, n = layout.world, layout.m, layout.n
    if which == "gram":
        r = min(m, n)
        least = 2 * (W - 1) / W * c * r * (r + 1) / 2 * 8
    else:  # the rank with the largest block would own each matrix
        block = max(layout.splits) * (n if layout.kind == "rows" else m)
        least = 2 * c * (m * n - block) * X.element_size() / W
    _STATS["minimum_bytes"] = _STATS.get("minimum_bytes", 0) + least
    if which == "gram":
        return _gram_map(X, layout, map_fn, options)
    return _gather_map(X, layout, map_fn)


def _a2a(out: Tensor, inp: Tensor, out_splits: list[int], in_splits: list[int],
         layout: MatrixLayout, what: str) -> None:  # fmt: skip
    q = layout.rank
    _count("all_to_all", sum(s for d, s in enumerate(in_splits) if d != q) * inp.element_size())
    collective(lambda: dist.all_to_all_single(out, inp, out_splits, in_splits, group=layout.group),
               group=layout.group, what=what)  # fmt: skip


def _gather_map(X: Tensor, layout: MatrixLayout, map_fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Gather scheme: blocks to owners (all-to-all), map there, result blocks back."""
    W, q, sizes = layout.world, layout.rank, layout.splits
    c = X.shape[0]
    axis = 1 if layout.kind == "rows" else 2  # the cut axis of [c, m, n]
    other = layout.n if layout.kind == "rows" else layout.m
    starts = [sum(sizes[:d]) for d in range(W)]
    off = _owner_offset(layout, c)
    first = [(d - off) % W for d in range(W)]  # matrices of owner d: first[d], first[d] + W, …
    owned = [len(range(first[d], c, W)) for d in range(W)]
    mine = owned[q]

    def blocks(size: int, count: int) -> tuple[int, int, int]:
        return (count, size, other) if axis == 1 else (count, other, size)

    # forward: my block of every matrix to its owner
    send = torch.cat([X[first[d] :: W].reshape(-1) for d in range(W)])
    in_splits = [owned[d] * sizes[q] * other for d in range(W)]
    out_splits = [mine * sizes[s] * other for s in range(W)]
    recv = X.new_empty(sum(out_splits))
    _a2a(recv, send, out_splits, in_splits, layout, "the all-to-all of the momentum blocks")
    parts = [piece.view(blocks(sizes[s], mine))
             for s, piece in enumerate(recv.split(out_splits))]  # fmt: skip
    full = torch.cat(parts, dim=axis)  # [mine, m, n]: this rank's matrices, whole
    R = map_fn(full) if mine else full
    # backward: each rank's block of my results
    send2 = torch.cat([R.narrow(axis, starts[d], sizes[d]).reshape(-1) for d in range(W)])
    in2 = [mine * sizes[d] * other for d in range(W)]
    out2 = [owned[s] * sizes[q] * other for s in range(W)]
    recv2 = X.new_empty(sum(out2))
    _a2a(recv2, send2, out2, in2, layout, "the all-to-all of the mapped blocks")
    D = torch.empty_like(X)
    for s, piece in enumerate(recv2.split(out2)):
        if owned[s]:
            D[first[s] :: W] = piece.view(blocks(sizes[q], owned[s]))
    return D


def _rs_ag(layout: MatrixLayout) -> tuple[Callable[..., Any], Callable[..., Any]]:
    rs = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    ag = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return rs, ag


def _gram_map(
    X: Tensor, layout: MatrixLayout, map_fn: Callable[[Tensor], Tensor], o: RegMuonOptions
) -> Tensor:
    """Gram scheme: reduce-scatter the local Grams to owners, inverse square roots there,
    all-gather the factors, multiply the local rows (see the module docstring).

    The Grams are float64 (formed from the exact float64 image of the input): what
    ``polar`` promotes to whenever float32 would miss ``tol``, which for the momenta of
    training is common (stable rank below ``r/15`` at ``tol = 1e-3``, ε = 0.03 relative);
    a float32 first round would then cost 4 + 8 bytes per entry and a second round.
    Matrices the Gram path cannot do (``polar``'s a-posteriori tests) are gathered.
    """
    W, q, group = layout.world, layout.rank, layout.group
    gd, size = torch.float64, 8
    rows = layout.kind == "rows"
    Xt = X if rows else X.mT  # [c, a, r]: the cut axis is the long one
    c, r = X.shape[0], Xt.shape[-1]
    per = -(-c // W)
    iu = _triu_flat(r, X.device)  # flat indices of the upper triangle
    P = iu.numel()
    Xg = Xt.to(gd)
    G = Xg.mT @ Xg  # local Gram X_qᵀ X_q, [c, r, r]
    packed = G.new_zeros(W * per, P)
    packed[:c] = G.reshape(c, r * r).index_select(1, iu)
    off = _owner_offset(layout, -(-c // per) if c else 0)  # rotate by the blocks in use
    order = [(d - off) % W for d in range(W)]  # rank d owns block order[d] of the stack
    send = packed.view(W, per, P)[order].reshape(-1)
    mine = send.new_empty(per * P)
    rs, ag = _rs_ag(layout)
    _count("reduce_scatter", send.numel() * size * (W - 1) / W)
    collective(lambda: rs(mine, send, op=dist.ReduceOp.SUM, group=group), group=group,
               what="the reduce-scatter of the Gram matrices")  # fmt: skip
    b = order[q]
    cnt = max(0, min(per, c - b * per))  # real (unpadded) matrices in my block
    A = _unpack(mine.view(per, P)[:cnt], iu, r)  # Σ_p X_pᵀ X_p of my block
    if o.eps_mode == "relative":  # ε = eps·‖X‖_F/√r with ‖X‖_F² = tr(XᵀX)
        e = relative_eps(A.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(0).sqrt(), r, o.eps)
    else:
        e = torch.full((cnt,), float(o.eps), dtype=gd, device=X.device)
    out = send.new_zeros(per, P + 1)  # packed factors and one flag each
    if cnt:
        M, flag = _inv_sqrt_from_gram(A, e, tol=o.tol, method=o.method, dtype=X.dtype)
        out[:cnt, :P] = M.reshape(cnt, r * r).index_select(1, iu)
        out[:cnt, P] = flag
    gathered = send.new_empty(W * per, P + 1)
    _count("all_gather", gathered.numel() * size * (W - 1) / W)
    collective(lambda: ag(gathered, out, group=group), group=group,
               what="the all-gather of the inverse square roots")  # fmt: skip
    inv = [0] * W
    for d, blk in enumerate(order):
        inv[blk] = d
    full = gathered.view(W, per, P + 1)[inv].reshape(W * per, P + 1)[:c]
    Mall, flags = _unpack(full[:, :P], iu, r), full[:, P]
    Dt = torch.empty_like(Xt)
    for code, dt in ((0, torch.float32), (1, torch.float64)):
        sel = flags == code
        if bool(sel.all()):
            Dt = (Xt.to(dt) @ Mall.to(dt)).to(X.dtype)  # Φ(X)_q = X_q (XᵀX + ε²I)^{-1/2}
        elif bool(sel.any()):
            Dt[sel] = (Xt[sel].to(dt) @ Mall[sel].to(dt)).to(X.dtype)
    D = Dt if rows else Dt.mT
    bad = flags == 2
    if bool(bad.any()):  # the Gram path cannot meet tol there: gather these matrices
        D = D.clone()
        D[bad] = _gather_map(X[bad], layout, map_fn)
    return D


@functools.lru_cache(maxsize=64)
def _triu_flat_cpu(r: int) -> Tensor:
    i, j = torch.triu_indices(r, r)
    return i * r + j


def _triu_flat(r: int, device: torch.device) -> Tensor:
    """Flat indices ``i·r + j`` (``i <= j``) of the upper triangle of an ``r x r`` matrix."""
    return _triu_flat_cpu(r).to(device)


def _unpack(v: Tensor, iu: Tensor, r: int) -> Tensor:
    """Symmetric ``[B, r, r]`` from packed upper triangles ``[B, r(r+1)/2]``."""
    U = v.new_zeros(v.shape[0], r * r).index_copy_(1, iu, v).view(-1, r, r)
    return U + U.triu(1).mT  # upper triangle + its mirror below the diagonal


def _inv_sqrt_from_gram(
    A: Tensor, e: Tensor, *, tol: float | None, method: str, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    r"""The ONE adapter to :mod:`muonflow.polar`: :math:`(A + \varepsilon^2 I)^{-1/2}` from a
    precomputed float64 Gram matrix, to the accuracy ``regularized_polar(X, ε, method, tol)``
    promises for an input ``X`` of ``dtype`` whose Gram is ``A``.

    ``A: [B, r, r]`` float64 (``XᵀX``, tall orientation), ``e: [B]``. Returns ``(M, flag)``,
    ``M [B, r, r]`` float64 (:func:`muonflow.polar.inv_sqrt_from_gram`, which works in float64
    here, so forming ``A`` in float64 costs no accuracy) and per matrix ``flag`` ``0``: apply
    ``X M`` in ``dtype`` (float32, where its rounding ``½u₃₂κ²`` is within ``tol/2``, the
    rule by which ``polar`` would have run the whole map in float32); ``1``: in float64;
    ``2``: no Gram path meets ``tol`` (map the matrix whole, by SVD).
    """
    from ..polar import default_tol, gram_floor, inv_sqrt_from_gram

    want = default_tol(dtype) if tol is None else tol
    path = "eigh" if tol is None else method
    if path not in ("auto", "eigh", "poly"):  # "svd" and others: the exact path on X itself
        return A.new_zeros(A.shape), A.new_full(A.shape[:1], 2.0)
    M, ok = inv_sqrt_from_gram(A, e, tol=want, method=path, return_ok=True, validate=False)
    # κ² <= (tr A + ε²)/ε²: an upper bound of the shifted Gram's condition number
    e2 = e.square()
    kappa2 = (A.diagonal(dim1=-2, dim2=-1).sum(-1).clamp_min(0) + e2) / e2
    lo = dtype == torch.float32 and tol is not None
    flag = torch.where(lo & (gram_floor(1.0, torch.float32) * kappa2 <= want / 2), 0.0, 1.0)
    return M, torch.where(ok, flag, 2.0).to(A.dtype)


# -- agreement across ranks -----------------------------------------------------------------------
def _reduce(x: Tensor, meshes: Sequence[Any], op: Any, what: str) -> Tensor:
    """All-reduce ``x`` in place over every dimension of each mesh (one small collective per
    dimension of size > 1): the reduction over every rank of the meshes."""
    for mesh in meshes:
        for dim in range(mesh.ndim):
            group, size = mesh.get_group(dim), mesh.size(dim)
            if size > 1:
                _count("all_reduce", x.numel() * x.element_size() * 2 * (size - 1) / size)
                reduce = functools.partial(dist.all_reduce, x, op=op, group=group)
                collective(reduce, group=group, what=what)
    return x


def agree(tensors: Sequence[Any], flags: Sequence[bool]) -> list[bool]:
    """Per-tensor ``flags`` (this rank's) or'ed over the ranks of each DTensor's mesh, so that a
    NaN on one rank makes every rank raise the same error instead of one rank raising and the
    others waiting in the next collective."""
    from torch.distributed.tensor import DTensor

    device = next((t.to_local().device for t in tensors if isinstance(t, DTensor)), None)
    out = torch.tensor([float(f) for f in flags], dtype=torch.float64, device=device)
    meshes: dict[Any, list[int]] = {}
    for i, t in enumerate(tensors):
        if isinstance(t, DTensor):
            meshes.setdefault(t.device_mesh, []).append(i)
    for mesh, idx in meshes.items():
        out[idx] = _reduce(out[idx], [mesh], dist.ReduceOp.SUM,
                           "the agreement on non-finite gradients")  # fmt: skip
    return (out > 0).tolist()


def agree_on(entries: Sequence[str], meshes: Sequence[Any]) -> None:
    """Raise :class:`~muonflow._collective.DistributedError` on every rank of ``meshes`` unless
    all hold the same ``entries`` (the optimizer's fingerprint: parameter names, shapes, routing,
    options, in order), naming the first difference. The maxima of a 64-bit hash and of minus
    itself decide; the entries are gathered only on a mismatch."""
    h = int.from_bytes(hashlib.blake2b("\n".join(entries).encode(), digest_size=7).digest(),
                       "little")  # fmt: skip
    flags = _reduce(torch.tensor([h, -h], dtype=torch.int64), meshes, dist.ReduceOp.MAX,
                    "the optimizer fingerprint check")  # fmt: skip
    if int(flags[0]) == -int(flags[1]):
        return
    rank = dist.get_rank()
    for mesh in meshes:
        for dim in range(mesh.ndim):
            group, size = mesh.get_group(dim), mesh.size(dim)
            gathered: list[Any] = [None] * size
            exchange = functools.partial(dist.all_gather_object, gathered, list(entries),
                                         group=group)  # fmt: skip
            collective(exchange, group=group, what="the optimizer fingerprint exchange")
            n = max(len(x) for x in gathered)
            rows = [list(x) + ["nothing"] * (n - len(x)) for x in gathered]
            diff = next((i for i in range(n) if len({r[i] for r in rows}) > 1), None)
            if diff is not None:
                seen = "; ".join(f"rank {r} has {row[diff]}" for r, row in
                                 zip(dist.get_process_group_ranks(group), rows, strict=True))
                raise DistributedError(
                    f"rank {rank}: the optimizers differ across ranks: {seen}. Build the "
                    "optimizer the same way on every rank (the same parameters in the same "
                    "order, routing and options)."
                )
    raise DistributedError(f"rank {rank}: the optimizers differ across ranks (see the other "
                           "ranks' errors for the difference)")  # fmt: skip
