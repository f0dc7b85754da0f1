"""Bundled training tasks: a model factory, a minibatch loss and an evaluation, offline.

``digits``  an MLP 64-128-128-10 (ReLU) on scikit-learn's bundled digits, minibatch 128.
``cnn``     :class:`~muonflow.models.SmallCNN` (two 3x3 convs, a hidden linear layer, a head)
            on the same digits, minibatch 64; or (``images=``) on generated strokes, smooth
            noise labelled by a random CNN, or patches of two photographs
            (:func:`~muonflow.data.images`).
``chars``   a character-level transformer (:class:`~muonflow.models.Transformer`, d_model 64,
            4 heads, 2 layers, MLP 256, block 64, batch 32) on Python standard-library source.
``gpt2``    Hugging Face ``GPT2LMHeadModel`` from a ``GPT2Config`` (no download; tied token
            embedding and LM head, ``Conv1D`` layers; d_model 64, 4 heads, 2 layers, no
            dropout) on the same text; needs ``transformers``.
``moe``     :func:`~muonflow.models.moe.moe_transformer` (the ``chars`` trunk with every MLP a
            softmax-gated mixture of 4 experts stacked ``[E, m, n]``) on the same text.
``sort``    :class:`~muonflow.models.SortTransformer` (``nn.TransformerEncoder``, a raw
            positional ``nn.Parameter``) sorting 24 tokens from a vocabulary of 64; fresh
            random sequences every step.
``llama``   Hugging Face ``LlamaForCausalLM`` from a ``LlamaConfig`` (RMSNorm, rotary
            positions, grouped-query attention 4 query / 2 key-value heads, SwiGLU, untied
            head; d_model 32, 2 layers) on the text; needs ``transformers``.
``rnn``     :class:`~muonflow.models.CharRNN` (an ``nn.LSTM``, or ``nn.GRU``) on the text.
``vit``     Hugging Face ``ViTForImageClassification`` from a ``ViTConfig`` (2x2 patches of
            the 8x8 digits, a class token, d_model 32, 2 layers) on the digits.
``friedman`` an MLP 10-128-128-1 regressor (MSE) on scikit-learn's generated Friedman #1
            problem (``make_friedman1``: 10 uniform features, 5 of them used, noise 1).
``tabular`` an MLP on one of scikit-learn's bundled tables: the breast-cancer (2 classes) and
            wine (3 classes) classifiers, the diabetes regressor (:data:`TABLES`).

Splits: ``val`` tunes (learning rates, defaults), ``test`` is reported, ``trainset`` is the loss
on a fixed sample of the training data (the digits fit set; fixed training windows; a fixed
batch of sequences). Digits (and generated images): the last 20% of the 75% train split is
``val``, the 25% test split is ``test``. Text: the held-out tail of the corpus, its first half
``val``, its second half ``test``, fixed windows whatever the seed. Sort: fixed sequences from
their own generators. Friedman: 2000 fitting, 1000 ``val`` and 1000 ``test`` samples, features
and targets standardized with the fitting statistics.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..data import Digits, Images, digits, stdlib_corpus
from ..data import images as _images
from ..models import MLP, CharRNN, SmallCNN, SortTransformer, Transformer, TransformerConfig

__all__ = ["TASKS", "Task", "make_task"]


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
    name: str,
    make_model: Callable[[], nn.Module],
    *,
    batch: int,
    trainset_size: int = 512,
    logits: Callable[[nn.Module, Tensor], Tensor] = lambda m, x: m(x),
    data: Digits | Images | None = None,
) -> Task:
    if data is None:
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
        return nn.functional.cross_entropy(logits(model, X_fit[idx]), y_fit[idx])

    @torch.no_grad()
    def evaluate(model: nn.Module, splits: Sequence[str] | None = None) -> dict[str, float]:
        out, training = {}, model.training
        model.eval()  # batch norm's running statistics, not the held-out set's own
        try:
            for split in _pick(tuple(held), splits):
                X, y = held[split]
                z = logits(model, X)
                out[f"{split}_loss"] = float(nn.functional.cross_entropy(z, y))
                out[f"{split}_acc"] = float((z.argmax(1) == y).float().mean())
        finally:
            model.train(training)
        return out

    return Task(name, make_model, train_loss, evaluate, _entropy(y_fit, data.n_classes))


def digits_task(
    *, batch: int = 128, hidden: int = 128, depth: int = 2, norm: bool = False
) -> Task:
    """An MLP ``64 -> hidden (x depth) -> 10`` on the digits (``norm``: LayerNorm in each
    hidden layer)."""
    return _image_task(
        "digits", lambda: MLP(64, hidden, 10, depth=depth, norm=norm), batch=batch
    )


def cnn_task(
    *,
    batch: int = 64,
    channels: tuple[int, int] = (16, 32),
    hidden: int = 64,
    norm: bool = False,
    images: str = "digits",
    noise: float = 0.0,
    label_noise: float = 0.0,
) -> Task:
    """:class:`~muonflow.models.SmallCNN` on the digits, or on small images of another source of
    :func:`muonflow.data.images` (its ``noise`` and ``label_noise``; 1600 images, split as the
    digits are) (``norm``: batch norm after each conv; evaluated in eval mode, with the running
    statistics)."""
    c1, c2 = channels
    if images == "digits":
        if noise or label_noise:
            raise ValueError("noise and label_noise are options of the generated images, "
                             "not of the digits")  # fmt: skip
        return _image_task("cnn", lambda: SmallCNN((c1, c2), hidden, norm=norm), batch=batch)
    data = _images(images, noise=noise, label_noise=label_noise)
    return _image_task(
        f"cnn_{images}",
        lambda: SmallCNN((c1, c2), hidden, data.n_classes, norm,
                         in_channels=data.channels, size=data.size),
        batch=batch, data=data,
    )  # fmt: skip


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
    from ..models.moe import moe_transformer

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


def llama_task(
    *,
    d_model: int = 32,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    batch: int = 16,
    block: int = 64,
    eval_batches: int = 8,
) -> Task:
    """HF ``LlamaForCausalLM`` on the text (needs ``transformers``).

    RMSNorm, rotary positions, grouped-query attention (``n_kv_heads`` key/value heads shared
    by ``n_heads`` query heads), a SwiGLU feed-forward of width ``8·d_model/3`` rounded down to
    a multiple of 8 and an untied LM head.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=d_model,
        intermediate_size=max(8, 8 * d_model // 3 // 8 * 8),
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=block,
        tie_word_embeddings=False,
    )
    return _char_lm_task(
        "llama",
        lambda: LlamaForCausalLM(cfg),
        lambda m, x: m(input_ids=x).logits,
        batch=batch,
        block=block,
        eval_batches=eval_batches,
    )


