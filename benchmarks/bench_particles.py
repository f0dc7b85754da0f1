"""Particle-system throughput: particle-steps per second for N = 2^10 … 2^17.

Configuration (issue #4): two-block particles θ = (W1 [16, 8], W2 [8, 16]), feature
F(θ) = W2 σ(W1 X) on a dataset X of 256 points in R^8, squared teacher–student risk,
relativistic(ε = 0.1) kinetic energy, ``muon`` scheme (h = 0.1, γ = 1), float32, the
objective processing particles in slabs of ``--chunk`` (feature memory O(chunk), total
memory O(N)). ``--activation`` picks σ (default ``sigmoid``: on CPU, torch's ``tanh``
kernel costs ~3.5x its ``sigmoid``, and σ is the largest elementwise cost of a step);
``--map-tol`` the accuracy of ∇K (default 1e-3, the optimizer's: ``method="auto"`` then
runs the matmul-only ``"poly"`` iteration; ``exact`` is the Gram ``eigh`` path).

Peak memory is measured in a fresh subprocess per N (so each peak is its own); timings run
all N in one process, round-robin per repeat. Per N it reports
(medians over ``--repeats``, the quantities timed interleaved so load drift hits all alike;
with ``--threads 1`` the clock is the process's CPU time, which other processes on a shared
machine disturb far less than wall time):

* ``step``: seconds per integrator step, ``(T(1 + k steps) − T(1 step)) / k`` with
  ``integrate`` (so the fixed per-call work — the initial force and the two kinetic-energy
  evaluations of the ledger — cancels);
* ``gemm``: seconds of the batched GEMMs one step needs, timed in the same process on the
  same shapes and slabs: the feature forward (W1 X, W2 S), its pullback (c Sᵀ, W2ᵀ c,
  D Xᵀ) and the map's products per block (PᵀP, then V diag(w) Vᵀ and P M for ``eigh``, or
  the iteration's ``r x r`` products and P Q for ``poly``). The slab-wise recompute of
  W1 X that O(N) memory costs is *not* counted;
* ``ratio``: median over repeats of step / gemm;
* ``force`` and ``map``: one ``value_and_force`` and one blockwise ``∇K(P)`` alone;
* ``x2 cost``: median over repeats of step(N) / step(N/2), from the same repeat;
* ``peak``: peak RSS minus the RSS before the particles were allocated (MiB).

Checks printed at the end: cost per step grows linearly (each doubling 1.8–2.2x once past
the fixed overhead, N >= 2^13), peak memory O(N) and < 4 GiB at N = 2^17, and step time
within 3x of the GEMM time at every N.

Usage::

    python benchmarks/bench_particles.py [--min-log2 10] [--max-log2 17] [--steps 2]
        [--repeats 3] [--chunk 256] [--threads 1] [--activation sigmoid]
        [--map-tol 1e-3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

import torch

import muonflow as mf
from muonflow.dynamics import HamiltonianFlow, integrate
from muonflow.meanfield import SubNetwork, teacher_student
from muonflow.polar import plan_auto

D_IN, HIDDEN, OUT, BATCH = 8, 16, 8, 256
EPS, GAMMA, H = 0.1, 1.0, 0.1


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _clock() -> float:
    """CPU time of this process when torch runs one thread (robust to other processes on a
    shared machine), else wall-clock time."""
    return time.process_time() if torch.get_num_threads() == 1 else time.perf_counter()


def _timed(fn) -> float:
    t = _clock()
    fn()
    return _clock() - t


def _gemm_inputs(W1: torch.Tensor, X: torch.Tensor, chunk: int) -> tuple[torch.Tensor, ...]:
    """Stand-ins with the shapes and magnitudes of one slab's GEMM operands (made untimed)."""
    c0 = min(chunk, W1.shape[0])
    S = torch.sigmoid(W1[:c0] @ X)  # [c, 16, 256]
    cot = torch.randn(OUT, BATCH) / BATCH  # ∇R(m): [8, 256]
    D = torch.randn(c0, HIDDEN, BATCH)  # (W2ᵀc) ⊙ σ'(h): [c, 16, 256]
    V = torch.linalg.qr(torch.randn(c0, D_IN, D_IN)).Q  # eigenvectors of the Gram: [c, 8, 8]
    return S, cot, D, V


