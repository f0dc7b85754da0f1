"""Collectives that fail loudly: the errors and checks every distributed part of muonflow shares.

Every collective goes through :func:`collective`, which turns a failed or timed-out collective
into a :class:`DistributedError` that says what was being exchanged and that another rank
probably raised, exited or is stuck: a failing rank becomes a clear error on every rank, never
a hang (the process group's timeout bounds the wait). The optimizer's DTensor path and the
particle sharding both use it; it imports nothing of theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch.distributed as dist

__all__ = ["DistributedError", "check_same_config", "collective"]

T = TypeVar("T")


class DistributedError(RuntimeError):
    """A collective failed or the ranks disagree; raised on every rank involved."""


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