def rnn_task(
    *,
    cell: str = "lstm",
    d_model: int = 64,
    n_layers: int = 1,
    batch: int = 16,
    block: int = 64,
    eval_batches: int = 8,
) -> Task:
    """:class:`~muonflow.models.CharRNN` (``cell`` ``"lstm"`` or ``"gru"``) on the text."""
    CharRNN(d_model=1, cell=cell)  # checks ``cell`` now, not at the first model
    return _char_lm_task(
        "rnn",
        lambda: CharRNN(128, d_model, n_layers, cell),
        lambda m, x: m(x),
        batch=batch,
        block=block,
        eval_batches=eval_batches,
    )


def vit_task(
    *, d_model: int = 32, n_layers: int = 2, n_heads: int = 4, patch: int = 2, batch: int = 64
) -> Task:
    """HF ``ViTForImageClassification`` on the 8x8 digits (``patch x patch`` patches, a class
    token, learned positions, MLP ``4·d_model``, no dropout; needs ``transformers``)."""
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(  # type: ignore[call-arg]  # num_labels: a PretrainedConfig kwarg
        image_size=8,
        patch_size=patch,
        num_channels=1,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        intermediate_size=4 * d_model,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=10,
    )
    return _image_task(
        "vit",
        lambda: ViTForImageClassification(cfg),
        batch=batch,
        logits=lambda m, x: m(pixel_values=x.reshape(-1, 1, 8, 8)).logits,
    )


