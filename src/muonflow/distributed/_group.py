"""Process groups, timeouts and errors shared by the distributed modules.

Every collective of :mod:`muonflow.distributed` goes through :func:`collective`, which turns a
failed or timed-out collective into a :class:`DistributedError` that says what was being
exchanged and that another rank probably raised, exited or is stuck: a failing rank becomes a
clear error on every rank, never a hang (the process group's timeout bounds the wait).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

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

T = TypeVar("T")


class DistributedError(RuntimeError):
    """A collective failed or the ranks disagree; raised on every rank involved."""


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


def _world(group: Any) -> tuple[int, int]:
    if not dist.is_initialized():
        raise DistributedError(
            "torch.distributed is not initialised; call muonflow.distributed.init_from_env() "
            "(under torchrun) or torch.distributed.init_process_group first"
        )
    return dist.get_rank(group), dist.get_world_size(group)


def collective(fn: Callable[[], T], *, group: Any, what: str) -> T:
    """Run ``fn()`` (one or more collectives on ``group``); failures become
    :class:`DistributedError` naming ``what`` was exchanged.

    A failure here almost always means another rank raised or died (the connection closed)
    or is stuck (the group's timeout expired); its own error is the root cause.
    """
    try:
        return fn()
    except (RuntimeError, dist.DistBackendError) as e:  # timeout, closed connection
        rank, world = _world(group)
        raise DistributedError(
            f"rank {rank}/{world}: {what} failed; another rank probably raised, exited or is "
            f"stuck (see its error). Backend said: {e}"
        ) from e


def all_reduce_sum(x: torch.Tensor, *, group: Any = None, what: str = "tensor") -> torch.Tensor:
    """In-place ``SUM`` all-reduce of ``x``; a failure becomes :class:`DistributedError`."""
    _world(group)
    collective(lambda: dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group), group=group,
               what=f"all-reduce of {what}")  # fmt: skip
    return x


def check_same_config(config: dict[str, Any], *, group: Any = None) -> None:
    """Raise :class:`DistributedError` on every rank unless all ranks pass an equal ``config``.

    ``config`` holds picklable values that must agree (``N``, shapes, dtype, seed, method, ``h``,
    ...). One ``all_gather_object``; the message lists each differing key per rank.
    """
    rank, world = _world(group)
    gathered: list[Any] = [None] * world
    collective(lambda: dist.all_gather_object(gathered, dict(config), group=group), group=group,
               what="the configuration exchange")  # fmt: skip
    ref = gathered[0]
    diffs = []
    for r, cfg in enumerate(gathered[1:], start=1):
        for key in sorted(set(ref) | set(cfg)):
            if ref.get(key, "<missing>") != cfg.get(key, "<missing>"):
                diffs.append(f"{key}: rank 0 has {ref.get(key, '<missing>')!r}, "
                             f"rank {r} has {cfg.get(key, '<missing>')!r}")  # fmt: skip
    if diffs:
        raise DistributedError(
            f"rank {rank}/{world}: the ranks were started with different configurations: "
            + "; ".join(diffs)
        )
