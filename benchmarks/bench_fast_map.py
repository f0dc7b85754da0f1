"""Fast regularized map (issue #6): auto / matmul-only "poly" / eigh vs Muon's Newton–Schulz.

Run: python benchmarks/bench_fast_map.py [--repeats 5] [--threads N] [--eps-rel 1e-2]
     [--tol 1e-3] [--device cpu] [--markdown FILE]

One table. For every shape, ``G`` is Gaussian (float32, seeded) and ``ε = eps_rel·||G_b||_op``
per matrix. Columns, all ratios measured in the same run (methods are timed round-robin, so
load drifting on a shared machine affects them alike):

- ``ms``: median wall time of ``regularized_polar(G, ε, method=..., tol=tol)``;
- ``/NS``: ratio to ``torch.optim._muon._zeropower_via_newtonschulz`` (5 steps, the
  coefficients ``torch.optim.Muon`` uses), called per matrix and looped over a batch as that
  optimizer does; it casts to bfloat16 internally, which is what it costs on this device.
  Calls slower than a second are timed once; when a call would exceed ``--ns-budget``
  seconds, its time is extrapolated from a 1-step and a 2-step call (marked ``≈``; steps 2-5
  are identical work);
- ``/NS32``: ratio to the same Newton–Schulz iteration run in float32 (a stricter baseline on
  CPUs without fast bfloat16 GEMMs; looped like ``/NS``);
- ``/eigh``: ratio to the exact Gram-eigendecomposition path (``method="eigh"``, same tol);
- ``/limit``: ratio to the two GEMMs any Gram method needs, ``A = GᵀG`` and ``G·A``, at the
  same dtype (batched as one call);
- ``rel err``: ``max_b ||out_b − ref_b||_F / ||ref_b||_F`` against a float64 SVD.

Newton–Schulz is not an exact map (it leaves singular values in about [0.5, 1.2]); it is the
speed baseline only. The goals of issue #6 are printed under the table.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from collections.abc import Callable

import torch
from torch.optim._muon import _zeropower_via_newtonschulz

import muonflow as mf

polar_mod = importlib.import_module("muonflow.polar")

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's defaults (Keller Jordan's quintic)
NS_STEPS = 5
SHAPES = [(1024, 256), (2048, 512), (4096, 1024), (1024, 1024), (4096, 16, 8), (256, 64, 64)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def round_robin(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, float]:
    """Median times, interleaving the functions so that load drift hits them alike."""
    for fn in fns.values():  # warm-up: allocations, thread pools, cached schedules
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn, device))
    return {k: statistics.median(v) for k, v in times.items()}


def ns_time(
    G: torch.Tensor, repeats: int, budget: float, device: torch.device
) -> tuple[float, str]:
    """Median time of Muon's Newton–Schulz looped over the matrices of ``G``.

    When a 5-step call would exceed ``budget`` seconds (judged from a 1-step call), its time
    is extrapolated as ``t1 + 4 (t2 - t1)`` from one 1-step and one 2-step call (marked ``≈``):
    steps 2-5 are identical work, while the first differs (it runs on the transposed bfloat16
    view of the input, and CPU bfloat16 GEMM speed depends strongly on the layout).
    """

    def run(steps: int) -> Callable[[], None]:
        return per_matrix(lambda g: _zeropower_via_newtonschulz(g, NS_COEFFS, steps, 1e-7), G)

    t1 = timed(run(1), device)
    if t1 * NS_STEPS > budget:
        t2 = timed(run(2), device)
        return t1 + (NS_STEPS - 1) * max(t2 - t1, 0.0), "≈"
    full = run(NS_STEPS)
    first = timed(full, device)
    if first > 1.0:
        return first, ""
    return statistics.median(timed(full, device) for _ in range(repeats)), ""


def ns_float32(G: torch.Tensor) -> torch.Tensor:
    """``_zeropower_via_newtonschulz`` step for step, in float32 instead of bfloat16."""
    a, b, c = NS_COEFFS
    X = G.float()
    if G.size(0) > G.size(1):
        X = X.T
    X = X / X.norm().clamp(min=1e-7)
    for _ in range(NS_STEPS):
        A = X @ X.T
        B = torch.addmm(A, A, A, beta=b, alpha=c)
        X = torch.addmm(X, B, X, beta=a)
    return X.T if G.size(0) > G.size(1) else X


def per_matrix(fn: Callable[[torch.Tensor], torch.Tensor], G: torch.Tensor) -> Callable[[], None]:
    flat = G.reshape(-1, *G.shape[-2:])

    def run() -> None:
        for g in flat:  # the optimizer's loop over parameters
            fn(g)

    return run


def the_map(G: torch.Tensor, eps: torch.Tensor, method: str, tol: float) -> Callable[[], object]:
    return lambda: mf.regularized_polar(G, eps, method=method, tol=tol)


def limit_gemms(G: torch.Tensor) -> Callable[[], None]:
    tall = G.shape[-2] >= G.shape[-1]

    def run() -> None:
        if tall:
            A = G.mT @ G  # A = GᵀG, r x r
            G @ A  # the final product G·M
        else:
            A = G @ G.mT
            A @ G

    return run


def reference(G: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    e = eps.double().reshape(*eps.shape, 1)
    return (U * (S / torch.sqrt(S * S + e * e)).unsqueeze(-2)) @ Vh


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    d = torch.linalg.matrix_norm(out.double() - ref) / torch.linalg.matrix_norm(ref)
    return float(d.max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ns-repeats", type=int, default=3, help="repeats of the bf16 NS baseline")
    ap.add_argument(
        "--ns-budget", type=float, default=5.0, help="seconds above which NS is extrapolated"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--eps-rel", type=float, default=1e-2, help="ε / ||G||_op")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shapes", default=None, help="e.g. 1024x256,4096x16x8")
    ap.add_argument("--markdown", default=None, help="also write the table to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes = SHAPES
    if args.shapes:
        shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    gen = torch.Generator().manual_seed(0)

    lines = [
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"ε = {args.eps_rel:g}·||G||_op, tol = {args.tol:g}, medians of {args.repeats}",
        "",
        "| shape | method | ms | /NS | /NS32 | /eigh | /limit | rel err |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    goals = []
    print(lines[0], flush=True)
    for shape in shapes:
        G = torch.randn(*shape, generator=gen).to(device)
        eps = args.eps_rel * torch.linalg.matrix_norm(G.double(), ord=2).float()
        ref = reference(G, eps)
        tol = args.tol
        plan = polar_mod.plan_auto(G, eps, tol)
        maps = {k: the_map(G, eps, k, tol) for k in ("auto", "poly", "eigh")}
        t = round_robin(
            {**maps, "limit": limit_gemms(G), "ns32": per_matrix(ns_float32, G)},
            args.repeats,
            device,
        )
        t["ns"], mark = ns_time(G, args.ns_repeats, args.ns_budget, device)
        name = "x".join(map(str, shape))
        errs = {k: rel_err(fn(), ref) for k, fn in maps.items()}
        for k in maps:
            label = f"auto ({plan.method}, {str(plan.dtype)[6:]})" if k == "auto" else k
            lines.append(
                f"| {name} | {label} | {1e3 * t[k]:.2f} | {t[k] / t['ns']:.3f} | "
                f"{t[k] / t['ns32']:.2f} | {t[k] / t['eigh']:.2f} | {t[k] / t['limit']:.2f} | "
                f"{errs[k]:.1e} |"
            )
        for k, label in [("ns", "Muon NS (bf16)"), ("ns32", "NS float32"), ("limit", "limit")]:
            ms = f"{mark}{1e3 * t[k]:.2f}" if k == "ns" else f"{1e3 * t[k]:.2f}"
            lines.append(
                f"| {name} | {label} | {ms} | {t[k] / t['ns']:.3f} | "
                f"{t[k] / t['ns32']:.2f} | {t[k] / t['eigh']:.2f} | {t[k] / t['limit']:.2f} | |"
            )
        print("\n".join(lines[-6:]), flush=True)
        batched = len(shape) > 2
        tall = not batched and max(shape) >= 4 * min(shape)
        ok_err = errs["auto"] <= tol
        if batched:
            goal = t["ns"] / t["auto"] >= 10
            goals.append(f"{name}: auto ≥ 10x faster than looped NS: {t['ns'] / t['auto']:.0f}x")
        else:
            cap = 1.0 if tall else 1.5
            goal = t["auto"] / t["ns"] <= cap and t["auto"] / t["limit"] <= 3
            goals.append(
                f"{name}: auto ≤ {cap}x NS: {t['auto'] / t['ns']:.3f}x, ≤ 3x limit: "
                f"{t['auto'] / t['limit']:.2f}x (vs NS float32: {t['auto'] / t['ns32']:.2f}x)"
            )
        goals[-1] += f", rel err {errs['auto']:.1e} ≤ {tol:g}: " + (
            "PASS" if goal and ok_err else "FAIL"
        )
    lines += ["", "Goals (issue #6):", *goals]
    print("\n" + "\n".join(lines), flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