def friedman_task(
    *,
    hidden: int = 128,
    depth: int = 2,
    batch: int = 64,
    noise: float = 1.0,
    function: int = 1,
    features: int | None = None,
    norm: bool = False,
    rows: int = 2000,
) -> Task:
    """An MLP ``features -> hidden (x depth) -> 1`` regressor (MSE) on a Friedman problem
    (``norm``: LayerNorm in each hidden layer), fit on its first ``rows`` samples (a small table
    with ``rows`` < 2000).

    ``function`` 1: ``y = 10 sin(π x₁x₂) + 20 (x₃ − ½)² + 10 x₄ + 5 x₅``, ``x ~ U[0, 1]^features``
    (10 unless given, at least 5; the rest are noise inputs); 2: ``y = (x₁² + (x₂x₃ −
    1/(x₂x₄))²)^½`` and 3: ``y = atan((x₂x₃ − 1/(x₂x₄)) / x₁)``, on four inputs over
    Friedman's ranges. ``noise·N(0, 1)`` is added to ``y`` in its own units (scikit-learn's
    ``make_friedman1/2/3``, seeded: nothing is downloaded). 4000 samples: the first 2000 fit,
    then 1000 ``val``, 1000 ``test``; features and target standardized with the fitting
    statistics, so predicting the mean scores about 1 (``chance_loss``: exactly the fitting
    set's variance, 1). With ``rows`` < 2000 only the first ``rows`` fit (and standardize);
    ``val`` and ``test`` stay the same 1000 samples each.
    """
    import sklearn.datasets

    if not 2 <= rows <= 2000:
        raise ValueError(f"rows must be in [2, 2000] (the fitting samples), got {rows}")
    if function not in (1, 2, 3):
        raise ValueError(f"unknown Friedman function {function!r}; valid: 1, 2, 3")
    if function == 1:
        if features is None:
            features = 10
        if features < 5:
            raise ValueError(f"Friedman #1 reads 5 inputs: features must be >= 5, got {features}")
        X_np, y_np = sklearn.datasets.make_friedman1(
            n_samples=4000, n_features=features, noise=noise, random_state=0
        )
    else:
        if features not in (None, 4):
            raise ValueError(f"Friedman #{function} has 4 inputs, got features={features}")
        make = getattr(sklearn.datasets, f"make_friedman{function}")
        X_np, y_np = make(n_samples=4000, noise=noise, random_state=0)
    X = torch.as_tensor(X_np, dtype=torch.float32)
    y = torch.as_tensor(y_np, dtype=torch.float32)
    mean, std = X[:rows].mean(0), X[:rows].std(0)
    X = (X - mean) / std
    y = (y - y[:rows].mean()) / y[:rows].std(correction=0)
    held = {"val": (X[2000:3000], y[2000:3000]), "test": (X[3000:], y[3000:]),
            "trainset": (X[: min(rows, 1000)], y[: min(rows, 1000)])}  # fmt: skip

    def train_loss(model: nn.Module, gen: torch.Generator) -> Tensor:
        idx = torch.randint(0, rows, (batch,), generator=gen)
        return nn.functional.mse_loss(model(X[idx]).squeeze(-1), y[idx])

    @torch.no_grad()
    def evaluate(model: nn.Module, splits: Sequence[str] | None = None) -> dict[str, float]:
        return {
            f"{split}_loss": float(
                nn.functional.mse_loss(model(held[split][0]).squeeze(-1), held[split][1])
            )
            for split in _pick(tuple(held), splits)
        }

    inputs = X.shape[1]
    make_model = lambda: MLP(inputs, hidden, 1, depth=depth, norm=norm)  # noqa: E731
    return Task("friedman", make_model, train_loss, evaluate, chance_loss=1.0)


