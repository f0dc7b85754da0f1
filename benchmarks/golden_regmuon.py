"""Golden set of RegMuon's arithmetic: record once, compare after a refactor (a regression check).

``python benchmarks/golden_regmuon.py record FILE`` runs 20 steps of ``RegMuon(model)`` with
explicit options on every bundled task of :mod:`muonflow.training` (and a few option variants on
the digits MLP, the functional kernel on separate buffers, and a 2-process FSDP2/DTensor run over
gloo), and saves the parameters, the optimizer state and the kinetic energies.
``python benchmarks/golden_regmuon.py check FILE`` reruns them and prints, per run, the largest
absolute difference of any parameter or state tensor (0 = bit-identical). Bitwise results depend
on the machine and the torch build: record and check on the same one.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from typing import Any

import torch

import muonflow as mf
from muonflow.optim import regmuon as regmuon_kernel
from muonflow.training import make_task

STEPS = 20
EXPLICIT = {"lr": 0.02, "momentum": 0.95, "eps": 0.03, "nesterov": True, "tol": 1e-2,
            "adamw_lr": 0.01, "adamw_betas": (0.9, 0.95), "weight_decay": 0.0}  # fmt: skip
#: (task, options over EXPLICIT)
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "digits": ("digits", {}),
    "cnn": ("cnn", {}),
    "chars": ("chars", {}),
    "gpt2": ("gpt2", {}),
    "moe": ("moe", {}),
    "sort": ("sort", {}),
    "digits_huber": ("digits", {"potential": "huber", "eps": 0.1}),
    "digits_ema_abs": ("digits", {"momentum_form": "ema", "eps_mode": "absolute", "eps": 0.05,
                                  "nesterov": False}),
    "digits_wd_rms": ("digits", {"weight_decay": 0.1, "adjust_lr": "match_rms_adamw"}),
    "digits_exact": ("digits", {"tol": None}),
    "digits_nuclear": ("digits", {"potential": "nuclear"}),
    "digits_quadratic": ("digits", {"potential": "quadratic", "lr": 0.001}),
    "moe_chunked": ("moe", {"max_batch_bytes": 4096}),
}


def _snapshot(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {f"param:{n}": p.detach().clone() for n, p in model.named_parameters()}
    names = {p: n for n, p in model.named_parameters()}
    for p, st in opt.state.items():
        for k, v in st.items():
            out[f"state:{names[p]}:{k}"] = torch.as_tensor(v).detach().clone()
    return out


def task_run(task: str, options: dict[str, Any]) -> dict[str, torch.Tensor]:
    t = make_task(task)
    torch.manual_seed(0)
    model = t.make_model()
    opt = mf.RegMuon(model, **{**EXPLICIT, **options})
    gen = torch.Generator().manual_seed(10_000)
    energies = []
    for _ in range(STEPS):
        loss = t.train_loss(model, gen)
        opt.zero_grad()
        loss.backward()
        energies.append(opt.hamiltonian(loss))
        opt.step()
    out = _snapshot(model, opt)
    out["hamiltonian"] = torch.stack(energies)
    return out


def kernel_run() -> dict[str, torch.Tensor]:
    """The functional kernel on separate (unpacked) buffers, mixed shapes, views and layouts."""
    gen = torch.Generator().manual_seed(3)
    shapes = [(16, 8), (16, 8), (8, 16), (3, 6, 4), (5, 2, 3, 3), (12, 4)]
    views = ["auto", "auto", "auto", "batch", "conv", "split:3"]
    layouts = ["out_in", "in_out", "out_in", "out_in", "out_in", "out_in"]
    ps = [torch.randn(s, generator=gen) for s in shapes]
    bufs = [torch.zeros(s) for s in shapes]
    for _ in range(5):
        gs = [torch.randn(s, generator=gen) for s in shapes]
        regmuon_kernel(ps, gs, bufs, lr=0.1, momentum=0.9, eps=0.05, tol=1e-3,
                       matrix_view=views, layout=layouts)  # fmt: skip
    return {**{f"p{i}": p for i, p in enumerate(ps)}, **{f"m{i}": b for i, b in enumerate(bufs)}}


def _dist_worker(rank: int, port: int, out_dir: str) -> None:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    import test_distributed_fsdp as T  # the test module's model, sharding and data

    T._init(rank, 2, port)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (2,))
    X, Y = T._data()
    rows = mf.distributed.shard_range(T.BATCH, rank, 2)
    result: dict[str, torch.Tensor] = {}
    for label, tol in (("exact", None), ("tol", 1e-2)):
        model = T._shard(T._model(), mesh)
        opt = mf.RegMuon(model.named_parameters(), lr=0.05, momentum=0.9, eps=T.EPS, tol=tol,
                         adamw_lr=0.01)  # fmt: skip
        T._train(model, opt, X[rows], Y[rows], 5)
        for n, p in T._full(model).items():
            result[f"{label}:param:{n}"] = p
        names = {p: n for n, p in model.named_parameters()}
        for p, st in opt.state.items():
            for k, v in st.items():
                v = v.full_tensor() if hasattr(v, "full_tensor") else torch.as_tensor(v)
                result[f"{label}:state:{names[p]}:{k}"] = v.detach().clone()
        result[f"{label}:kinetic"] = opt.kinetic_energy().reshape(1)
    if rank == 0:
        torch.save(result, os.path.join(out_dir, "dist.pt"))
    torch.distributed.barrier()
    sys.stdout.flush()
    os._exit(0)


def dist_run() -> dict[str, torch.Tensor]:
    import torch.multiprocessing as mp

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from spawned import free_port

    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(_dist_worker, args=(free_port(), d), nprocs=2, start_method="spawn")
        return torch.load(os.path.join(d, "dist.pt"))


def all_runs() -> dict[str, dict[str, torch.Tensor]]:
    torch.set_num_threads(1)
    out = {name: task_run(task, opts) for name, (task, opts) in RUNS.items()}
    out["kernel"] = kernel_run()
    out["dtensor"] = dist_run()
    return out


def compare(golden: dict[str, Any], now: dict[str, Any]) -> int:
    worst = 0.0
    for run, ref in golden.items():
        got = now[run]
        if set(ref) != set(got):
            print(f"{run:18s} keys differ: {sorted(set(ref) ^ set(got))[:6]}")
            worst = math.inf
            continue
        diff = max(float((got[k].double() - ref[k].double()).abs().max()) if ref[k].numel()
                   else 0.0 for k in ref)  # fmt: skip
        same = all(torch.equal(got[k], ref[k]) for k in ref)
        print(f"{run:18s} {'bit-identical' if same else f'max |diff| {diff:.3g}'}")
        worst = max(worst, diff)
    print(f"worst max |diff| {worst:.3g}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=("record", "check"))
    ap.add_argument("file")
    args = ap.parse_args()
    runs = all_runs()
    if args.action == "record":
        torch.save(runs, args.file)
        print(f"recorded {len(runs)} runs to {args.file}")
        return 0
    return compare(torch.load(args.file), runs)


if __name__ == "__main__":
    sys.exit(main())
