"""The regularized map at RegMuon's accuracy vs Newton–Schulz (float32, bfloat16) and Gram NS.

Run: python benchmarks/bench_fast_map.py [--repeats 9] [--threads N] [--tols default,0.1]
     [--spectrum gaussian|heavy|both] [--shapes 2048x512,48x128x128] [--bf16 native|off|both]
     [--no-step] [--markdown FILE]

One process per table, every number a ratio against baselines measured in the same process.
``--threads`` defaults to torch's own default (all cores). For every shape, ``G`` is seeded;
``gaussian``: i.i.d. normal entries; ``heavy``: the same singular vectors with a power-law
spectrum whose top singular value is 12x the RMS one (what transformer gradients look like:
8-13x measured on this repository's transformer; matrices with r <= 144 cannot reach 12x and
get the steepest law tried, nearly rank one). ``ε`` is RegMuon's: its default ``eps`` (read
from :data:`muonflow.optim.DEFAULTS` at run time) times the RMS singular value of each matrix.

Timed (warm-up call each, then ``--repeats`` rounds of A B C ... in turn, medians):

- ``map``: ``regularized_polar(G, ε, tol=tol)`` (``method="auto"``, the planner calibrated
  on this host at the start of the run: set ``MUONFLOW_CACHE_DIR`` to a fresh folder to
  measure now), at RegMuon's default ``tol`` and at each other ``--tols`` value;
- ``mixed``: the same with ``method="mixed"`` pinned (bfloat16 steps) at the largest tol;
- ``NS5``/``GNS5``: ``muonflow.polar.newton_schulz`` / ``gram_newton_schulz`` (5 steps of
  Muon's quintic, torch.optim.Muon's coefficients and normalization; Gram NS restarted at step
  2), batched, in float32; ``NS5 bf16``: the same Newton–Schulz in bfloat16;
- ``torch NS``: ``torch.optim._muon._zeropower_via_newtonschulz`` looped over the matrices as
  ``torch.optim.Muon`` does (bfloat16; secondary column).

``best`` is the fastest of float32 NS5, float32 GNS5 and, where bfloat16 is native
(:func:`muonflow.polar.bf16_native`), bfloat16 NS5. Targets (issue #22): map/best <= 1.0 on
every shape where bfloat16 is native; without it (``--bf16 off``: the table is made by a child
process with ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``) <= 0.8 on single matrices
and <= 1.0 on stacks and batches. Errors are ``max_b ||out_b − ref_b||_F / ||ref_b||_F``: the
map's against the exact regularized map, Newton–Schulz's against the polar factor ``U Vᵀ``
(both float64 SVDs); target: the map's below NS5's.

``--errors`` prints instead the error of every path (pinned by ``method=``) at each tol, worst
over the shapes and both spectra. ``--accuracy`` prints instead how the float32 paths fare
beyond their Gram floor (singular values over six decades, ε down to 3e-4·‖G‖): the plain
iteration, the restarted one, its first-order bound, and the plan ``auto`` takes.

The optimizer step (``--no-step`` skips it): a transformer-like parameter set (24 x 256x256
plus 8 x 512x128 matrices, Gaussian or heavy gradients) stepped by ``RegMuon`` (defaults)
by ``torch.optim.Muon`` whose Newton–Schulz runs in float32 (the library baseline) and by
``torch.optim.Muon`` as shipped (bfloat16 Newton–Schulz), the three interleaved, medians;
target RegMuon / (the faster Muon) <= 1.0.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor
from torch.optim._muon import _zeropower_via_newtonschulz

import muonflow as mf
from muonflow.polar import (
    NS_COEFFICIENTS,
    bf16_native,
    gram_newton_schulz,
    host_rates,
    newton_schulz,
    plan_auto,
)

SHAPES = {
    "tall 2048x512": (2048, 512),
    "wide 384x1536": (384, 1536),
    "square 1024²": (1024, 1024),
    "stack 48x128²": (48, 128, 128),
    "stack 16x256x64": (16, 256, 64),
    "batch 3000x20x10": (3000, 20, 10),
    "stack 24x256²": (24, 256, 256),
    "stack 8x512x128": (8, 512, 128),
}
#: top singular value over the RMS one for ``--spectrum heavy``
HEAVY_RATIO = 12.0


def regmuon_defaults() -> dict[str, object]:
    """RegMuon's defaults, from ``muonflow.optim.DEFAULTS`` (other code owns them)."""
    d = mf.optim.DEFAULTS
    return {k: getattr(d, k) for k in ("eps", "eps_mode", "tol", "method")}


