"""Practical training: one model, one optimizer, one seed — loss curves, test metrics, wall time.

Tasks (no downloads; registry :data:`TASKS`)
    ``digits``  an MLP 64-128-128-10 (ReLU) on scikit-learn's bundled digits, minibatch 128;
                cross-entropy and accuracy on a validation split (the last 20% of train) and
                on the 25% test split.
    ``chars``   a character-level transformer (d_model 64, 4 heads, 2 layers, MLP 256, block 64,
                batch 32) on Python standard-library source text; cross-entropy in nats/char
                on 8 fixed batches from the held-out tail: its first half is ``val``, its
                second half ``test``.

Optimizers (registry :data:`OPTIMIZERS`; the same protocol for each)
    ``adamw``    ``torch.optim.AdamW`` on every parameter.
    ``muon``     ``torch.optim.Muon`` (its defaults: EMA momentum 0.95, Nesterov, 5 bf16
                 Newton–Schulz steps) on the hidden matrices, AdamW (``adamw_lr``) on the rest.
    ``regmuon``  :class:`~muonflow.optim.RegMuon` (momentum 0.95, Nesterov, relative ``eps``)
                 on the hidden matrices, its built-in AdamW (``adamw_lr``) on the rest.

Every learning rate decays linearly to 0 over the run; no weight decay. All runs with the same
``seed`` start from the same weights and see the same minibatches. Wall time counts the training
steps only (forward, backward, optimizer step), not the evaluations.

Example:
    >>> # xdoctest: +SKIP
    >>> r = train("digits", "regmuon", lr=0.01, eps=0.03, steps=150, seed=0)
    >>> r["test_loss"], r["test_acc"], r["wall_s"]
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from .data import digits, stdlib_corpus
from .models import MLP, Transformer, TransformerConfig
from .optim import RegMuon, default_adamw_rule

__all__ = ["OPTIMIZERS", "TASKS", "Task", "make_optimizers", "make_task", "train"]


@dataclass(frozen=True)
class Task:
    """A training problem: a model factory, a minibatch loss and an evaluation.

    ``train_loss(model, generator)`` draws one minibatch from ``generator``; ``evaluate(model)``
    returns ``{"val_loss", "test_loss", ...}``; ``chance_loss`` is the loss of the best
    prediction that ignores the input (``log 10`` for balanced digits; the unigram entropy of
    the training text for ``chars``).
    """

    name: str
    make_model: Callable[[], nn.Module]
    train_loss: Callable[[nn.Module, torch.Generator], Tensor]
    evaluate: Callable[[nn.Module], dict[str, float]]
    chance_loss: float
    metric: str = "val_loss"  # tunes lr and ε (lower is better); "test_*" is reported


def _entropy(labels: Tensor, n: int) -> float:
    """Entropy (nats) of the empirical distribution of ``labels`` in ``range(n)``."""
    p = torch.bincount(labels.long().flatten(), minlength=n).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def digits_task(*, batch: int = 128) -> Task:
    data = digits()  # 75% train / 25% test; the last 20% of train is the tuning split
    n_fit = round(0.8 * len(data.y_train))
    X_fit, y_fit = data.X_train[:n_fit], data.y_train[:n_fit]
    X_val, y_val = data.X_train[n_fit:], data.y_train[n_fit:]

    def train_loss(model: nn.Module, gen: torch.Generator) -> Tensor:
        idx = torch.randint(0, n_fit, (batch,), generator=gen)
        return nn.functional.cross_entropy(model(X_fit[idx]), y_fit[idx])

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict[str, float]:
        out = {}
        for split, X, y in (("val", X_val, y_val), ("test", data.X_test, data.y_test)):
            logits = model(X)
            out[f"{split}_loss"] = float(nn.functional.cross_entropy(logits, y))
            out[f"{split}_acc"] = float((logits.argmax(1) == y).float().mean())
        return out

    return Task(
        "digits",
        lambda: MLP(64, 128, 10, depth=2),
        train_loss,
        evaluate,
        chance_loss=_entropy(y_fit, data.n_classes),
    )


def chars_task(*, batch: int = 32, block: int = 64) -> Task:
    corpus = stdlib_corpus()
    cfg = TransformerConfig(
        vocab_size=corpus.vocab_size,
        block_size=block,
        d_model=64,
        n_heads=4,
        n_layers=2,
        d_mlp=256,
    )
    # The held-out tail of the corpus: its first half tunes, its second half is the test.
    half = len(corpus.val) // 2
    gen = torch.Generator().manual_seed(12345)  # fixed evaluation windows, whatever the seed
    held = {}
    for split, text in (("val", corpus.val[:half]), ("test", corpus.val[half:])):
        starts = torch.randint(0, len(text) - block - 1, (8 * batch,), generator=gen)
        windows = text[starts[:, None] + torch.arange(block + 1)].long()
        held[split] = windows.split(batch)

    def train_loss(model: nn.Module, gen: torch.Generator) -> Tensor:
        x, y = corpus.batch("train", batch, block, gen)
        return cast(Transformer, model).loss(x, y)

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict[str, float]:
        lm = cast(Transformer, model)
        return {
            f"{split}_loss": statistics.fmean(float(lm.loss(w[:, :-1], w[:, 1:])) for w in ws)
            for split, ws in held.items()
        }

    return Task(
        "chars",
        lambda: Transformer(cfg),
        train_loss,
        evaluate,
        chance_loss=_entropy(corpus.train, corpus.vocab_size),
    )


#: Task factories by name.
TASKS: dict[str, Callable[..., Task]] = {"digits": digits_task, "chars": chars_task}
#: Optimizer names accepted by :func:`make_optimizers` and :func:`train`.
OPTIMIZERS = ("adamw", "muon", "regmuon")


def make_task(name: str, **options: Any) -> Task:
    """The task ``name`` (a key of :data:`TASKS`), built with keyword ``options``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name](**options)


