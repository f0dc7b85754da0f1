"""``muonflow`` command line: parse, call the library, write results. Nothing else lives here."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .experiments import PROFILES, REGISTRY
from .experiments.runner import passed, reproduce, run_experiment, summary_table
from .report import build_report
from .training import OPTIMIZERS, TASKS, train


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="muonflow",
        description="Regularized Muon as a damped Hamiltonian flow: reproduce the paper's claims.",
    )
    sub = ap.add_subparsers(dest="command", required=True)

    rep = sub.add_parser("reproduce", help="run every experiment and write the report")
    rep.add_argument("--profile", choices=PROFILES, default="quick")
    rep.add_argument("--out", type=Path, default=Path("results"), help="output folder")
    rep.add_argument("--only", nargs="+", metavar="NAME", help="run only these experiments")
    rep.add_argument("--force", action="store_true", help="recompute finished experiments")
    rep.add_argument("--no-progress", action="store_true", help="no progress bars")

    run = sub.add_parser("run", help="run one experiment")
    run.add_argument("name", help="experiment name (see `muonflow list`)")
    run.add_argument("--profile", choices=PROFILES, default="quick")
    run.add_argument("--out", type=Path, default=Path("results"))
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (repeatable)",
    )
    run.add_argument("--no-progress", action="store_true")

    sub.add_parser("list", help="list the experiments and the claims they check")

    report = sub.add_parser("report", help="rebuild the report from saved results")
    report.add_argument("out", type=Path)

    train = sub.add_parser("train", help="train a small model with one optimizer (JSON result)")
    train.add_argument("--task", choices=list(TASKS), required=True)
    train.add_argument("--optimizer", choices=OPTIMIZERS, required=True)
    train.add_argument("--steps", type=int, required=True)
    train.add_argument("--lr", type=float, required=True, help="lr of the hidden matrices")
    train.add_argument("--eps", type=float, default=0.03, help="RegMuon's relative ε")
    train.add_argument("--adamw-lr", type=float, default=3e-3, help="lr of the AdamW part")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", type=Path, help="write the JSON here (default: stdout)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"muonflow: error: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "list":
        for exp in REGISTRY.values():
            print(f"{exp.name:<26} {exp.title}")
        return 0
    if args.command == "report":
        results = build_report(args.out)
        print(f"wrote {args.out / 'report.md'} and {args.out / 'report.html'}")
        return 0 if all(passed(m) for m in results) else 1
    if args.command == "train":
        r = train(
            args.task,
            args.optimizer,
            lr=args.lr,
            steps=args.steps,
            seed=args.seed,
            eps=args.eps,
            adamw_lr=args.adamw_lr,
        )
        text = json.dumps(r, indent=1)
        if args.out is None:
            print(text)
        else:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n", encoding="utf-8")
            print(f"wrote {args.out}")
        return 1 if r["diverged"] else 0
    if args.command == "run":
        if args.name not in REGISTRY:
            raise ValueError(f"unknown experiment {args.name!r}; valid: {', '.join(REGISTRY)}")
        m = run_experiment(
            REGISTRY[args.name],
            args.out,
            profile=args.profile,
            overrides=args.overrides,
            force=True,
            show_progress=not args.no_progress,
        )
        print(json.dumps({k: m[k] for k in ("name", "status", "checks", "wall_time_s")}, indent=1))
        return 0 if passed(m) else 1
    # reproduce
    results = reproduce(
        args.out,
        profile=args.profile,
        only=args.only,
        force=args.force,
        show_progress=not args.no_progress,
    )
    print(summary_table(results))
    print(f"\nreport: {args.out / 'report.md'}  {args.out / 'report.html'}")
    return 0 if all(passed(m) for m in results) else 1


if __name__ == "__main__":
    sys.exit(main())