def relative_eps(G: Tensor, eps: float) -> Tensor:
    """RegMuon's relative ε: ``eps · ||G_b||_F / √min(m, n)`` per matrix."""
    r = min(G.shape[-2:])
    return eps * torch.linalg.vector_norm(G.double(), dim=(-2, -1)).float() / math.sqrt(r)


def make_input(shape: tuple[int, ...], spectrum: str, gen: torch.Generator) -> Tensor:
    G = torch.randn(*shape, generator=gen, dtype=torch.float64)
    if spectrum == "heavy":
        U, _, Vh = torch.linalg.svd(G, full_matrices=False)
        i = torch.arange(1, U.shape[-1] + 1, dtype=torch.float64)
        lo, hi = 0.0, 4.0
        for _ in range(60):  # power α with σ_1/rms(σ) = HEAVY_RATIO
            alpha = (lo + hi) / 2
            S = i**-alpha
            lo, hi = (alpha, hi) if S[0] / S.square().mean().sqrt() < HEAVY_RATIO else (lo, alpha)
        G = (U * S) @ Vh
    return G.float()


def reference(G: Tensor, eps: Tensor) -> Tensor:
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    e = eps.double().reshape(*eps.shape, 1)
    return (U * (S / torch.sqrt(S * S + e * e)).unsqueeze(-2)) @ Vh


def polar_reference(G: Tensor) -> Tensor:
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    return U @ Vh


def rel_err(out: Tensor, ref: Tensor) -> float:
    d = torch.linalg.matrix_norm(out.double() - ref) / torch.linalg.matrix_norm(ref)
    return float(d.max())


