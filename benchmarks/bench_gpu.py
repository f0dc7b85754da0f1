"""The regularized map on an accelerator vs bfloat16 Newton–Schulz and Gram Newton–Schulz.

Run (on a machine with a CUDA device): ``python benchmarks/bench_gpu.py [--repeats 20]
[--tols default,0.1] [--spectrum gaussian|heavy] [--markdown FILE]``; ``--device cpu
--smoke`` runs the same code on tiny shapes (checks the script, times nothing meaningful).

For every shape, ``G`` is seeded (Gaussian entries, or ``heavy``: a power-law spectrum with
top/RMS singular value 12, as transformer gradients have) and ``ε`` is RegMuon's relative ε
(its default ``eps`` times the RMS singular value of each matrix, read from
:data:`muonflow.optim.DEFAULTS`). The planner calibrates on the device first
(:mod:`muonflow.polar.calibration`; cached). Timed with CUDA events after ``--warmup`` calls,
the functions interleaved round-robin, medians of ``--repeats``:

- ``map``: ``regularized_polar(G, ε, tol=tol)`` (``method="auto"``: whichever path the
  calibrated planner prices cheapest — the matmul-only Gram iteration in float32, restarted
  where rounding demands it, its restarted phase in float16 where its bound allows, or the
  mixed map with bfloat16 steps), at RegMuon's default ``tol`` and the others given;
- ``mixed``: ``method="mixed"`` pinned (float32 Gram phase, bfloat16 iteration on ``X``) at
  the largest tol;
- ``NS5 bf16`` / ``GNS5 bf16``: :func:`muonflow.polar.newton_schulz` and
  :func:`muonflow.polar.gram_newton_schulz` (restart at step 2) in bfloat16, batched — the
  baselines (``torch.optim.Muon`` runs Newton–Schulz in bfloat16, one matrix at a time);
- ``GNS5 fp16``: Gram Newton–Schulz in float16 (its authors' setting);
- ``NS5 f32``: float32 Newton–Schulz (secondary);
- ``limit``: a FLOP-derived floor, the Gram matrix and the final product of any Gram-type map
  (``4 B M r²`` flops) at the fastest bfloat16 GEMM rate the calibration measured.

``rel err``: ``max_b ||out_b − ref_b||_F / ||ref_b||_F`` against a float64 SVD (the map: the
exact regularized map; NS5: the polar factor). Then one optimizer step on GPT-2-small-shaped
matrices (12 layers of ``768x2304``, ``768x768``, ``768x3072``, ``3072x768``): ``RegMuon`` at
its defaults vs ``torch.optim.Muon`` at its own. The tables are printed as markdown;
``docs/gpu.md`` says where they go.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time
from collections.abc import Callable

import torch
from bench_fast_map import fresh_params
from torch import Tensor

import muonflow as mf
from muonflow.polar import gram_newton_schulz, host_rates, newton_schulz, plan_auto

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
    d = mf.optim.DEFAULTS
    return float(d.eps), float(d.tol)


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


def rel_err(out: Tensor, G: Tensor, eps: Tensor | None) -> float:
    """Against the exact regularized map (``eps``) or, with ``eps=None``, the polar factor."""
    U, S, Vh = torch.linalg.svd(G.double().cpu(), full_matrices=False)
    if eps is None:
        ref = U @ Vh
    else:
        e = eps.double().cpu().reshape(*eps.shape, 1)
        ref = (U * (S / torch.sqrt(S * S + e * e)).unsqueeze(-2)) @ Vh
    d = torch.linalg.matrix_norm(out.double().cpu() - ref) / torch.linalg.matrix_norm(ref)
    return float(d.max())


#: GPT-2 small's hidden matrices per layer (fan_in x fan_out of its Conv1D weights)
GPT2_SMALL = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]


def step_table(device: torch.device, smoke: bool, repeats: int, warmup: int) -> list[str]:
    """One optimizer step, RegMuon (defaults) vs torch.optim.Muon (defaults), same gradients."""
    layers, scale = (2, 16) if smoke else (12, 1)
    gen = torch.Generator().manual_seed(1)
    shapes = [(m // scale, n // scale) for m, n in GPT2_SMALL] * layers
    weights = [torch.randn(s, generator=gen).to(device) / s[0] ** 0.5 for s in shapes]
    grads = [torch.randn(s, generator=gen).to(device) for s in shapes]

    reg = mf.RegMuon(fresh_params(weights, grads), adamw=())  # every matrix is a hidden weight
    muon = torch.optim.Muon(fresh_params(weights, grads))
    t = round_robin({"reg": reg.step, "muon": muon.step}, repeats, warmup, device)
    return [
        "",
        f"**optimizer step**, {len(shapes)} GPT-2-small-shaped matrices "
        f"({layers} layers x {', '.join(f'{m}x{n}' for m, n in shapes[:4])})",
        "",
        "| RegMuon ms | torch.optim.Muon ms | RegMuon / Muon |",
        "|---:|---:|---:|",
        f"| {1e3 * t['reg']:.3f} | {1e3 * t['muon']:.3f} | {t['reg'] / t['muon']:.2f} |",
    ]


def shape_row(label: str, G: Tensor, eps: Tensor, tols: list[float], args, peak: float) -> str:
    device = G.device
    fns: dict[str, Callable[[], object]] = {
        f"map{i}": functools.partial(mf.regularized_polar, G, eps, tol=t)
        for i, t in enumerate(tols)
    }
    fns["mixed"] = functools.partial(mf.regularized_polar, G, eps, method="mixed", tol=max(tols))
    fns["ns_bf16"] = functools.partial(newton_schulz, G, dtype=torch.bfloat16)
    fns["gns_bf16"] = functools.partial(gram_newton_schulz, G, dtype=torch.bfloat16)
    fns["gns_fp16"] = functools.partial(gram_newton_schulz, G, dtype=torch.float16)
    fns["ns_f32"] = functools.partial(newton_schulz, G, dtype=torch.float32)
    t = round_robin(fns, args.repeats, args.warmup, device)
    best = min(t["ns_bf16"], t["gns_bf16"])
    cells = ""
    for i, tol in enumerate(tols):
        err = rel_err(mf.regularized_polar(G, eps, tol=tol), G, eps)
        label_i = plan_auto(G, eps, tol).label
        cells += f" {label_i} | {1e3 * t[f'map{i}']:.3f} | {t[f'map{i}'] / best:.2f} | {err:.1e} |"
    mixed_err = rel_err(mf.regularized_polar(G, eps, method="mixed", tol=max(tols)), G, eps)
    ns_err = rel_err(newton_schulz(G, dtype=torch.bfloat16), G, None)
    m, n = G.shape[-2:]
    flops = 4.0 * G[..., 0, 0].numel() * max(m, n) * min(m, n) ** 2  # Gram + final product
    return (
        f"| {label} |{cells} {1e3 * t['mixed']:.3f} ({t['mixed'] / best:.2f}), {mixed_err:.1e} |"
        f" {1e3 * t['ns_bf16']:.3f} | {1e3 * t['gns_bf16']:.3f} | {1e3 * t['gns_fp16']:.3f} |"
        f" {1e3 * t['ns_f32']:.3f} | {ns_err:.2f} | {1e3 * flops / peak:.3f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tols", default="default,0.1")
    ap.add_argument("--spectrum", default="gaussian", choices=["gaussian", "heavy"])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes (checks the script)")
    ap.add_argument("--no-step", action="store_true", help="skip the optimizer-step table")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a machine with one (or --device cpu --smoke)")
    eps_rel, default_tol = regmuon_defaults()
    tols = [default_tol if x == "default" else float(x) for x in args.tols.split(",")]
    tols = list(dict.fromkeys(tols))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rates = host_rates(device)  # the planner's calibration on this device (cached)
    peak = max(v for _, v in (rates.gemm_low or rates.gemm32))
    clock = "CUDA events" if device.type == "cuda" else "wall time"
    head = (
        f"{name}, torch {torch.__version__}, float32 matmul precision "
        f"{torch.get_float32_matmul_precision()}; {args.spectrum} spectrum, ε = {eps_rel:g}·RMS "
        f"singular value; medians of {args.repeats} ({clock}, {args.warmup} warm-up calls); "
        f"planner rates {rates.key}, peak {'bf16' if rates.gemm_low else 'f32'} GEMM "
        f"{peak / 1e12:.1f} TFLOP/s"
    )
    cols = "".join(f" map tol {t:g}: path | ms | /best bf16 | rel err |" for t in tols)
    lines = [
        head,
        "",
        f"| shape |{cols} mixed tol {max(tols):g}: ms (/best), rel err | NS5 bf16 ms | "
        "GNS5 bf16 ms | GNS5 fp16 ms | NS5 f32 ms | NS5 bf16 err vs polar | limit ms |",
        "|---|" + "---|---:|---:|---:|" * len(tols) + "---|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    gen = torch.Generator().manual_seed(0)
    for label, shape in (SMOKE if args.smoke else SHAPES).items():
        G = make_input(shape, args.spectrum, gen).to(device)
        r = min(shape[-2:])
        eps = eps_rel * torch.linalg.vector_norm(G, dim=(-2, -1)) / math.sqrt(r)
        lines.append(shape_row(label, G, eps, tols, args, peak))
        print(lines[-1], flush=True)
    if not args.no_step:
        lines += step_table(device, args.smoke, args.repeats, args.warmup)
        print("\n".join(lines[-6:]), flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
