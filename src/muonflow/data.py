"""Datasets that need no download: scikit-learn's bundled digits, small images (generated, or cut
from scikit-learn's two bundled photographs) and Python's own source text.

All are deterministic: fixed splits and samples from explicit seeds (digits, images) or from a
fixed list of standard-library modules read in order (the character corpus). The corpus text
depends on the Python version; :attr:`CharCorpus.sha256` and :attr:`CharCorpus.python` record
provenance.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import platform
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["IMAGE_SOURCES", "STDLIB_MODULES", "CharCorpus", "Digits", "Images", "digits", "images",
           "stdlib_corpus"]


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
    return Digits(*_split_standardized(X, y, test_fraction, seed, dtype))


def _split_standardized(
    X: Tensor, y: Tensor, test_fraction: float, seed: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A seeded permutation split, every feature standardized with the training statistics
    (features constant on the training set get ``std = 1``)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(y))
    test, train = perm[:n_test], perm[n_test:]
    mean = X[train].mean(0)
    std = X[train].std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    Xs = ((X - mean) / std).to(dtype)
    return Xs[train], y[train], Xs[test], y[test]


@dataclass(frozen=True)
class Images:
    """Small images: ``X_*: [N, C·S·S]`` (``C = channels``, ``S = size``) standardized per pixel
    with the training statistics, ``y_*: [N]`` in ``range(n_classes)``."""

    X_train: Tensor
    y_train: Tensor
    X_test: Tensor
    y_test: Tensor
    n_classes: int
    channels: int
    size: int
    source: str


#: The sources of :func:`images`, each with its channels, side and classes.
IMAGE_SOURCES = {"shapes": (1, 12, 5), "teacher": (3, 8, 6), "photos": (3, 8, 4)}


def _shapes(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` 12x12 strokes, one of five kinds (horizontal bar, vertical bar, diagonal,
    anti-diagonal, hollow square) of random length, place and brightness, on a black field."""
    S, n_classes = IMAGE_SOURCES["shapes"][1:]
    y = torch.randint(0, n_classes, (n,), generator=gen)
    length = torch.randint(4, 9, (n,), generator=gen)  # 4-8 pixels
    room = S - length + 1
    r0 = (torch.rand(n, generator=gen) * room).long()
    c0 = (torch.rand(n, generator=gen) * room).long()
    mid_r = (torch.rand(n, generator=gen) * S).long()  # a bar's row or column
    mid_c = (torch.rand(n, generator=gen) * S).long()
    i = torch.arange(S)
    rows, cols = i[None, :, None], i[None, None, :]
    L, r0, c0 = length[:, None, None], r0[:, None, None], c0[:, None, None]
    in_r = (rows >= r0) & (rows < r0 + L)  # inside the stroke's box
    in_c = (cols >= c0) & (cols < c0 + L)
    strokes = torch.stack([
        (rows == mid_r[:, None, None]) & in_c,                      # horizontal bar
        (cols == mid_c[:, None, None]) & in_r,                      # vertical bar
        in_r & in_c & (rows - r0 == cols - c0),                      # diagonal
        in_r & in_c & (rows - r0 == L - 1 - (cols - c0)),            # anti-diagonal
        in_r & in_c & ((rows == r0) | (rows == r0 + L - 1)
                       | (cols == c0) | (cols == c0 + L - 1)),       # hollow square
    ], 1)  # fmt: skip
    img = strokes[torch.arange(n), y].double()
    bright = 0.5 + torch.rand(n, 1, 1, generator=gen, dtype=torch.float64)
    return (bright * img)[:, None], y


