"""The regularized map on an accelerator vs bfloat16 Newton–Schulz and Gram Newton–Schulz.

Run (on a machine with a CUDA device): ``python benchmarks/bench_gpu.py [--repeats 20]
[--tols default,1e-2] [--spectrum gaussian|heavy] [--markdown FILE]``; ``--device cpu
--smoke`` runs the same code on tiny shapes (checks the script, times nothing meaningful).

For every shape, ``G`` is seeded (Gaussian entries, or ``heavy``: a power-law spectrum with
top/RMS singular value 12, as transformer gradients have) and ``ε`` is RegMuon's relative ε
(its default ``eps`` times the RMS singular value of each matrix, read from
:class:`muonflow.RegMuon`). Timed with CUDA events after ``--warmup`` calls, the functions
interleaved round-robin, medians of ``--repeats``:

- ``map``: ``regularized_polar(G, ε, tol=tol)`` (``method="auto"``: on accelerators the
  matmul-only path; float32 IEEE GEMMs, restarted where rounding demands it, the restarted
  phase in float16 where its bound allows), at RegMuon's default ``tol`` and the others given;
- ``NS5 bf16`` / ``GNS5 bf16``: :func:`muonflow.polar.newton_schulz` and
  :func:`muonflow.polar.gram_newton_schulz` (restart at step 2) in bfloat16, batched — the
  baselines (``torch.optim.Muon`` runs Newton–Schulz in bfloat16, one matrix at a time);
- ``GNS5 fp16``: Gram Newton–Schulz in float16 (its authors' setting);
- ``NS5 f32``: float32 Newton–Schulz (secondary).

``rel err``: ``max_b ||out_b − ref_b||_F / ||ref_b||_F`` against a float64 SVD. The table is
printed as markdown; ``docs/gpu.md`` says where it goes.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

import muonflow as mf
from muonflow.polar import gram_newton_schulz, newton_schulz, plan_auto

SHAPES = {
    "tall 4096x1024": (4096, 1024),
    "tall 2048x512": (2048, 512),
    "wide 1024x4096": (1024, 4096),
    "square 2048²": (2048, 2048),
    "square 1024²": (1024, 1024),
    "stack 48x128²": (48, 128, 128),
    "stack 24x256²": (24, 256, 256),
    "stack 16x256x64": (16, 256, 64),
    "stack 8x512x128": (8, 512, 128),
    "batch 3000x20x10": (3000, 20, 10),
}
SMOKE = {"tall 48x16": (48, 16), "stack 4x16²": (4, 16, 16)}
HEAVY_RATIO = 12.0


def regmuon_defaults() -> tuple[float, float]:
    sig = inspect.signature(mf.RegMuon.__init__)
    return float(sig.parameters["eps"].default), float(sig.parameters["tol"].default)


def make_input(shape: tuple[int, ...], spectrum: str, gen: torch.Generator) -> Tensor:
    G = torch.randn(*shape, generator=gen, dtype=torch.float64)
    if spectrum == "heavy":
        U, _, Vh = torch.linalg.svd(G, full_matrices=False)
        i = torch.arange(1, U.shape[-1] + 1, dtype=torch.float64)
        lo, hi = 0.0, 4.0
        for _ in range(60):
            alpha = (lo + hi) / 2
            S = i**-alpha
            lo, hi = (alpha, hi) if S[0] / S.square().mean().sqrt() < HEAVY_RATIO else (lo, alpha)
        G = (U * S) @ Vh
    return G.float()


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """Seconds of one call: CUDA events on CUDA, wall time elsewhere."""
    if device.type == "cuda":

        def cuda_time(fn: Callable[[], object]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3

        return cuda_time

    def wall_time(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return wall_time


def round_robin(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device
) -> dict[str, float]:
    time_one = timer(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(time_one(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def rel_err(out: Tensor, G: Tensor, eps: Tensor) -> float:
    U, S, Vh = torch.linalg.svd(G.double().cpu(), full_matrices=False)
    e = eps.double().cpu().reshape(*eps.shape, 1)
    ref = (U * (S / torch.sqrt(S * S + e * e)).unsqueeze(-2)) @ Vh
    d = torch.linalg.matrix_norm(out.double().cpu() - ref) / torch.linalg.matrix_norm(ref)
    return float(d.max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tols", default="default,1e-2")
    ap.add_argument("--spectrum", default="gaussian", choices=["gaussian", "heavy"])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (checks the script)")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a machine with one (or --device cpu --smoke)")
    eps_rel, default_tol = regmuon_defaults()
    tols = [default_tol if x == "default" else float(x) for x in args.tols.split(",")]
    tols = list(dict.fromkeys(tols))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    head = (
        f"{name}, torch {torch.__version__}, float32 matmul precision "
        f"{torch.get_float32_matmul_precision()}; {args.spectrum} spectrum, ε = {eps_rel:g}·RMS "
        f"singular value; medians of {args.repeats} (CUDA events, {args.warmup} warm-up calls)"
    )
    cols = "".join(f" map tol {t:g}: path | ms | /best bf16 | rel err |" for t in tols)
    lines = [
        head,
        "",
        f"| shape |{cols} NS5 bf16 ms | GNS5 bf16 ms | GNS5 fp16 ms | NS5 f32 ms | "
        "NS5 bf16 rel err |",
        "|---|" + "---|---:|---:|---:|" * len(tols) + "---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    gen = torch.Generator().manual_seed(0)
    for label, shape in (SMOKE if args.smoke else SHAPES).items():
        G = make_input(shape, args.spectrum, gen).to(device)
        r = min(shape[-2:])
        eps = eps_rel * torch.linalg.vector_norm(G, dim=(-2, -1)) / math.sqrt(r)
        fns: dict[str, Callable[[], object]] = {
            f"map{i}": functools.partial(mf.regularized_polar, G, eps, tol=t)
            for i, t in enumerate(tols)
        }
        fns["ns_bf16"] = functools.partial(newton_schulz, G, dtype=torch.bfloat16)
        fns["gns_bf16"] = functools.partial(gram_newton_schulz, G, dtype=torch.bfloat16)
        fns["gns_fp16"] = functools.partial(gram_newton_schulz, G, dtype=torch.float16)
        fns["ns_f32"] = functools.partial(newton_schulz, G, dtype=torch.float32)
        t = round_robin(fns, args.repeats, args.warmup, device)
        best = min(t["ns_bf16"], t["gns_bf16"])
        cells = ""
        for i, tol in enumerate(tols):
            plan = plan_auto(G, eps, tol)
            path = (
                f"{plan.method} {str(plan.dtype)[6:]}"
                + (f" restart {plan.restart}" if plan.restart else "")
                + (f" +{str(plan.phase2)[6:]}" if plan.phase2 else "")
            )
            err = rel_err(mf.regularized_polar(G, eps, tol=tol), G, eps)
            cells += f" {path} | {1e3 * t[f'map{i}']:.3f} | {t[f'map{i}'] / best:.2f} | {err:.1e} |"
        ns_err = rel_err(newton_schulz(G, dtype=torch.bfloat16), G, eps)
        lines.append(
            f"| {label} |{cells} {1e3 * t['ns_bf16']:.3f} | {1e3 * t['gns_bf16']:.3f} | "
            f"{1e3 * t['gns_fp16']:.3f} | {1e3 * t['ns_f32']:.3f} | {ns_err:.2f} |"
        )
        print(lines[-1], flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
