"""Every task of the training benchmark on today's defaults, in one table and one figure.

``bench_training.py`` reports each set of models (the suite, the transfer set, rounds 3-12) in
its own ``OUT`` folder. This script reads the final stage's runs of each folder, keyed by
today's core (runs of an older core are not read: rerun ``--stage final --resume`` after a
change of the library), and writes, per task: ``RegMuon(model)``'s test loss over the best
tuned baseline's (± the paired SE), its paired difference with ``torch.optim.Muon`` at its
documented defaults, and the class of model the defaults by structure see. Usage::

    python benchmarks/training_overview.py --out OVERVIEW full=OUT transfer=TRANSFER round3=R3 ...

Writes ``OVERVIEW/overview.md`` and ``OVERVIEW/overview.png``; a set whose final stage is not
complete on today's core is refused with the tasks it lacks.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_training as bt

from muonflow.optim import lr_by_structure
from muonflow.optim.routing import _structural_kind as structural_kind
from muonflow.training import make_task

#: The classes the defaults by structure tell apart, in the table's order.
CLASSES = (
    "embedding or recurrent",
    "normalized, raw input, classifier",
    "normalized, raw input, regressor",
    "no normalization, classifier",
    "no normalization, regressor",
    "other",
)
_COLORS = dict(zip(CLASSES, ("tab:blue", "tab:red", "tab:orange", "tab:green", "tab:purple",
                             "tab:gray"), strict=True))  # fmt: skip


def model_class(prof: bt.Profile, task: str) -> str:
    """The class of ``task``'s model as ``RegMuon(model)``'s rules by structure read it (a
    throwaway model; the head from the output layer's first gradient)."""
    t = prof.suite[task]
    model = make_task(t.builder, **t.options).make_model()
    head = "classifier" if bt.softmax_headed(prof, task) else "regressor"
    kinds = {structural_kind(m) for m in model.modules()}
    if kinds & {"embedding", "recurrent"}:
        return "embedding or recurrent"
    if "normalization" in kinds:
        return f"normalized, raw input, {head}" if lr_by_structure(model)[0] else "other"
    return f"no normalization, {head}"


def collect(sets: dict[str, Path]) -> list[dict[str, Any]]:
    """One row per task of every set: the final stage's paired comparisons on today's core."""
    rows, missing = [], {}
    for name, out in sets.items():
        prof = bt.PROFILES[name]
        try:
            store = bt.Store(out / "results.json", name)
        except bt.ResultsError as e:
            raise SystemExit(str(e)) from None
        final = bt.analyze_final(store, prof, bt.load_baselines(prof, out))
        lacking = [t for t in prof.suite if t not in final]
        if lacking:
            missing[name] = lacking
            continue
        for task, r in final.items():
            d = r["default"]
            rows.append({"set": name, "task": task, "schedule": prof.suite[task].schedule,
                         "class": model_class(prof, task), "best": r["best"],
                         "ratio": d["ratio"], "ratio_se": d["ratio_se"],
                         "vs_doc": tuple(d["vs_muon_doc"])})  # fmt: skip
    if missing:
        raise SystemExit("the final stage is not complete on today's core for "
                         + "; ".join(f"{n}: {', '.join(t)}" for n, t in missing.items())
                         + " (run bench_training.py --stage final --resume on that OUT)")
    return rows


def _verdict(diff: tuple[float, float]) -> str:
    m, s = diff
    if m < 0:
        return "better" if m <= -2 * s else "better (< 2 SE)"
    return "**worse**" if m >= 2 * s else "worse (< 2 SE)"


def table(rows: list[dict[str, Any]]) -> str:
    """The overview: counts per class, then every task (by class, then ratio)."""
    n = len(rows)
    within = sum(r["ratio"] <= bt.TARGET for r in rows)
    better = sum(r["vs_doc"][0] < 0 for r in rows)
    worse2 = sum(_verdict(r["vs_doc"]) == "**worse**" for r in rows)
    lines = [f"{n} tasks: within {bt.TARGET}x of the best tuned baseline on {within}; better "
             f"than `torch.optim.Muon` at its documented defaults in the mean on {better}, worse "
             f"by 2 paired SE or more on {worse2}.", "",
             "| class | tasks | within 3% | ratio: median (range) | better than Muon's defaults "
             "| worse by ≥ 2 SE |", "|---|---:|---:|---|---:|---:|"]  # fmt: skip
    for c in CLASSES:
        sub = [r for r in rows if r["class"] == c]
        if not sub:
            continue
        rs = [r["ratio"] for r in sub]
        lines.append(
            f"| {c} | {len(rs)} | {sum(x <= bt.TARGET for x in rs)} | "
            f"{statistics.median(rs):.2f} ({min(rs):.2f}-{max(rs):.2f}) | "
            f"{sum(r['vs_doc'][0] < 0 for r in sub)} | "
            f"{sum(_verdict(r['vs_doc']) == '**worse**' for r in sub)} |")
    lines += ["", "| task | set | class | schedule | ratio ± SE (paired) | ≤ 1.03? | "
              "Δ vs Muon's defaults | vs Muon's defaults |",
              "|---|---|---|---|---:|---|---:|---|"]  # fmt: skip
    for r in sorted(rows, key=lambda r: (CLASSES.index(r["class"]), r["ratio"])):
        m, s = r["vs_doc"]
        lines.append(f"| {r['task']} | {r['set']} | {r['class']} | {r['schedule']} | "
                     f"{r['ratio']:.3f} ± {r['ratio_se']:.3f} | "
                     f"{'yes' if r['ratio'] <= bt.TARGET else '**no**'} | "
                     f"{m:+.4f} ± {s:.4f} | {_verdict(r['vs_doc'])} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def figure(rows: list[dict[str, Any]], path: Path) -> None:
    """Left: each task's ratio to the best tuned baseline (sorted, ± SE, log scale); right: the
    ratio against the paired difference with Muon's defaults in SEs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5.2))
    order = sorted(rows, key=lambda r: r["ratio"])
    for i, r in enumerate(order):
        ax.errorbar(i, r["ratio"], yerr=r["ratio_se"], fmt="o", ms=3.5, lw=0.8,
                    color=_COLORS[r["class"]])  # fmt: skip
    ax.axhline(bt.TARGET, color="k", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("task (sorted)")
    ax.set_ylabel("test loss / best tuned baseline's")
    ax.set_title(f"RegMuon(model) on {len(rows)} tasks (dashed: {bt.TARGET}x)")
    for c in CLASSES:
        sub = [r for r in rows if r["class"] == c]
        if not sub:
            continue
        t = [r["vs_doc"][0] / r["vs_doc"][1] if r["vs_doc"][1] > 0 else 0.0 for r in sub]
        bx.scatter([r["ratio"] for r in sub], [max(-40.0, min(40.0, x)) for x in t], s=16,
                   color=_COLORS[c], label=f"{c} ({len(sub)})")  # fmt: skip
    bx.axhline(0, color="k", lw=0.8)
    bx.axhline(2, color="k", lw=0.6, ls=":")
    bx.axvline(bt.TARGET, color="k", lw=0.8, ls="--")
    bx.set_xscale("log")
    bx.set_xlabel("test loss / best tuned baseline's")
    bx.set_ylabel("Δ vs Muon's documented defaults / paired SE (clipped at ±40)")
    bx.set_title("above 0: worse than torch.optim.Muon() as dropped in")
    bx.text(bx.get_xlim()[0], 2, " 2 SE", va="bottom", fontsize=7)
    bx.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("sets", nargs="+", help="PROFILE=OUT: a set and its bench_training.py OUT")
    args = ap.parse_args(argv)
    sets: dict[str, Path] = {}
    for item in args.sets:
        name, sep, out = item.partition("=")
        if not sep or name not in bt.PROFILES:
            raise SystemExit(f"expected PROFILE=OUT with PROFILE one of "
                             f"{', '.join(bt.PROFILES)}, got {item!r}")  # fmt: skip
        if name in sets:
            raise SystemExit(f"{name} given twice")
        if not (Path(out) / "results.json").exists():
            raise SystemExit(f"{out}/results.json does not exist")
        sets[name] = Path(out)
    torch.set_num_threads(1)
    rows = collect(sets)
    args.out.mkdir(parents=True, exist_ok=True)
    text = "# `RegMuon(model)` on every task, today's defaults\n\n" + table(rows)
    (args.out / "overview.md").write_text(text)
    (args.out / "overview.json").write_text(json.dumps(rows, indent=1) + "\n")
    figure(rows, args.out / "overview.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