def _gemm_step(W1, W2, X, chunk: int, inputs: tuple[torch.Tensor, ...], n_mm: int) -> None:
    """The batched GEMMs of one step, slab by slab (one slab's stand-ins reused for all).

    ``n_mm``: the ``r x r`` products of the map's polynomial iteration per block (0 for eigh).
    """
    S, cot, D, V = inputs
    for a in range(0, W1.shape[0], chunk):
        w1, w2 = W1[a : a + chunk], W2[a : a + chunk]
        c = w1.shape[0]
        s, d, v = S[:c], D[:c], V[:c]
        w1 @ X  # forward: h = W1 X
        w2 @ s  # forward: W2 S
        cot @ s.mT  # pullback: c Sᵀ
        w2.mT @ cot  # pullback: W2ᵀ c
        d @ X.mT  # pullback: D Xᵀ
        for p in (w1, w2.mT):  # the map, Gram path, both blocks in tall orientation [16, 8]
            p.mT @ p  # PᵀP
            if n_mm:  # poly: n_mm products of r x r iterates, then P Q
                for _ in range(n_mm):
                    v @ v
                p @ v
            else:  # eigh: V diag(w) Vᵀ (the diagonal scaling is elementwise), then P M
                p @ (v @ v.mT)


class _Kinetic:
    """relativistic(ε) whose map ∇K is computed to a requested accuracy ``tol``.

    ``tol=None`` is the exact path (Gram ``eigh``); a loose ``tol`` (the optimizer uses 1e-3)
    lets ``method="auto"`` pick the matmul-only ``"poly"`` iteration.
    """

    def __init__(self, eps: float, tol: float | None) -> None:
        self.K, self.tol = mf.Relativistic(eps), tol

    def energy(self, P: torch.Tensor) -> torch.Tensor:
        return self.K.energy(P)

    def grad(self, P: torch.Tensor) -> torch.Tensor:
        return self.K.grad(P, tol=self.tol)


def _map_matmuls(P: tuple[torch.Tensor, ...], tol: float | None) -> int:
    """The ``r x r`` products the map runs per block (0 for the eigh path)."""
    if tol is None:
        return 0
    plans = [plan_auto(p, EPS, tol) for p in P]
    return max(pl.matmuls if pl.method == "poly" else 0 for pl in plans)


class _Case:
    """One particle count: the flow, its particles, and the GEMM stand-ins."""

    def __init__(self, n: int, chunk: int, activation: str, map_tol: float | None) -> None:
        gen = torch.Generator().manual_seed(n)
        self.X = torch.randn(D_IN, BATCH, generator=torch.Generator().manual_seed(0))
        feature = SubNetwork(self.X, hidden=HIDDEN, out=OUT, activation=activation)
        g0 = torch.Generator().manual_seed(1)
        teacher = (
            torch.randn(64, HIDDEN, D_IN, generator=g0) / D_IN**0.5,
            torch.randn(64, OUT, HIDDEN, generator=g0) / HIDDEN**0.5,
        )
        self.obj = teacher_student(feature, teacher, chunk_size=chunk)
        self.flow = HamiltonianFlow(self.obj, _Kinetic(EPS, map_tol), GAMMA)
        self.n, self.chunk = n, chunk
        self.theta = (
            torch.randn(n, HIDDEN, D_IN, generator=gen) / D_IN**0.5,
            torch.randn(n, OUT, HIDDEN, generator=gen) / HIDDEN**0.5,
        )
        self.P = tuple(0.01 * torch.randn(x.shape, generator=gen) for x in self.theta)
        self.state_mib = 2 * sum(x.numel() * x.element_size() for x in self.theta) / 2**20
        traj = self.run(1)  # warm-up; the map's schedule is read after one step
        assert bool(torch.isfinite(traj.H).all())
        self.n_mm = _map_matmuls(traj.P, map_tol)
        self.inputs = _gemm_inputs(self.theta[0], self.X, chunk)
        self.gemms()

    def run(self, k: int):
        return integrate(
            self.flow, self.theta, self.P, k * H, h=H, method="muon", record_every=10**9
        )

    def gemms(self) -> None:
        _gemm_step(self.theta[0], self.theta[1], self.X, self.chunk, self.inputs, self.n_mm)

    def measure(self, steps: int) -> dict[str, float]:
        t1 = _timed(lambda: self.run(1))
        tk = _timed(lambda: self.run(1 + steps))
        return {
            "step_s": (tk - t1) / steps,
            "gemm_s": _timed(self.gemms),
            "force_s": _timed(lambda: self.obj.value_and_force(self.theta)),
            "map_s": _timed(lambda: self.flow.velocity(self.P)),
        }


