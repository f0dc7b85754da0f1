"""Training quality: RegMuon (ε sweep) vs torch.optim.Muon vs torch.optim.AdamW.

Tasks (``digits`` MLP, ``chars`` transformer), optimizers and the training loop (same initial
weights and minibatches per seed, linear lr decay to 0, no weight decay, wall time of the
training steps only) are :mod:`muonflow.training`'s; this script adds the tuning protocol:

    * lr tuning on seed 0 by the validation loss over a grid (AdamW: ``--lrs-adamw``; Muon and
      RegMuon at ε = ``--eps-tune``: ``--lrs-muon``, default :data:`LRS_MUON` per task); the
      relative-ε sweep ``--eps`` runs at RegMuon's tuned lr and picks the best ε on seed 0.
      The tuned AdamW, Muon, RegMuon at ``--eps-tune`` and RegMuon at the best ε then run on
      all ``--seeds``; tables show the test metric, mean ± std over seeds.
    * Wall time: median over the seeds.

Writes ``results.json``, ``table.md`` and ``train_quality.png`` to ``--out``. Sizes and
steps are configurable; the defaults take a few minutes on 1 CPU thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

import muonflow
from muonflow.training import Task, make_task, train

#: lr grids of Muon and RegMuon per task (centred on the best lr of a wider pilot sweep).
LRS_MUON = {"digits": [0.003, 0.01, 0.03], "chars": [0.02, 0.05, 0.1]}


def label(kind: str, eps: float | None) -> str:
    return f"RegMuon ε={eps:g}" if kind == "RegMuon" else kind


def run_task(task: Task, args: argparse.Namespace) -> dict[str, Any]:
    steps = args.steps[task.name]
    runs: dict[str, dict[str, Any]] = {}  # label -> {"lr", "tune": {lr: result}, "seeds": [...]}

    def go(kind: str, lr: float, eps: float | None, seed: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        r = train(
            task,
            kind.lower(),
            lr=lr,
            steps=steps,
            seed=seed,
            eps=0.03 if eps is None else eps,
            adamw_lr=args.adamw_lr,
        )
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
    t0 = time.perf_counter()
    for name in args.tasks:
        results["tasks"][name] = run_task(make_task(name), args)
    results["total_s"] = time.perf_counter() - t0
    tables = "\n\n".join(summarize(n, r) for n, r in results["tasks"].items())
    print("\n" + tables + f"\n\n(total {results['total_s']:.0f} s)")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "table.md").write_text(tables + "\n")
    plot(results, out / "train_quality.png")


if __name__ == "__main__":
    main()
