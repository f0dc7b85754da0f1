"""The ``regpart`` screen of every regressor seen, in one table per schedule, and its pick.

``bench_training.py --stage regpart`` writes one table per set of models (``OUT/regpart.md``:
each regressor's validation loss over its best tuned baseline's, tuning seeds 100-103, one
column per pair of lrs). This script joins the tables of several sets, splits the tasks by
schedule (a constant lr; a warm-up then a decay) and, in each class, picks a pair by the
**robust rule** fixed after round 13's held-out test (where the AdamW part at 0.32 under a
warm-up lost 37-61% on three of five seeds of a new model, one factor of 2 below a part that
blew up in the screen):

- each pair's *robust ratio* on a task is the larger of its ratio and the ratio of the pair with
  twice its AdamW part (a default should sit in a basin, not at a cliff's edge; the pairs at the
  grid's largest part have no such neighbour and are not picked);
- the pick has the smallest worst robust ratio over the class's tasks, ties within 5% broken by
  the smaller mean log ratio (of the pair itself): the ``lr`` stage's rule on robust ratios.

Usage::

    python benchmarks/regression_screen.py --out SCREEN full=OUT round5=R5 ...

Writes ``SCREEN/regression_screen.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bench_training as bt

from muonflow.optim import DEFAULTS

TIE = 1.05


def read_table(path: Path) -> tuple[list[str], dict[str, list[float]]]:
    """The candidates and each task's row of ratios of a ``regpart.md`` table."""
    lines = path.read_text().splitlines()
    names = [c.strip() for c in lines[0].split("|")[3:-1]]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if cells[0] not in ("worst", "mean log ratio"):
            rows[cells[0]] = [float(c) for c in cells[2:]]
    return names, rows


def pair_of(name: str) -> tuple[float, float] | None:
    """``(lr, part)`` of a column named ``"lr, part p"``; ``None`` for today's defaults."""
    if "part" not in name:
        return None
    lr, part = name.split(", part ")
    return float(lr), float(part)


def pick(names: list[str], rows: list[list[float]]) -> tuple[str, list[tuple]]:
    """The robust rule's pick and every column's (name, worst, worst robust, mean log ratio,
    tasks better than the first column)."""
    where = {pair_of(n): j for j, n in enumerate(names)}
    where[(DEFAULTS.lr, DEFAULTS.adamw_lr)] = 0  # today's defaults are that pair
    stats = []
    for j, n in enumerate(names):
        col = [r[j] for r in rows]
        lr, part = pair_of(n) or (DEFAULTS.lr, DEFAULTS.adamw_lr)
        up = where.get((lr, 2 * part))
        robust = math.inf if up is None else max(max(r[j], r[up]) for r in rows)
        mean_log = sum(map(math.log, col)) / len(col)
        stats.append((n, max(col), robust, mean_log, sum(r[j] < r[0] for r in rows)))
    best = min(s[2] for s in stats)
    chosen = min((s for s in stats if s[2] <= best * TIE), key=lambda s: s[3])
    return chosen[0], stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("sets", nargs="+", help="PROFILE=OUT of each bench_training.py run")
    args = ap.parse_args(argv)
    names: list[str] | None = None
    by_class: dict[str, dict[str, list[float]]] = {"constant": {}, "warm-up and decay": {}}
    for spec in args.sets:
        profile, out = spec.split("=", 1)
        cols, rows = read_table(Path(out) / "regpart.md")
        if names is not None and cols != names:
            raise SystemExit(f"{out}: its columns differ from the first table's")
        names = cols
        for task, row in rows.items():
            schedule = bt.PROFILES[profile].suite[task].schedule
            by_class["constant" if schedule == "constant" else "warm-up and decay"][task] = row
    assert names is not None
    lines = ["# The regpart screen by schedule (val loss / best tuned baseline, seeds 100-103)"]
    for cls, rows in by_class.items():
        chosen, stats = pick(names, list(rows.values()))
        lines += ["", f"## {cls}: {len(rows)} regressors; the robust rule picks **{chosen}**",
                  "", "| pair | worst | worst robust | mean log ratio | better than today |",
                  "|---|---:|---:|---:|---:|"]  # fmt: skip
        lines += [f"| {n} | {w:.3f} | {r:.3f} | {m:.3f} | {b} |" for n, w, r, m, b in stats]
        lines += ["", "| task | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        lines += [f"| {t} | " + " | ".join(f"{x:.3f}" for x in row) + " |"
                  for t, row in sorted(rows.items())]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "regression_screen.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
