"""RegMuon on FSDP2 (gloo, CPU): communication, step time and memory per rank, and a projection.

Four parts, each spawning ``world`` processes (one intra-op thread each) on this machine:

1. ``links``: the latency ``α`` and inverse bandwidth ``1/β`` of gloo's ``all_to_all_single``
   and ``all_reduce`` here, fitted (least squares) to the median time of messages of 8 B to
   4 MiB per rank: ``t(bytes) = α + bytes/β``.
2. ``schemes``: per matrix shape, the time of :func:`muonflow.distributed.map_sharded` with the
   gather and the Gram scheme (interleaved repetitions, medians, slowest rank), the bytes each
   rank sent (:func:`muonflow.distributed.comm_stats`) against the prediction of
   :func:`muonflow.distributed.scheme_bytes`, and the scheme ``"auto"`` picks.
3. ``model``: a GPT-like model (embedding with a tied head, attention and MLP Linears, stacked
   experts ``[E, d, d]``) in float32 at RegMuon's defaults, wrapped with ``fully_shard`` at
   world 2 and 3 (world 1: the plain model, one process): the optimizer step and the whole
   training step (medians over steps, slowest rank), the optimizer's bytes per step as counted
   by the library and by a logging wrapper around the ``torch.distributed`` calls, against the
   minimum of the chosen schemes, and the optimizer state per rank.
4. ``projection``: the optimizer's communication per step at 8 GPUs (one NVLink node) and 64
   GPUs (8 nodes on InfiniBand) for a GPT-2-small-shaped and a 1.3B-shaped model, from the
   α-β model ``t = k·α + bytes/β`` per collective (``k = W - 1`` steps of a ring or pairwise
   exchange), with the measured α/β of part 1 and with assumed NVLink/IB figures (printed);
   next to FSDP2's own traffic (two parameter all-gathers and one gradient reduce-scatter per
   step) and the map compute per rank at an assumed GPU throughput.

On this 2-core machine world 3 runs three processes on two cores: its step times include
waiting for a core and are an upper bound, not a scaling figure.

Usage: ``python benchmarks/bench_fsdp.py [--steps 8] [--reps 7] [--parts links,schemes,model,
projection] [--out FILE.json]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import socket
import statistics
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import muonflow as mf
from muonflow import distributed as mfd
from muonflow.polar import plan_auto


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _init(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=300))  # fmt: skip


def _run(fn: Any, world: int, *args: Any) -> list[Any]:
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(fn, args=(world, _free_port(), d, *args), nprocs=world,
                           start_method="spawn")  # fmt: skip
        return [torch.load(os.path.join(d, f"r{r}.pt"), weights_only=False)
                for r in range(world)]  # fmt: skip


def _sent(stats: dict[str, float]) -> float:
    """Bytes this rank sent, from :func:`muonflow.distributed.comm_stats`."""
    return sum(v for k, v in stats.items() if k.endswith("_bytes") and k != "minimum_bytes")


def _timed(fn: Any) -> float:
    dist.barrier()
    t0 = time.perf_counter()
    fn()
    dist.barrier()  # the slowest rank
    return time.perf_counter() - t0


# -- 1. links ------------------------------------------------------------------------------------
SIZES = [8 * 4**k for k in range(10)]  # 8 B ... 2 MiB per rank


CALLS = 10  # collectives per timed repetition (amortizes the two barriers)


def _links_worker(rank: int, world: int, port: int, out: str, reps: int) -> None:
    _init(rank, world, port)
    res: dict[str, list[tuple[int, float]]] = {"all_to_all": [], "all_reduce": []}

    def a2a(x: torch.Tensor, y: torch.Tensor) -> None:
        for _ in range(CALLS):
            dist.all_to_all_single(y, x)

    def ar(x: torch.Tensor) -> None:
        for _ in range(CALLS):
            dist.all_reduce(x)

    for nbytes in SIZES:
        n = max(world, nbytes // 4 // world * world)
        x, y = torch.ones(n), torch.empty(n)
        for kind in res:
            ts = []
            for _ in range(reps):
                if kind == "all_to_all":
                    ts.append(_timed(lambda x=x, y=y: a2a(x, y)) / CALLS)
                else:
                    ts.append(_timed(lambda x=x: ar(x)) / CALLS)
            # bytes this rank sends: a2a (W-1)/W of x; ring all-reduce 2(W-1)/W of x
            sent = n * 4 * (world - 1) / world * (1 if kind == "all_to_all" else 2)
            res[kind].append((int(sent), statistics.median(ts)))
    torch.save(res, os.path.join(out, f"r{rank}.pt"))
    dist.destroy_process_group()


def _fit(points: list[tuple[int, float]]) -> dict[str, float]:
    """Least squares ``t = α + bytes/β`` (``α`` in µs, ``β`` in GB/s)."""
    xs = torch.tensor([p[0] for p in points], dtype=torch.float64)
    ts = torch.tensor([p[1] for p in points], dtype=torch.float64)
    A = torch.stack([torch.ones_like(xs), xs], dim=1)
    sol = torch.linalg.lstsq(A, ts.unsqueeze(1)).solution.flatten()
    alpha, inv_beta = float(sol[0]), float(sol[1])
    return {"alpha_us": alpha * 1e6, "beta_GBps": 1e-9 / inv_beta if inv_beta > 0 else math.inf}


def links(worlds: list[int], reps: int) -> dict[str, Any]:
    out = {}
    for w in worlds:
        res = _run(_links_worker, w, reps)[0]
        out[str(w)] = {k: {**_fit(v), "points": v} for k, v in res.items()}
    return out


# -- 2. schemes per shape ------------------------------------------------------------------------
SHAPES = [(4, 2048, 256), (4, 1024, 256), (4, 512, 512), (4, 256, 1024)]
#: Input spectra: "gaussian" (flat: polar's float32 path suffices at tol 1e-3) and "decaying"
#: (σ_i ∝ 1/i, low stable rank like training momenta: polar promotes to float64).
SPECTRA = ("gaussian", "decaying")


def _matrices(c: int, m: int, n: int, spectrum: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(m * n)
    G = torch.randn(c, m, n, generator=gen)
    if spectrum == "decaying":
        U = torch.linalg.qr(G).Q if m >= n else torch.linalg.qr(G.mT).Q.mT  # orthonormal
        r = min(m, n)
        V = torch.linalg.qr(torch.randn(c, r, r, generator=gen)).Q
        s = 1.0 / torch.arange(1, r + 1, dtype=G.dtype)
        G = (U * s.unsqueeze(-2)) @ V.mT if m >= n else (V * s.unsqueeze(-2)) @ U
    return G


def _schemes_worker(rank: int, world: int, port: int, out: str, reps: int) -> None:
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    _init(rank, world, port)
    mesh = init_device_mesh("cpu", (world,))
    o = mf.optim.DEFAULTS.replace(potential="relativistic", eps=0.03, eps_mode="relative",
                                  tol=1e-3, method="auto")
    rows = []
    for (c, m, n), spectrum in [(s, sp) for s in SHAPES for sp in SPECTRA]:
        G = _matrices(c, m, n, spectrum)
        P = distribute_tensor(G, mesh, [Shard(1)], src_data_rank=None)
        layout = mfd.matrix_layout(P, "batch")
        X = P.to_local()
        e = 0.03 * torch.linalg.vector_norm(G, dim=(-2, -1)) / math.sqrt(min(m, n))
        plan = plan_auto(G, e, 1e-3)
        row: dict[str, Any] = {"shape": [c, m, n], "spectrum": spectrum,
                               "polar_dtype": str(plan.dtype).removeprefix("torch.")}
        times: dict[str, list[float]] = {"gather": [], "gram": []}
        for i in range(reps + 1):
            for which in ("gather", "gram"):  # interleaved
                mfd.reset_comm_stats()
                with mfd.scheme(which):
                    t = _timed(lambda X=X, layout=layout: mfd.map_sharded(
                        X, layout, lambda Y: mf.optim.mirror_map(Y, o), o))
                if i:  # the first round warms up
                    times[which].append(t)
                st = mfd.comm_stats()
                row[which + "_bytes"] = _sent(st)
        for which, ts in times.items():
            row[which + "_ms"] = statistics.median(ts) * 1e3
        row["predicted"] = mfd.scheme_bytes(layout, c, 4)  # float32 entries, float64 Grams
        row["auto"] = mfd.choose_scheme(layout, c, 4, o)
        row["gram_applies"] = m >= n  # rows cut: the Gram scheme needs the long side cut
        row["single_map_ms"] = statistics.median(
            [_timed(lambda G=G: mf.optim.mirror_map(G, o)) for _ in range(reps)]) * 1e3
        rows.append(row)
    torch.save(rows, os.path.join(out, f"r{rank}.pt"))
    dist.destroy_process_group()


def schemes(worlds: list[int], reps: int) -> dict[str, Any]:
    out = {}
    for w in worlds:
        per_rank = _run(_schemes_worker, w, reps)
        rows = []
        for i, row in enumerate(per_rank[0]):
            r = dict(row)
            for k in ("gather_bytes", "gram_bytes"):  # mean over ranks: comparable to predicted
                r[k] = statistics.mean(pr[i][k] for pr in per_rank)
            rows.append(r)
        out[str(w)] = rows
    return out


# -- 3. the model ----------------------------------------------------------------------------------
class _Experts(torch.nn.Module):
    def __init__(self, d: int, e: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(e, d, d) / math.sqrt(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.w.shape[0]
        gate = torch.softmax(x[..., :e], dim=-1)
        return x + torch.einsum("bte,bted->btd", gate, torch.tanh(torch.einsum(
            "btd,edh->bteh", x, self.w)))  # fmt: skip


class _Block(torch.nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv = torch.nn.Linear(d, 3 * d, bias=False)
        self.proj = torch.nn.Linear(d, d, bias=False)
        self.up = torch.nn.Linear(d, 4 * d, bias=False)
        self.down = torch.nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        x = x + self.proj(torch.nn.functional.scaled_dot_product_attention(q, k, v,
                                                                           is_causal=True))
        return x + self.down(torch.nn.functional.gelu(self.up(self.ln2(x))))


class _GPT(torch.nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, experts: int) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.blocks = torch.nn.ModuleList([_Block(d) for _ in range(layers)])
        self.experts = _Experts(d, experts)
        self.head = torch.nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(self.experts(x))


MODEL = {"vocab": 512, "d": 256, "layers": 4, "experts": 8}
BATCH, CTX = 6, 64


def _wrap_comm() -> dict[str, float]:
    """Log the bytes each rank sends in the collectives muonflow calls (independent count)."""
    log: dict[str, float] = {"bytes": 0.0, "calls": 0}
    originals = {}

    def wrap(name: str, sent: Any) -> None:
        orig = getattr(dist, name, None)
        if orig is None:
            return
        originals[name] = orig

        def logged(*args: Any, **kwargs: Any) -> Any:
            group = kwargs.get("group")
            w = dist.get_world_size(group)
            log["bytes"] += sent(w, dist.get_rank(group), *args, **kwargs)
            log["calls"] += 1
            return orig(*args, **kwargs)

        setattr(dist, name, logged)

    def a2a(w: int, q: int, out: Any, inp: Any, out_splits: Any = None, in_splits: Any = None,
            **_: Any) -> float:  # fmt: skip
        splits = in_splits or [inp.numel() // w] * w
        return (sum(splits) - splits[q]) * inp.element_size()

    wrap("all_to_all_single", a2a)
    wrap("reduce_scatter_single", lambda w, q, out, inp, **_: inp.nbytes * (w - 1) / w)
    wrap("all_gather_single", lambda w, q, out, inp, **_: out.nbytes * (w - 1) / w)
    wrap("all_reduce", lambda w, q, t, **_: t.nbytes * 2 * (w - 1) / w)
    log["_originals"] = originals  # type: ignore[assignment]
    return log


def _unwrap(log: dict[str, Any]) -> None:
    for name, fn in log.pop("_originals").items():
        setattr(dist, name, fn)


def _model_worker(rank: int, world: int, port: int, out: str, steps: int) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import init_device_mesh

    if world > 1:
        _init(rank, world, port)
    else:
        torch.set_num_threads(1)
    torch.manual_seed(0)
    model = _GPT(**MODEL)
    if world > 1:
        mesh = init_device_mesh("cpu", (world,))
        for b in model.blocks:
            fully_shard(b, mesh=mesh)
        fully_shard(model.experts, mesh=mesh)
        fully_shard(model, mesh=mesh)
    opt = mf.RegMuon(model.named_parameters())
    gen = torch.Generator().manual_seed(1)
    X = torch.randint(0, MODEL["vocab"], (BATCH * world, CTX), generator=gen)
    rows = mfd.shard_range(BATCH * world, rank, world)
    sync = _timed if world > 1 else (lambda f: (lambda t0: (f(), time.perf_counter() - t0)[1])(
        time.perf_counter()))  # fmt: skip
    step_s, cpu_s, train_s, comm = [], [], [], []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(X[rows, :-1]).flatten(0, 1),
                                                 X[rows, 1:].flatten())  # fmt: skip
        opt.zero_grad()
        loss.backward()
        mfd.reset_comm_stats()
        log = _wrap_comm()
        cpu0 = time.process_time()
        t_opt = sync(opt.step)
        cpu = time.process_time() - cpu0  # this rank's CPU time (all its threads)
        _unwrap(log)
        if i >= 2:  # two warm-up steps
            step_s.append(t_opt)
            cpu_s.append(cpu)
            train_s.append(time.perf_counter() - t0)
            comm.append((mfd.comm_stats(), log))
    state = sum(
        (v.to_local() if hasattr(v, "to_local") else v).nbytes
        for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)
    )  # fmt: skip
    params = sum((p.to_local() if hasattr(p, "to_local") else p).nbytes
                 for p in model.parameters())  # fmt: skip
    stats, log = comm[-1]
    res = {
        "opt_step_ms": statistics.median(step_s) * 1e3,
        "opt_cpu_ms": statistics.median(cpu_s) * 1e3,
        "train_step_ms": statistics.median(train_s) * 1e3,
        "opt_bytes": _sent(stats),
        "opt_calls": sum(v for k, v in stats.items() if k.endswith("_calls")),
        "logged_bytes": log["bytes"],
        "logged_calls": log["calls"],
        "state_bytes": state,
        "param_bytes": params,
        "min_bytes": stats.get("minimum_bytes", 0.0),
        "stats": stats,
    }
    torch.save(res, os.path.join(out, f"r{rank}.pt"))
    if world > 1:
        dist.destroy_process_group()


def model_part(worlds: list[int], steps: int) -> dict[str, Any]:
    out = {}
    for w in worlds:
        if w == 1:
            with tempfile.TemporaryDirectory() as d:
                _model_worker(0, 1, 0, d, steps)
                per_rank = [torch.load(os.path.join(d, "r0.pt"), weights_only=False)]
        else:
            per_rank = _run(_model_worker, w, steps)
        out[str(w)] = {
            "opt_step_ms": max(r["opt_step_ms"] for r in per_rank),
            "opt_cpu_ms_per_rank": [r["opt_cpu_ms"] for r in per_rank],
            "train_step_ms": max(r["train_step_ms"] for r in per_rank),
            "opt_bytes_per_rank": [r["opt_bytes"] for r in per_rank],
            "logged_bytes_per_rank": [r["logged_bytes"] for r in per_rank],
            "opt_calls": per_rank[0]["opt_calls"],
            "min_bytes_mean": statistics.mean(r["min_bytes"] for r in per_rank),
            "state_bytes_per_rank": [r["state_bytes"] for r in per_rank],
            "param_bytes_per_rank": [r["param_bytes"] for r in per_rank],
        }
    return out


# -- 4. projection ---------------------------------------------------------------------------------
#: Assumed links (per GPU, algorithm bandwidth; latency per step of a ring/pairwise exchange):
#: NVLink 4 within an 8-GPU H100 node (~450 GB/s per direction, ~70 % achieved by NCCL), and
#: NDR InfiniBand, 400 Gb/s per GPU (50 GB/s, ~80 % achieved), for 8 nodes.
LINKS = {
    "nvlink": {"alpha_us": 10.0, "beta_GBps": 300.0},
    "infiniband": {"alpha_us": 20.0, "beta_GBps": 40.0},
}
#: Assumed GPU throughput of the map's GEMMs (TF32/bf16 at ~40 % of an H100's dense peak).
GPU_TFLOPS = 200.0
#: Shapes of the projected models: (d, layers, vocab).
PROJECTED = {"gpt2-small (124M)": (768, 12, 50257), "gpt-1.3B": (2048, 24, 50257)}


def _proj_buckets(d: int, layers: int) -> dict[tuple[int, int], int]:
    return {(3 * d, d): layers, (d, d): layers, (4 * d, d): layers, (d, 4 * d): layers}


def project(alpha_us: float, beta_GBps: float, world: int, d: int, layers: int, vocab: int,
            itemsize: int = 4) -> dict[str, float]:  # fmt: skip
    """Optimizer communication per step (α-β), FSDP2's own, and the map compute per rank."""
    a, b = alpha_us * 1e-6, beta_GBps * 1e9
    comm_s, bytes_ = 0.0, 0.0
    flops = 0.0
    for (m, n), c in _proj_buckets(d, layers).items():
        layout = mfd.MatrixLayout("rows", m, n, splits=mfd.shard_sizes(m, world))
        which = mfd.choose_scheme(layout, c, itemsize, potential="relativistic", method="auto")
        sent = mfd.scheme_bytes(layout, c, itemsize)[which]
        bytes_ += sent
        comm_s += 2 * (world - 1) * a + sent / b  # two collectives of W-1 steps each
        r, M = min(m, n), max(m, n)
        flops += c * (4 * M * r * r + 2 * 10 * r**3)  # Gram + product, ~10 r x r products
    params = sum(m * n * c for (m, n), c in _proj_buckets(d, layers).items()) + vocab * d
    fsdp_bytes = 3 * (world - 1) / world * params * itemsize  # 2 all-gathers + reduce-scatter
    return {
        "opt_bytes_per_rank": bytes_,
        "opt_comm_ms": comm_s * 1e3,
        "fsdp_bytes_per_rank": fsdp_bytes,
        "fsdp_comm_ms": (3 * (world - 1) * a + fsdp_bytes / b) * 1e3,
        "map_compute_ms": flops / world / (GPU_TFLOPS * 1e12) * 1e3,
    }