def round_robin(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per function, calling them in turn so load drift hits them alike."""
    for fn in fns.values():  # warm-up: allocations, cached schedules
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def torch_muon_ns(G: Tensor) -> Callable[[], None]:
    flat = G.reshape(-1, *G.shape[-2:])

    def run() -> None:
        for g in flat:  # torch.optim.Muon's loop over parameters
            _zeropower_via_newtonschulz(g, NS_COEFFICIENTS, 5, 1e-7)

    return run


def timed_calls(
    G: Tensor, eps: Tensor, tols: list[float], native: bool
) -> dict[str, Callable[[], object]]:
    """The timed functions; the bfloat16 ones only where bfloat16 is native (emulated, a
    bfloat16 GEMM is 100-200x slower and no plan would take it)."""
    fns: dict[str, Callable[[], object]] = {
        f"map{i}": functools.partial(mf.regularized_polar, G, eps, tol=t)
        for i, t in enumerate(tols)
    }
    fns["ns5"] = functools.partial(newton_schulz, G)
    fns["gns5"] = functools.partial(gram_newton_schulz, G)
    if native:
        fns["mixed"] = functools.partial(
            mf.regularized_polar, G, eps, method="mixed", tol=max(tols)
        )
        fns["bf16"] = functools.partial(newton_schulz, G, dtype=torch.bfloat16)
    return fns


def shape_row(name: str, G: Tensor, eps: Tensor, tols: list[float], args) -> tuple[str, dict]:
    """One table row: times, ratios against the best baseline, errors."""
    native = bf16_native(G.device)
    t = round_robin(timed_calls(G, eps, tols, native), args.repeats)
    best = min(t["ns5"], t["gns5"], t.get("bf16", math.inf))
    target = 1.0 if native or len(G.shape) > 2 else 0.8
    ref, pol = reference(G, eps), polar_reference(G)
    errs = {"ns5": rel_err(newton_schulz(G), pol)}
    cells, record = [], {"ratios": [], "errors": []}
    for i, tol in enumerate(tols):
        err = rel_err(mf.regularized_polar(G, eps, tol=tol), ref)
        ratio = t[f"map{i}"] / best
        record["ratios"].append(ratio)
        record["errors"].append(err)
        ok = "✓" if ratio <= target else "✗"
        label = plan_auto(G, eps, tol).label
        cells.append(f"{label} | {1e3 * t[f'map{i}']:.2f} | {ratio:.2f} {ok} | {err:.1e}")
    bf16 = mixed = torch_ns = "-"
    if native:
        t["torch"] = round_robin({"torch": torch_muon_ns(G)}, max(1, args.repeats // 3))["torch"]
        errs["bf16"] = rel_err(newton_schulz(G, dtype=torch.bfloat16), pol)
        mixed_err = rel_err(mf.regularized_polar(G, eps, method="mixed", tol=max(tols)), ref)
        mixed = f"{1e3 * t['mixed']:.2f} ({t['mixed'] / best:.2f}), {mixed_err:.1e}"
        bf16, torch_ns = f"{1e3 * t['bf16']:.2f}", f"{1e3 * t['torch']:.1f}"
    row = (
        f"| {name} | " + " | ".join(cells) + f" | {mixed}"
        + f" | {1e3 * t['ns5']:.2f} | {1e3 * t['gns5']:.2f} | {bf16}"
        + " | " + " / ".join(f"{e:.2f}" for e in errs.values())
        + f" | {torch_ns} | ≤ {target} |"
    )  # fmt: skip
    record["ns_err"] = min(errs.values())
    return row, record


def bench_shapes(args: argparse.Namespace, tols: list[float], eps_rel: float) -> list[str]:
    lines = []
    native = bf16_native(torch.device("cpu"))
    for spectrum in ["gaussian", "heavy"] if args.spectrum == "both" else [args.spectrum]:
        gen = torch.Generator().manual_seed(0)
        head = "| shape | " + " | ".join(
            f"map tol {t:g}: path | ms | /best | rel err" for t in tols
        )
        lines += [
            "",
            f"**{spectrum} spectrum**, ε = {eps_rel:g}·RMS singular value; bfloat16 "
            f"{'native' if native else 'not native'}: best = fastest of NS5, GNS5"
            + (", NS5 bf16" if native else ""),
            "",
            head + f" | mixed tol {max(tols):g}: ms (/best), rel err | NS5 ms | GNS5 ms | "
            "NS5 bf16 ms | NS5 (/ NS5 bf16) err vs polar | torch NS ms | target |",
            "|---|" + "---|---:|---:|---:|" * len(tols) + "---|---:|---:|---:|---:|---:|---|",
        ]
        print("\n".join(lines[-5:]), flush=True)
        worst: list[float] = []
        for name, shape in SHAPES.items():
            if args.shapes and "x".join(map(str, shape)) not in args.shapes.split(","):
                continue
            G = make_input(shape, spectrum, gen)
            row, rec = shape_row(name, G, relative_eps(G, eps_rel), tols, args)
            worst.append(rec["errors"][0] / rec["ns_err"])
            lines.append(row)
            print(row, flush=True)
        lines.append(f"\nlargest (map error at tol {tols[0]:g}) / (NS5 error vs polar): "
                     f"{max(worst):.2g}")  # fmt: skip
        print(lines[-1], flush=True)
    return lines


class MuonF32(torch.optim.Muon):
    """torch.optim.Muon whose Newton–Schulz is the library's float32 baseline."""

    def step(self, closure=None):  # type: ignore[no-untyped-def]
        import torch.optim._muon as muon_module

        orig = muon_module._zeropower_via_newtonschulz
        muon_module._zeropower_via_newtonschulz = lambda g, c, s, e: newton_schulz(
            g, s, c, eps=e, dtype=torch.float32
        )
        try:
            return super().step(closure)
        finally:
            muon_module._zeropower_via_newtonschulz = orig


def fresh_params(weights: list[Tensor], grads: list[Tensor]) -> list[torch.nn.Parameter]:
    """New parameters with the given values and gradients (each optimizer gets its own)."""
    ps = []
    for w, g in zip(weights, grads, strict=True):
        p = torch.nn.Parameter(w.clone())
        p.grad = g.clone()
        ps.append(p)
    return ps


def bench_step(args: argparse.Namespace, tols: list[float], default_tol: float) -> list[str]:
    lines = [
        "",
        "**optimizer step**, 24 x 256x256 + 8 x 512x128 (one step, gradients fixed)",
        "",
        "| gradients | tol | RegMuon ms | Muon (float32 NS5) ms | torch.optim.Muon ms | "
        "RegMuon / best Muon | target |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    print("\n".join(lines), flush=True)
    for spectrum in ["gaussian", "heavy"] if args.spectrum == "both" else [args.spectrum]:
        gen = torch.Generator().manual_seed(1)
        grads = list(make_input((24, 256, 256), spectrum, gen).unbind())
        grads += list(make_input((8, 512, 128), spectrum, gen).unbind())
        weights = [torch.randn(g.shape, generator=gen) / g.shape[1] ** 0.5 for g in grads]

        params = functools.partial(fresh_params, weights, grads)
        for tol in tols:
            reg = mf.RegMuon(params(), tol=tol, adamw=())  # every matrix is a hidden weight
            fns = {"reg": reg.step, "muon": MuonF32(params(), lr=0.02).step}
            if bf16_native(torch.device("cpu")):  # as shipped: bfloat16 Newton–Schulz
                fns["torch"] = torch.optim.Muon(params()).step  # (emulated bfloat16: 100x)
            t = round_robin(fns, args.repeats)
            ratio = t["reg"] / min(t["muon"], t.get("torch", math.inf))
            label = f"{tol:g}" + (" (default)" if tol == default_tol else "")
            shipped = f"{1e3 * t['torch']:.1f}" if "torch" in t else "-"
            lines.append(
                f"| {spectrum} | {label} | {1e3 * t['reg']:.1f} | {1e3 * t['muon']:.1f} | "
                f"{shipped} | {ratio:.2f} {'✓' if ratio <= 1.0 else '✗'} | ≤ 1.0 |"
            )
            print(lines[-1], flush=True)
    return lines


def spread(shape: tuple[int, ...], gen: torch.Generator, decades: float = 6.0) -> Tensor:
    """Random singular vectors, singular values log-spaced over ``decades`` below 1."""
    G = torch.randn(*shape, generator=gen, dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    S = torch.logspace(0, -decades, U.shape[-1], dtype=torch.float64)
    return (U * S) @ Vh


def bench_errors(tols: list[float], eps_rel: float) -> list[str]:
    """Error of every path against the exact regularized map (float64 SVD), pinned by
    ``method=``, worst over the shapes of each spectrum, and Newton–Schulz's against the
    polar factor."""
    spectra = ("gaussian", "heavy")
    cols = [(sp, t) for sp in spectra for t in tols]
    lines = [
        "",
        f"**error against the exact map** (relative Frobenius, worst matrix over the shapes; "
        f"ε = {eps_rel:g}·RMS σ; Newton–Schulz against the polar factor)",
        "",
        "| path | " + " | ".join(f"{sp} tol {t:g}" for sp, t in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    worst: dict[str, dict[tuple[str, float], float]] = {}
    for spectrum in spectra:
        gen = torch.Generator().manual_seed(0)
        for shape in SHAPES.values():
            G = make_input(shape, spectrum, gen)
            eps = relative_eps(G, eps_rel)
            ref, pol = reference(G, eps), polar_reference(G)
            for method in ("auto", "eigh", "poly", "mixed", "svd"):
                for t in tols:
                    e = rel_err(mf.regularized_polar(G, eps, method=method, tol=t), ref)
                    row = worst.setdefault(method, {})
                    row[(spectrum, t)] = max(row.get((spectrum, t), 0.0), e)
            for name, dt in (("NS5 float32", torch.float32), ("NS5 bfloat16", torch.bfloat16)):
                e = rel_err(newton_schulz(G, dtype=dt), pol)
                row = worst.setdefault(name, {})
                for t in tols:
                    row[(spectrum, t)] = max(row.get((spectrum, t), 0.0), e)
    for method, row in worst.items():
        lines.append(f"| {method} | " + " | ".join(f"{row[c]:.1e}" for c in cols) + " |")
    print("\n".join(lines), flush=True)
    return lines


def bench_accuracy(tol: float) -> list[str]:
    """Float32 Gram paths beyond their floor ½uκ²: plain iteration vs the restarted one."""
    from muonflow.polar.front import gram_front, unit_roundoff
    from muonflow.polar.planning import best_restart, poly_target
    from muonflow.polar.polynomial import poly_inv_sqrt, poly_restart, restart_bound

    u = unit_roundoff(torch.float32)
    lines = [
        "",
        f"**accuracy**, float32, 4 x 96x48 with singular values over 6 decades, tol {tol:g} "
        "(errors: Frobenius / spectral norm, relative to the exact map)",
        "",
        "| ε/‖G‖ | κ² | ½u₃₂κ² | plain poly | restarted (k) | restart bound | auto plan |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    gen = torch.Generator().manual_seed(0)
    for eps_rel in (1e-2, 3e-3, 1e-3, 3e-4):
        G = spread((4, 96, 48), gen).float()
        eps = torch.full((4,), eps_rel)
        ref = reference(G, eps)

        def errs(out: Tensor, ref: Tensor = ref) -> str:
            d = out.double().reshape(ref.shape) - ref
            fro = float((torch.linalg.matrix_norm(d) / torch.linalg.matrix_norm(ref)).max())
            return f"{fro:.1e} / {float(torch.linalg.matrix_norm(d, ord=2).max()):.1e}"

        f = gram_front(G, eps, torch.float32)
        sched = poly_schedule_for(f.rho, tol)
        plain = errs(f.apply(poly_inv_sqrt(f, sched)))
        rs = best_restart(f.kappa2, tol, torch.float32, "cpu")
        if rs is None:
            restarted, bound = "none fits", "-"
        else:
            f = gram_front(G, eps, torch.float32)
            restarted = errs(poly_restart(f, sched, rs[0], target=poly_target(tol)))
            restarted += f" ({rs[0]})"
            bound = f"{restart_bound(sched, rs[0], u):.1e}"
        p = plan_auto(G, eps, tol)
        plan = f"{p.method} {str(p.dtype)[6:]}" + (f", restart {p.restart}" if p.restart else "")
        lines.append(
            f"| {eps_rel:g} | {f.kappa2:.1e} | {0.5 * u * f.kappa2:.1e} | {plain} | "
            f"{restarted} | {bound} | {plan} |"
        )
        print(lines[-1], flush=True)
    return lines


def poly_schedule_for(rho: float, tol: float):  # type: ignore[no-untyped-def]
    from muonflow.polar import poly_schedule
    from muonflow.polar.planning import poly_target

    return poly_schedule(rho, poly_target(tol), torch.float32)


#: What hides native bfloat16 from torch (ATen kernels and oneDNN limited to AVX2).
NO_BF16_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def without_bf16(argv: list[str]) -> list[str]:
    """This script's tables from a child process that sees no native bfloat16."""
    keep, skip = [], False
    for a in argv:  # everything but --bf16 and its value (--spectrum both stays)
        if skip or a.startswith("--bf16"):
            skip = a == "--bf16"
            continue
        keep.append(a)
    cmd = [sys.executable, __file__, *keep, "--bf16", "off"]
    out = subprocess.run(cmd, env={**os.environ, **NO_BF16_ENV}, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    return ["", "**bfloat16 forced off** (" + " ".join(f"{k}={v}" for k, v in
            NO_BF16_ENV.items()) + "), a child process:", *out.stdout.splitlines()]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None, help="default: torch's default")
    ap.add_argument("--tols", default="default,0.1", help="'default' = RegMuon's tol")
    ap.add_argument("--spectrum", default="gaussian", choices=["gaussian", "heavy", "both"])
    ap.add_argument("--shapes", default=None, help="e.g. 2048x512,48x128x128")
    ap.add_argument("--bf16", default="native", choices=["native", "off", "both"])
    ap.add_argument("--no-step", action="store_true", help="skip the optimizer-step table")
    ap.add_argument("--accuracy", action="store_true", help="only the float32 accuracy table")
    ap.add_argument("--errors", action="store_true", help="only every path's error")
    ap.add_argument("--markdown", default=None, help="also write the tables to this file")
    args = ap.parse_args()
    if args.shapes:
        known = {"x".join(map(str, shape)) for shape in SHAPES.values()}
        unknown = sorted(set(args.shapes.split(",")) - known)
        if unknown:
            raise SystemExit(f"unknown --shapes {unknown}; valid: {', '.join(sorted(known))}")
    if args.bf16 == "off" and bf16_native(torch.device("cpu")):
        print("\n".join(without_bf16(sys.argv[1:])[2:]), flush=True)
        return
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    d = regmuon_defaults()
    if d["eps_mode"] != "relative":
        raise SystemExit(f"RegMuon's default eps_mode is {d['eps_mode']!r}; update this script")
    default_tol = float(d["tol"])  # type: ignore[arg-type]
    tols = [default_tol if x == "default" else float(x) for x in args.tols.split(",")]
    tols = list(dict.fromkeys(tols))
    eps_rel = float(d["eps"])  # type: ignore[arg-type]
    rates = host_rates(torch.device("cpu"))  # calibrates here if the cache has no entry
    header = (
        f"torch {torch.__version__}, {platform.machine()}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} thread(s), load "
        f"average {os.getloadavg()[0]:.1f} at start; planner rates: {rates.key}; RegMuon "
        f"defaults: eps {eps_rel:g} ({d['eps_mode']}), tol {default_tol:g}, method "
        f"{d['method']}; medians of {args.repeats} interleaved rounds"
    )
    print(header, flush=True)
    if args.accuracy:
        lines = [header, *bench_accuracy(default_tol)]
    elif args.errors:
        lines = [header, *bench_errors(tols, eps_rel)]
    else:
        lines = [header, *bench_shapes(args, tols, eps_rel)]
        if not args.no_step:
            lines += bench_step(args, tols, default_tol)
        lines.append(f"load average {os.getloadavg()[0]:.1f} at the end")
        print(lines[-1], flush=True)
        if args.bf16 == "both":
            child = without_bf16(sys.argv[1:])
            lines += child
            print("\n".join(child), flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