#: The scikit-learn bundled tables :func:`tabular_task` reads: loader, number of classes (0 for
#: a regression target).
TABLES: dict[str, tuple[str, int]] = {
    "breast_cancer": ("load_breast_cancer", 2),
    "wine": ("load_wine", 3),
    "diabetes": ("load_diabetes", 0),
    "iris": ("load_iris", 3),
}


def tabular_task(
    *,
    dataset: str = "breast_cancer",
    hidden: int = 64,
    depth: int = 2,
    batch: int = 32,
    norm: bool = False,
) -> Task:
    """An MLP ``features -> hidden (x depth) -> outputs`` on one of scikit-learn's bundled
    tables (:data:`TABLES`; nothing is downloaded; ``norm``: LayerNorm in each hidden layer):
    cross-entropy over the classes of ``breast_cancer`` (2), ``wine`` (3) and ``iris`` (3), MSE
    on the standardized target of ``diabetes``.

    The rows in a fixed shuffled order (seed 0): 60% fit, 20% ``val``, 20% ``test``; features
    (and a regression target) standardized with the fitting statistics; ``trainset`` is the
    whole fitting set. ``chance_loss``: the fitting labels' entropy, or 1 for a regression.
    """
    import sklearn.datasets

    if dataset not in TABLES:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(TABLES)}")
    loader, classes = TABLES[dataset]
    bunch = getattr(sklearn.datasets, loader)()
    order = torch.randperm(len(bunch.target), generator=torch.Generator().manual_seed(0))
    X = torch.as_tensor(bunch.data, dtype=torch.float32)[order]
    y = torch.as_tensor(bunch.target)[order]
    n_fit, n_val = round(0.6 * len(y)), round(0.2 * len(y))
    X = (X - X[:n_fit].mean(0)) / X[:n_fit].std(0)
    if classes:
        y = y.long()
        loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy
        chance = _entropy(y[:n_fit], classes)
    else:
        y = y.float()
        y = (y - y[:n_fit].mean()) / y[:n_fit].std(correction=0)
        loss_fn = lambda z, t: nn.functional.mse_loss(z.squeeze(-1), t)  # noqa: E731
        chance = 1.0
    end = n_fit + n_val
    held = {"val": (X[n_fit:end], y[n_fit:end]), "test": (X[end:], y[end:]),
            "trainset": (X[:n_fit], y[:n_fit])}  # fmt: skip

    def train_loss(model: nn.Module, gen: torch.Generator) -> Tensor:
        idx = torch.randint(0, n_fit, (batch,), generator=gen)
        return loss_fn(model(X[idx]), y[idx])

    @torch.no_grad()
    def evaluate(model: nn.Module, splits: Sequence[str] | None = None) -> dict[str, float]:
        out = {}
        for split in _pick(tuple(held), splits):
            Xs, ys = held[split]
            z = model(Xs)
            out[f"{split}_loss"] = float(loss_fn(z, ys))
            if classes:
                out[f"{split}_acc"] = float((z.argmax(1) == ys).float().mean())
        return out

    features, outputs = X.shape[1], classes or 1
    make_model = lambda: MLP(features, hidden, outputs, depth=depth, norm=norm)  # noqa: E731
    return Task(dataset, make_model, train_loss, evaluate, chance)


#: Task factories by name.
TASKS: dict[str, Callable[..., Task]] = {
    "digits": digits_task,
    "cnn": cnn_task,
    "chars": chars_task,
    "gpt2": gpt2_task,
    "moe": moe_task,
    "sort": sort_task,
    "llama": llama_task,
    "rnn": rnn_task,
    "vit": vit_task,
    "friedman": friedman_task,
    "tabular": tabular_task,
}


def make_task(name: str, **options: Any) -> Task:
    """The task ``name`` (a key of :data:`TASKS`), built with keyword ``options``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    return TASKS[name](**options)
