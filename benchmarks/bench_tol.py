"""How accurate must the map be? RegMuon(model, tol=tol) trained on paired seeds per tol.

Every run is ``RegMuon(model, tol=tol)`` at the library's other defaults (the ``cnn`` task at
a small lr, 0.0025, where its tuned Muon lr lies), routed by structure, on tasks of
``benchmarks/bench_training.py``'s suite (its runner and results file); the map runs on its
default path (``method="auto"``, or ``--method`` to pin one). Seeds are fresh (600 + i): the
training benchmark tunes on 100-101 and evaluates on 0-4. The same seed gives the same initial
weights and minibatches for every tol, so differences are paired.

Reported per task and tol: mean test loss ± SE, and the paired difference against the
tightest tol (``Δ = loss(tol) − loss(tol₀)``, mean ± SE of the per-seed differences); a tol
"costs nothing measurable" when ``|Δ| < SE`` on every task. The map's plan for each matrix
shape of each task (on a real gradient, at the tightest and loosest tol) is printed too.

Usage: ``python benchmarks/bench_tol.py --out DIR [--seeds 8] [--jobs 2] [--method auto]
[--also mixed@0.1] [--tasks gpt2_d64_l2,sort,moe,cnn] [--tols 1e-2,3e-2,0.1,0.2]
[--report-only]``
(``--also``: extra ``method@tol`` arms on the same seeds, compared with the tightest tol).
Results go to ``DIR/results.json`` after every finished run (a rerun resumes), the table to
``DIR/summary.md``. Runs use one torch thread each, ``--jobs`` (at most 2) processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
from pathlib import Path
from typing import Any

import torch
from bench_training import PROFILES, SUITE, Runner, Store, make_spec, run_all

from muonflow.optim import RegMuon
from muonflow.polar import plan_auto
from muonflow.training import make_task

#: lr of tasks whose best lr is far from the default (the CNN: its tuned Muon lr is 0.0025-0.005).
TASK_LR = {"cnn": 0.0025}
FIRST_SEED = 600


Arm = tuple[str, float]  # (method, tol)


def specs(tasks: list[str], arms: list[Arm], seeds: int) -> list[dict[str, Any]]:
    prof = dataclasses.replace(PROFILES["full"], tune_seeds=(), eval_seeds=())
    out = []
    for seed in range(FIRST_SEED, FIRST_SEED + seeds):  # seed-major: paired runs finish together
        for task in tasks:
            for method, tol in arms:
                but: dict[str, Any] = {"tol": tol}
                if task in TASK_LR:
                    but["lr"] = TASK_LR[task]
                if method != "auto":
                    but["method"] = method
                out.append(make_spec(prof, task, seed, {"arm": "default_but", "but": but}))
    return out


def arm_name(arm: Arm) -> str:
    return f"tol {arm[1]:g}" if arm[0] == "auto" else f"{arm[0]} tol {arm[1]:g}"


def paired(base: list[float], other: list[float]) -> tuple[float, float]:
    """Mean and standard error of the per-seed differences ``other − base``."""
    d = [b - a for a, b in zip(base, other, strict=True)]
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.inf
    return statistics.fmean(d), se


def plans(task: str, tols: list[float], method: str) -> list[str]:
    """The map's plan for each RegMuon-routed matrix shape of ``task`` (one real gradient)."""
    t = make_task(SUITE[task].builder, **SUITE[task].options)
    torch.manual_seed(0)
    model = t.make_model()
    t.train_loss(model, torch.Generator().manual_seed(0)).backward()
    opt = RegMuon(model)
    rows, seen = [], set()
    for group in opt.param_groups:
        if group["algorithm"] != "regmuon":
            continue
        for p in group["params"]:
            if p.grad is None or p.grad.ndim < 2:
                continue
            G = p.grad.flatten(1) if p.grad.ndim == 4 else p.grad  # conv kernels: out x rest
            key = tuple(G.shape)
            if key in seen:
                continue
            seen.add(key)
            r = min(G.shape[-2:])
            eps = 0.03 * torch.linalg.vector_norm(G, dim=(-2, -1)) / math.sqrt(r)
            cells = []
            for tol in (tols[0], tols[-1]):
                if method != "auto":
                    cells.append(method)
                    continue
                p_ = plan_auto(G, eps, tol)
                cells.append(f"{p_.method} {str(p_.dtype)[6:]}")
            rows.append(f"{task} {'x'.join(map(str, key))}: " + " / ".join(cells))
    return rows


