"""``muonflow`` command line: parse, call the library, write results. Nothing else lives here.

Exit codes: 0 success (every check passed); 1 a check failed, an experiment raised, or the
results folder is incomplete; 2 bad input (rejected before any work: unknown names, invalid
config values, an output folder that is a file or not writable, a missing results folder,
finished results of another profile that only ``--force`` may replace); 130 / 143 interrupted
by SIGINT / SIGTERM (finished results kept, the interrupted experiment recorded in its
``failed_run.json``; the same command resumes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ._deps import missing_repro
from .experiments.base import INT_MAX, PROFILES
from .optim.options import DEFAULTS


def _parser() -> argparse.ArgumentParser:
    from .training import OPTIMIZERS, TASKS

    ap = argparse.ArgumentParser(
        prog="muonflow",
        description="Regularized Muon as a damped Hamiltonian flow: reproduce the paper's claims.",
    )
    sub = ap.add_subparsers(dest="command", required=True)

    rep = sub.add_parser("reproduce", help="run every experiment and write the report")
    rep.add_argument("--profile", choices=PROFILES, default="quick")
    rep.add_argument("--out", type=Path, default=Path("results"), help="output folder")
    rep.add_argument("--only", nargs="+", metavar="NAME", help="run only these experiments")
    rep.add_argument(
        "--force",
        action="store_true",
        help="recompute finished experiments, replacing results of another profile",
    )
    rep.add_argument("--no-progress", action="store_true", help="no progress bars")

    run = sub.add_parser("run", help="run one experiment (always recomputed)")
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
    run.add_argument(
        "--force", action="store_true", help="replace a finished result of another profile"
    )
    run.add_argument("--no-progress", action="store_true")

    sub.add_parser("list", help="list the experiments and the claims they check")

    report = sub.add_parser(
        "report", help="rebuild checks, figures and the report from saved series (no rerun)"
    )
    report.add_argument("out", type=Path)

    train = sub.add_parser("train", help="train a small model with one optimizer (JSON result)")
    train.add_argument("--task", choices=list(TASKS), required=True)
    train.add_argument("--optimizer", choices=OPTIMIZERS, required=True)
    train.add_argument("--steps", type=int, required=True)
    train.add_argument("--lr", type=float, required=True, help="lr of the hidden matrices")
    train.add_argument(
        "--eps", type=float, default=DEFAULTS.eps, help="RegMuon's relative ε (%(default)s)"
    )
    train.add_argument(
        "--adamw-lr",
        type=float,
        default=DEFAULTS.adamw_lr,
        help="lr of the AdamW part of muon/regmuon (%(default)s, RegMuon's default)",
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", type=Path, help="write the JSON here (default: stdout)")
    return ap


#: Exit status of a command interrupted by a signal, as a shell reports it (128 + signal).
INTERRUPTED_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with _sigterm_as_exception():
            return _dispatch(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"muonflow: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        record = getattr(exc, "record", None)
        where = f"; the interrupted run is recorded in {record}" if record else ""
        print(f"muonflow: interrupted by {signal.Signals(signum).name}: finished results were "
              f"kept{where}; run the same command again to resume", file=sys.stderr)  # fmt: skip
        return INTERRUPTED_EXIT.get(signum, 128 + int(signum))


@contextlib.contextmanager
def _sigterm_as_exception() -> Iterator[None]:
    """SIGTERM raises :class:`~muonflow.experiments.runner.Interrupted` (a KeyboardInterrupt)
    while a command runs, so temporary folders are removed and the run recorded, as on
    Ctrl-C; Python's default would end the process on the spot."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        from .experiments.runner import Interrupted

        raise Interrupted(signum)

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "train":
        return _train(args)
    missing = missing_repro()
    if missing:  # before any work: the experiments need the research extra
        raise ValueError(
            f"`muonflow {args.command}` needs muonflow's research extra, and "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: "
            "pip install 'muonflow[repro]'"
        )
    from .experiments import REGISTRY
    from .experiments.runner import reproduce, run_experiment, summary_table
    from .experiments.store import passed
    from .report import build_report

    if args.command == "list":
        for exp in REGISTRY.values():
            print(f"{exp.name:<26} {exp.title}")
        return 0
    if args.command == "report":
        rep = build_report(args.out)
        print(summary_table(rep.results))
        print(f"wrote {args.out / 'report.md'} and {args.out / 'report.html'}")
        if rep.missing:
            print(f"muonflow: {args.out} is incomplete; missing: {', '.join(rep.missing)}",
                  file=sys.stderr)  # fmt: skip
        for problem in rep.problems:
            print(f"muonflow: {problem}", file=sys.stderr)
        return 0 if rep.all_pass else 1
    if args.command == "run":
        if args.name not in REGISTRY:
            raise ValueError(f"unknown experiment {args.name!r}; valid: {', '.join(REGISTRY)}")
        m = run_experiment(
            REGISTRY[args.name],
            args.out,
            profile=args.profile,
            overrides=args.overrides,
            force=True,
            replace=args.force,
            show_progress=not args.no_progress,
        )
        keys = ("name", "status", "error", "checks", "wall_time_s", "cpu_time_s")
        print(json.dumps({k: m[k] for k in keys}, indent=1))
        if m.get("kept_earlier_result"):
            print(f"muonflow: {args.name} failed; the earlier result in {args.out / args.name} "
                  "was kept", file=sys.stderr)  # fmt: skip
        return 0 if passed(m) else 1
    # reproduce
    results = reproduce(
        args.out,
        profile=args.profile,
        only=args.only,
        force=args.force,
        show_progress=not args.no_progress,
    )
    build_report(args.out, rebuild=False)
    print(summary_table(results))
    print(f"\nreport: {args.out / 'report.md'}  {args.out / 'report.html'}")
    return 0 if all(passed(m) for m in results) else 1


def _train(args: argparse.Namespace) -> int:
    from .experiments.store import atomic_write_text, check_out_dir, strict_json
    from .training import train

    if not 0 <= args.seed <= INT_MAX:
        raise ValueError(f"--seed must be an integer in [0, {INT_MAX}], got {args.seed}")
    if args.out is not None:
        check_out_dir(args.out.parent)  # before training: a bad --out fails at once
        if args.out.is_dir():
            raise ValueError(f"--out {args.out} is a directory; give a file name")
    r = train(
        args.task,
        args.optimizer,
        lr=args.lr,
        steps=args.steps,
        seed=args.seed,
        eps=args.eps,
        adamw_lr=args.adamw_lr,
    )
    text = json.dumps(strict_json(r), indent=1, allow_nan=False)
    if args.out is None:
        print(text)
    else:
        atomic_write_text(args.out, text + "\n")
        print(f"wrote {args.out}")
    return 1 if r["diverged"] else 0


if __name__ == "__main__":
    sys.exit(main())
