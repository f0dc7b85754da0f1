"""Weak and strong scaling of the sharded particle flow (gloo, CPU), with a communication split.

Each configuration spawns ``world`` processes (one thread each) on this machine and integrates
the mean-field network ``F(θ)(x_b) = tanh(θ x_b)``, ``θ ∈ R^{1×d}``, squared risk over ``B``
points, with the ``muon`` scheme. Reported per step (median of the ranks' means):

- ``step_ms``: wall time of one step (one force evaluation);
- ``allreduce_ms``: the time of one all-reduce of the ``B + 1`` float64 partial sums, measured
  separately on the same group (the step's only communication);
- ``compute_ms = step_ms - allreduce_ms``.

Strong scaling keeps ``N`` fixed; weak scaling keeps ``N / world`` fixed. The projection for
larger worlds uses the measured single-process compute per particle and a ring all-reduce model
``α·2(w-1) + 2(w-1)/w · bytes / β`` with ``α`` (latency) and ``β`` (bandwidth) given on the
command line (defaults: a 25 Gb/s network with 20 µs latency); on one shared machine the
measured 2-process figures mostly show core contention, not the algorithm.

Usage: ``python benchmarks/bench_distributed.py [--n 8192] [--steps 20] [--out FILE.json]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import muonflow as mf
from muonflow import distributed as mfd

DIM, BATCH, H_STEP, GAMMA = 16, 64, 0.05, 1.0


def _problem() -> tuple[mf.ProbabilityObjective, Any]:
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(BATCH, DIM, generator=gen, dtype=torch.float64)
    y = torch.randn(BATCH, generator=gen, dtype=torch.float64)

    def feature(theta: torch.Tensor) -> torch.Tensor:  # [N, 1, d] -> [N, B]
        return torch.tanh(theta[:, 0, :] @ X.T)

    def risk(m: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((m - y) ** 2).mean()

    return mf.ProbabilityObjective(feature, risk), mf.Relativistic(0.5)


def _worker(rank: int, world: int, port: int, n: int, steps: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=120))  # fmt: skip
    objective, kinetic = _problem()
    rows = mfd.shard_range(n, rank, world)
    W0 = mfd.draw_particles(n, (1, DIM), seed=0, rows=rows)
    P0 = torch.zeros_like(W0)
    sharded = mfd.ShardedProbabilityObjective(objective, n)
    flow = mf.HamiltonianFlow(sharded, kinetic, GAMMA)
    mfd.integrate_sharded(flow, W0, P0, 2 * H_STEP, h=H_STEP)  # warm-up
    dist.barrier()
    t0 = time.perf_counter()
    mfd.integrate_sharded(flow, W0, P0, steps * H_STEP, h=H_STEP)
    step_s = (time.perf_counter() - t0) / (steps + 1)  # steps + the initial evaluation
    buf = torch.zeros(BATCH + 1, dtype=torch.float64)
    dist.barrier()
    reps = 200
    t0 = time.perf_counter()
    for _ in range(reps):
        dist.all_reduce(buf)
    ar_s = (time.perf_counter() - t0) / reps if world > 1 else 0.0
    torch.save({"step_s": step_s, "allreduce_s": ar_s}, os.path.join(out, f"r{rank}.pt"))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(world: int, n: int, steps: int) -> dict[str, float]:
    """Per-step wall, all-reduce and compute times (ms) for ``n`` particles on ``world`` ranks."""
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(_worker, args=(world, _free_port(), n, steps, d), nprocs=world,
                           start_method="spawn")  # fmt: skip
        res = [torch.load(os.path.join(d, f"r{r}.pt")) for r in range(world)]
    step = statistics.median(r["step_s"] for r in res) * 1e3
    ar = statistics.median(r["allreduce_s"] for r in res) * 1e3
    return {"world": world, "n": n, "step_ms": step, "allreduce_ms": ar,
            "compute_ms": step - ar}  # fmt: skip


def project(compute_ms_per_particle: float, n: int, worlds: list[int], latency_s: float,
            bandwidth_Bps: float) -> list[dict[str, float]]:  # fmt: skip
    """Ring all-reduce model of a step: ``compute(n/w) + α·2(w-1) + 2(w-1)/w · bytes / β``."""
    nbytes = (BATCH + 1) * 8
    rows = []
    for w in worlds:
        comm = latency_s * 2 * (w - 1) + 2 * (w - 1) / w * nbytes / bandwidth_Bps
        comp = compute_ms_per_particle * n / w
        rows.append({"world": w, "n": n, "compute_ms": comp, "allreduce_ms": comm * 1e3,
                     "step_ms": comp + comm * 1e3})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=8192, help="particles (strong scaling)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--latency-us", type=float, default=20.0, help="projection: α")
    ap.add_argument("--bandwidth-gbps", type=float, default=25.0, help="projection: β in Gb/s")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    strong = [measure(w, args.n, args.steps) for w in (1, 2)]
    weak = [measure(w, args.n // 2 * w, args.steps) for w in (1, 2)]
    per_particle = strong[0]["compute_ms"] / args.n
    proj = project(per_particle, 1 << 20, [1, 8, 64, 512], args.latency_us * 1e-6,
                   args.bandwidth_gbps * 1e9 / 8)  # fmt: skip
    result = {"strong": strong, "weak": weak, "projection_1M_particles": proj,
              "allreduce_bytes_per_step": (BATCH + 1) * 8, "cpus": os.cpu_count()}  # fmt: skip
    for name in ("strong", "weak", "projection_1M_particles"):
        print(name)
        for r in result[name]:  # type: ignore[attr-defined]
            print("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in r.items()))  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