def projection(measured: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model, (d, layers, vocab) in PROJECTED.items():
        for world, link in ((8, "nvlink"), (64, "infiniband")):
            rows = {link: project(**LINKS[link], world=world, d=d, layers=layers, vocab=vocab)}
            if measured:  # this machine's gloo over TCP, as if it scaled
                rows["gloo_here"] = project(**measured, world=world, d=d, layers=layers,
                                            vocab=vocab)  # fmt: skip
            out[f"{model} W={world}"] = rows
    return out


# -- main ------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--parts", default="links,schemes,model,projection")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    parts = args.parts.split(",")
    torch.set_num_threads(1)
    result: dict[str, Any] = {"cpus": os.cpu_count(), "torch": torch.__version__}
    measured = None
    if "links" in parts:
        result["links"] = links([2, 3], args.reps)
        for w, r in result["links"].items():
            for k, v in r.items():
                print(f"links W={w} {k:10s} alpha={v['alpha_us']:.0f} us  "
                      f"beta={v['beta_GBps']:.2f} GB/s")  # fmt: skip
        a2a = result["links"]["2"]["all_to_all"]
        measured = {"alpha_us": a2a["alpha_us"], "beta_GBps": a2a["beta_GBps"]}
    if "schemes" in parts:
        result["schemes"] = schemes([2, 3], args.reps)
        for w, rows in result["schemes"].items():
            for r in rows:
                pred = r["predicted"]
                gram = (f"gram {r['gram_ms']:.1f} ms {r['gram_bytes'] / 1e3:.0f} kB (pred "
                        f"{pred['gram'] / 1e3:.0f})" if r["gram_applies"] else "gram n/a")
                print(f"schemes W={w} {tuple(r['shape'])} {r['spectrum']} ({r['polar_dtype']}): "
                      f"gather {r['gather_ms']:.1f} ms "
                      f"{r['gather_bytes'] / 1e3:.0f} kB (pred {pred['gather'] / 1e3:.0f}) | "
                      f"{gram} | auto={r['auto']} | one process {r['single_map_ms']:.1f} ms")
    if "model" in parts:
        result["model"] = model_part([1, 2, 3], args.steps)
        base = result["model"]["1"]
        for w, r in result["model"].items():
            mean_b = statistics.mean(r["opt_bytes_per_rank"])
            cpu = max(r["opt_cpu_ms_per_rank"])
            print(f"model W={w}: opt step {r['opt_step_ms']:.1f} ms "
                  f"({r['opt_step_ms'] / base['opt_step_ms']:.2f}x world 1), CPU/rank {cpu:.1f} "
                  f"ms ({cpu / max(base['opt_cpu_ms_per_rank']):.2f}x), train step "
                  f"{r['train_step_ms']:.1f} ms; opt bytes/rank {mean_b / 1e3:.1f} kB "
                  f"(logged {statistics.mean(r['logged_bytes_per_rank']) / 1e3:.1f} kB, min "
                  f"{r['min_bytes_mean'] / 1e3:.1f} kB) in {r['opt_calls']} collectives; "
                  f"state/rank {max(r['state_bytes_per_rank']) / 1e6:.2f} MB "
                  f"({max(r['state_bytes_per_rank']) / base['state_bytes_per_rank'][0]:.3f}x)")
    if "projection" in parts:
        result["projection"] = projection(measured)
        for key, rows in result["projection"].items():
            for link, p in rows.items():
                print(f"projection {key} {link}: optimizer {p['opt_bytes_per_rank'] / 1e6:.1f} MB "
                      f"{p['opt_comm_ms']:.2f} ms | FSDP2 {p['fsdp_bytes_per_rank'] / 1e6:.0f} MB "
                      f"{p['fsdp_comm_ms']:.2f} ms | map compute {p['map_compute_ms']:.2f} ms")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2, default=str)


if __name__ == "__main__":
    main()
