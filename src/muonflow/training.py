"""Practical training: one model, one optimizer, one seed — loss curves, held-out loss, wall time.

Tasks (no downloads; registry :data:`TASKS`; every task is deterministic given the seed)
    ``digits``      an MLP 64-128-128-10 (ReLU) on scikit-learn's bundled digits, minibatch 128.
    ``cnn``         :class:`~muonflow.models.SmallCNN` (two 3x3 convs, a hidden linear layer, a
                    head) on the same digits, minibatch 64.
    ``chars``       a character-level transformer (:class:`~muonflow.models.Transformer`,
                    d_model 64, 4 heads, 2 layers, MLP 256, block 64, batch 32) on Python
                    standard-library source text.
    ``gpt2``        Hugging Face ``GPT2LMHeadModel`` built from a ``GPT2Config`` (no download;
                    tied token embedding and LM head, learned positions, ``Conv1D`` layers;
                    d_model 64, 4 heads, 2 layers, no dropout) on the same text; needs
                    ``transformers``.
    ``moe``         :func:`~muonflow.models.moe.moe_transformer` (the ``chars`` trunk with every
                    MLP a softmax-gated mixture of 4 experts stacked ``[E, m, n]``) on the same
                    text.
    ``sort``        :class:`~muonflow.models.SortTransformer` (``nn.TransformerEncoder``, a raw
                    positional ``nn.Parameter``) sorting 24 tokens from a vocabulary of 64;
                    fresh random sequences every step.

    Splits: ``val`` tunes (learning rates, defaults), ``test`` is reported, ``trainset`` is the
    loss on a fixed sample of the training data (the digits fit set; fixed training windows;
    a fixed batch of sequences). Digits: the last 20% of the 75% train split is ``val``, the
    25% test split is ``test``. Text: the held-out tail of the corpus, its first half ``val``,
    its second half ``test``, fixed windows whatever the seed. Sort: fixed sequences from their
    own generators.

Optimizers (registry :data:`OPTIMIZERS`; the same protocol for each)
    ``adamw``     ``torch.optim.AdamW`` on every parameter.
    ``muon``      ``torch.optim.Muon`` (its defaults: EMA momentum 0.95, Nesterov, 5 bf16
                  Newton–Schulz steps) on the hidden matrices, AdamW (``adamw_lr``) on the rest.
    ``muon_f32``  the same with Newton–Schulz in float32 (:func:`newton_schulz_f32`).
    ``regmuon``   :class:`~muonflow.optim.RegMuon` (momentum 0.95, Nesterov, relative ``eps``)
                  on the hidden matrices, its built-in AdamW (``adamw_lr``) on the rest.

    Which parameters are "hidden matrices" is decided by structure (:func:`route_parameters`),
    the same for every optimizer; the Muon arms see each matrix as an ``out x in`` 2-D view
    (:class:`MatrixMuon`: one matrix per expert of a stack, conv kernels flattened,
    ``Conv1D`` weights transposed), as RegMuon does.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from .data import digits, stdlib_corpus
from .models import MLP, SmallCNN, SortTransformer, Transformer, TransformerConfig
from .optim import RegMuon

__all__ = [
    "OPTIMIZERS",
    "TASKS",
    "MatrixMuon",
    "Route",
    "Task",
    "make_optimizers",
    "make_task",
    "newton_schulz_f32",
    "regmuon_groups",
    "route_parameters",
    "routing_summary",
    "train",
]


# -- tasks ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """A training problem: a model factory, a minibatch loss and an evaluation.

    ``train_loss(model, generator)`` draws one minibatch from ``generator``;
    ``evaluate(model, splits=None)`` returns ``{"<split>_loss", ...}`` for the given splits
    (default all of :attr:`splits`); ``chance_loss`` is the loss of the best prediction that
    ignores the input (``log 10`` for balanced digits; the unigram entropy of the training text;
    for ``sort`` the entropy of the sorted token at each position, averaged).
    """

    name: str
    make_model: Callable[[], nn.Module]
    train_loss: Callable[[nn.Module, torch.Generator], Tensor]
    evaluate: Callable[..., dict[str, float]]
    chance_loss: float
    metric: str = "val_loss"  # tunes lr and ε (lower is better); "test_*" is reported
    splits: tuple[str, ...] = ("val", "test", "trainset")


def _entropy(labels: Tensor, n: int) -> float:
    """Entropy (nats) of the empirical distribution of ``labels`` in ``range(n)``."""
    p = torch.bincount(labels.long().flatten(), minlength=n).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def _pick(all_splits: tuple[str, ...], splits: Sequence[str] | None) -> tuple[str, ...]:
    if splits is None:
        return all_splits
    bad = [s for s in splits if s not in all_splits]
    if bad:
        raise ValueError(f"unknown splits {bad}; valid: {list(all_splits)}")
    return tuple(splits)


def _image_task(
    name: str, make_model: Callable[[], nn.Module], *, batch: int, trainset_size: int = 512
) -> Task:
    data = digits()  # 75% train / 25% test; the last 20% of train is the tuning split
    n_fit = round(0.8 * len(data.y_train))
    X_fit, y_fit = data.X_train[:n_fit], data.y_train[:n_fit]
    X_val, y_val = data.X_train[n_fit:], data.y_train[n_fit:]
    held = {
        "val": (X_val, y_val),
        "test": (data.X_test, data.y_test),
        "trainset": (X_fit[:trainset_size], y_fit[:trainset_size]),
    }

    def train_loss(model: nn.Module, gen: torch.Generator) -> Tensor:
        idx = torch.randint(0, n_fit, (batch,), generator=gen)
        return nn.functional.cross_entropy(model(X_fit[idx]), y_fit[idx])

    @torch.no_grad()
    def evaluate(model: nn.Module, splits: Sequence[str] | None = None) -> dict[str, float]:
        out = {}
        for split in _pick(tuple(held), splits):
            X, y = held[split]
            logits = model(X)
            out[f"{split}_loss"] = float(nn.functional.cross_entropy(logits, y))
            out[f"{split}_acc"] = float((logits.argmax(1) == y).float().mean())
        return out

    return Task(name, make_model, train_loss, evaluate, _entropy(y_fit, data.n_classes))


def digits_task(*, batch: int = 128, hidden: int = 128) -> Task:
    """An MLP ``64 -> hidden -> hidden -> 10`` on the digits."""
    return _image_task("digits", lambda: MLP(64, hidden, 10, depth=2), batch=batch)


def cnn_task(*, batch: int = 64, channels: tuple[int, int] = (16, 32), hidden: int = 64) -> Task:
    """:class:`~muonflow.models.SmallCNN` on the digits."""
    c1, c2 = channels
    return _image_task("cnn", lambda: SmallCNN((c1, c2), hidden), batch=batch)


def _char_lm_task(
    name: str,
    make_model: Callable[[], nn.Module],
    logits: Callable[[nn.Module, Tensor], Tensor],
    *,
    batch: int,
    block: int,
    eval_batches: int,
) -> Task:
    corpus = stdlib_corpus()
    # The held-out tail of the corpus: its first half tunes, its second half is the test.
    half = len(corpus.val) // 2
    gen = torch.Generator().manual_seed(12345)  # fixed evaluation windows, whatever the seed
    held: dict[str, tuple[Tensor, ...]] = {}
    for split, text in (
        ("val", corpus.val[:half]),
        ("test", corpus.val[half:]),
        ("trainset", corpus.train),
    ):
        starts = torch.randint(0, len(text) - block - 1, (eval_batches * batch,), generator=gen)
        windows = text[starts[:, None] + torch.arange(block + 1)].long()
        held[split] = windows.split(batch)

    def lm_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return nn.functional.cross_entropy(logits(model, x).flatten(0, 1), y.flatten())

    def train_loss(model: nn.Module, gen: torch.Generator) -> Tensor:
        x, y = corpus.batch("train", batch, block, gen)
        return lm_loss(model, x, y)

    @torch.no_grad()
    def evaluate(model: nn.Module, splits: Sequence[str] | None = None) -> dict[str, float]:
        return {
            f"{split}_loss": statistics.fmean(
                float(lm_loss(model, w[:, :-1], w[:, 1:])) for w in held[split]
            )
            for split in _pick(tuple(held), splits)
        }

    return Task(
        name,
        make_model,
        train_loss,
        evaluate,
        chance_loss=_entropy(corpus.train, corpus.vocab_size),
    )


def _trunk(d_model: int, n_layers: int, n_heads: int, block: int) -> TransformerConfig:
    return TransformerConfig(
        vocab_size=128,
        block_size=block,
        d_model=d_model,
        n_heads=n_heads,
        n_layers=n_layers,
        d_mlp=4 * d_model,
    )


def chars_task(
    *, batch: int = 32, block: int = 64, d_model: int = 64, eval_batches: int = 8
) -> Task:
    """The in-house :class:`~muonflow.models.Transformer` (untied embeddings) on the text."""
    cfg = _trunk(d_model, 2, 4, block)
    return _char_lm_task(
        "chars",
        lambda: Transformer(cfg),
        lambda m, x: m(x),
        batch=batch,
        block=block,
        eval_batches=eval_batches,
    )


def moe_task(
    *,
    n_experts: int = 4,
    batch: int = 32,
    block: int = 64,
    d_model: int = 64,
    eval_batches: int = 4,
) -> Task:
    """The ``chars`` trunk with every feed-forward a mixture of ``n_experts`` stacked experts.

    Total expert width ``E·m = 4·d_model`` (:func:`~muonflow.models.moe.moe_transformer`).
    """
    from .models.moe import moe_transformer

    cfg = _trunk(d_model, 2, 4, block)
    return _char_lm_task(
        "moe",
        lambda: moe_transformer(cfg, n_experts),
        lambda m, x: m(x),
        batch=batch,
        block=block,
        eval_batches=eval_batches,
    )


def gpt2_config(*, d_model: int = 64, n_layers: int = 2, n_heads: int = 4, block: int = 64) -> Any:
    """A small ``transformers.GPT2Config`` for 128 byte-level tokens (no dropout, tied head)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=128,
        n_positions=block,
        n_embd=d_model,
        n_layer=n_layers,
        n_head=n_heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,  # GPT-2's 50256 is outside a 128-token vocabulary; byte 0 never occurs
        eos_token_id=0,
        tie_word_embeddings=True,
    )


