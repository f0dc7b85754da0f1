"""Optimizer step time on the training benchmark's tasks: RegMuon(model) against torch's Muon.

For every task of ``bench_training.SUITE`` (or ``--tasks``): the model at its seed-0
initialization, one real gradient (a training minibatch), and then, interleaved in one process
(``--repeats`` rounds of A B C D, medians), one ``step()`` of each arm on its own copy of the
model with that same gradient:

- ``AdamW``: ``torch.optim.AdamW`` on everything;
- ``Muon``: ``torch.optim.Muon`` as shipped (bfloat16 Newton–Schulz) on the matrices
  ``RegMuon(model)`` maps, ``torch.optim.AdamW`` on the rest (the benchmark's Muon arm);
- ``Muon fp32``: the same with Newton–Schulz in float32;
- ``RegMuon``: ``RegMuon(model)``, the library's defaults.

``fwd+bwd`` is the median time of a forward and backward pass on the same minibatch: what a
training step adds to every arm alike. Ratios are RegMuon's step over the faster Muon's and
over torch's Muon as shipped. Threads: ``--threads`` (default 1, as the training benchmark's
runs use). Nothing is asserted: timings on a shared machine are for reading.

Usage: ``python benchmarks/bench_step_time.py [--tasks gpt2_d32_l2,cnn] [--repeats 21]
[--threads 1]``
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from bench_training import SUITE

from muonflow.optim import RegMuon
from muonflow.training import MatrixMuon, make_task, routed

Arm = Callable[[nn.Module], list[torch.optim.Optimizer]]


def _muon(ns_dtype: torch.dtype | None) -> Arm:
    def build(model: nn.Module) -> list[torch.optim.Optimizer]:
        matrices, rest = routed(model)
        return [MatrixMuon(matrices, ns_dtype=ns_dtype), torch.optim.AdamW(rest)]

    return build


ARMS: dict[str, Arm] = {
    "AdamW": lambda m: [torch.optim.AdamW(m.parameters())],
    "Muon": _muon(None),
    "Muon fp32": _muon(torch.float32),
    "RegMuon": lambda m: [RegMuon(m)],
}


def task_row(name: str, repeats: int) -> str:
    t = SUITE[name]
    task = make_task(t.builder, **t.options)
    torch.manual_seed(0)
    model = task.make_model()
    loss = task.train_loss(model, torch.Generator().manual_seed(0))
    loss.backward()
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]

    def fwd_bwd() -> None:
        model.zero_grad()
        task.train_loss(model, torch.Generator().manual_seed(0)).backward()

    steps: dict[str, Callable[[], None]] = {"fwd+bwd": fwd_bwd}
    for arm, build in ARMS.items():
        m = copy.deepcopy(model)
        for p, g in zip(m.parameters(), grads, strict=True):
            p.grad = None if g is None else g.clone()
        opts = build(m)

        def step(opts: list[torch.optim.Optimizer] = opts) -> None:
            for o in opts:
                o.step()

        steps[arm] = step
    times: dict[str, list[float]] = {k: [] for k in steps}
    for fn in steps.values():  # warm-up: state, cached plans and schedules
        fn()
    for _ in range(repeats):
        for k, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    best = min(ms["Muon"], ms["Muon fp32"])
    cells = " | ".join(f"{ms[k]:.2f}" for k in ("fwd+bwd", *ARMS))
    return (f"| {name} | {cells} | {ms['RegMuon'] / best:.2f} | "
            f"{ms['RegMuon'] / ms['Muon']:.2f} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", default=",".join(SUITE), help="comma-separated SUITE names")
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    tasks = args.tasks.split(",")
    unknown = sorted(set(tasks) - set(SUITE))
    if unknown:
        raise SystemExit(f"unknown tasks {unknown}; valid: {', '.join(SUITE)}")
    if args.repeats < 1 or args.threads < 1:
        raise SystemExit("--repeats and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, load average {os.getloadavg()[0]:.1f}; "
          f"medians of {args.repeats} interleaved rounds, ms per optimizer step\n")  # fmt: skip
    print(f"| task | fwd+bwd | {' | '.join(ARMS)} | RegMuon / faster Muon | RegMuon / Muon |")
    print("|---|" + "---:|" * (len(ARMS) + 3))
    for name in tasks:
        print(task_row(name, args.repeats), flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