def _peak_memory(n: int, chunk: int, activation: str, map_tol: float | None) -> dict:
    """In a fresh process: peak RSS of building the case (which integrates one step, with the
    ledger's energies and one force at each end), minus the RSS before the particles exist."""
    base = _rss_mib()
    case = _Case(n, chunk, activation, map_tol)
    return {"N": n, "peak_mib": _rss_mib() - base, "state_mib": case.state_mib}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--min-log2", type=int, default=10)
    ap.add_argument("--max-log2", type=int, default=17)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=256, help="particles per slab")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--activation", default="sigmoid", help="a smooth activation by name")
    ap.add_argument(
        "--map-tol", default="1e-3", help="accuracy of ∇K: a float, or 'exact' (Gram eigh)"
    )
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--memory-of", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tol = None if args.map_tol == "exact" else float(args.map_tol)
    if args.memory_of is not None:
        print(json.dumps(_peak_memory(args.memory_of, args.chunk, args.activation, tol)))
        return 0

    sizes = [2**k for k in range(args.min_log2, args.max_log2 + 1)]
    # memory: one fresh process per N, so each peak is its own
    mem = {}
    for n in sizes:
        cmd = [sys.executable, __file__, "--memory-of", str(n), "--chunk", str(args.chunk)]
        cmd += ["--activation", args.activation, "--map-tol", args.map_tol]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        mem[n] = json.loads(out.strip().splitlines()[-1])
    # time: all N in this process, round-robin per repeat, so load drift on a shared machine
    # hits every N (and step and GEMMs) alike
    cases = {n: _Case(n, args.chunk, args.activation, tol) for n in sizes}
    samples: dict[int, list[dict[str, float]]] = {n: [] for n in sizes}
    for _ in range(args.repeats):
        for n in sizes:
            samples[n].append(cases[n].measure(args.steps))

    rows = []
    print(
        f"{'N':>8} {'step ms':>9} {'gemm ms':>9} {'ratio':>6} {'force ms':>9} {'map ms':>8} "
        f"{'Mstep/s':>8} {'peak MiB':>9} {'state MiB':>9} {'x2 cost':>7}"
    )
    for n in sizes:
        r = {"N": n, **{k: statistics.median(s[k] for s in samples[n]) for k in samples[n][0]}}
        r["ratio"] = statistics.median(s["step_s"] / s["gemm_s"] for s in samples[n])
        r["growth"] = (
            statistics.median(
                s["step_s"] / p["step_s"] for s, p in zip(samples[n], samples[n // 2], strict=True)
            )
            if n // 2 in samples
            else float("nan")
        )
        r.update(peak_mib=mem[n]["peak_mib"], state_mib=mem[n]["state_mib"])
        r.update(map_matmuls=cases[n].n_mm, threads=torch.get_num_threads())
        r["clock"] = "cpu" if torch.get_num_threads() == 1 else "wall"
        rows.append(r)
        print(
            f"{n:>8} {1e3 * r['step_s']:>9.1f} {1e3 * r['gemm_s']:>9.1f} {r['ratio']:>6.2f} "
            f"{1e3 * r['force_s']:>9.1f} {1e3 * r['map_s']:>8.1f} "
            f"{n / r['step_s'] / 1e6:>8.3f} {r['peak_mib']:>9.0f} {r['state_mib']:>9.0f} "
            f"{r['growth']:>7.2f}"
        )

    checks = {}
    growths = [r["growth"] for r in rows if r["N"] >= 2**13 and r["N"] // 2 in samples]
    checks["linear cost (each doubling 1.8-2.2x, N >= 2^13)"] = all(
        1.8 <= g <= 2.2 for g in growths
    )
    last = rows[-1]
    checks[f"peak memory < 4 GiB at N = {last['N']}"] = last["peak_mib"] < 4096
    per_particle = [r["peak_mib"] / r["N"] for r in rows if r["N"] >= 2**15]
    checks["memory O(N) (peak/N within 1.5x for N >= 2^15)"] = len(per_particle) < 2 or (
        max(per_particle) <= 1.5 * min(per_particle)
    )
    checks["step within 3x of its GEMMs (all N)"] = max(r["ratio"] for r in rows) <= 3.0
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    # the least-squares exponent of step time in N over the same range: less sensitive to the
    # load noise of a shared machine than each single doubling
    big = [r for r in rows if r["N"] >= 2**13]
    exponent = float("nan")
    if len(big) >= 2:
        x = [math.log2(r["N"]) for r in big]
        y = [math.log2(r["step_s"]) for r in big]
        mx, my = statistics.fmean(x), statistics.fmean(y)
        exponent = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sum(
            (a - mx) ** 2 for a in x
        )
        print(f"step time ∝ N^{exponent:.3f} for N >= 2^13 (per doubling {2**exponent:.3f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"rows": rows, "checks": checks, "exponent": exponent, "args": vars(args)},
                f,
                indent=2,
            )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