def _teacher(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` smooth 3x8x8 random images (white noise under a 3x3 box blur), labelled by a fixed
    random convolutional teacher (3x3 conv to 8 channels, ReLU, average and max pools, a linear
    readout to 6 classes), its logits offset per class over the sample so the classes are near
    balanced."""
    C, S, n_classes = IMAGE_SOURCES["teacher"]
    raw = torch.randn(n, C, S + 2, S + 2, generator=gen, dtype=torch.float64)
    img = nn.functional.avg_pool2d(raw, 3, stride=1)  # [n, C, S, S]
    kernel = torch.randn(8, C, 3, 3, generator=gen, dtype=torch.float64) / 3
    readout = torch.randn(16, n_classes, generator=gen, dtype=torch.float64)
    h = nn.functional.relu(nn.functional.conv2d(img, kernel, padding=1))
    feats = torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)
    feats = (feats - feats.mean(0)) / feats.std(0)
    logits = feats @ readout
    offset = torch.zeros(n_classes, dtype=torch.float64)
    for _ in range(200):  # per-class offsets that balance the argmax's classes
        share = torch.bincount((logits - offset).argmax(1), minlength=n_classes) / n
        offset += 0.5 * (share - 1 / n_classes)
    return img, (logits - offset).argmax(1)


@functools.cache
def _sample_photos() -> Tensor:
    """scikit-learn's two bundled photographs, ``[2, 427, 640, 3]`` uint8 (decoded once)."""
    from sklearn.datasets import load_sample_images  # scikit-learn ships both: no download

    return torch.stack([torch.tensor(im) for im in load_sample_images().images])


def _photos(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` 3x8x8 patches of scikit-learn's two bundled photographs (a temple, a flower; 427x640),
    each from a random place; the class is the photograph and the half (top or bottom) it came
    from."""
    photos = _sample_photos()
    S = IMAGE_SOURCES["photos"][1]
    H, W = photos.shape[1:3]
    y = torch.randint(0, 4, (n,), generator=gen)
    half = H // 2
    r = (y % 2) * half + (torch.rand(n, generator=gen) * (half - S + 1)).long()
    c = (torch.rand(n, generator=gen) * (W - S + 1)).long()
    i = torch.arange(S)
    patches = photos[(y // 2)[:, None, None], r[:, None, None] + i[:, None], c[:, None, None] + i]
    return patches.permute(0, 3, 1, 2).double() / 255, y  # [n, 3, S, S]


def _relabel(y: Tensor, share: float, n_classes: int, gen: torch.Generator) -> Tensor:
    """``y`` with a random ``share`` of its labels replaced by uniformly random classes."""
    flip = torch.rand(len(y), generator=gen) < share
    return torch.where(flip, torch.randint(0, n_classes, y.shape, generator=gen), y)


def images(
    source: str,
    *,
    n: int = 1600,
    noise: float = 0.0,
    label_noise: float = 0.0,
    test_fraction: float = 0.25,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Images:
    """``n`` small labelled images from ``source`` (:data:`IMAGE_SOURCES`), split like
    :func:`digits`: ``"shapes"`` (strokes, 1x12x12, 5 classes), ``"teacher"`` (smooth noise
    labelled by a random CNN, 3x8x8, 6 classes) or ``"photos"`` (patches of scikit-learn's
    photographs, 3x8x8, 4 classes).

    ``noise`` adds Gaussian pixel noise of that standard deviation (the images' own pixels are
    about unit scale); ``label_noise`` replaces that share of the labels, drawn at random, by
    uniformly random classes (either kind of noise: a Bayes error above zero). Every draw comes
    from ``seed``; the same arguments give the same tensors.
    """
    if source not in IMAGE_SOURCES:
        raise ValueError(f"unknown image source {source!r}; valid: {sorted(IMAGE_SOURCES)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 8:
        raise ValueError(f"n must be an int >= 8, got {n!r}")
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite standard deviation >= 0, got {noise!r}")
    if not 0 <= label_noise <= 1:
        raise ValueError(f"label_noise must be a share in [0, 1], got {label_noise!r}")
    gen = torch.Generator().manual_seed(seed)
    X, y = {"shapes": _shapes, "teacher": _teacher, "photos": _photos}[source](n, gen)
    X = X + noise * torch.randn(X.shape, generator=gen, dtype=X.dtype)
    channels, size, n_classes = IMAGE_SOURCES[source]
    y = _relabel(y, label_noise, n_classes, gen)
    split = _split_standardized(X.flatten(1), y, test_fraction, seed, dtype)
    return Images(*split, n_classes=n_classes, channels=channels, size=size, source=source)


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