def gpt2_task(
    *,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    batch: int = 32,
    block: int = 64,
    eval_batches: int = 4,
) -> Task:
    """HF ``GPT2LMHeadModel`` from :func:`gpt2_config` on the text (needs ``transformers``)."""
    from transformers import GPT2LMHeadModel

    cfg = gpt2_config(d_model=d_model, n_layers=n_layers, n_heads=n_heads, block=block)
    return _char_lm_task(
        "gpt2",
        lambda: GPT2LMHeadModel(cfg),
        lambda m, x: m(input_ids=x).logits,
        batch=batch,
        block=block,
        eval_batches=eval_batches,
    )


def sort_task(
    *,
    vocab_size: int = 64,
    length: int = 24,
    d_model: int = 64,
    batch: int = 64,
    eval_size: int = 512,
) -> Task:
    """:class:`~muonflow.models.SortTransformer` on uniformly random sequences.

    Training draws fresh sequences every step; ``val``/``test``/``trainset`` are fixed samples
    of ``eval_size`` sequences from their own seeded generators (the same distribution).
    """
    held = {
        split: torch.randint(
            0, vocab_size, (eval_size, length), generator=torch.Generator().manual_seed(s)
        )
        for split, s in (("val", 777), ("test", 778), ("trainset", 779))
    }

    def train_loss(model: nn.Module, gen: torch.Generator) -> Tensor:
        x = torch.randint(0, vocab_size, (batch, length), generator=gen)
        return cast(SortTransformer, model).loss(x)

    @torch.no_grad()
    def evaluate(model: nn.Module, splits: Sequence[str] | None = None) -> dict[str, float]:
        out = {}
        for split in _pick(tuple(held), splits):
            x = held[split]
            logits = model(x)
            target = x.sort(dim=1).values
            out[f"{split}_loss"] = float(
                nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
            )
            out[f"{split}_acc"] = float((logits.argmax(-1) == target).float().mean())
        return out

    # Chance: the best input-blind prediction of position i is the marginal law of the i-th
    # order statistic; its entropy, averaged over positions (estimated on a large sample).
    sample = (
        torch.randint(0, vocab_size, (20_000, length), generator=torch.Generator().manual_seed(1))
        .sort(dim=1)
        .values
    )
    chance = statistics.fmean(_entropy(sample[:, i], vocab_size) for i in range(length))
    return Task(
        "sort",
        lambda: SortTransformer(vocab_size, length, d_model=d_model, d_ff=4 * d_model),
        train_loss,
        evaluate,
        chance_loss=chance,
    )


