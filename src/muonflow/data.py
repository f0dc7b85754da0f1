"""Datasets that need no download: scikit-learn's bundled digits and Python's own source text.

Both are deterministic: fixed splits from explicit seeds (digits) or from a fixed list of
standard-library modules read in order (the character corpus). The corpus text depends on the
Python version; :attr:`CharCorpus.sha256` and :attr:`CharCorpus.python` record provenance.
"""

from __future__ import annotations

import hashlib
import importlib.util
import platform
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["STDLIB_MODULES", "CharCorpus", "Digits", "digits", "stdlib_corpus"]


@dataclass(frozen=True)
class Digits:
    """The 8x8 digits: ``X_*: [N, 64]`` standardized with the training statistics, ``y_*: [N]``."""

    X_train: Tensor
    y_train: Tensor
    X_test: Tensor
    y_test: Tensor
    n_classes: int = 10


def digits(
    *, test_fraction: float = 0.25, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Digits:
    """scikit-learn's bundled digits (1797 images, 10 classes), split by a seeded permutation.

    Features are standardized per pixel with the training mean and standard deviation
    (pixels that are constant on the training set get ``std = 1``).
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    from sklearn.datasets import load_digits  # scikit-learn ships this file: no download

    raw = load_digits()
    X = torch.as_tensor(raw.data, dtype=torch.float64)
    y = torch.as_tensor(raw.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(y))
    test, train = perm[:n_test], perm[n_test:]
    mean = X[train].mean(0)
    std = X[train].std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    Xs = ((X - mean) / std).to(dtype)
    return Digits(Xs[train], y[train], Xs[test], y[test])


#: Standard-library modules whose source forms the character corpus, in this order.
STDLIB_MODULES = (
    "argparse",
    "collections",
    "textwrap",
    "difflib",
    "json.decoder",
    "string",
    "functools",
    "inspect",
    "typing",
    "dataclasses",
    "fractions",
    "statistics",
    "heapq",
    "bisect",
    "calendar",
    "pprint",
    "shlex",
    "enum",
    "ast",
    "tokenize",
)


@dataclass(frozen=True)
class CharCorpus:
    """A byte-level (ASCII, vocabulary 128) corpus with a train/validation split.

    ``train``, ``val``: ``uint8`` tensors of character codes (non-ASCII characters dropped).
    """

    train: Tensor
    val: Tensor
    modules: tuple[str, ...]
    sha256: str
    python: str = field(default_factory=platform.python_version)
    vocab_size: int = 128

    def batch(
        self, split: str, batch_size: int, block_size: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Random windows: ``x, y: [batch_size, block_size]`` (int64), ``y`` shifted by one."""
        data = {"train": self.train, "val": self.val}.get(split)
        if data is None:
            raise ValueError(f"unknown split {split!r}; valid: 'train', 'val'")
        if len(data) <= block_size:
            raise ValueError(f"block_size {block_size} >= {split} length {len(data)}")
        start = torch.randint(0, len(data) - block_size, (batch_size,), generator=generator)
        idx = start[:, None] + torch.arange(block_size + 1)
        chunk = data[idx].long()
        return chunk[:, :-1], chunk[:, 1:]

    def decode(self, codes: Tensor) -> str:
        return bytes(codes.to(torch.uint8).tolist()).decode("ascii")


def stdlib_corpus(
    modules: tuple[str, ...] = STDLIB_MODULES, *, val_fraction: float = 0.1
) -> CharCorpus:
    """The source text of ``modules`` (concatenated in order), split: first part train, tail val."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    texts = []
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            raise ValueError(f"module {name!r} has no Python source file")
        with open(spec.origin, encoding="utf-8") as fh:
            texts.append(fh.read())
    raw = "\n".join(texts).encode("ascii", errors="ignore")
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    n_val = round(val_fraction * len(data))
    return CharCorpus(
        train=data[: len(data) - n_val].clone(),
        val=data[len(data) - n_val :].clone(),
        modules=tuple(modules),
        sha256=hashlib.sha256(raw).hexdigest(),
    )
