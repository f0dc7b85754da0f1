"""Run the mutation suite: plant each mutant, run the reproduction, list the claim checks it fails.

Usage (from the repository root)::

    python -m tests.mutants                      # every mutant, 2 processes
    python -m tests.mutants --only rk4_without_damping force_without_n --jobs 1
    python -m tests.mutants --list               # the catalog: mutant, profile, seam, bug

Each mutant runs in a fresh process (one torch thread): the bug is planted with runtime patches
(:mod:`.patching`), then the experiments it names (``--all-experiments``: every experiment) run
on its profile in-process through :func:`muonflow.experiments.runner.run_experiment` — the
function ``muonflow reproduce`` calls for each experiment — into a temporary folder. The table
lists, per mutant, the failed claim checks with their margin; a mutant is *caught* when at
least one claim check fails. The margin of a failed check is how far its value lies beyond the
threshold, relative to the threshold
(``<=``: ``(value − t)/|t|``; ``>=``: ``(t − value)/|t|``; absolute where ``t = 0``; a band
``[lo, hi]``: the distance outside it over its half-width); ``inf`` where the value is not
finite (no value could be measured).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

BASELINE = "none"


def margin(check: dict[str, Any]) -> float:
    """How far a failed check's value lies beyond its threshold (relative; see module docs)."""
    v, t, rel = float(check["value"]), check["threshold"], check["relation"]
    if not math.isfinite(v):
        return math.inf
    if rel == "in":
        lo, hi = (float(x) for x in t)
        return max(lo - v, v - hi) / ((hi - lo) / 2)
    excess = v - float(t) if rel == "<=" else float(t) - v
    return excess / abs(float(t)) if float(t) != 0 else excess  # a zero threshold: absolute


def run_one(name: str, profile: str, experiments: tuple[str, ...]) -> dict[str, Any]:
    """Plant mutant ``name`` (``"none"``: the library as it is) and run the experiments."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import pytest
    import torch

    torch.set_num_threads(1)
    import muonflow.experiments  # noqa: F401  (registers every experiment, imports the library)
    from muonflow.experiments import REGISTRY
    from muonflow.experiments.runner import run_experiment

    from .catalog import all_mutants

    names = list(experiments) or list(REGISTRY)
    mp = pytest.MonkeyPatch()
    t0, c0 = time.perf_counter(), time.process_time()
    out: dict[str, Any] = {"mutant": name, "profile": profile, "experiments": {}}
    try:
        if name != BASELINE:
            all_mutants()[name].plant(mp)
        with tempfile.TemporaryDirectory(prefix="muonflow-mutant-") as tmp:
            for exp in names:
                m = run_experiment(REGISTRY[exp], Path(tmp), profile=profile, force=True,
                                   show_progress=False)  # fmt: skip
                failed = {
                    k: {**c, "margin": margin(c)}
                    for k, c in m["checks"].items()
                    if not c["passed"]
                }
                out["experiments"][exp] = {
                    "status": m["status"],
                    "error": (m["error"] or "").splitlines()[0] if m["error"] else None,
                    "failed": failed,
                }
    finally:
        mp.undo()
    out["wall_s"] = time.perf_counter() - t0
    out["cpu_s"] = time.process_time() - c0
    return out


def failed_claims(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``[(experiment/check, check)]`` of the failed claim checks, largest margin first."""
    rows = [
        (f"{exp}/{k}", c)
        for exp, r in result["experiments"].items()
        for k, c in r["failed"].items()
        if c["kind"] == "claim"
    ]
    return sorted(rows, key=lambda kc: -kc[1]["margin"])


def _fmt(x: float) -> str:
    return "inf (no value)" if not math.isfinite(x) else f"{x:.3g}"


