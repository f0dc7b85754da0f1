"""Bookkeeping overhead of the fixed-step integrators (muonflow.dynamics).

The integrator loop should cost at most 1.2x the raw cost of the objective-gradient and
potential evaluations it performs (<= 20% for state updates, ledger, finiteness checks,
recording). Two measurements per problem, method ``muon``, one energy record per step:

* ``in-run``: the loop's wall time divided by the time spent inside the evaluations
  (``value_and_force``, ``∇K``, ``K``) of the same run, timed by thin wrappers (their own cost
  counts as overhead, so this errs against the integrator). Immune to load drift between runs.
* ``separate``: the loop's wall time divided by a bare loop that repeats the same evaluations
  on the states the integrator visited (recorded beforehand), in the integrator's order.
  Median of ``--repeats``; noisy when other processes share the machine.

Problems: one 256x64 matrix (least squares on 512 samples), and a batch of 4096 particles of
16x8 (a mean-field tanh network on 64 samples). float32, relativistic kinetic energy.

Run: ``python benchmarks/bench_dynamics.py`` (about 30 s). Exit status 1 if the in-run
ratio exceeds ``--max-ratio``. One thread by default: timings on a shared machine are stable.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

import muonflow as mf
from muonflow.dynamics import FunctionObjective, HamiltonianFlow, integrate


class Timed:
    """Wraps a callable and accumulates the wall time spent in it."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, *args: Any) -> Any:
        t0 = time.perf_counter()
        out = self.fn(*args)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


class TimedPotential:
    """A potential whose ``grad`` and ``energy`` are timed (the same kernels underneath)."""

    def __init__(self, base: mf.SpectralPotential) -> None:
        self.base = base
        self.grad = Timed(base.grad)
        self.energy = Timed(base.energy)


class TimedObjective(FunctionObjective):
    def __init__(self, f: Callable[[Any], torch.Tensor]) -> None:
        super().__init__(f)
        self.timed = Timed(super().value_and_force)

    def value_and_force(self, W: Any) -> Any:
        return self.timed(W)


def problem_matrix(gen: torch.Generator) -> tuple[Callable, torch.Tensor, torch.Tensor, float]:
    """Least squares ``J(W) = ½ mean ||X W − Y||²``, ``W: [256, 64]``."""
    X = torch.randn(512, 256, generator=gen)
    Y = torch.randn(512, 64, generator=gen)

    def f(W: torch.Tensor) -> torch.Tensor:
        return 0.5 * (X @ W - Y).square().sum(-1).mean()

    W0 = 0.05 * torch.randn(256, 64, generator=gen)
    P0 = 0.1 * torch.randn(256, 64, generator=gen)
    return f, W0, P0, 0.1


def problem_particles(gen: torch.Generator) -> tuple[Callable, torch.Tensor, torch.Tensor, float]:
    """Mean-field tanh network ``J = ½ mean_b (mean_i 1ᵀtanh(θ_iᵀ x_b)/8 − y_b)²``.

    ``θ: [4096, 16, 8]`` (particles x matrix), 64 samples ``x_b: [16]``.
    """
    X = torch.randn(64, 16, generator=gen)
    y = torch.randn(64, generator=gen)

    def f(theta: torch.Tensor) -> torch.Tensor:
        pre = torch.einsum("bd,ndk->nbk", X, theta)  # [N, batch, 8]
        pred = torch.tanh(pre).mean(-1).mean(0)  # [batch]
        return 0.5 * (pred - y).square().mean()

    W0 = 0.3 * torch.randn(4096, 16, 8, generator=gen)
    P0 = 0.1 * torch.randn(4096, 16, 8, generator=gen)
    return f, W0, P0, 0.05


def measure(name: str, build: Callable, steps: int, repeats: int) -> float:
    gen = torch.Generator().manual_seed(0)
    f, W0, P0, eps = build(gen)
    h, gamma = 0.05, 1.0
    t_end = steps * h
    kinetic = mf.Relativistic(eps)
    # States the integrator visits, for the separate bare loop.
    ref = integrate(
        HamiltonianFlow(f, kinetic, gamma), W0, P0, t_end, h=h, method="muon", record_states=True
    )
    Ws, Ps = list(ref.Ws), list(ref.Ps)
    plain = FunctionObjective(f)

    def bare() -> None:
        # In the integrator's order: n + 1 forces (J and F at every visited W), n velocities
        # at the new momenta, n + 1 kinetic energies (one record per step).
        plain.value_and_force(Ws[0])
        kinetic.energy(Ps[0])
        for W, P in zip(Ws[1:], Ps[1:], strict=True):
            kinetic.grad(P)
            plain.value_and_force(W)
            kinetic.energy(P)

    in_run, separate = [], []
    for _ in range(repeats):
        obj, pot = TimedObjective(f), TimedPotential(kinetic)
        flow = HamiltonianFlow(obj, pot, gamma)
        t0 = time.perf_counter()
        integrate(flow, W0, P0, t_end, h=h, method="muon")
        loop = time.perf_counter() - t0
        inside = obj.timed.seconds + pot.grad.seconds + pot.energy.seconds
        assert (obj.timed.calls, pot.grad.calls, pot.energy.calls) == (steps + 1, steps, steps + 1)
        in_run.append(loop / inside)
        t0 = time.perf_counter()
        bare()
        separate.append(loop / (time.perf_counter() - t0))
    r_in, r_sep = statistics.median(in_run), statistics.median(separate)
    print(
        f"{name:<28} steps={steps:<4} loop/evaluations: in-run median {r_in:.3f} "
        f"(min {min(in_run):.3f}, max {max(in_run):.3f}); separate median {r_sep:.3f}"
    )
    return r_in


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-ratio", type=float, default=1.2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), float32, muon scheme")
    ratios = [
        measure("matrix 256x64", problem_matrix, steps=60, repeats=args.repeats),
        measure("particles 4096 x 16x8", problem_particles, steps=8, repeats=args.repeats),
    ]
    ok = all(r <= args.max_ratio for r in ratios)
    print(
        f"{'PASS' if ok else 'FAIL'}: in-run ratios {[round(r, 3) for r in ratios]} "
        f"<= {args.max_ratio}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