#: Task factories by name.
TASKS: dict[str, Callable[..., Task]] = {
    "digits": digits_task,
    "cnn": cnn_task,
    "chars": chars_task,
    "gpt2": gpt2_task,
    "moe": moe_task,
    "sort": sort_task,
}
#: Optimizer names accepted by :func:`make_optimizers` and :func:`train`.
OPTIMIZERS = ("adamw", "muon", "muon_f32", "regmuon")


def make_task(name: str, **options: Any) -> Task:
    """The task ``name`` (a key of :data:`TASKS`), built with keyword ``options``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name](**options)


# -- routing by structure ---------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    """Where one parameter goes and why.

    ``to``: ``"matrix"`` (the orthogonalized update) or ``"adamw"``. ``kind``: for matrices
    ``"linear"`` (``[out, in]``), ``"conv1d"`` (Hugging Face ``Conv1D``, ``[in, out]``),
    ``"conv"`` (a kernel ``[out, in, *k]``, one ``out x in·k`` matrix) or ``"stacked"``
    (``[E, m, n]``: one matrix per expert); for AdamW the reason: ``"embedding"``,
    ``"tied"`` (shares its tensor with an embedding), ``"output"``, ``"raw"`` (held directly by
    a module that is not a layer, e.g. a positional table) or ``"vector"`` (``ndim < 2``).
    """

    name: str
    param: nn.Parameter
    to: str
    kind: str


def _is_hf_conv1d(mod: nn.Module) -> bool:
    cls = type(mod)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


def _layer_matrices(mod: nn.Module) -> dict[str, str]:
    """The weight matrices a layer module holds directly: ``{attribute: kind}``."""
    from .models.moe import MoEFeedForward

    if isinstance(mod, nn.Linear):
        return {"weight": "linear"}
    if isinstance(mod, nn.modules.conv._ConvNd):
        return {"weight": "conv"}
    if _is_hf_conv1d(mod):
        return {"weight": "conv1d"}
    if isinstance(mod, nn.MultiheadAttention):
        return {
            k: "linear"
            for k in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
        }
    if isinstance(mod, MoEFeedForward):
        kind = "stacked" if mod.layout == "stacked" else "linear"
        return {"router": kind, "w1": kind, "w2": kind}
    return {}


def route_parameters(model: nn.Module) -> list[Route]:
    """Route every trainable parameter of ``model`` by structure (not by name).

    To AdamW: parameters of embedding modules (``nn.Embedding``/``nn.EmbeddingBag``) and any
    parameter that shares its tensor with one (a tied LM head); the *output layer* — the last
    module, in registration order, that holds a layer weight matrix (``nn.Linear``, HF
    ``Conv1D``, a conv); parameters with ``ndim < 2``; and parameters held directly by a module
    that are not a layer's weight matrix (a raw positional table). To the orthogonalized update:
    the weight matrices of ``nn.Linear``, HF ``Conv1D``, convolutions,
    ``nn.MultiheadAttention`` (``in_proj_weight``) and stacked experts
    (:class:`~muonflow.models.moe.MoEFeedForward`).

    This is the structural rule of ``RegMuon(model)``; the result lists each parameter once,
    in ``model.named_parameters()`` order.
    """
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    last_layer: nn.Module | None = None
    for _, mod in model.named_modules():
        for attr, p in mod.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append((mod, attr))
        layer = _layer_matrices(mod)
        if any(getattr(mod, a, None) is not None for a in layer) and not isinstance(
            mod, nn.MultiheadAttention
        ):
            last_layer = mod
    routes = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mods = owners.get(id(p), [])
        kinds = [_layer_matrices(mod).get(attr) for mod, attr in mods]
        if p.ndim < 2:
            to, kind = "adamw", "vector"
        elif any(isinstance(mod, nn.Embedding | nn.EmbeddingBag) for mod, _ in mods):
            tied = len(mods) > 1
            to, kind = "adamw", "tied" if tied else "embedding"
        elif any(mod is last_layer for mod, _ in mods):
            to, kind = "adamw", "output"
        elif any(kinds):
            to, kind = "matrix", next(k for k in kinds if k)
        else:
            to, kind = "adamw", "raw"
        routes.append(Route(name, p, to, kind))
    return routes


def routing_summary(routes: Sequence[Route]) -> str:
    """A readable table: one line per parameter — name, shape, destination and reason."""
    width = max((len(r.name) for r in routes), default=4)
    lines = []
    for r in routes:
        shape = "x".join(map(str, r.param.shape)) or "scalar"
        lines.append(f"{r.name:<{width}}  {shape:>14}  {r.to:<6}  {r.kind}")
    n_mat = sum(r.to == "matrix" for r in routes)
    lines.append(f"{n_mat} matrices, {len(routes) - n_mat} to AdamW")
    return "\n".join(lines)


def matrix_views(route: Route) -> list[Tensor]:
    """``out x in`` 2-D views of a matrix parameter's data (sharing its storage).

    One per expert of a stack; a conv kernel flattened to ``[out, in·k]``; an HF ``Conv1D``
    weight ``[in, out]`` transposed.
    """
    w = route.param.detach()
    if route.kind == "stacked":
        return list(w.reshape(-1, *w.shape[-2:]).unbind(0))
    if route.kind == "conv":
        return [w.view(w.shape[0], -1)]
    if route.kind == "conv1d":
        return [w.T]
    return [w]


def regmuon_groups(routes: Sequence[Route], **adamw_group: Any) -> list[dict[str, Any]]:
    """RegMuon parameter groups (``"algorithm"`` given) for :func:`route_parameters`'s routes.

    Matrices are grouped by how RegMuon must see them (HF ``Conv1D``: ``layout="in_out"``;
    conv kernels: ``matrix_view="conv"``; stacks: ``matrix_view="batch"``); the AdamW group
    gets the extra options ``adamw_group`` (e.g. ``lr``).
    """
    options = {
        "linear": {},
        "conv1d": {"layout": "in_out"},
        "conv": {"matrix_view": "conv"},
        "stacked": {"matrix_view": "batch"},
    }
    groups = []
    for kind, opts in options.items():
        members = [(r.name, r.param) for r in routes if r.to == "matrix" and r.kind == kind]
        if members:
            groups.append({"params": members, "algorithm": "regmuon", **opts})
    rest = [(r.name, r.param) for r in routes if r.to == "adamw"]
    if rest:
        groups.append({"params": rest, "algorithm": "adamw", **adamw_group})
    return groups


# -- torch.optim.Muon over matrix views -------------------------------------------------------
def newton_schulz_f32(
    grad: Tensor, coeffs: tuple[float, float, float], steps: int, eps: float
) -> Tensor:
    """``torch.optim._muon._zeropower_via_newtonschulz`` with float32 instead of bfloat16."""
    a, b, c = coeffs
    X = grad.float()
    if grad.size(0) > grad.size(1):
        X = X.T
    X = X / X.norm().clamp(min=eps)
    for _ in range(steps):
        A = X @ X.T
        B = torch.addmm(A, A, A, beta=b, alpha=c)
        X = torch.addmm(X, B, X, beta=a)
    if grad.size(0) > grad.size(1):
        X = X.T
    return X


class MatrixMuon(torch.optim.Muon):
    """``torch.optim.Muon`` over ``out x in`` 2-D views of matrix parameters.

    ``torch.optim.Muon`` accepts 2-D parameters only. Each matrix parameter of ``routes``
    (``to == "matrix"``) is given to it as leaf views of its storage (:func:`matrix_views`: one
    per expert of a stack, conv kernels flattened as in Keller Jordan's Muon, HF ``Conv1D``
    transposed so that torch's shape rule sees ``[fan_out, fan_in]``); before each step their
    gradients are the matching views of the parameters' gradients. Every update is torch's own
    code. ``newton_schulz``: replaces torch's bf16 Newton–Schulz during :meth:`step` (e.g.
    :func:`newton_schulz_f32`); ``None`` keeps torch's.
    """

    def __init__(
        self,
        routes: Sequence[Route],
        *,
        newton_schulz: Callable[..., Tensor] | None = None,
        **options: Any,
    ) -> None:
        self._pairs: list[tuple[nn.Parameter, nn.Parameter, Route, int]] = []
        for r in routes:
            if r.to != "matrix":
                continue
            for i, view in enumerate(matrix_views(r)):
                self._pairs.append((nn.Parameter(view), r.param, r, i))
        if not self._pairs:
            raise ValueError("MatrixMuon: no matrix parameters in routes")
        self._newton_schulz = newton_schulz
        super().__init__([proxy for proxy, *_ in self._pairs], **options)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of the views *and* of the parameters they view."""
        super().zero_grad(set_to_none)
        for _, base, _, _ in self._pairs:
            if base.grad is not None:
                if set_to_none:
                    base.grad = None
                else:
                    base.grad.zero_()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        grads: dict[int, list[Tensor]] = {}
        for proxy, base, route, i in self._pairs:
            if base.grad is None:
                proxy.grad = None
                continue
            if id(base) not in grads:
                g = Route(route.name, cast(nn.Parameter, base.grad), "matrix", route.kind)
                grads[id(base)] = matrix_views(g)
            proxy.grad = grads[id(base)][i]
        if self._newton_schulz is None:
            return super().step(closure)
        import torch.optim._muon as muon_module

        orig = muon_module._zeropower_via_newtonschulz
        muon_module._zeropower_via_newtonschulz = self._newton_schulz
        try:
            return super().step(closure)
        finally:
            muon_module._zeropower_via_newtonschulz = orig


