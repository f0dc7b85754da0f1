"""Exact regularized map: Gram-eigh path vs torch.linalg.svd, and accuracy per dtype.

Run: python benchmarks/bench_exact_map.py [--repeats 7]

Prints median wall times of ``regularized_polar(G, eps, method="eigh")`` (what ``auto`` uses on
CPU when exact accuracy is requested) and of a bare ``torch.linalg.svd`` of the same input,
their ratio measured in the same run, and the relative error of the map against a float64 SVD
reference for ε/||G||_op in {1, 1e-1, 1e-2, 1e-3}.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import muonflow as mf


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (allocations, thread pool)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def reference(G: torch.Tensor, eps: float) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    return (U * (S / torch.sqrt(S * S + eps * eps)).unsqueeze(-2)) @ Vh


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    shapes = [(2048, 512), (4096, 16, 8)]

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("\nTime (median of", args.repeats, "runs), eps = 0.1·||G||_op")
    print(f"{'shape':>14} {'dtype':>8} {'eigh map [ms]':>14} {'svd [ms]':>10} {'map/svd':>8}")
    for shape in shapes:
        G64 = torch.randn(*shape, generator=gen, dtype=torch.float64)
        eps = 0.1 * float(torch.linalg.matrix_norm(G64, ord=2).max())
        for dtype in (torch.float32, torch.float64):
            G = G64.to(dtype)
            t_map = median_time(
                lambda G=G, eps=eps: mf.regularized_polar(G, eps, method="eigh"), args.repeats
            )
            t_svd = median_time(
                lambda G=G: torch.linalg.svd(G, full_matrices=False), args.repeats
            )
            print(
                f"{'x'.join(map(str, shape)):>14} {str(dtype)[6:]:>8} {1e3 * t_map:14.2f} "
                f"{1e3 * t_svd:10.2f} {t_map / t_svd:8.2f}"
            )

    print("\nRelative error ||map − ref||_F / ||ref||_F vs float64 SVD (max over shapes)")
    rels = [1.0, 1e-1, 1e-2, 1e-3]
    print(f"{'dtype':>9} " + " ".join(f"{'eps/|G|=' + format(r, 'g'):>14}" for r in rels))
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        row = []
        for r in rels:
            worst = 0.0
            for shape in shapes:
                G64 = torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).double()
                eps = r * float(torch.linalg.matrix_norm(G64, ord=2).max())
                ref = reference(G64, eps)
                out = mf.regularized_polar(G64.to(dtype), eps).double()
                worst = max(worst, float(torch.linalg.norm(out - ref) / torch.linalg.norm(ref)))
            row.append(worst)
        print(f"{str(dtype)[6:]:>9} " + " ".join(f"{e:14.2e}" for e in row))


if __name__ == "__main__":
    main()
