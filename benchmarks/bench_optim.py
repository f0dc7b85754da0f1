"""Optimizer step time and peak memory: RegMuon vs torch.optim.Muon vs torch.optim.AdamW.

Cases
    (a) ``transformer``: a 6-layer transformer (d_model 256, 4 heads, MLP 1024, vocabulary 128,
        block 128): 24 hidden matrices, plus embeddings, head, norms.
    (b) ``matrices``: 64 same-shape 128 x 128 matrices.

Optimizers (gradients fixed from one real backward pass; only ``step()`` is timed)
    ``AdamW``            torch.optim.AdamW (foreach) on everything.
    ``Muon``             torch.optim.Muon on the hidden matrices + torch.optim.AdamW on the rest
                         (torch's documented recipe; two ``step()`` calls).
    ``Muon f32-NS``      the same with torch's Newton–Schulz run in float32 instead of bfloat16
                         (a fairer CPU baseline: CPUs without bf16 matmul units run torch's
                         bf16 NS far slower than float32).
    ``RegMuon``          one RegMuon object, defaults (relative ε = 0.03, tol = 1e-3, auto map,
                         ``max_batch_bytes="auto"``: each same-shape stack in <= 32 calls).
    ``RegMuon 1-call``   ``max_batch_bytes=None``: each same-shape stack in one call.
    ``RegMuon exact``    ``tol=None`` (exact map to float32 round-off).

Time: median over ``--reps`` steps after one warm-up step (which creates the state), each
optimizer measured in the same process, so ratios are comparable even on a noisy machine.
Memory: the peak of live tensor memory during one step, *including* parameters, gradients
and optimizer state. On CUDA that is ``torch.cuda.max_memory_allocated``; on CPU it is tracked
at operator granularity with a dispatch mode (every tensor storage an aten op returns, until
freed) — kernel-internal workspaces (e.g. LAPACK's) are not seen.

Usage: ``python benchmarks/bench_optim.py [--case transformer matrices] [--reps 3]
[--threads N (default 1)] [--device cpu|cuda] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from muonflow.models import Transformer, TransformerConfig
from muonflow.optim import RegMuon, default_adamw_rule
from muonflow.polar import newton_schulz


def newton_schulz_f32(
    grad: Tensor, coeffs: tuple[float, float, float], steps: int, eps: float
) -> Tensor:
    """torch.optim.Muon's Newton–Schulz signature, run in float32 by the library's baseline."""
    return newton_schulz(grad, steps, coeffs, eps=eps, dtype=torch.float32)


class MuonF32(torch.optim.Muon):
    """torch.optim.Muon whose Newton–Schulz runs in float32 (the rest is torch's code)."""

    def step(self, closure=None):
        import torch.optim._muon as muon_module

        orig = muon_module._zeropower_via_newtonschulz
        muon_module._zeropower_via_newtonschulz = newton_schulz_f32
        try:
            return super().step(closure)
        finally:
            muon_module._zeropower_via_newtonschulz = orig


class LiveTensorMemory(TorchDispatchMode):
    """Peak bytes of live tensor storages: a baseline set plus everything aten ops return."""

    def __init__(self, baseline: list[Tensor]) -> None:
        super().__init__()
        self.base: dict[int, int] = {}
        for t in baseline:
            st = t.untyped_storage()
            self.base[st.data_ptr()] = st.nbytes()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = self.peak = sum(self.base.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            del self.live[key]
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and t.device.type == "cpu":
                st = t.untyped_storage()
                key = st.data_ptr()
                if key and key not in self.base and key not in self.live:
                    self.live[key] = (StorageWeakRef(st), st.nbytes())
        self.current = sum(self.base.values()) + sum(n for _, n in self.live.values())
        self.peak = max(self.peak, self.current)
        return out


def state_tensors(opts: list[torch.optim.Optimizer], params: list[Tensor]) -> list[Tensor]:
    ts = list(params) + [p.grad for p in params if p.grad is not None]
    for opt in opts:
        for st in opt.state.values():
            ts += [v for v in st.values() if isinstance(v, Tensor)]
    return ts


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(
    make: Callable[[], tuple[list[torch.optim.Optimizer], list[Tensor]]],
    device: torch.device,
    reps: int,
) -> dict[str, float]:
    opts, params = make()
    step = lambda: [o.step() for o in opts]  # noqa: E731
    step()  # warm-up: creates the state
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        base = sum(t.untyped_storage().nbytes() for t in state_tensors(opts, params))
    else:
        tracker = LiveTensorMemory(state_tensors(opts, params))
        base = tracker.peak
        with tracker:
            step()
        peak = tracker.peak
    return {
        "time_s": statistics.median(times),
        "times_s": times,
        "peak_MiB": peak / 2**20,
        "state_MiB": base / 2**20,
    }


def transformer_case(device: torch.device) -> tuple[list[tuple[str, Tensor]], int]:
    torch.manual_seed(0)
    cfg = TransformerConfig(
        vocab_size=128, block_size=128, d_model=256, n_heads=4, n_layers=6, d_mlp=1024
    )
    model = Transformer(cfg).to(device)
    idx = torch.randint(0, 128, (8, 128), device=device)
    model.loss(idx[:, :-1], idx[:, 1:]).backward()
    named = [(n, p) for n, p in model.named_parameters()]
    return named, sum(p.numel() for _, p in named)


def matrices_case(device: torch.device) -> tuple[list[tuple[str, Tensor]], int]:
    torch.manual_seed(0)
    named = []
    for i in range(64):
        p = nn.Parameter(torch.randn(128, 128, device=device) / 128**0.5)
        p.grad = torch.randn(128, 128, device=device)
        named.append((f"w{i}", p))
    return named, 64 * 128 * 128


def optimizers(named: list[tuple[str, Tensor]]) -> dict[str, Callable[[], Any]]:
    def fresh() -> list[tuple[str, Tensor]]:
        # Each optimizer starts from the same weights and gradients.
        out = []
        for n, p in named:
            q = nn.Parameter(p.detach().clone())
            q.grad = p.grad.detach().clone()
            out.append((n, q))
        return out

    def is_hidden(n: str, p: Tensor) -> bool:
        return p.ndim == 2 and not default_adamw_rule(n, p)

    def adamw():
        ps = [p for _, p in fresh()]
        return [torch.optim.AdamW(ps, lr=1e-3, foreach=True)], ps

    def muon(cls: type[torch.optim.Muon]) -> Callable[[], Any]:
        def make():
            nps = fresh()
            hidden = [p for n, p in nps if is_hidden(n, p)]
            rest = [p for n, p in nps if not is_hidden(n, p)]
            opts: list[torch.optim.Optimizer] = [cls(hidden, lr=0.02)]
            if rest:
                opts.append(torch.optim.AdamW(rest, lr=1e-3, foreach=True))
            return opts, [p for _, p in nps]

        return make

    def regmuon(**kw):
        def make():
            nps = fresh()
            return [RegMuon(nps, **kw)], [p for _, p in nps]

        return make

    return {
        "AdamW": adamw,
        "Muon": muon(torch.optim.Muon),
        "Muon f32-NS": muon(MuonF32),
        "RegMuon": regmuon(),
        "RegMuon 1-call": regmuon(max_batch_bytes=None),
        "RegMuon exact": regmuon(tol=None),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--case",
        nargs="+",
        default=["transformer", "matrices"],
        choices=["transformer", "matrices"],
    )
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--only", nargs="*", default=None, help="subset of optimizer names")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results: dict[str, Any] = {
        "provenance": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "reps": args.reps,
        },
        "cases": {},
    }
    cases = {"transformer": transformer_case, "matrices": matrices_case}
    for case in args.case:
        named, n_params = cases[case](device)
        rows = {}
        for name, make in optimizers(named).items():
            if args.only and name not in args.only:
                continue
            rows[name] = measure(make, device, args.reps)
            print(
                f"  {case:12s} {name:14s} {rows[name]['time_s']:8.3f} s  "
                f"{rows[name]['peak_MiB']:8.1f} MiB",
                flush=True,
            )
        results["cases"][case] = {"n_params": n_params, "optimizers": rows}
        ref = rows.get("Muon")
        print(
            f"\n### ({case}) {n_params / 1e6:.2f} M parameters, {args.device}, "
            f"{torch.get_num_threads()} threads, median of {args.reps}\n"
        )
        print("| optimizer | step time (s) | time / Muon | peak memory (MiB) | memory / Muon |")
        print("|---|---:|---:|---:|---:|")
        for name, r in rows.items():
            tr = f"{r['time_s'] / ref['time_s']:.3f}" if ref else "-"
            mr = f"{r['peak_MiB'] / ref['peak_MiB']:.3f}" if ref else "-"
            print(f"| {name} | {r['time_s']:.4f} | {tr} | {r['peak_MiB']:.1f} | {mr} |")
        print(
            f"\n(state = params + grads + optimizer state, e.g. RegMuon: "
            f"{rows.get('RegMuon', {}).get('state_MiB', float('nan')):.1f} MiB)\n",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
