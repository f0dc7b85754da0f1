"""Process-group start-up and reductions for the particle system (errors: ``_collective``)."""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

from .._collective import DistributedError, _world, check_same_config, collective

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistributedError",
    "all_reduce_sum",
    "check_same_config",
    "collective",
    "init_from_env",
]

#: Default collective timeout in seconds: long enough for a slow force evaluation on a loaded
#: machine, short enough that a dead peer is reported within minutes rather than torch's 30.
DEFAULT_TIMEOUT_S = 120.0


def init_from_env(*, backend: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Initialise the default process group from ``torchrun``'s environment variables.

    Args:
        backend: ``"gloo"``, ``"nccl"`` or ``None`` (NCCL when CUDA is available, else gloo).
        timeout: seconds a collective may wait for its peers before failing (``> 0``).

    Does nothing if the group is already initialised. Raises :class:`DistributedError` when
    the launcher's variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) are
    missing.
    """
    if not (isinstance(timeout, int | float) and timeout > 0):
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    if dist.is_initialized():
        return
    missing = [
        k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
    ]
    if missing:
        raise DistributedError(
            f"init_from_env needs the launcher's environment variables; missing {missing}. "
            "Start the script with torchrun (e.g. torchrun --nproc-per-node 2 script.py)."
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=float(timeout)))


def all_reduce_sum(x: torch.Tensor, *, group: Any = None, what: str = "tensor") -> torch.Tensor:
    """In-place ``SUM`` all-reduce of ``x``; a failure becomes :class:`DistributedError`."""
    _world(group)
    collective(lambda: dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group), group=group,
               what=f"all-reduce of {what}")  # fmt: skip
    return x


