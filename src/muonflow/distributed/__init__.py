"""``torch.distributed`` for muonflow: sharded particle systems and RegMuon on DTensors.

- :mod:`.particles`: a particle system sharded by particle (one all-reduce per force).
- RegMuon on FSDP2/DTensor parameters (:mod:`muonflow.optim.dtensor`, re-exported here):
  every matrix mapped whole (gather or Gram scheme), the optimizer state sharded like the
  parameters.
- :mod:`._group`: process-group start-up; :class:`DistributedError` (:mod:`muonflow._collective`).

Design notes, recipes and measured costs: ``docs/distributed.md``.
"""

from ..optim.dtensor import (
    SCHEMES,
    MatrixLayout,
    choose_scheme,
    comm_stats,
    map_sharded,
    matrix_layout,
    reset_comm_stats,
    scheme,
    scheme_bytes,
    shard_sizes,
)
from ._group import (
    DEFAULT_TIMEOUT_S,
    DistributedError,
    all_reduce_sum,
    check_same_config,
    init_from_env,
)
from .particles import (
    DRAW_BLOCK,
    ShardedProbabilityObjective,
    draw_particles,
    gather_particles,
    integrate_sharded,
    shard_range,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DRAW_BLOCK",
    "SCHEMES",
    "DistributedError",
    "MatrixLayout",
    "ShardedProbabilityObjective",
    "all_reduce_sum",
    "check_same_config",
    "choose_scheme",
    "comm_stats",
    "draw_particles",
    "gather_particles",
    "init_from_env",
    "integrate_sharded",
    "map_sharded",
    "matrix_layout",
    "reset_comm_stats",
    "scheme",
    "scheme_bytes",
    "shard_range",
    "shard_sizes",
]
