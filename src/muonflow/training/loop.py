"""The training loop: one model, one optimizer, one seed — loss curves, held-out loss, wall time.

All runs with the same ``seed`` start from the same weights and see the same minibatches. Wall
time counts the training steps only (forward, backward, optimizer step), not the evaluations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..optim import DEFAULTS, RegMuon
from .optimizers import _check, make_optimizers
from .tasks import Task, make_task

__all__ = ["SCHEDULES", "lr_factor", "train"]

Factory = Callable[[nn.Module], list[torch.optim.Optimizer]]

#: ``schedule`` values of :func:`train`.
SCHEDULES = ("linear", "constant", "cosine")


def lr_factor(k: int, steps: int, warmup: int = 0, schedule: str = "linear") -> float:
    """The lr multiplier at step ``k`` (``0 <= k < steps``).

    ``"linear"``: ``1 - k/steps``, or with ``warmup`` steps ``min((k+1)/warmup,
    (steps-k)/(steps-warmup+1))`` (linear rise, then linear decay to 0); ``"constant"``: 1, or
    the same linear rise over ``warmup`` steps and then 1; ``"cosine"``: the same rise, then
    ``(1 + cos(π (k-warmup+1)/(steps-warmup+1)))/2`` (half a cosine down to 0; without warm-up
    ``(1 + cos(π k/steps))/2``).
    """
    rise = (k + 1) / warmup if warmup else math.inf
    if schedule == "constant":
        return min(1.0, rise)
    if schedule == "cosine":
        if k < warmup:
            return rise
        done = (k - warmup + 1) / (steps - warmup + 1) if warmup else k / steps
        return (1 + math.cos(math.pi * done)) / 2
    if warmup == 0:
        return 1 - k / steps
    return min(rise, (steps - k) / (steps - warmup + 1))


def _factory(
    optimizer: str | Factory,
    lr: float | None,
    eps: float,
    adamw_lr: float,
    tol: float | None,
    weight_decay: float | None = None,
) -> tuple[str, Factory]:
    if not isinstance(optimizer, str):
        return getattr(optimizer, "__name__", "custom"), optimizer
    if lr is None:
        raise ValueError("lr is required with a named optimizer")
    kw = {"lr": lr, "eps": eps, "adamw_lr": adamw_lr}
    _check(optimizer, **kw)  # before building anything
    return optimizer, lambda model: make_optimizers(
        optimizer, model, **kw, tol=tol, weight_decay=weight_decay
    )


def _check_counts(steps: Any, evals: Any, warmup: Any, schedule: Any) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if isinstance(evals, bool) or not isinstance(evals, int) or evals < 1:
        raise ValueError(f"evals must be a positive int, got {evals!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup < steps:
        raise ValueError(f"warmup must be an int in [0, steps), got {warmup!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def _run(
    t: Task, model: nn.Module, opts: list[torch.optim.Optimizer], scheds: list[Any],
    steps: int, seed: int, evals: int, start: float, track_h: bool,
) -> dict[str, Any]:  # fmt: skip
    """The steps; the tuning metric at step 0 (``start``) and about ``evals`` more points."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    split = t.metric.removesuffix("_loss").removesuffix("_acc")
    curve = [[0, start]]
    curve_wall: list[float] = [0.0]
    losses: list[float] = []
    ham: list[list[float]] = []
    wall = 0.0
    every = max(1, steps // evals)
    for step in range(steps):
        record = (step + 1) % every == 0 or step + 1 == steps
        t0 = time.perf_counter()
        loss = t.train_loss(model, gen)
        for o in opts:
            o.zero_grad()
        loss.backward()
        wall += time.perf_counter() - t0
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
        if record and track_h:  # H(W_k, P_k): after backward, before step
            opt = opts[0]
            assert isinstance(opt, RegMuon)
            ham.append([step, float(opt.hamiltonian(loss))])
        t0 = time.perf_counter()
        for o in opts:
            o.step()
        for s in scheds:
            s.step()
        wall += time.perf_counter() - t0
        if record:
            curve.append([step + 1, t.evaluate(model, [split])[t.metric]])
            curve_wall.append(wall)
    return {"wall_s": wall, "train_loss": losses, "curve": curve, "curve_wall": curve_wall,
            "hamiltonian": ham}  # fmt: skip


def train(
    task: str | Task,
    optimizer: str | Factory,
    *,
    lr: float | None = None,
    steps: int,
    seed: int = 0,
    eps: float = DEFAULTS.eps,
    adamw_lr: float = float(DEFAULTS.adamw_lr),
    tol: float | None = DEFAULTS.tol,
    weight_decay: float | None = None,
    evals: int = 10,
    diagnostics: bool = True,
    warmup: int = 0,
    schedule: str = "linear",
) -> dict[str, Any]:
    """Train ``task``'s model with ``optimizer`` for ``steps`` steps from ``seed``.

    ``optimizer``: a name of :data:`~muonflow.training.OPTIMIZERS` (built by
    :func:`~muonflow.training.make_optimizers` with ``lr``, ``eps``, ``adamw_lr``, ``tol``,
    ``weight_decay``) or a
    factory ``model -> [optimizers]`` (then those are only recorded). The
    weights are initialized after ``torch.manual_seed(seed)``; minibatches come from a
    generator seeded with ``10_000 + seed``. Every learning rate is multiplied by
    :func:`lr_factor` (``schedule``, ``warmup``).

    Returns a JSON-able dict: the inputs; ``train_loss`` (the minibatch loss of every step);
    ``curve`` (``[[step, value], ...]`` of the task's tuning metric at step 0 and about
    ``evals`` more points) and ``curve_wall`` (the training wall time in seconds there); the
    final ``evaluate`` metrics of every split (``val_loss``, ``test_loss``, ``trainset_loss``,
    ...; ``inf`` if the run diverged); ``diverged``; ``wall_s``; with ``diagnostics`` and a
    :class:`~muonflow.optim.RegMuon` first optimizer also ``hamiltonian`` (``[[step, H], ...]``,
    :meth:`~muonflow.optim.RegMuon.hamiltonian` of the minibatch loss, before the step).
    """
    _check_counts(steps, evals, warmup, schedule)
    name, factory = _factory(optimizer, lr, eps, adamw_lr, tol, weight_decay)
    t = make_task(task) if isinstance(task, str) else task
    torch.manual_seed(seed)
    model = t.make_model()
    opts = factory(model)
    scheds = [torch.optim.lr_scheduler.LambdaLR(
        o, lambda k: lr_factor(k, steps, warmup, schedule)) for o in opts]  # fmt: skip
    out: dict[str, Any] = {
        "task": t.name, "optimizer": name, "lr": lr, "adamw_lr": adamw_lr, "seed": seed,
        "steps": steps, "warmup": warmup, "schedule": schedule,
        "eps": eps if name == "regmuon" else None, "tol": tol if name == "regmuon" else None,
        "curve_metric": t.metric,
        "chance_loss": t.chance_loss,
    }  # fmt: skip
    initial = t.evaluate(model)
    run = _run(t, model, opts, scheds, steps, seed, evals, initial[t.metric],
               diagnostics and isinstance(opts[0], RegMuon))  # fmt: skip
    final = t.evaluate(model) if math.isfinite(run["train_loss"][-1]) else dict.fromkeys(
        initial, math.inf)  # fmt: skip
    diverged = not all(math.isfinite(v) for v in final.values())
    return {**out, "diverged": diverged, **run, "initial": initial, **final}
