"""Spawned process groups for the distributed tests: start, wait with a deadline, end cleanly."""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any

import pytest
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(worker: Any, nprocs: int, out_dir: str, timeout_s: float) -> float:
    """Run ``worker(rank, port, out_dir)`` in ``nprocs`` spawned processes; the wall seconds.

    A process that raises fails the test with its traceback; one still running after
    ``timeout_s`` is killed and fails it, instead of blocking CI.
    """
    t0 = time.monotonic()
    ctx = mp.start_processes(
        worker, args=(free_port(), out_dir), nprocs=nprocs, join=False, start_method="spawn"
    )
    deadline = t0 + timeout_s
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {nprocs} spawned processes did not finish in {timeout_s} s")
    return time.monotonic() - t0


def exit_now() -> None:
    """End a worker whose results are saved without running the process group's destructors.

    The last check of a job breaks the group on purpose, and at interpreter exit gloo's threads
    can race a dead peer's sockets and abort the process (``terminate called without an active
    exception``) after every result was written. An exception in the worker still reaches the
    parent as a failure: this runs only when the worker returned.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
