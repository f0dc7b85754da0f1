"""Datasets without downloads: determinism, splits, standardization, batching."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import unit_roundoff

import muonflow.data as data_module
from muonflow.data import IMAGE_SOURCES, STDLIB_MODULES, digits, images, stdlib_corpus


def test_digits_split_and_standardization():
    d = digits()
    assert d.X_train.shape == (1348, 64) and d.X_test.shape == (449, 64)
    assert d.y_train.dtype == torch.long and set(d.y_train.tolist()) == set(range(10))
    assert d.X_train.dtype == torch.float32
    again = digits()
    assert torch.equal(d.X_train, again.X_train) and torch.equal(d.y_test, again.y_test)
    other = digits(seed=1)
    assert not torch.equal(d.y_train, other.y_train)
    # Standardized with train statistics, computed in float64 and cast once to float32:
    # mean 0 and std 1 (non-constant pixels) up to the cast, u32 relative per entry, summed
    # over 1348 rows: |mean| <= u32 * max|x| and |std - 1| <= 2 * u32 * max|x|^2-ish; 64 u32
    # covers both with max|x| <= ~30 (|x| <= (16 - mean)/std, std >= 0.5 on these pixels).
    X = d.X_train.double()
    varying = X.std(0) > 0
    u = unit_roundoff(torch.float32)
    assert float(X.mean(0).abs().max()) <= 64 * u * float(X.abs().max())
    assert float((X.std(0)[varying] - 1).abs().max()) <= 64 * u * float(X.abs().max())
    assert bool((X[:, ~varying] == 0).all())  # constant pixels: centered, std taken as 1
    with pytest.raises(ValueError, match="test_fraction must be in"):
        digits(test_fraction=1.0)


def test_stdlib_corpus_is_deterministic_ascii_and_split():
    c = stdlib_corpus()
    again = stdlib_corpus()
    assert c.sha256 == again.sha256 and torch.equal(c.train, again.train)
    assert c.modules == STDLIB_MODULES and c.vocab_size == 128
    total = len(c.train) + len(c.val)
    assert total > 500_000
    assert len(c.val) == round(0.1 * total)
    assert int(c.train.max()) < 128 and int(c.val.max()) < 128
    assert "def " in c.decode(c.train[:20_000])
    x, y = c.batch("train", 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one character
    with pytest.raises(ValueError, match="unknown split 'test'"):
        c.batch("test", 4, 16, torch.Generator())
    with pytest.raises(ValueError, match="block_size"):
        c.batch("val", 1, len(c.val), torch.Generator())
    with pytest.raises(ValueError, match="no Python source"):
        stdlib_corpus(("sys",))


@pytest.mark.parametrize("source", sorted(IMAGE_SOURCES))
def test_images_are_deterministic_split_standardized_and_near_balanced(source):
    """Each source: 1200 training and 400 test images of its channels and side, the same tensors
    for the same arguments, others for another seed, every class present in both splits at no
    less than half its even share, pixels standardized with the training statistics (float64,
    cast once: the digits' bound)."""
    C, S, K = IMAGE_SOURCES[source]
    d = images(source)
    assert (d.channels, d.size, d.n_classes, d.source) == (C, S, K, source)
    assert d.X_train.shape == (1200, C * S * S) and d.X_test.shape == (400, C * S * S)
    assert d.X_train.dtype == torch.float32 and d.y_train.dtype == torch.long
    again, other = images(source), images(source, seed=1)
    assert torch.equal(d.X_train, again.X_train) and torch.equal(d.y_test, again.y_test)
    assert not torch.equal(d.X_train, other.X_train)
    for y in (d.y_train, d.y_test):
        assert int(torch.bincount(y, minlength=K).min()) >= 0.5 * len(y) / K
    X = d.X_train.double()
    u = unit_roundoff(torch.float32)
    varying = X.std(0) > 0
    assert float(X.mean(0).abs().max()) <= 64 * u * float(X.abs().max())
    assert float((X.std(0)[varying] - 1).abs().max()) <= 64 * u * float(X.abs().max())


def _stroke_check(shapes=None):
    """Noise-free strokes, read back from their pixels: a horizontal bar lies in one row, a
    vertical bar in one column, a diagonal on one ``r - c``, an anti-diagonal on one ``r + c``
    (each 4-8 pixels long, no gap), a hollow square is the border of an ``L x L`` box
    (``4(L - 1)`` pixels); every lit pixel has one brightness in [0.5, 1.5)."""
    X, y = (shapes or data_module._shapes)(400, torch.Generator().manual_seed(3))
    assert X.shape == (400, 1, 12, 12)
    for img, k in zip(X[:, 0], y.tolist(), strict=True):
        r, c = img.nonzero(as_tuple=True)
        lit = img[r, c]
        assert bool((lit == lit[0]).all()) and 0.5 <= float(lit[0]) < 1.5
        n = len(r)
        if k < 4:
            assert 4 <= n <= 8
            line = (r, c, r - c, r + c)[k]
            assert bool((line == line[0]).all()), k
            along = (c, r, r, r)[k]
            assert sorted(along.tolist()) == list(range(int(along.min()), int(along.min()) + n))
        else:
            L = int(r.max() - r.min()) + 1
            assert int(c.max() - c.min()) + 1 == L and 4 <= L <= 8 and n == 4 * (L - 1)
    assert sorted(set(y.tolist())) == list(range(5))


def _photo_check(photos=None):
    """With two stand-in photographs whose top and bottom halves hold the values 0-3 (planted
    by the caller), every patch of class ``k`` holds ``k`` alone (its photograph ``k // 2``, its
    half ``k % 2``), so no patch crosses the middle."""
    X, y = (photos or data_module._photos)(300, torch.Generator().manual_seed(4))
    assert X.shape == (300, 3, 8, 8)
    for img, k in zip(X, y.tolist(), strict=True):
        assert bool((img * 255 == k).all())
    assert sorted(set(y.tolist())) == list(range(4))


def _label_noise_check():
    """``label_noise = p`` replaces a share ``p`` of the labels by uniform classes: a share
    ``p (1 - 1/K)`` differs from the clean labels (within 4 binomial SE over 1600); the images
    are untouched. ``noise = s`` adds pixel noise and leaves the labels."""
    clean = images("teacher")
    noisy = images("teacher", label_noise=0.5)
    assert torch.equal(clean.X_train, noisy.X_train)
    y0 = torch.cat([clean.y_train, clean.y_test])
    y1 = torch.cat([noisy.y_train, noisy.y_test])
    share, expect = float((y0 != y1).double().mean()), 0.5 * (1 - 1 / 6)
    assert abs(share - expect) <= 4 * (expect * (1 - expect) / 1600) ** 0.5
    strokes, blurred = images("shapes"), images("shapes", noise=1.0)
    assert torch.equal(strokes.y_train, blurred.y_train)
    assert not torch.equal(strokes.X_train, blurred.X_train)


@pytest.fixture
def halves(monkeypatch):
    """Two stand-in 40x30 photographs, top and bottom halves holding 0, 1 (first) and 2, 3."""
    H, W = 40, 30
    fake = torch.empty(2, H, W, 3, dtype=torch.uint8)
    for k in range(4):
        fake[k // 2, (k % 2) * H // 2:(k % 2 + 1) * H // 2] = k
    monkeypatch.setattr(data_module, "_sample_photos", lambda: fake)


def test_image_sources_make_what_they_say(halves):
    _stroke_check()
    _photo_check()
    _label_noise_check()


def test_image_source_checks_catch_their_mutants(halves, monkeypatch):
    """Mutants kept as code, each failing its check: two stroke kinds' labels swapped, a stroke
    one pixel short (a gap), the photographs' halves swapped, a patch drawn across the middle,
    the label noise never applied."""
    real_shapes, real_photos = data_module._shapes, data_module._photos

    def swapped(n, gen):
        X, y = real_shapes(n, gen)
        return X, torch.where(y == 2, 3, torch.where(y == 3, 2, y))

    def short(n, gen):
        X, y = real_shapes(n, gen)
        X = X.clone()
        X[:, 0, :, 5] = 0  # a column blanked: strokes across it lose a pixel
        return X, y

    def other_half(n, gen):
        X, y = real_photos(n, gen)
        return X, y ^ 1

    def across(n, gen):  # a patch's half read from its top row, drawn anywhere
        photos, S = data_module._sample_photos(), 8
        H, W = photos.shape[1:3]
        k = torch.randint(0, 2, (n,), generator=gen)
        r = torch.randint(0, H - S + 1, (n,), generator=gen)
        c = torch.randint(0, W - S + 1, (n,), generator=gen)
        i = torch.arange(S)
        X = photos[k[:, None, None], r[:, None, None] + i[:, None], c[:, None, None] + i]
        return X.permute(0, 3, 1, 2).double() / 255, 2 * k + (r >= H // 2).long()

    for check, mutant in ((_stroke_check, swapped), (_stroke_check, short),
                          (_photo_check, other_half), (_photo_check, across)):  # fmt: skip
        with pytest.raises(AssertionError):
            check(mutant)
    monkeypatch.setattr(data_module, "_relabel", lambda y, *a: y)
    with pytest.raises(AssertionError):
        _label_noise_check()


def test_images_refuse_bad_arguments():
    for kwargs, match in (({"source": "cifar"}, "unknown image source"),
                          ({"n": 4}, "n must be an int >= 8"),
                          ({"noise": -1.0}, "noise must be"),
                          ({"noise": math.nan}, "noise must be"),
                          ({"label_noise": 1.5}, "label_noise must be"),
                          ({"test_fraction": 0.0}, "test_fraction must be in")):  # fmt: skip
        args = {"source": "shapes", **kwargs}
        with pytest.raises(ValueError, match=match):
            images(args.pop("source"), **args)