# -- optimizers -------------------------------------------------------------------------------
def _check_optimizer_args(name: str, **values: Any) -> None:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    for key, value in values.items():
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"{key} must be a positive finite number, got {value!r}")


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
    ``adamw_lr`` that of the AdamW part of ``muon``/``muon_f32``/``regmuon``; ``eps`` RegMuon's
    relative ε. Routing: :func:`route_parameters`.
    """
    _check_optimizer_args(name, lr=lr, eps=eps, adamw_lr=adamw_lr)
    if name == "adamw":
        return [torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)]
    routes = route_parameters(model)
    if name in ("muon", "muon_f32"):
        ns = newton_schulz_f32 if name == "muon_f32" else None
        rest = [r.param for r in routes if r.to == "adamw"]
        return [
            MatrixMuon(routes, newton_schulz=ns, lr=lr, weight_decay=0.0),
            torch.optim.AdamW(rest, lr=adamw_lr, weight_decay=0.0),
        ]
    return [
        RegMuon(
            regmuon_groups(routes),
            lr=lr,
            momentum=0.95,
            eps=eps,
            nesterov=True,
            weight_decay=0.0,
            adamw_lr=adamw_lr,
            adamw_betas=(0.9, 0.999),
        )
    ]


# -- the training loop ------------------------------------------------------------------------
def train(
    task: str | Task,
    optimizer: str | Callable[[nn.Module], list[torch.optim.Optimizer]],
    *,
    lr: float | None = None,
    steps: int,
    seed: int = 0,
    eps: float = 0.03,
    adamw_lr: float = 3e-3,
    evals: int = 10,
    diagnostics: bool = True,
    warmup: int = 0,
) -> dict[str, Any]:
    """Train ``task``'s model with ``optimizer`` for ``steps`` steps from ``seed``.

    ``optimizer``: a name of :data:`OPTIMIZERS` (built by :func:`make_optimizers` with ``lr``,
    ``eps``, ``adamw_lr``) or a factory ``model -> [optimizers]`` (then ``lr``, ``eps`` and
    ``adamw_lr`` are only recorded). The weights are initialized after
    ``torch.manual_seed(seed)``; minibatches come from a generator seeded with ``10_000 + seed``.
    Learning rates decay linearly to 0 (factor ``1 - k/steps`` at step ``k``); with ``warmup``
    steps they first rise linearly, factor ``min((k+1)/warmup, (steps-k)/(steps-warmup+1))``.

    Returns a JSON-able dict: the inputs; ``train_loss`` (the minibatch loss of every step,
    ``[steps]``); ``curve`` (``[[step, value], ...]`` of ``curve_metric`` = the task's tuning
    metric, at step 0 and about ``evals`` more points) and ``curve_wall`` (the training wall
    time in seconds at those points); the final ``evaluate`` metrics of every split
    (``val_loss``, ``test_loss``, ``trainset_loss``, ...; ``inf`` if the run diverged);
    ``diverged``; ``wall_s``; with ``diagnostics`` and a :class:`RegMuon` first optimizer also
    ``hamiltonian`` (``[[step, H], ...]``, :meth:`RegMuon.hamiltonian` of the minibatch loss,
    taken before the step at the evaluation points).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if isinstance(evals, bool) or not isinstance(evals, int) or evals < 1:
        raise ValueError(f"evals must be a positive int, got {evals!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or not 0 <= warmup < steps:
        raise ValueError(f"warmup must be an int in [0, steps), got {warmup!r}")
    factory: Callable[[nn.Module], list[torch.optim.Optimizer]]
    if isinstance(optimizer, str):
        if lr is None:
            raise ValueError("lr is required with a named optimizer")
        name = optimizer
        kw = {"lr": lr, "eps": eps, "adamw_lr": adamw_lr}
        _check_optimizer_args(name, **kw)  # before building anything

        def named(model: nn.Module) -> list[torch.optim.Optimizer]:
            return make_optimizers(name, model, **kw)

        factory = named
    else:
        name = getattr(optimizer, "__name__", "custom")
        factory = optimizer
    t = make_task(task) if isinstance(task, str) else task
    torch.manual_seed(seed)
    model = t.make_model()
    opts = factory(model)

    def factor(k: int) -> float:
        if warmup == 0:
            return 1 - k / steps
        return min((k + 1) / warmup, (steps - k) / (steps - warmup + 1))

    scheds = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in opts]
    gen = torch.Generator().manual_seed(10_000 + seed)
    out: dict[str, Any] = {
        "task": t.name,
        "optimizer": name,
        "lr": lr,
        "adamw_lr": adamw_lr,
        "seed": seed,
        "steps": steps,
        "warmup": warmup,
        "eps": eps if name == "regmuon" else None,
        "curve_metric": t.metric,
        "chance_loss": t.chance_loss,
    }
    split = t.metric.removesuffix("_loss").removesuffix("_acc")
    initial = t.evaluate(model)
    curve = [[0, initial[t.metric]]]
    curve_wall = [0.0]
    losses: list[float] = []
    ham: list[list[float]] = []
    wall = 0.0
    every = max(1, steps // evals)
    track_h = diagnostics and isinstance(opts[0], RegMuon)
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
                "curve_wall": curve_wall,
                "hamiltonian": ham,
                "initial": initial,
                **final,
            }
        if record and track_h:  # H(W_k, P_k): after backward, before step
            ham.append([step, float(cast(RegMuon, opts[0]).hamiltonian(loss))])
        t0 = time.perf_counter()
        for o in opts:
            o.step()
        for s in scheds:
            s.step()
        wall += time.perf_counter() - t0
        if record:
            curve.append([step + 1, t.evaluate(model, [split])[t.metric]])
            curve_wall.append(wall)
    final = t.evaluate(model)
    diverged = not all(math.isfinite(v) for v in final.values())
    return {
        **out,
        "diverged": diverged,
        "wall_s": wall,
        "train_loss": losses,
        "curve": curve,
        "curve_wall": curve_wall,
        "hamiltonian": ham,
        "initial": initial,
        **final,
    }
