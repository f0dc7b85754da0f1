r"""Sharded particle systems over ``torch.distributed`` (gloo on CPU, NCCL on GPU).

A particle system :math:`J(\rho_N) = R(m)`, :math:`m = \frac1N \sum_i F(\theta_i)` is sharded by
particle: rank ``r`` of ``world`` holds the contiguous global indices :func:`shard_range`.
Every force evaluation costs **one all-reduce** of the partial sums

.. math::
    s_r = \Big(\sum_{i \in \mathrm{shard}(r)} F(\theta_i),\ N_r\Big), \qquad
    m = \frac1N \sum_r s_r[{:}{-1}], \qquad N = \sum_r N_r,

(the particle count rides along, so a shard layout that does not add up to ``N`` is detected on
every rank at once), after which every rank evaluates ``R(m)``, ``∇R(m)`` and the forces of its
own particles :math:`-DF(\theta_i)^\top \nabla R(m)` by one pullback. ``J`` is therefore the
global objective on every rank, and the local forces are the single-process forces.

The kinetic energy and the dissipation of the ledger are sums over particles,

.. math::
    K = \frac1N \sum_r \sum_{i \in \mathrm{shard}(r)} K(P_i), \qquad
    \mathrm{dissipated} = \sum_r \mathrm{dissipated}_r,

and no step of a fixed-step scheme feeds them back into the state, so :func:`integrate_sharded`
integrates the shard with :func:`muonflow.dynamics.integrate` (kinetic weight ``1/N`` global)
and all-reduces the recorded ``K`` and ``dissipated`` rows **once at the end** (one message of
``2T`` floats) instead of two scalars per step. ``H``, ``J`` and the final states then equal the
single-process run up to the order of floating-point summation.

Initial draws (:func:`draw_particles`) are reproducible and independent of the world size:
particles are drawn in fixed blocks of :data:`DRAW_BLOCK` global indices, block ``b`` from a
generator seeded by ``(seed, b)``, and each rank draws only the blocks it overlaps.

Failures. Collectives run under the process group's timeout (:func:`init_from_env`, default
:data:`DEFAULT_TIMEOUT_S`); a rank that raises (a non-finite state, a bad argument) leaves its
peers blocked in the next collective, which then fails (at once if the rank's process exited,
else at the timeout) with a :class:`DistributedError` that says so, on every rank: no hang.
Mismatched configurations (different ``N``, shapes, dtypes, seeds) are caught before the run by
:func:`check_same_config`, which raises the same error naming the differing ranks on every rank.

Out of scope: the adaptive ``"reference"`` integrator (SciPy DOP853 chooses its steps from the
local error norm, which would differ per rank) and packed ``systems > 1`` objectives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from ..dynamics import HamiltonianFlow, State, Trajectory, integrate
from ..meanfield import ProbabilityObjective
from ._group import DistributedError, _world, all_reduce_sum, check_same_config, collective

__all__ = [
    "DRAW_BLOCK",
    "ShardedProbabilityObjective",
    "draw_particles",
    "gather_particles",
    "integrate_sharded",
    "shard_range",
]

#: Particles per seeded block of :func:`draw_particles`; a fixed constant (not a function of the
#: world size) is what makes the draws world-size independent.
DRAW_BLOCK = 1024


# -- sharding and draws -------------------------------------------------------------------------
def shard_range(n_global: int, rank: int, world: int) -> slice:
    """The global particle indices of ``rank``: contiguous, sizes differ by at most one.

    The first ``n_global % world`` ranks hold ``n_global // world + 1`` particles.
    """
    for name, v in (("n_global", n_global), ("rank", rank), ("world", world)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {v!r}")
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need world >= 1 and 0 <= rank < world, got rank={rank}, world={world}")
    if n_global < world:
        raise ValueError(f"n_global={n_global} particles cannot be split over {world} ranks")
    base, extra = divmod(n_global, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def draw_particles(
    n_global: int,
    shape: Sequence[int],
    *,
    seed: int,
    rows: slice | None = None,
    sample: Callable[[torch.Generator, int], Tensor] | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Particles ``rows`` (default all) of a world-size independent draw of ``n_global``.

    Block ``b`` (global indices ``[b·DRAW_BLOCK, (b+1)·DRAW_BLOCK)``) is drawn from a CPU
    generator seeded by ``SeedSequence([seed, b])``, so global particle ``i`` gets the same
    value whatever the world size. ``sample(gen, count) -> [count, *shape]`` draws a block
    (default: standard normal); the result is ``[rows, *shape]`` in ``dtype`` on the CPU.
    """
    rows = slice(0, n_global) if rows is None else rows
    if not (0 <= rows.start <= rows.stop <= n_global) or rows.step not in (None, 1):
        raise ValueError(f"rows must be a contiguous slice of range({n_global}), got {rows}")
    shape = tuple(int(s) for s in shape)

    def normal(gen: torch.Generator, count: int) -> Tensor:
        return torch.randn((count, *shape), generator=gen, dtype=torch.float64)

    sample = normal if sample is None else sample
    out = []
    for b in range(rows.start // DRAW_BLOCK, -(-rows.stop // DRAW_BLOCK)):
        lo, hi = b * DRAW_BLOCK, min((b + 1) * DRAW_BLOCK, n_global)
        gen = torch.Generator().manual_seed(
            int(np.random.SeedSequence([seed, b]).generate_state(1)[0])
        )
        block = sample(gen, hi - lo)
        if tuple(block.shape) != (hi - lo, *shape):
            raise ValueError(
                f"sample returned shape {tuple(block.shape)}, expected {(hi - lo, *shape)}"
            )
        out.append(block[max(rows.start, lo) - lo : min(rows.stop, hi) - lo])
    if not out:
        return torch.empty((0, *shape), dtype=dtype)
    return torch.cat(out).to(dtype)


def gather_particles(x: Tensor, *, group: Any = None) -> Tensor:
    """Concatenate every rank's shard ``[N_r, ...]`` in rank order: ``[N, ...]`` on every rank.

    Shards may differ in length by any amount (they are padded for the all-gather).
    """
    _, world = _world(group)
    n = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    counts = [torch.zeros_like(n) for _ in range(world)]
    collective(lambda: dist.all_gather(counts, n, group=group), group=group,
               what="gathering the particle counts")  # fmt: skip
    top = int(max(int(c) for c in counts))
    pad = torch.zeros((top, *x.shape[1:]), dtype=x.dtype, device=x.device)
    pad[: x.shape[0]] = x
    parts = [torch.empty_like(pad) for _ in range(world)]
    collective(lambda: dist.all_gather(parts, pad, group=group), group=group,
               what="gathering the particles")  # fmt: skip
    return torch.cat([p[: int(c)] for p, c in zip(parts, counts, strict=True)])


# -- the sharded objective ----------------------------------------------------------------------
class ShardedProbabilityObjective:
    r"""A :class:`~muonflow.meanfield.ProbabilityObjective` over this rank's shard of particles.

    .. math::
        J = R\Big(\frac1N \sum_r \sum_{i \in \mathrm{shard}(r)} F(\theta_i)\Big), \qquad
        \text{force}_i = -DF(\theta_i)^\top \nabla R(m), \qquad w = \frac1N,

    with one all-reduce of ``[Σ_local F, N_local]`` per evaluation. Implements the objective
    protocol of :mod:`muonflow.dynamics`, so ``HamiltonianFlow(sharded, K, γ)`` with
    :func:`integrate_sharded` runs the global particle system.

    Args:
        objective: the global objective (``systems = 1``); its feature, risk and
            ``chunk_size`` are used.
        n_global: ``N``, the particle count over all ranks.
        group: the process group (``None``: the default group).
    """

    def __init__(
        self, objective: ProbabilityObjective, n_global: int, *, group: Any = None
    ) -> None:
        if not isinstance(objective, ProbabilityObjective):
            raise TypeError(
                f"objective must be a ProbabilityObjective, got {type(objective).__name__}"
            )
        if objective.systems != 1:
            raise ValueError(
                f"sharding supports systems=1 only, got systems={objective.systems}; shard the "
                "systems' particles into separate runs instead"
            )
        if isinstance(n_global, bool) or not isinstance(n_global, int) or n_global < 1:
            raise ValueError(f"n_global must be an int >= 1, got {n_global!r}")
        self.objective = objective
        self.n_global = n_global
        self.group = group
        self.allreduce_bytes = 0  #: bytes sent into all-reduces so far (for benchmarks)
        self.allreduce_calls = 0

    def __repr__(self) -> str:
        return f"ShardedProbabilityObjective({self.objective!r}, n_global={self.n_global})"

    def kinetic_weight(self, theta: State) -> float:
        """``1/N`` with the global ``N``."""
        return 1.0 / self.n_global

    def _global_mean(self, blocks: tuple[Tensor, ...], is_tuple: bool, n: int,
                     first: Tensor | None) -> Tensor:  # fmt: skip
        obj = self.objective
        s: Tensor | None = None
        for rows in obj._chunks(n):
            F = first if first is not None else obj._call_feature(
                tuple(x[rows] for x in blocks), is_tuple)  # fmt: skip
            s = F.sum(0) if s is None else s + F.sum(0)
        assert s is not None
        # [Σ_local F (flattened), N_local] in one message; the count is exact in float64
        buf = torch.cat([s.reshape(-1).double(), s.new_tensor([float(n)], dtype=torch.float64)])
        self.allreduce_bytes += buf.numel() * buf.element_size()
        self.allreduce_calls += 1
        all_reduce_sum(buf, group=self.group, what="the partial feature sums")
        if int(buf[-1]) != self.n_global:
            raise DistributedError(
                f"the shards hold {int(buf[-1])} particles in all, but n_global={self.n_global} "
                f"(this rank holds {n})"
            )
        m = (buf[:-1] / self.n_global).to(s.dtype).reshape(s.shape)  # m = Σ_r s_r / N
        if not bool(torch.isfinite(m).all()):
            raise ValueError(
                f"the global mean feature is not finite ({self!r}); some rank has a non-finite "
                "particle or feature"
            )
        return m

    def value(self, theta: State) -> Tensor:
        """``J(ρ_N)`` of the global measure (collective: every rank must call it)."""
        blocks, is_tuple, n = self.objective._split(theta)
        with torch.no_grad():
            m = self._global_mean(blocks, is_tuple, n, None)
            return self.objective._risk_values(m.unsqueeze(0))[0]

    def mean_feature(self, theta: State) -> Tensor:
        """The global ``m_ρ: [*out]`` (collective)."""
        blocks, is_tuple, n = self.objective._split(theta)
        with torch.no_grad():
            return self._global_mean(blocks, is_tuple, n, None)

    def value_and_force(self, theta: State) -> tuple[Tensor, State]:
        r"""``(J, force)`` for the local particles: one all-reduce, one pullback (collective)."""
        obj = self.objective
        blocks, is_tuple, n = obj._split(theta)
        with torch.no_grad():
            force = tuple(torch.empty_like(x) for x in blocks)
            if obj.chunk_size is None or n <= obj.chunk_size:
                F, pullback = obj._vjp(blocks, is_tuple)
                J, g = obj._risk_grad(self._global_mean(blocks, is_tuple, n, F).unsqueeze(0))
                del F
                obj._store_force(force, slice(0, n), pullback(g[0]), blocks)
            else:
                J, g = obj._risk_grad(self._global_mean(blocks, is_tuple, n, None).unsqueeze(0))
                for rows in obj._chunks(n):
                    pullback = obj._pullback(tuple(x[rows] for x in blocks), is_tuple)
                    obj._store_force(force, rows, pullback(g[0]), blocks)
        return J[0].detach(), (tuple(force) if is_tuple else force[0])


# -- the sharded integration --------------------------------------------------------------------
def integrate_sharded(
    flow: HamiltonianFlow,
    W0: State,
    P0: State,
    t_end: float,
    *,
    h: float,
    method: str = "muon",
    **options: Any,
) -> Trajectory:
    r"""Integrate this rank's shard of a particle system; every rank gets the global ledger.

    ``flow.objective`` must be a :class:`ShardedProbabilityObjective`; ``W0, P0`` are the local
    shards (``[N_r, ...]`` or tuples). Arguments are those of :func:`muonflow.integrate` for a
    fixed-step ``method``. The returned trajectory has the global ``t, J, K, H, dissipated``
    (``K`` and ``dissipated`` all-reduced once at the end, ``H = J + K``) and the *local*
    final ``W, P`` (and ``Ws, Ps`` if recorded); :func:`gather_particles` assembles them.

    Collective: every rank must call it with the same ``t_end``, ``h``, ``method`` and
    ``record_every`` (checked with :func:`check_same_config`).
    """
    if not isinstance(flow, HamiltonianFlow) or not isinstance(
        flow.objective, ShardedProbabilityObjective
    ):
        raise TypeError(
            "integrate_sharded needs a HamiltonianFlow over a ShardedProbabilityObjective, got "
            f"{type(flow).__name__} over {type(getattr(flow, 'objective', None)).__name__}"
        )
    if method == "reference":
        raise ValueError(
            "method 'reference' (adaptive DOP853) is not supported sharded: its step control "
            "uses the local error norm; use a fixed-step scheme (muon, conformal_leapfrog, rk4, "
            "...)"
        )
    group = flow.objective.group
    check_same_config(
        {"t_end": float(t_end), "h": float(h), "method": method,
         "record_every": options.get("record_every", 1), "gamma": flow.gamma,
         "n_global": flow.objective.n_global},
        group=group,
    )  # fmt: skip
    traj = integrate(flow, W0, P0, t_end, h=h, method=method, **options)
    ledger = torch.stack([traj.K, traj.dissipated])  # [2, T], local partial sums
    all_reduce_sum(ledger, group=group, what="the kinetic energy and dissipation ledger")
    K, D = ledger[0], ledger[1]
    return dataclasses.replace(traj, K=K, dissipated=D, H=traj.J + K)
