"""Import cost of muonflow over torch, measured in fresh interpreters.

Each run is a new ``python -c`` process that imports torch, then muonflow, then touches the
core names (``RegMuon``, ``regularized_polar``, ``HamiltonianFlow``: what a user's first line
loads), timing each stage with ``time.perf_counter`` inside the process. Runs alternate with a
baseline process that imports torch alone (whole-process wall time, same run), so machine noise
hits both. Printed: medians over ``--runs``; the target is ``import muonflow`` <= 0.3 s over
``import torch`` (exit status 1 if the median misses it).

Usage: ``python benchmarks/bench_import.py [--runs 7] [--target 0.3]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

STAGES = """
import json, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import muonflow
t2 = time.perf_counter()
muonflow.RegMuon, muonflow.regularized_polar, muonflow.HamiltonianFlow
t3 = time.perf_counter()
print(json.dumps({"torch": t1 - t0, "muonflow": t2 - t1, "first_use": t3 - t2}))
"""


def wall(code: str) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return time.perf_counter() - t, out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--target", type=float, default=0.3, help="seconds over import torch")
    args = ap.parse_args()
    wall("import muonflow")  # warm the file cache
    stages: dict[str, list[float]] = {"torch": [], "muonflow": [], "first_use": []}
    walls: dict[str, list[float]] = {"torch": [], "torch+muonflow": []}
    for _ in range(args.runs):
        w, out = wall(STAGES)
        for k, v in json.loads(out).items():
            stages[k].append(v)
        walls["torch+muonflow"].append(w)
        walls["torch"].append(wall("import torch")[0])
    med = {k: statistics.median(v) for k, v in stages.items()}
    wmed = {k: statistics.median(v) for k, v in walls.items()}
    print(f"median of {args.runs} fresh processes (seconds)")
    print(f"  import torch                       {med['torch']:.3f}")
    print(f"  import muonflow (after torch)      {med['muonflow']:.4f}")
    print(f"  first use of RegMuon, maps, flow   {med['first_use']:.3f}")
    print(
        f"  whole process: torch alone {wmed['torch']:.3f}, torch + muonflow + names "
        f"{wmed['torch+muonflow']:.3f}, ratio {wmed['torch+muonflow'] / wmed['torch']:.3f}"
    )
    ok = med["muonflow"] <= args.target
    print(
        f"import muonflow over import torch: {med['muonflow']:.4f} s "
        f"(target <= {args.target} s: {'met' if ok else 'MISSED'}); with the first use of the "
        f"core names {med['muonflow'] + med['first_use']:.3f} s"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