def report(store: Store, tasks: list[str], arms: list[Arm], seeds: int) -> str:
    by: dict[tuple[str, Arm], dict[int, float]] = {}
    for s in specs(tasks, arms, seeds):
        r = store.get(s)
        if r is None or r.get("test_loss") is None:
            continue
        arm = (s["opt"]["but"].get("method", "auto"), s["opt"]["but"]["tol"])
        by.setdefault((s["task"], arm), {})[s["seed"]] = r["test_loss"]
    base, rest = arms[0], arms[1:]
    lines = [
        f"RegMuon(model, tol=tol); test loss, mean ± SE over paired seeds; Δ = loss(arm) − "
        f"loss({arm_name(base)}), mean ± SE of the per-seed differences",
        "",
        "| task | seeds | " + " | ".join(arm_name(a) for a in arms) + " | "
        + " | ".join(f"Δ {arm_name(a)}" for a in rest) + " |",
        "|---|---:|" + "---:|" * (2 * len(arms) - 1),
    ]
    ok = dict.fromkeys(rest, True)  # |Δ| < SE on every task
    no_loss = dict.fromkeys(rest, True)  # Δ < SE on every task (not worse by 1 SE)
    for task in tasks:
        b = by.get((task, base), {})
        common = sorted(set(b).intersection(*(by.get((task, a), {}) for a in rest)))
        if len(common) < 2:
            lines.append(f"| {task} | {len(common)} | (running) |")
            ok, no_loss = dict.fromkeys(ok, False), dict.fromkeys(no_loss, False)
            continue
        cells = []
        for a in arms:
            v = [by[(task, a)][s] for s in common]
            cells.append(f"{statistics.fmean(v):.4f} ± {statistics.stdev(v) / len(v) ** 0.5:.4f}")
        for a in rest:
            m, se = paired([b[s] for s in common], [by[(task, a)][s] for s in common])
            ok[a] = ok[a] and abs(m) < se
            no_loss[a] = no_loss[a] and m < se
            cells.append(f"{m:+.4f} ± {se:.4f}" + (" ✓" if abs(m) < se else ""))
        lines.append(f"| {task} | {len(common)} | " + " | ".join(cells) + " |")
    tols = [a[1] for a in rest if a[0] == "auto"]
    loosest = max([base[1], *(t for t in tols if ok[("auto", t)])])
    loosest_loss = max([base[1], *(t for t in tols if no_loss[("auto", t)])])
    lines += [
        "",
        f"✓: |Δ| < SE. Loosest tol with |Δ| < SE on every task: {loosest:g}; loosest with "
        f"Δ < SE (no loss of one SE or more; gains allowed) on every task: {loosest_loss:g}",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=2, choices=[1, 2])
    ap.add_argument("--method", default="auto")
    ap.add_argument("--also", default="", help="extra arms, e.g. mixed@0.1")
    ap.add_argument("--tasks", default="gpt2_d64_l2,sort,moe,cnn")
    ap.add_argument("--tols", default="1e-2,3e-2,0.1,0.2")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    tasks = args.tasks.split(",")
    unknown = sorted(set(tasks) - set(SUITE))
    if unknown:
        raise SystemExit(f"unknown tasks {unknown}; valid: {', '.join(SUITE)}")
    tols = sorted(float(t) for t in args.tols.split(","))
    arms: list[Arm] = [(args.method, t) for t in tols]
    for extra in filter(None, args.also.split(",")):
        method, tol = extra.split("@")
        arms.append((method, float(tol)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = Store(out / "results.json", profile=f"tol-{args.method}")
    torch.set_num_threads(1)
    if not args.report_only:
        for task in tasks:
            print("\n".join(plans(task, tols, args.method)), flush=True)
        runner = Runner(args.jobs)
        try:
            run_all(store, specs(tasks, arms, args.seeds), runner, "tol")
        finally:
            runner.close()
    text = report(store, tasks, arms, args.seeds)
    (out / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
