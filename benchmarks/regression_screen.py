"""The ``regpart`` (``regdecay``, ``regcautious``) screen of every regressor seen, one table per
schedule, and its pick.

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

``--stage regdecay`` joins the ``regdecay`` tables instead (one column per decay λ of a
regressor's matrices, today's defaults λ = 0) and applies the same rule with a decay's
neighbour at twice its λ (round 16's two Friedman #3 models lost to decay 0.5, where the screen
had shown the four seen losing 1-19%, against 1-6% at 0.25; today's λ = 0 is its own neighbour;
the grid's largest λ has none and is not picked).

``--stage regcautious`` joins the ``regcautious`` tables (one column per cautious decay λ of a
regressor's matrices) the same way, and ``--stage regnoise`` the ``regnoise`` tables (one column
per exponent ``a`` of the step that reads the gradient's noise; neighbour at ``2a``), and
``--stage normnoise`` the ``normnoise`` tables (the same step for normalized classifiers that
read raw inputs: the script's classes and rules apply to any one-lever stage).

``--stage vitsplit`` joins the ``vitsplit`` tables (one column per pair of factors ``a x b`` on a
ViT's round-10 matrix lr and AdamW part); it takes ``--paired`` only, and its figure has one
panel per class and matrix factor, against the AdamW part's factor (today's column drawn at the
pair the library uses in the class: round 22's factor on both under a warm-up, 1 under a
constant lr).

``--stage vittokens`` joins the ``vittokens`` tables (one column per factor ``g`` on round 10's
lrs for a ViT with few tokens; today's drawn at the left end), and ``--stage fewrows`` the
``fewrows`` tables (one column per factor ``f`` on a regressor's every step once it reads a small
table; today's, ``f = 1``, drawn at the right end; LayerNorm MLPs marked).

``--stage normmlp`` joins the ``normmlp`` tables (pairs ``a x b`` on a normalized MLP
classifier's round-10 matrix lr and AdamW part), as ``vitsplit`` (today's at 1 x 1), and
``--stage normwd`` the ``normwd`` tables (one column per decay ``d`` of a normalized
classifier's AdamW part; today's, ``d = 0``, drawn at the left end), and ``--stage fitwd``
the ``fitwd`` tables (pairs ``d x c``: that decay switched on once the head's gradient has
fallen to ``c`` of its peak; as ``normmlp``, one panel per ``d``), ``--stage cnndecay`` the
``cnndecay`` tables (one column per decay ``d`` of a batch-norm CNN's matrices, as ``normwd``)
``--stage convdecay`` the ``convdecay`` tables (the same for its conv kernels only) and
``--stage cnnsplit`` the ``cnnsplit`` tables (pairs ``c x l``: the kernels' decay, the other
matrices'; as ``fitwd``, one panel per ``c``) and ``--stage cnnlinear`` the same for the larger
decays of the linear layers (one panel, kernels 0), ``--stage cnnkernel`` the larger decays of
the conv kernels under a warm-up (one panel, linear layers 1, the kernels' decay along the axis),
``--stage mlpsmall`` a normalized MLP classifier's two lrs below round 28's (as ``normmlp``) and
``--stage vitdecay`` the ``vitdecay`` tables (one column per decay ``d`` of a ViT's matrices, as
``cnndecay``; the 4x4-patch ViTs marked) and ``--stage cnnstep`` the ``cnnstep`` tables (pairs
``a x b`` on a batch-norm CNN's round-10 matrix lr and AdamW part, as ``normmlp``; the CNNs on
other images than the digits marked), ``--stage cnnmid`` the same for the matrices' factors
between 1 and 2, and ``--stage mlpbeta`` the ``mlpbeta`` tables (one column per β2 of a
normalized MLP's AdamW part, as ``cnndecay``; today's 0.95 drawn at the left end).

``--paired`` (any one-lever stage: ``regdecay``, ``regcautious``, ``regnoise``, ``normnoise``,
``vitlr``, ``vitsplit``, ``vittokens``, ``fewrows``, ``normmlp``, ``normwd``, ``fitwd``,
``cnndecay``, ``convdecay``, ``cnnsplit``, ``cnnlinear``, ``cnnkernel``, ``mlpsmall``,
``vitdecay``, ``cnnstep``, ``cnnmid``, ``mlpbeta``) picks by
the **paired rule** instead, fixed after round 17's test (decay 0.5 under a warm-up lost 3-4 SE on
the held-out Friedman #3 models both times):
the held-out test's own harm criterion applied to the seen tasks first. A decay is *admissible*
if on no task of the class it is worse than today's defaults by 2 paired SE or more (the
per-seed differences of the validation loss over the tuning seeds, read from each set's
``OUT/results.json``); the pick is the admissible decay with the smallest mean log ratio,
today's defaults if none is.

Usage::

    python benchmarks/regression_screen.py --out SCREEN full=OUT round5=R5 ...
    python benchmarks/regression_screen.py --stage regdecay --out SCREEN full=OUT ...
    python benchmarks/regression_screen.py --stage regdecay --paired --out SCREEN full=OUT ...
    python benchmarks/regression_screen.py --stage regcautious --paired --out SCREEN full=OUT ...
    python benchmarks/regression_screen.py --stage regnoise --paired --out SCREEN full=OUT ...
    python benchmarks/regression_screen.py --stage vitsplit --paired --out SCREEN full=OUT ...

Writes ``SCREEN/regression_screen.md`` (``STAGE_screen.md``, ``STAGE_paired.md``) and
``SCREEN/regression_screen.png`` (``STAGE_screen.png``, ``STAGE_paired.png``): each regressor's
ratio against the AdamW part's lr per class and matrix lr (against the decay per class).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import bench_training as bt

from muonflow.optim import ATTENTION_WARMUP_FACTOR, DEFAULTS

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


#: The one-lever stages, each with its lever (the one key of a column's ``levers``), the prefix
#: of its columns' names (``"regression decay λ"``) and what its figure's axis reads.
DECAY_STAGES = {"regdecay": ("regression_decay", "regression decay",
                             "decay λ of the matrices (0: none)"),
                "regcautious": ("regression_cautious", "regression cautious",
                                "cautious decay λ of the matrices (0: none)"),
                "regnoise": ("regression_noise", "regression noise",
                             "exponent a of the signal's share on every step (0: none)"),
                "normnoise": ("softmax_noise", "softmax noise",
                              "exponent a of the signal's share on every step (0: none)"),
                "vitlr": ("attention_lr", "attention lr",
                          "factor f on round 10's lrs for a ViT (1: today's)"),
                "vitsplit": ("attention_split", "attention split",
                             "factor b on round 10's AdamW part for a ViT"),
                "vittokens": ("few_tokens", "few tokens",
                              "factor g on round 10's lrs for a ViT with few tokens"),
                "fewrows": ("few_rows", "few rows",
                            "factor f on a regressor's every step on a small table (1: today's)"),
                "normmlp": ("mlp_split", "mlp split",
                            "factor b on round 10's AdamW part for a normalized MLP"),
                "normwd": ("norm_part_decay", "norm part decay",
                           "decay d of a normalized classifier's AdamW part (0: none)"),
                "fitwd": ("fit_part_decay", "fit part decay",
                          "threshold c: the head's gradient at c of its peak"),
                "cnndecay": ("cnn_decay", "cnn decay",
                             "decay d of a batch-norm CNN's matrices (0: none)"),
                "convdecay": ("conv_decay", "conv decay",
                              "decay d of a batch-norm CNN's conv kernels (0: none)"),
                "cnnsplit": ("cnn_decays", "cnn decays",
                             "decay l of a batch-norm CNN's linear layers"),
                "cnnlinear": ("cnn_decays", "cnn decays",
                              "decay l of a batch-norm CNN's linear layers"),
                "cnnkernel": ("cnn_decays", "cnn decays",
                              "decay c of a batch-norm CNN's conv kernels"),
                "mlpsmall": ("mlp_split", "mlp split",
                             "factor b on round 10's AdamW part for a normalized MLP"),
                "vitdecay": ("vit_decay", "vit decay", "decay d of a ViT's matrices (0: none)"),
                "cnnstep": ("cnn_split", "cnn split", "AdamW part x b (round 10's)"),
                "cnnmid": ("cnn_split", "cnn split", "AdamW part x b (round 10's)"),
                "mlpbeta": ("mlp_beta2", "mlp beta2", "β2 of a normalized MLP's AdamW part")}
#: The stages whose columns are pairs ``a x b`` (the matrices' factor, the AdamW part's).
SPLIT_STAGES = ("vitsplit", "normmlp", "fitwd", "cnnsplit", "cnnlinear", "cnnkernel", "mlpsmall",
                "cnnstep", "cnnmid")


def setting_name(prefix: str, value: float | list[float]) -> str:
    """A one-lever stage's column name for a lever's setting: ``"attention lr 3"``, or for a
    pair ``"attention split 2x8"``."""
    if isinstance(value, list):
        return f"{prefix} " + "x".join(f"{v:g}" for v in value)
    return f"{prefix} {value:g}"


def split_of(name: str) -> tuple[float, float] | None:
    """``(a, b)`` of a ``vitsplit``, ``normmlp``, ``fitwd``, ``cnnsplit`` or ``cnnstep`` column
    (``"attention split 2x8"``, ``"mlp split 8x4"``, ``"fit part decay 1x0.1"``, ``"cnn decays
    1x4"``, ``"cnn split 2x1"``); ``None`` for today's."""
    if not name.startswith(("attention split ", "mlp split ", "fit part decay ", "cnn decays ",
                            "cnn split ")):
        return None
    a, b = name.rsplit(" ", 1)[1].split("x")
    return float(a), float(b)


def drawn_pair(name: str, stage: str) -> tuple[float, float] | None:
    """The pair of a split stage's column as its figure draws it: ``(panel, axis)``, that is
    :func:`split_of`, except for ``cnnkernel``, whose pairs ``c x l`` are drawn one panel per
    linear layers' decay ``l``, the kernels' decay ``c`` along the axis."""
    ab = split_of(name)
    return (ab[1], ab[0]) if ab and stage == "cnnkernel" else ab


def decay_of(name: str) -> float:
    """λ of a decay stage's column (``"regression decay λ"``, ``"regression cautious λ"``); 0 for
    today's defaults."""
    prefixes = tuple(f"{prefix} " for _, prefix, _ in DECAY_STAGES.values())
    return float(name.rsplit(" ", 1)[1]) if name.startswith(prefixes) else 0.0


def neighbours(names: list[str], stage: str = "regpart") -> list[int | None]:
    """Each column's neighbour (the index of the pair with twice its AdamW part, or of twice its
    decay), ``None`` where the grid has none."""
    if stage in DECAY_STAGES:
        where_d = {decay_of(n): j for j, n in enumerate(names)}
        return [where_d.get(2 * decay_of(n)) for n in names]
    where = {pair_of(n): j for j, n in enumerate(names)}
    where[(DEFAULTS.lr, DEFAULTS.adamw_lr)] = 0  # today's defaults are that pair
    out = []
    for n in names:
        lr, part = pair_of(n) or (DEFAULTS.lr, DEFAULTS.adamw_lr)
        out.append(where.get((lr, 2 * part)))
    return out


def pick(names: list[str], rows: list[list[float]], stage: str = "regpart"
         ) -> tuple[str, list[tuple]]:  # fmt: skip
    """The robust rule's pick and every column's (name, worst, worst robust, mean log ratio,
    tasks better than the first column)."""
    ups = neighbours(names, stage)
    stats = []
    for j, n in enumerate(names):
        col = [r[j] for r in rows]
        up = ups[j]
        robust = math.inf if up is None else max(max(r[j], r[up]) for r in rows)
        mean_log = sum(map(math.log, col)) / len(col)
        stats.append((n, max(col), robust, mean_log, sum(r[j] < r[0] for r in rows)))
    best = min(s[2] for s in stats)
    chosen = min((s for s in stats if s[2] <= best * TIE), key=lambda s: s[3])
    return chosen[0], stats


def _panel(ax: Any, xs: list[float], ticks: list[str], rows: dict[str, list[float]],
           title: str, xlabel: str, marked: frozenset[str] = frozenset(),
           marked_label: str = "Friedman #3") -> None:  # fmt: skip
    """One panel of the screen's figures: each task's ratios against ``xs`` (thin lines, blue for
    the ``marked`` tasks), their median (thick), the 1.03 line; log scales clipped at 10x."""
    for task, ratios in rows.items():
        mark = task in marked
        ax.plot(xs, ratios, color="C0" if mark else "0.6", lw=1.2 if mark else 0.7,
                alpha=0.9 if mark else 0.7, marker="." if len(xs) == 1 else None,
                label=marked_label if mark and task == min(set(rows) & marked) else None)
    median = [sorted(col)[len(rows) // 2] for col in zip(*rows.values(), strict=True)]
    ax.plot(xs, median, color="C3", lw=2.2, marker="o", label="median")
    ax.axhline(1.03, color="k", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, ticks)
    ax.set_yscale("log")
    ax.set_ylim(0.85, 10)  # blow-ups beyond 10x are clipped
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)


def figure(names: list[str], by_class: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Per schedule class and matrix lr: each regressor's ratio against the AdamW part's lr
    (thin lines), the median (thick), log scales; the cliff a part's doubling can reach shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [pair_of(n) or (DEFAULTS.lr, DEFAULTS.adamw_lr) for n in names]
    lrs = sorted({lr for lr, _ in pairs}, reverse=True)
    fig, axes = plt.subplots(len(by_class), len(lrs), figsize=(4.2 * len(lrs), 3.6 * len(by_class)),
                             sharey=True, squeeze=False)  # fmt: skip
    for row, (cls, rows) in zip(axes, by_class.items(), strict=True):
        for ax, lr in zip(row, lrs, strict=True):
            cols = sorted((part, j) for j, (x, part) in enumerate(pairs) if x == lr)
            parts = [p for p, _ in cols]
            _panel(ax, parts, [f"{p:g}" for p in parts],
                   {t: [r[j] for _, j in cols] for t, r in rows.items()},
                   f"{cls} ({len(rows)}): matrix lr {lr:g}", "AdamW part's lr")
        row[0].set_ylabel("val loss / best tuned baseline's")
        row[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def paired_pick(names: list[str], rows: list[list[float]], diffs: list[list[list[float]]]
                ) -> tuple[str, list[tuple]]:  # fmt: skip
    """The paired rule's pick and every column's (name, worst, tasks where it is worse than the
    first column by 2 paired SE or more, mean log ratio, tasks better than the first column);
    ``diffs[i][j]``: task i's per-seed differences, column j minus the first column."""
    stats = []
    for j, n in enumerate(names):
        col = [r[j] for r in rows]
        harmed = 0
        for d in diffs:
            m, e = statistics.fmean(d[j]), statistics.stdev(d[j]) / math.sqrt(len(d[j]))
            harmed += m > 0 and m >= 2 * e
        mean_log = sum(map(math.log, col)) / len(col)
        stats.append((n, max(col), harmed, mean_log, sum(r[j] < r[0] for r in rows)))
    chosen = min((s for s in stats if s[2] == 0), key=lambda s: s[3], default=stats[0])
    return chosen[0], stats


@functools.cache
def _runs(out: Path) -> list[dict[str, Any]]:
    """The stored runs of a set's ``OUT/results.json``, read once per set."""
    return list(json.loads((out / "results.json").read_text())["runs"].values())


def seed_diffs(out: Path, task: str, names: list[str], stage: str = "regdecay"
               ) -> list[list[float]]:  # fmt: skip
    """Per column of a decay stage's table, ``task``'s per-seed validation-loss differences from
    today's defaults (seeds :data:`bench_training.LR_SEEDS`), from ``OUT/results.json``."""
    lever, prefix, _ = DECAY_STAGES[stage]
    by: dict[str, dict[int, float]] = {}
    for r in _runs(out):
        spec = r["spec"]
        if spec["task"] != task or spec["seed"] not in bt.LR_SEEDS:
            continue
        opt = spec["opt"]
        if opt.get("arm") == "default":
            name = names[0]
        elif set(opt.get("levers", {})) == {lever}:
            name = setting_name(prefix, opt["levers"][lever])
        else:
            continue
        by.setdefault(name, {})[spec["seed"]] = (math.inf if r.get("val_loss") is None
                                                 else r["val_loss"])  # fmt: skip
    base = by[names[0]]
    return [[by[n][s] - base[s] for s in bt.LR_SEEDS] for n in names]


def decay_figure(names: list[str], by_class: dict[str, dict[str, list[float]]], path: Path,
                 marked: frozenset[str] = frozenset(), marked_label: str = "Friedman #3",
                 what: str = "decay λ of the matrices (0: none)", noun: str = "regressors",
                 today: str | dict[str, str] = "0", today_x: float | None = None
                 ) -> None:  # fmt: skip
    """Per schedule class: each regressor's ratio against the decay of its matrices (thin lines,
    blue for the ``marked`` tasks, named ``marked_label``: the Friedman #3 models, or for
    ``regnoise`` the diabetes MLPs; today's λ = 0 drawn at the grid's left end, or at
    ``today_x``), the median (thick), log scales."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    decays = [decay_of(n) for n in names]
    low = min(d for d in decays if d > 0) / 2 if today_x is None else today_x  # today's x
    order = sorted(range(len(names)), key=lambda j: decays[j] or low)
    xs = [decays[j] or low for j in order]
    fig, axes = plt.subplots(1, len(by_class), figsize=(5.0 * len(by_class), 3.8), sharey=True,
                             squeeze=False)  # fmt: skip
    for ax, (cls, rows) in zip(axes[0], by_class.items(), strict=True):
        label = today if isinstance(today, str) else today[cls]
        _panel(ax, xs, [f"{decays[j]:g}" if decays[j] else label for j in order],
               {t: [r[j] for j in order] for t, r in rows.items()},
               f"{cls} ({len(rows)} {noun})", what, marked, marked_label)
    axes[0][0].set_ylabel("val loss / best tuned baseline's")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: The pair of factors ``RegMuon(model)`` puts on a ViT's round-10 lrs today, per schedule class:
#: where the ``vitsplit`` figure draws today's column.
TODAY_SPLIT = {"constant": (1.0, 1.0),
               "warm-up and decay": (ATTENTION_WARMUP_FACTOR, ATTENTION_WARMUP_FACTOR)}


#: What the ``vittokens`` figure's left end (today's) is, per class: round 22's factor under a
#: warm-up, round 10's step (``g = 1``) under a constant lr.
TODAY_TOKENS = {"constant": "today (1)",
                "warm-up and decay": f"today ({ATTENTION_WARMUP_FACTOR:g})"}


#: What the ``convdecay`` figure's left end (today's when it ran, after round 33) is, per class:
#: round 33's decay 1 of every matrix under a constant lr, none under a warm-up.
TODAY_CONV = {"constant": "today (all 1)", "warm-up and decay": "today (0)"}


def split_figure(names: list[str], by_class: dict[str, dict[str, list[float]]], path: Path,
                 marked: frozenset[str] = frozenset(), marked_label: str = "4x4 patches",
                 stage: str = "vitsplit", noun: str = "ViTs") -> None:  # fmt: skip
    """Per schedule class (rows) and matrix factor ``a`` (columns): each model's ratio against
    the AdamW part's factor ``b`` (thin lines, blue for the ``marked``), the median (thick), log
    scales; today's column drawn at the class's pair (:data:`TODAY_SPLIT` for ``vitsplit``, 1 x
    1 for ``normmlp``; not drawn for ``fitwd``, whose panels are the decay ``d``; for ``cnnsplit``
    at 1 x 1 under a constant lr, round 33's rule, and not drawn under a warm-up, 0 x 0). For
    ``cnnkernel`` each pair is read the other way round: one panel per linear layers' decay, the
    kernels' decay along the axis (today's 4 x 1 under a warm-up)."""
    today = (TODAY_SPLIT if stage == "vitsplit" else {} if stage == "fitwd"
             else {"constant": (1.0, 1.0)} if stage == "cnnsplit"
             else {"constant": (0.0, 4.0)} if stage == "cnnlinear"
             else {"warm-up and decay": (1.0, 4.0)} if stage == "cnnkernel"
             else {"constant": (0.5, 0.5)} if stage == "mlpsmall"
             else dict.fromkeys(TODAY_SPLIT, (1.0, 1.0)))  # fmt: skip
    first = ("decay" if stage == "fitwd" else "kernels' decay" if stage in ("cnnsplit", "cnnlinear")
             else "linear layers' decay" if stage == "cnnkernel" else "matrices x")  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mats = sorted({ab[0] for n in names if (ab := drawn_pair(n, stage))}
                  | {a for a, _ in today.values()})  # fmt: skip
    by_class = {cls: rows for cls, rows in by_class.items() if rows}  # a row per class screened
    fig, axes = plt.subplots(len(by_class), len(mats), figsize=(max(4.2 * len(mats), 6.4),
                             3.6 * len(by_class)), sharey=True, squeeze=False)  # fmt: skip
    for row, (cls, rows) in zip(axes, by_class.items(), strict=True):
        pairs = [drawn_pair(n, stage) or today.get(cls) for n in names]
        for ax, a in zip(row, mats, strict=True):
            cols = sorted({ab[1]: j for j, ab in enumerate(pairs) if ab and ab[0] == a}.items())
            if not cols or not rows:
                ax.set_axis_off()
                continue
            parts = [b for b, _ in cols]
            _panel(ax, parts, [f"{b:g}" for b in parts],
                   {t: [r[j] for _, j in cols] for t, r in rows.items()},
                   f"{cls} ({len(rows)} {noun}): {first} {a:g}", DECAY_STAGES[stage][2],
                   marked, marked_label)
        row[0].set_ylabel("val loss / best tuned baseline's")
        row[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--stage", choices=("regpart", *DECAY_STAGES), default="regpart")
    ap.add_argument("--paired", action="store_true", help="a decay stage: the paired rule's pick")
    ap.add_argument("sets", nargs="+", help="PROFILE=OUT of each bench_training.py run")
    args = ap.parse_args(argv)
    if args.paired and args.stage not in DECAY_STAGES:
        raise SystemExit(f"--paired picks a decay: use it with --stage {' or '.join(DECAY_STAGES)}")
    if args.stage in SPLIT_STAGES and not args.paired:
        raise SystemExit(f"--stage {args.stage} picks by the paired rule only: add --paired")
    names: list[str] | None = None
    by_class: dict[str, dict[str, list[float]]] = {"constant": {}, "warm-up and decay": {}}
    outs: dict[str, Path] = {}
    marked: set[str] = set()  # the tasks the figure marks (Friedman #3, diabetes MLPs, ViTs)
    marked_label = {"regnoise": "diabetes", "normnoise": "ViT", "vitsplit": "4x4 patches",
                    "fewrows": "LayerNorm", "normmlp": "digits",
                    "normwd": "batch-norm CNN", "fitwd": "batch-norm CNN",
                    "cnndecay": "other images",
                    "convdecay": "warm-up", "cnnsplit": "other images",
                    "cnnlinear": "other images", "cnnkernel": "batch 32",
                    "mlpsmall": "digits", "vitdecay": "4x4 patches",
                    "cnnstep": "other images", "cnnmid": "other images",
                    "mlpbeta": "digits"}.get(args.stage,
                                                                            "Friedman #3")
    noun = {"normnoise": "classifiers", "vitlr": "ViTs", "vitsplit": "ViTs",
            "vittokens": "4x4-patch ViTs", "fewrows": "diabetes MLPs",
            "normmlp": "LayerNorm MLPs", "normwd": "classifiers",
            "fitwd": "classifiers", "cnndecay": "batch-norm CNNs",
            "convdecay": "batch-norm CNNs", "cnnsplit": "batch-norm CNNs",
            "cnnlinear": "batch-norm CNNs", "cnnkernel": "batch-norm CNNs",
            "mlpsmall": "LayerNorm MLPs", "vitdecay": "ViTs",
            "cnnstep": "batch-norm CNNs", "cnnmid": "batch-norm CNNs",
            "mlpbeta": "LayerNorm MLPs"}.get(args.stage,
                                                                               "regressors")
    for spec in args.sets:
        profile, out = spec.split("=", 1)
        cols, rows = read_table(Path(out) / f"{args.stage}.md")
        if names is not None and cols != names:
            raise SystemExit(f"{out}: its columns differ from the first table's")
        names = cols
        for task, row in rows.items():
            schedule = bt.PROFILES[profile].suite[task].schedule
            by_class["constant" if schedule == "constant" else "warm-up and decay"][task] = row
            outs[task] = Path(out)
            t = bt.PROFILES[profile].suite[task]
            if {"regnoise": t.options.get("dataset") == "diabetes",
                    "normnoise": t.builder == "vit",
                    "vitsplit": t.options.get("patch") == 4,
                    "vittokens": False, "fewrows": bool(t.options.get("norm")),
                    "normmlp": t.builder == "digits",
                    "normwd": t.builder == "cnn", "fitwd": t.builder == "cnn",
                    "cnndecay": "images" in t.options,
                    "convdecay": t.warmup > 0,
                    "cnnsplit": "images" in t.options,
                    "cnnlinear": "images" in t.options,
                    "cnnkernel": t.options.get("batch") == 32,
                    "mlpsmall": t.builder == "digits",
                    "vitdecay": t.options.get("patch") == 4,
                    "cnnstep": "images" in t.options,
                    "cnnmid": "images" in t.options,
                    "mlpbeta": t.builder == "digits"}.get(args.stage,
                                                          t.options.get("function") == 3):
                marked.add(task)
    assert names is not None
    lines = [f"# The {args.stage} screen by schedule (val loss / best tuned baseline, seeds "
             "100-103)"]  # fmt: skip
    for cls, rows in by_class.items():
        if not rows:  # a stage screened on one schedule class only (cnnlinear)
            lines += ["", f"## {cls}: no {noun} screened"]
            continue
        if args.paired:
            diffs = [seed_diffs(outs[t], t, names, args.stage) for t in rows]
            chosen, stats = paired_pick(names, list(rows.values()), diffs)
            lines += ["", f"## {cls}: {len(rows)} {noun}; the paired rule picks **{chosen}**",
                      "", "| decay | worst | worse by ≥ 2 paired SE on | mean log ratio | "
                      "better than today |", "|---|---:|---:|---:|---:|"]  # fmt: skip
            lines += [f"| {n} | {w:.3f} | {h} | {m:.3f} | {b} |" for n, w, h, m, b in stats]
            continue
        chosen, stats = pick(names, list(rows.values()), args.stage)
        lines += ["", f"## {cls}: {len(rows)} {noun}; the robust rule picks **{chosen}**",
                  "", "| pair | worst | worst robust | mean log ratio | better than today |",
                  "|---|---:|---:|---:|---:|"]  # fmt: skip
        lines += [f"| {n} | {w:.3f} | {r:.3f} | {m:.3f} | {b} |" for n, w, r, m, b in stats]
        lines += ["", "| task | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        lines += [f"| {t} | " + " | ".join(f"{x:.3f}" for x in row) + " |"
                  for t, row in sorted(rows.items())]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    stem = ("regression_screen" if args.stage == "regpart" else
            f"{args.stage}_paired" if args.paired else f"{args.stage}_screen")  # fmt: skip
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    if args.stage == "regpart":
        figure(names, by_class, args.out / f"{stem}.png")
    elif args.stage in SPLIT_STAGES:
        split_figure(names, by_class, args.out / f"{stem}.png", frozenset(marked),
                     marked_label=marked_label, stage=args.stage, noun=noun)
    else:
        decay_figure(names, by_class, args.out / f"{stem}.png", frozenset(marked),
                     marked_label=marked_label, what=DECAY_STAGES[args.stage][2], noun=noun,
                     today=TODAY_TOKENS if args.stage == "vittokens"
                     else TODAY_CONV if args.stage == "convdecay"
                     else "1" if args.stage in ("vitlr", "fewrows")
                     else "today (0.95)" if args.stage == "mlpbeta" else "0",
                     today_x=1.0 if args.stage == "fewrows"
                     else 0.95 if args.stage == "mlpbeta" else None)  # fmt: skip
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
