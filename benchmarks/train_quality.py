"""Training quality: RegMuon (ε sweep) vs torch.optim.Muon vs torch.optim.AdamW.

Tasks (no downloads)
    ``digits``  an MLP 64-128-128-10 (ReLU) on scikit-learn's bundled digits, minibatch 128;
                tuning on a validation split (20% of train), reported: test cross-entropy and
                accuracy (25% test split).
    ``chars``   a character-level transformer (d_model 64, 4 heads, 2 layers, MLP 256, block 64,
                batch 32) on Python standard-library source text; cross-entropy in nats/char
                on 8 fixed batches from the held-out tail: its first half tunes, its second
                half is reported.

Protocol (same for every optimizer; all runs of one seed see the same initial weights and
the same minibatches)
    * Linear decay of every learning rate to 0 (``LambdaLR``), no weight decay anywhere.
    * Hidden matrices: torch.optim.Muon (its defaults: EMA momentum 0.95, Nesterov, 5
      bf16 Newton–Schulz steps, lr adjustment "original") or RegMuon (momentum 0.95,
      Nesterov, relative ε, default ``tol=1e-3``); everything else (embeddings, head, biases,
      norms) AdamW at ``--adamw-lr`` for both. The AdamW baseline uses AdamW everywhere.
    * lr tuning on seed 0 by the validation loss over a grid (AdamW: ``--lrs-adamw``; Muon and
      RegMuon at ε = ``--eps-tune``: ``--lrs-muon``, default :data:`LRS_MUON` per task); the
      relative-ε sweep ``--eps`` runs at RegMuon's tuned lr and picks the best ε on seed 0.
      The tuned AdamW, Muon, RegMuon at ``--eps-tune`` and RegMuon at the best ε then run on
      all ``--seeds``; tables show the test metric, mean ± std over seeds.
    * Wall time: the training loop only (no evaluation), median over the seeds.

Writes ``results.json``, ``table.md`` and ``train_quality.png`` to ``--out``. Sizes and
steps are configurable; the defaults take a few minutes on 1 CPU thread.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import muonflow
from muonflow.data import digits, stdlib_corpus
from muonflow.models import MLP, Transformer, TransformerConfig
from muonflow.optim import RegMuon, default_adamw_rule

#: lr grids of Muon and RegMuon per task (centred on the best lr of a wider pilot sweep).
LRS_MUON = {"digits": [0.003, 0.01, 0.03], "chars": [0.02, 0.05, 0.1]}


@dataclass
class Task:
    name: str
    make_model: Callable[[], nn.Module]
    train_loss: Callable[[nn.Module, int, torch.Generator], Tensor]
    evaluate: Callable[[nn.Module], dict[str, float]]
    metric: str = "val_loss"  # tunes lr and ε (lower is better); "test_*" is reported
    report: str = "test_loss"


def digits_task(batch: int = 128) -> Task:
    data = digits()  # 75% train / 25% test; the last 20% of train is the tuning split
    n_fit = round(0.8 * len(data.y_train))
    X_fit, y_fit = data.X_train[:n_fit], data.y_train[:n_fit]
    X_val, y_val = data.X_train[n_fit:], data.y_train[n_fit:]

    def train_loss(model: nn.Module, step: int, gen: torch.Generator) -> Tensor:
        idx = torch.randint(0, n_fit, (batch,), generator=gen)
        return nn.functional.cross_entropy(model(X_fit[idx]), y_fit[idx])

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict[str, float]:
        out = {}
        for split, X, y in (("val", X_val, y_val), ("test", data.X_test, data.y_test)):
            logits = model(X)
            out[f"{split}_loss"] = float(nn.functional.cross_entropy(logits, y))
            out[f"{split}_acc"] = float((logits.argmax(1) == y).float().mean())
        return out

    return Task("digits", lambda: MLP(64, 128, 10, depth=2), train_loss, evaluate)


def chars_task(batch: int = 32, block: int = 64) -> Task:
    corpus = stdlib_corpus()
    cfg = TransformerConfig(
        vocab_size=128, block_size=block, d_model=64, n_heads=4, n_layers=2, d_mlp=256
    )
    # The held-out tail of the corpus: its first half tunes, its second half is the test.
    half = len(corpus.val) // 2
    gen = torch.Generator().manual_seed(12345)
    held = {}
    for split, text in (("val", corpus.val[:half]), ("test", corpus.val[half:])):
        starts = torch.randint(0, len(text) - block - 1, (8 * batch,), generator=gen)
        windows = text[starts[:, None] + torch.arange(block + 1)].long()
        held[split] = windows.split(batch)

    def train_loss(model: nn.Module, step: int, gen: torch.Generator) -> Tensor:
        x, y = corpus.batch("train", batch, block, gen)
        return model.loss(x, y)

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict[str, float]:
        return {
            f"{split}_loss": statistics.fmean(float(model.loss(w[:, :-1], w[:, 1:])) for w in ws)
            for split, ws in held.items()
        }

    return Task("chars", lambda: Transformer(cfg), train_loss, evaluate)


def hidden(name: str, p: Tensor) -> bool:
    """The matrices Muon/RegMuon handle (the same rule for both)."""
    return p.ndim == 2 and not default_adamw_rule(name, p)


def make_optimizers(
    kind: str, model: nn.Module, lr: float, eps: float | None, adamw_lr: float
) -> list[torch.optim.Optimizer]:
    named = list(model.named_parameters())
    if kind == "AdamW":
        return [torch.optim.AdamW([p for _, p in named], lr=lr, weight_decay=0.0)]
    if kind == "Muon":
        mats = [p for n, p in named if hidden(n, p)]
        rest = [p for n, p in named if not hidden(n, p)]
        return [
            torch.optim.Muon(mats, lr=lr, weight_decay=0.0),
            torch.optim.AdamW(rest, lr=adamw_lr, weight_decay=0.0),
        ]
    if kind == "RegMuon":
        return [
            RegMuon(
                named,
                lr=lr,
                momentum=0.95,
                eps=eps,
                nesterov=True,
                weight_decay=0.0,
                adamw_lr=adamw_lr,
                adamw_betas=(0.9, 0.999),
            )
        ]
    raise ValueError(f"unknown optimizer {kind!r}")


def train(
    task: Task,
    kind: str,
    lr: float,
    eps: float | None,
    seed: int,
    steps: int,
    adamw_lr: float,
    evals: int = 10,
) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = task.make_model()
    opts = make_optimizers(kind, model, lr, eps, adamw_lr)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda t: 1 - t / steps) for o in opts]
    gen = torch.Generator().manual_seed(10_000 + seed)
    curve = [(0, task.evaluate(model)[task.metric])]
    wall = 0.0
    every = max(1, steps // evals)
    for step in range(steps):
        t0 = time.perf_counter()
        loss = task.train_loss(model, step, gen)
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()
        for s in scheds:
            s.step()
        wall += time.perf_counter() - t0
        if not math.isfinite(float(loss.detach())):
            nan = {k: math.inf for k in task.evaluate(model)}
            return {"diverged": True, "wall_s": wall, "curve": curve, **nan}
        if (step + 1) % every == 0 or step + 1 == steps:
            curve.append((step + 1, task.evaluate(model)[task.metric]))
    return {"diverged": False, "wall_s": wall, "curve": curve, **task.evaluate(model)}


def label(kind: str, eps: float | None) -> str:
    return f"RegMuon ε={eps:g}" if kind == "RegMuon" else kind


def run_task(task: Task, args: argparse.Namespace) -> dict[str, Any]:
    steps = args.steps[task.name]
    runs: dict[str, dict[str, Any]] = {}  # label -> {"lr", "tune": {lr: result}, "seeds": [...]}

    def go(kind: str, lr: float, eps: float | None, seed: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        r = train(task, kind, lr, eps, seed, steps, args.adamw_lr)
        print(
            f"  {task.name:7s} {label(kind, eps):16s} lr={lr:<7g} seed={seed} "
            f"val={r['val_loss']:.4f} test={r['test_loss']:.4f} "
            f"({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
        return r

    def tune(kind: str, lrs: list[float], eps: float | None) -> None:
        res = {lr: go(kind, lr, eps, args.seeds[0]) for lr in lrs}
        best = min(res, key=lambda lr: res[lr][task.metric])
        runs[label(kind, eps)] = {
            "kind": kind,
            "eps": eps,
            "lr": best,
            "tune": res,
            "seeds": [res[best]],
        }

    tune("AdamW", args.lrs_adamw, None)
    lrs = args.lrs_muon or LRS_MUON[task.name]
    tune("Muon", lrs, None)
    tune("RegMuon", lrs, args.eps_tune)
    reg_lr = runs[label("RegMuon", args.eps_tune)]["lr"]
    for eps in args.eps:
        if eps != args.eps_tune:
            r = go("RegMuon", reg_lr, eps, args.seeds[0])
            runs[label("RegMuon", eps)] = {
                "kind": "RegMuon",
                "eps": eps,
                "lr": reg_lr,
                "tune": {reg_lr: r},
                "seeds": [r],
            }
    reg = [k for k in runs if runs[k]["kind"] == "RegMuon"]
    best_reg = min(reg, key=lambda k: runs[k]["seeds"][0][task.metric])
    for key in ("AdamW", "Muon", label("RegMuon", args.eps_tune), best_reg):
        entry = runs[key]
        while len(entry["seeds"]) < len(args.seeds):
            entry["seeds"].append(
                go(entry["kind"], entry["lr"], entry["eps"], args.seeds[len(entry["seeds"])])
            )
    return {"steps": steps, "metric": task.metric, "best_regmuon": best_reg, "runs": runs}


def summarize(name: str, res: dict[str, Any]) -> str:
    """Markdown table: tuning metric (val) and reported metric (test), mean ± std over seeds."""
    acc = name == "digits"
    lines = [
        f"### {name} ({res['steps']} steps)",
        "",
        "| optimizer | lr | seeds | val loss (tuning) | test loss (mean ± std) |"
        + (" test acc |" if acc else "")
        + " wall s (median) |",
        "|---|---:|---:|---:|---:|" + ("---:|" if acc else "") + "---:|",
    ]
    for key, e in res["runs"].items():
        seeds = e["seeds"]
        test = [r["test_loss"] for r in seeds]
        sd = statistics.stdev(test) if len(test) > 1 else 0.0
        best = " (best ε)" if key == res["best_regmuon"] else ""
        row = (
            f"| {key}{best} | {e['lr']:g} | {len(seeds)} | "
            f"{statistics.fmean(r['val_loss'] for r in seeds):.4f} | "
            f"{statistics.fmean(test):.4f} ± {sd:.4f} |"
        )
        if acc:
            row += f" {statistics.fmean(r['test_acc'] for r in seeds):.4f} |"
        row += f" {statistics.median(r['wall_s'] for r in seeds):.1f} |"
        lines.append(row)
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["tasks"])
    fig, axes = plt.subplots(2, len(tasks), figsize=(6 * len(tasks), 8), squeeze=False)
    for j, name in enumerate(tasks):
        res = results["tasks"][name]
        metric = res["metric"]
        ax = axes[0][j]
        for key in ("AdamW", "Muon", res["best_regmuon"]):
            for i, r in enumerate(res["runs"][key]["seeds"]):
                s, v = zip(*r["curve"], strict=True)
                ax.plot(
                    s,
                    v,
                    color={"AdamW": "C0", "Muon": "C1"}.get(key, "C2"),
                    alpha=0.8,
                    label=key if i == 0 else None,
                )
        ax.set(
            title=f"{name}: {metric} during training", xlabel="step", ylabel=metric, yscale="log"
        )
        ax.legend()
        ax = axes[1][j]
        reg = sorted(
            ((e["eps"], e) for e in res["runs"].values() if e["kind"] == "RegMuon"),
            key=lambda t: t[0],
        )
        ax.plot(
            [e for e, _ in reg],
            [statistics.fmean(r["test_loss"] for r in x["seeds"]) for _, x in reg],
            "o-",
            color="C2",
            label="RegMuon",
        )
        for key, c in (("Muon", "C1"), ("AdamW", "C0")):
            ax.axhline(
                statistics.fmean(r["test_loss"] for r in res["runs"][key]["seeds"]),
                color=c,
                ls="--",
                label=key,
            )
        ax.set(
            title=f"{name}: final test loss vs relative ε (mean over its seeds)",
            xlabel="ε (relative)",
            ylabel="test_loss",
            xscale="log",
        )
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=["digits", "chars"], choices=["digits", "chars"])
    ap.add_argument("--steps-digits", type=int, default=150)
    ap.add_argument("--steps-chars", type=int, default=120)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eps", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1, 0.3])
    ap.add_argument("--eps-tune", type=float, default=0.03, help="RegMuon's default ε")
    ap.add_argument("--lrs-adamw", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    ap.add_argument(
        "--lrs-muon",
        type=float,
        nargs="+",
        default=None,
        help=f"lr grid of Muon and RegMuon (default per task: {LRS_MUON})",
    )
    ap.add_argument(
        "--adamw-lr",
        type=float,
        default=3e-3,
        help="lr of the AdamW part (embeddings, head, vectors) of Muon and RegMuon",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/train_quality")
    args = ap.parse_args()
    args.steps = {"digits": args.steps_digits, "chars": args.steps_chars}
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k != "out"}  # no local paths
    results: dict[str, Any] = {
        "config": config,
        "provenance": {
            "torch": torch.__version__,
            "muonflow": muonflow.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "threads": torch.get_num_threads(),
        },
        "tasks": {},
    }
    makers = {"digits": digits_task, "chars": chars_task}
    t0 = time.perf_counter()
    for name in args.tasks:
        results["tasks"][name] = run_task(makers[name](), args)
    results["total_s"] = time.perf_counter() - t0
    tables = "\n\n".join(summarize(n, r) for n, r in results["tasks"].items())
    print("\n" + tables + f"\n\n(total {results['total_s']:.0f} s)")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "table.md").write_text(tables + "\n")
    plot(results, out / "train_quality.png")


if __name__ == "__main__":
    main()
