"""Training-step time of the MoE transformer: RegMuon vs AdamW (same process, interleaved).

Model: :func:`muonflow.models.moe.moe_transformer` (causal attention + dense softmax-gated MoE
feed-forward, experts stacked ``[E, m, n]``, fixed total width ``E·m = d_mlp``), trained on
random windows of the standard-library character corpus. A *step* is forward + backward +
``optimizer.step()`` + ``zero_grad``. Two RegMuon settings: defaults (``max_batch_bytes="auto"``:
here every same-shape stack is mapped in one call, its workspace being far below the 256 MiB
cap) and ``max_batch_bytes=None`` (always one call per stack), a control that should match the
defaults. RegMuon maps the 3-D expert tensors as batches of matrices (never a Python loop over
experts; ``map calls`` counts the batched map calls of one step) and the attention matrices
too; embeddings, head and norms go to its built-in AdamW. The reference is
``torch.optim.AdamW`` (foreach) on everything.

Time: median over ``--reps`` steps per optimizer after ``--warmup`` steps; the optimizers
alternate step by step on copies of the model, so machine noise hits all alike.
The issue's target is ``ratio = RegMuon / AdamW <= 1.3`` (``--target``); the exit status is 1
when the default RegMuon misses it for some ``E``.

Usage: ``python benchmarks/bench_moe.py [--experts 4 16 64] [--reps 10] [--threads 1]
[--batch 32] [--block 128] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from typing import Any

import torch

from muonflow.data import stdlib_corpus
from muonflow.models import TransformerConfig
from muonflow.models.moe import moe_transformer
from muonflow.optim import RegMuon, kernel


def map_calls_per_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Batched map calls in one default RegMuon step on a copy of ``model``."""
    calls = []
    real = kernel.mirror_map

    def counting(X: torch.Tensor, *args: Any, **kw: Any) -> torch.Tensor:
        calls.append(X.shape)
        return real(X, *args, **kw)

    m = copy.deepcopy(model)
    opt = RegMuon(m.named_parameters(), lr=0.02, adamw_lr=3e-3)
    m.loss(x, y).backward()
    kernel.mirror_map = counting  # the optimizer's map, counted for one step
    try:
        opt.step()
    finally:
        kernel.mirror_map = real
    return len(calls)


def bench(n_experts: int, args: argparse.Namespace) -> dict[str, float]:
    torch.manual_seed(0)
    cfg = TransformerConfig(
        vocab_size=128, block_size=args.block, d_model=args.d_model, n_heads=4,
        n_layers=args.layers, d_mlp=args.d_mlp,
    )  # fmt: skip
    base = moe_transformer(cfg, n_experts)
    models = {k: copy.deepcopy(base) for k in ("adamw", "regmuon", "regmuon_1call")}
    opts = {
        "adamw": torch.optim.AdamW(models["adamw"].parameters(), lr=3e-3, foreach=True),
        "regmuon": RegMuon(models["regmuon"].named_parameters(), lr=0.02, adamw_lr=3e-3),
        "regmuon_1call": RegMuon(
            models["regmuon_1call"].named_parameters(), lr=0.02, adamw_lr=3e-3,
            max_batch_bytes=None,
        ),
    }  # fmt: skip
    corpus = stdlib_corpus()
    gen = torch.Generator().manual_seed(0)
    calls = map_calls_per_step(base, *corpus.batch("train", 2, args.block, gen))
    times: dict[str, list[float]] = {k: [] for k in models}
    losses: dict[str, float] = {}
    for rep in range(args.warmup + args.reps):
        x, y = corpus.batch("train", args.batch, args.block, gen)
        for name, model in models.items():
            t0 = time.perf_counter()
            loss = model.loss(x, y)
            loss.backward()
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            if rep >= args.warmup:
                times[name].append(dt)
            losses[name] = loss.item()
    med = {k: statistics.median(v) for k, v in times.items()}
    row: dict[str, float] = {"experts": n_experts, "map_calls": calls}
    for k in models:
        row[f"{k}_s"] = med[k]
        row[f"{k}_ratio"] = med[k] / med["adamw"]
        row[f"{k}_loss"] = losses[k]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experts", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--d-mlp", type=int, default=512)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--json", type=str, default=None)
    p.add_argument("--target", type=float, default=1.3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = [bench(e, args) for e in args.experts]
    print(
        f"batch {args.batch} x block {args.block}, d_model {args.d_model}, d_mlp {args.d_mlp}, "
        f"{args.layers} layers, {torch.get_num_threads()} thread(s), median of {args.reps}\n"
    )
    print("| E | AdamW ms | RegMuon ms | ratio | 1-call ms | ratio | map calls |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['experts']} | {1e3 * r['adamw_s']:.1f} | {1e3 * r['regmuon_s']:.1f} | "
            f"{r['regmuon_ratio']:.2f} | {1e3 * r['regmuon_1call_s']:.1f} | "
            f"{r['regmuon_1call_ratio']:.2f} | {r['map_calls']} |"
        )
    worst = max(r["regmuon_ratio"] for r in rows)
    print(f"\nworst RegMuon / AdamW = {worst:.2f} (target <= {args.target})")
    if args.json:
        meta = {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "threads": args.threads,
            "args": vars(args),
        }
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=2)
    raise SystemExit(0 if worst <= args.target else 1)


if __name__ == "__main__":
    main()
