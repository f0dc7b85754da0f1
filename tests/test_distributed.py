"""Sharded particle flow and data-parallel RegMuon vs single-process runs (gloo, 2 CPU processes).

One spawned 2-process group serves every distributed check (spawning costs seconds): it runs
the particle flows, the DDP training, the configuration checks and, last, in
groups of their own with short timeouts, a stuck rank and a failing rank. The workers write their
results to files; the comparisons are asserted here, in the parent.

Tolerances. The distributed runs differ from the single-process ones only in the order of
floating-point sums: the feature sum and the kinetic sum over ``N`` particles (a recursive sum of
``N`` terms errs by at most ``(N-1)·u·Σ|terms|``, Higham, Thm 4.1), and the gradient mean over
the batch. Each force evaluation is thus perturbed by ``≲ N·u`` relative, and a perturbation
grows by at most ``(1 + hL)^n ≈ e^{Lt}`` over ``n`` steps (here ``L t ≲ 2``), so after ``n``
evaluations the difference is below ``n·N·u·e^{Lt}``; the tolerances below use
``C = 16 ≥ e^2`` for that factor.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from typing import Any

import pytest
import torch
import torch.distributed as dist
from spawned import exit_now, spawn

import muonflow as mf
from muonflow import distributed as mfd

U64 = torch.finfo(torch.float64).eps  # unit round-off of float64 (times 2)
C_GROWTH = 16.0  # ≥ e^{Lt} with L t ≤ 2 (see the module docstring)
WORLD = 2
JOIN_TIMEOUT_S = 60.0  # the whole spawned group; a hang fails the test instead of blocking CI

# -- the particle problem: J = ½ mean_b (m_b - y_b)², m = mean_i tanh(θ_i x_b) -----------------
N_PARTICLES = 11  # odd: the shards are uneven (6 + 5)
DIM, BATCH = 3, 5
H_STEP, T_END, GAMMA = 0.05, 1.0, 1.0
SEED = 7


def _problem() -> tuple[mf.ProbabilityObjective, Any]:
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(BATCH, DIM, generator=gen, dtype=torch.float64)
    y = torch.randn(BATCH, generator=gen, dtype=torch.float64)

    def feature(theta: torch.Tensor) -> torch.Tensor:  # [N, 1, d] -> [N, B]
        return torch.tanh(theta[:, 0, :] @ X.T)

    def risk(m: torch.Tensor) -> torch.Tensor:  # [B] -> 0-dim
        return 0.5 * ((m - y) ** 2).mean()

    return mf.ProbabilityObjective(feature, risk), mf.Relativistic(0.5)


def _initial(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    W = mfd.draw_particles(N_PARTICLES, (1, DIM), seed=SEED, rows=rows)
    P = 0.1 * mfd.draw_particles(N_PARTICLES, (1, DIM), seed=SEED + 1, rows=rows)
    return W, P


def _ledger(traj: mf.Trajectory) -> dict[str, torch.Tensor]:
    return {k: getattr(traj, k).clone() for k in ("t", "H", "J", "K", "dissipated")}


def _particle_run(rank: int, method: str, chunk_size: int | None = None) -> dict[str, Any]:
    objective, kinetic = _problem()
    if chunk_size is not None:  # the chunked path: forward sums by slabs, pullback per slab
        objective = mf.ProbabilityObjective(objective.feature, objective.risk,
                                            chunk_size=chunk_size)  # fmt: skip
    rows = mfd.shard_range(N_PARTICLES, rank, WORLD)
    W0, P0 = _initial(rows)
    sharded = mfd.ShardedProbabilityObjective(objective, N_PARTICLES)
    flow = mf.HamiltonianFlow(sharded, kinetic, GAMMA)
    traj = mfd.integrate_sharded(flow, W0, P0, T_END, h=H_STEP, method=method)
    assert isinstance(traj.W, torch.Tensor) and isinstance(traj.P, torch.Tensor)
    return {
        **_ledger(traj),
        "W": mfd.gather_particles(traj.W),
        "P": mfd.gather_particles(traj.P),
        "allreduce_calls": sharded.allreduce_calls,
        "nfev": traj.nfev,
    }


def _single_particle_run(method: str) -> dict[str, Any]:
    objective, kinetic = _problem()
    W0, P0 = _initial(slice(0, N_PARTICLES))
    traj = mf.integrate(mf.HamiltonianFlow(objective, kinetic, GAMMA), W0, P0, T_END,
                        h=H_STEP, method=method)  # fmt: skip
    return {**_ledger(traj), "W": traj.W, "P": traj.P, "W0": W0}


# -- the training problem: a 2-layer tanh network, global batch of 8, RegMuon on both matrices --
GLOBAL_BATCH, STEPS, MORE_STEPS = 8, 3, 2
EPS_OPT = 0.03  # RegMuon's relative ε: the map's sensitivity to its input is ≲ 1/ε


def _model() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 6, bias=False), torch.nn.Tanh(), torch.nn.Linear(6, 2, bias=False)
    ).double()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    return (torch.randn(GLOBAL_BATCH, 4, generator=gen, dtype=torch.float64),
            torch.randn(GLOBAL_BATCH, 2, generator=gen, dtype=torch.float64))  # fmt: skip


def _optimizer(model: torch.nn.Module) -> mf.RegMuon:
    return mf.RegMuon(model.named_parameters(), lr=0.05, momentum=0.9, eps=EPS_OPT, adamw=(),
                      tol=None)  # fmt: skip


def _train(model: torch.nn.Module, opt: Any, X: torch.Tensor, Y: torch.Tensor,
           steps: int) -> None:  # fmt: skip
    for _ in range(steps):
        loss = ((model(X) - Y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _ddp_run(rank: int, out_dir: str) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = _model()
    ddp = DDP(model)
    opt = _optimizer(model)
    X, Y = _batch()
    rows = mfd.shard_range(GLOBAL_BATCH, rank, WORLD)  # equal halves: mean of means = mean
    _train(ddp, opt, X[rows], Y[rows], STEPS)
    if rank == 0:
        torch.save({"model": model.state_dict(), "optim": opt.state_dict()},
                   os.path.join(out_dir, "ckpt_world2.pt"))  # fmt: skip
    dist.barrier()
    return {"params": {k: v.detach().clone() for k, v in model.state_dict().items()}}


# -- workers ------------------------------------------------------------------------------------
def _init(rank: int, port: int, timeout_s: float) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=_td(timeout_s))  # fmt: skip


def _td(seconds: float) -> Any:
    import datetime

    return datetime.timedelta(seconds=seconds)


def _main_worker_body(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    _init(rank, port, 30.0)
    res: dict[str, Any] = {}
    for method in ("muon", "rk4"):
        res[method] = _particle_run(rank, method)
    res["muon_chunked"] = _particle_run(rank, "muon", chunk_size=4)
    res["ddp"] = _ddp_run(rank, out_dir)
    # mismatched configurations: every rank must raise, naming the difference
    errors = {}
    try:
        mfd.check_same_config({"n_global": 100 + rank, "seed": SEED})
    except mfd.DistributedError as e:
        errors["config"] = str(e)
    objective, _ = _problem()
    W0, _ = _initial(mfd.shard_range(N_PARTICLES, rank, WORLD))
    try:
        mfd.ShardedProbabilityObjective(objective, N_PARTICLES + 1).value(W0)
    except mfd.DistributedError as e:
        errors["count"] = str(e)
    res["errors"] = errors
    torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    stuck_group = dist.new_group(backend="gloo", timeout=_td(STUCK_TIMEOUT_S))
    _stuck_rank(rank, out_dir, stuck_group)
    _failing_rank(rank, out_dir)


STUCK_TIMEOUT_S = 1.0


def _stuck_rank(rank: int, out_dir: str, group: Any) -> None:
    """Rank 1 is alive but never joins the collective; rank 0 must fail at the timeout."""
    if rank == 1:
        time.sleep(2 * STUCK_TIMEOUT_S)
        return
    t0 = time.perf_counter()
    try:
        mfd.all_reduce_sum(torch.zeros(3, dtype=torch.float64), group=group, what="a probe")
        outcome = ("finished", "")
    except Exception as e:  # recorded; the parent asserts on it
        outcome = (type(e).__name__, str(e))
    torch.save({"outcome": outcome, "elapsed": time.perf_counter() - t0},
               os.path.join(out_dir, "stuck0.pt"))  # fmt: skip


FAIL_TIMEOUT_S = 5.0


def _failing_rank(rank: int, out_dir: str) -> None:
    """Rank 1 fails at the door of a sharded run; rank 0 must get a clear error, not hang.

    Runs last (it breaks the group) in its own group with a short timeout.
    """
    group = dist.new_group(backend="gloo", timeout=_td(FAIL_TIMEOUT_S))
    objective, kinetic = _problem()
    W0, P0 = _initial(mfd.shard_range(N_PARTICLES, rank, WORLD))
    if rank == 1:
        W0[0, 0, 0] = math.nan  # this rank's integration rejects its state and exits
    sharded = mfd.ShardedProbabilityObjective(objective, N_PARTICLES, group=group)
    flow = mf.HamiltonianFlow(sharded, kinetic, GAMMA)
    t0 = time.perf_counter()
    try:
        mfd.integrate_sharded(flow, W0, P0, T_END, h=H_STEP)
        outcome = ("finished", "")
    except Exception as e:  # record whatever each rank saw; the parent asserts on it
        outcome = (type(e).__name__, str(e))
    torch.save({"outcome": outcome, "elapsed": time.perf_counter() - t0},
               os.path.join(out_dir, f"fail{rank}.pt"))  # fmt: skip


def _main_worker(rank: int, port: int, out_dir: str) -> None:
    _main_worker_body(rank, port, out_dir)
    exit_now()


@pytest.fixture(scope="module")
def main_results() -> Any:
    with tempfile.TemporaryDirectory() as d:
        wall = spawn(_main_worker, WORLD, d, JOIN_TIMEOUT_S)

        def load(name: str) -> Any:
            return torch.load(os.path.join(d, name), weights_only=False)

        yield {
            "ranks": [load(f"rank{r}.pt") for r in range(WORLD)],
            "ckpt": load("ckpt_world2.pt"),
            "fail": [load(f"fail{r}.pt") for r in range(WORLD)],
            "stuck": load("stuck0.pt"),
            "wall": wall,
        }


# -- tests --------------------------------------------------------------------------------------
def test_draws_do_not_depend_on_the_world_size() -> None:
    n = 2 * mfd.DRAW_BLOCK + 5  # shards cross block boundaries
    full = mfd.draw_particles(n, (2, 3), seed=1)
    for world in (1, 2, 3, 5):
        parts = [mfd.draw_particles(n, (2, 3), seed=1, rows=mfd.shard_range(n, r, world))
                 for r in range(world)]  # fmt: skip
        assert torch.equal(torch.cat(parts), full)
    assert not torch.equal(mfd.draw_particles(n, (2, 3), seed=2), full)


def test_shard_range_covers_every_particle_once() -> None:
    for n, world in ((11, 2), (10, 3), (7, 7)):
        sizes = [mfd.shard_range(n, r, world) for r in range(world)]
        assert [s.start for s in sizes] == [0] + [s.stop for s in sizes[:-1]]
        assert sizes[-1].stop == n
        assert max(s.stop - s.start for s in sizes) - min(s.stop - s.start for s in sizes) <= 1
    with pytest.raises(ValueError, match="cannot be split"):
        mfd.shard_range(1, 0, 2)


@pytest.mark.parametrize("run", ["muon", "rk4", "muon_chunked"])
def test_sharded_flow_equals_single_process(main_results: Any, run: str) -> None:
    ranks = main_results["ranks"]
    method = run.removesuffix("_chunked")
    ref = _single_particle_run(method)
    n_steps = round(T_END / H_STEP)
    evals = n_steps * (4 if method == "rk4" else 1) + 1
    tol = C_GROWTH * evals * N_PARTICLES * U64  # relative; see the module docstring
    for rank, res in enumerate(ranks):
        assert res[run]["nfev"] == evals
        assert res[run]["allreduce_calls"] == evals  # one all-reduce per force evaluation
        for key in ("H", "J", "K", "dissipated"):
            scale = float(ref[key].abs().max())
            err = float((res[run][key] - ref[key]).abs().max())
            assert err <= tol * scale, f"rank {rank} {run} {key}: {err:.3g} > {tol * scale:.3g}"
        for key in ("W", "P"):
            scale = float(ref[key].abs().max())
            err = float((res[run][key] - ref[key]).abs().max())
            assert err <= tol * scale, f"rank {rank} {run} {key}: {err:.3g} > {tol * scale:.3g}"
    # not vacuous: the particles moved and energy was dissipated far beyond the tolerance
    assert float((ref["W"] - ref["W0"]).abs().max()) > 1e6 * tol
    assert float(ref["dissipated"][-1]) > 1e6 * tol * float(ref["H"].abs().max())


def test_ddp_regmuon_equals_single_process_and_checkpoint_loads_at_world_1(
    main_results: Any,
) -> None:
    ranks, ckpt = main_results["ranks"], main_results["ckpt"]
    X, Y = _batch()
    model = _model()
    opt = _optimizer(model)
    _train(model, opt, X, Y, STEPS)
    # per step: gradient means differ by ~GLOBAL_BATCH·u; the map amplifies by ≲ 1/ε
    tol = C_GROWTH * STEPS * GLOBAL_BATCH * U64 / EPS_OPT
    moved = 0.0
    init = _model().state_dict()
    for name, p in model.state_dict().items():
        scale = float(p.abs().max())
        moved = max(moved, float((p - init[name]).abs().max()))
        for rank, res in enumerate(ranks):
            err = float((res["ddp"]["params"][name] - p).abs().max())
            assert err <= tol * scale, f"rank {rank} {name}: {err:.3g} > {tol * scale:.3g}"
    assert moved > 1e6 * tol  # the optimizer did move the weights
    # resume the world-size-2 checkpoint in one process and continue: same as never stopping
    resumed = _model()
    resumed.load_state_dict(ckpt["model"])
    opt2 = _optimizer(resumed)
    opt2.load_state_dict(ckpt["optim"])
    _train(resumed, opt2, X, Y, MORE_STEPS)
    _train(model, opt, X, Y, MORE_STEPS)
    tol_all = tol * (STEPS + MORE_STEPS) / STEPS
    for name, p in model.state_dict().items():
        err = float((resumed.state_dict()[name] - p).abs().max())
        assert err <= tol_all * float(p.abs().max()), f"resumed {name}: {err:.3g}"


def test_mismatched_configurations_raise_on_every_rank(main_results: Any) -> None:
    ranks = main_results["ranks"]
    for res in ranks:
        assert "n_global: rank 0 has 100, rank 1 has 101" in res["errors"]["config"]
        assert (
            f"hold {N_PARTICLES} particles in all, but n_global={N_PARTICLES + 1}"
            in (res["errors"]["count"])
        )


def test_a_failing_rank_gives_a_clear_error_on_every_rank_without_hanging(
    main_results: Any,
) -> None:
    out = main_results["fail"]
    kind0, msg0 = out[0]["outcome"]
    kind1, msg1 = out[1]["outcome"]
    assert kind1 == "ValueError" and "non-finite entry" in msg1
    assert kind0 == "DistributedError" and "another rank probably raised" in msg0
    # the healthy rank is released by the exited peer or, at the latest, by the timeout
    assert out[0]["elapsed"] <= FAIL_TIMEOUT_S + 5.0
    assert main_results["wall"] < JOIN_TIMEOUT_S


def test_a_stuck_rank_gives_a_clear_error_at_the_timeout(main_results: Any) -> None:
    kind, msg = main_results["stuck"]["outcome"]
    assert kind == "DistributedError" and "all-reduce of a probe failed" in msg
    elapsed = main_results["stuck"]["elapsed"]
    assert STUCK_TIMEOUT_S * 0.9 <= elapsed <= STUCK_TIMEOUT_S + 5.0  # released by the timeout


def test_validation_without_a_process_group() -> None:
    objective, _ = _problem()
    with pytest.raises(ValueError, match="n_global must be an int >= 1"):
        mfd.ShardedProbabilityObjective(objective, 0)
    with pytest.raises(ValueError, match="systems=1 only"):
        mfd.ShardedProbabilityObjective(objective.with_systems(2), 4)
    assert not dist.is_initialized()
    with pytest.raises(mfd.DistributedError, match="not initialised"):
        mfd.ShardedProbabilityObjective(objective, 4).value(
            torch.zeros(4, 1, DIM, dtype=torch.float64)
        )
    zeros = torch.zeros(4, 1, DIM, dtype=torch.float64)
    flow = mf.HamiltonianFlow(mfd.ShardedProbabilityObjective(objective, 4), mf.Quadratic(), 1.0)
    with pytest.raises(ValueError, match="'reference'"):
        mfd.integrate_sharded(flow, zeros, zeros, 1.0, h=0.1, method="reference")


def test_init_from_env_explains_a_missing_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(mfd.DistributedError, match="torchrun"):
        mfd.init_from_env()
    with pytest.raises(ValueError, match="timeout must be"):
        mfd.init_from_env(timeout=0)
    assert not dist.is_initialized()