def table(results: list[dict[str, Any]], detail: bool = False) -> str:
    """The suite's table: mutant, profile, failed claim checks (the strongest), margin."""
    lines = [
        f"{'mutant':<36} {'profile':<7} {'claims':>6}  strongest failed claim check "
        "(value vs threshold), margin"
    ]
    for r in results:
        fails = failed_claims(r)
        errors = [e for e, x in r["experiments"].items() if x["status"] != "ok"]
        if fails:
            key, c = fails[0]
            finite = [kc for kc in fails if math.isfinite(kc[1]["margin"])]
            if finite and not math.isfinite(c["margin"]):
                key, c = finite[0]  # show a measured margin where one exists
            head = f"{key} ({c['value']!s:.10} {c['relation']} {c['threshold']!s:.24}), " \
                f"margin {_fmt(c['margin'])}"
        else:
            head = "NOT CAUGHT" if r["mutant"] != BASELINE else "all claim checks pass"
        if errors:
            head += f"  [raised: {', '.join(errors)}]"
        lines.append(f"{r['mutant']:<36} {r['profile']:<7} {len(fails):>6}  {head}")
        if detail:
            lines += [f"{'':<52}{k}: margin {_fmt(c['margin'])}" for k, c in fails[1:]]
    return "\n".join(lines)


def caught(result: dict[str, Any]) -> bool:
    """A mutant is caught when it fails at least one claim check."""
    return bool(failed_claims(result))


def main(argv: list[str] | None = None) -> int:
    from .catalog import all_mutants

    ap = argparse.ArgumentParser(prog="python -m tests.mutants", description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", metavar="MUTANT", help="run only these mutants")
    ap.add_argument("--jobs", type=int, default=2, help="processes in parallel (default 2)")
    ap.add_argument("--baseline", action="store_true",
                    help="also run the library without a mutant (every claim check must pass)")
    ap.add_argument("--experiments", nargs="+", metavar="NAME",
                    help="run these experiments (default: each mutant's own list)")
    ap.add_argument("--all-experiments", action="store_true",
                    help="run every experiment of the profile for every mutant (slow)")
    ap.add_argument("--json", type=Path, help="write the full results to this file")
    ap.add_argument("--detail", action="store_true", help="list every failed claim check")
    ap.add_argument("--list", action="store_true", help="print the catalog and exit")
    args = ap.parse_args(argv)

    catalog = all_mutants()
    if args.list:
        for m in catalog.values():
            print(f"{m.name:<36} {m.profile:<6} {m.seam:<62} {m.bug}")
        return 0
    unknown = [n for n in args.only or () if n not in catalog]
    if unknown:
        ap.error(f"unknown mutant(s) {unknown}; see --list")
    chosen = [catalog[n] for n in (args.only or catalog)]
    def runs(m_experiments: tuple[str, ...]) -> tuple[str, ...]:
        return () if args.all_experiments else tuple(args.experiments or m_experiments)

    union = tuple(dict.fromkeys(e for m in chosen for e in m.experiments))
    jobs = [(BASELINE, "smoke", runs(union))] if args.baseline else []
    jobs += [(m.name, m.profile, runs(m.experiments)) for m in chosen]
    ctx = multiprocessing.get_context("spawn")
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx,
                             max_tasks_per_child=1) as pool:  # fmt: skip
        futures = [pool.submit(run_one, *job) for job in jobs]
        results = []
        for f in futures:
            results.append(f.result())
            print(table(results[-1:]).splitlines()[-1], flush=True, file=sys.stderr)
    print(table(results, detail=args.detail))
    cpu = sum(r["cpu_s"] for r in results)
    print(f"\n{sum(caught(r) for r in results if r['mutant'] != BASELINE)} of "
          f"{len(chosen)} mutants caught; {time.perf_counter() - t0:.0f} s wall, {cpu:.0f} s CPU")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    missed = [r["mutant"] for r in results if r["mutant"] != BASELINE and not caught(r)]
    base_fail = [r for r in results if r["mutant"] == BASELINE and failed_claims(r)]
    return 1 if missed or base_fail else 0