def _hidden(name: str, p: Tensor) -> bool:
    """The matrices Muon/RegMuon handle (the same rule for both)."""
    return p.ndim == 2 and not default_adamw_rule(name, p)


def make_optimizers(
    name: str,
    model: nn.Module,
    *,
    lr: float,
    eps: float = 0.03,
    adamw_lr: float = 3e-3,
) -> list[torch.optim.Optimizer]:
    """The optimizer(s) ``name`` (see the module docstring) over ``model``'s parameters.

    ``lr`` is the learning rate of the hidden matrices (of everything for ``adamw``);
    ``adamw_lr`` that of the AdamW part of ``muon``/``regmuon``; ``eps`` RegMuon's relative ε.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    for key, value in (("lr", lr), ("eps", eps), ("adamw_lr", adamw_lr)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"{key} must be a positive finite number, got {value!r}")
    named = list(model.named_parameters())
    if name == "adamw":
        return [torch.optim.AdamW([p for _, p in named], lr=lr, weight_decay=0.0)]
    if name == "muon":
        mats = [p for n, p in named if _hidden(n, p)]
        rest = [p for n, p in named if not _hidden(n, p)]
        return [
            torch.optim.Muon(mats, lr=lr, weight_decay=0.0),
            torch.optim.AdamW(rest, lr=adamw_lr, weight_decay=0.0),
        ]
    return [
        RegMuon(
            named,
            lr=lr,
            momentum=0.95,
            eps=eps,
            nesterov=True,
            weight_decay=0.0,
            adamw_lr=adamw_lr,
            adamw_betas=(0.9, 0.999),
        )
    ]


def train(
    task: str | Task,
    optimizer: str,
    *,
    lr: float,
    steps: int,
    seed: int = 0,
    eps: float = 0.03,
    adamw_lr: float = 3e-3,
    evals: int = 10,
) -> dict[str, Any]:
    """Train ``task``'s model with ``optimizer`` for ``steps`` steps from ``seed``.

    The weights are initialized after ``torch.manual_seed(seed)``; minibatches come from a
    generator seeded with ``10_000 + seed``. Learning rates decay linearly to 0.

    Returns a JSON-able dict: the inputs; ``train_loss`` (the minibatch loss of every step,
    ``[steps]``); ``curve`` (``[[step, value], ...]`` of ``curve_metric`` = the task's tuning
    metric, at step 0 and about ``evals`` more points); the final ``evaluate`` metrics
    (``val_loss``, ``test_loss``, digits also ``*_acc``; ``inf`` if the run diverged);
    ``diverged``; ``wall_s``; for ``regmuon`` also ``hamiltonian`` (``[[step, H], ...]``,
    :meth:`RegMuon.hamiltonian` of the minibatch loss, taken before the step at the
    evaluation points).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if isinstance(evals, bool) or not isinstance(evals, int) or evals < 1:
        raise ValueError(f"evals must be a positive int, got {evals!r}")
    t = make_task(task) if isinstance(task, str) else task
    torch.manual_seed(seed)
    model = t.make_model()
    opts = make_optimizers(optimizer, model, lr=lr, eps=eps, adamw_lr=adamw_lr)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda k: 1 - k / steps) for o in opts]
    gen = torch.Generator().manual_seed(10_000 + seed)
    out: dict[str, Any] = {
        "task": t.name,
        "optimizer": optimizer,
        "lr": lr,
        "adamw_lr": adamw_lr,
        "seed": seed,
        "steps": steps,
        "eps": eps if optimizer == "regmuon" else None,
        "curve_metric": t.metric,
        "chance_loss": t.chance_loss,
    }
    initial = t.evaluate(model)
    curve = [[0, initial[t.metric]]]
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
            final = {k: math.inf for k in initial}
            return {
                **out,
                "diverged": True,
                "wall_s": wall,
                "train_loss": losses,
                "curve": curve,
                "hamiltonian": ham,
                "initial": initial,
                **final,
            }
        if record and isinstance(opts[0], RegMuon):  # H(W_k, P_k): after backward, before step
            ham.append([step, float(opts[0].hamiltonian(loss))])
        t0 = time.perf_counter()
        for o in opts:
            o.step()
        for s in scheds:
            s.step()
        wall += time.perf_counter() - t0
        if record:
            curve.append([step + 1, t.evaluate(model)[t.metric]])
    return {
        **out,
        "diverged": False,
        "wall_s": wall,
        "train_loss": losses,
        "curve": curve,
        "hamiltonian": ham,
        "initial": initial,
        **t.evaluate(model),
    }
