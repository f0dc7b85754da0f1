"""Datasets without downloads: determinism, splits, standardization, batching."""

from __future__ import annotations

import pytest
import torch
from conftest import unit_roundoff

from muonflow.data import STDLIB_MODULES, digits, stdlib_corpus


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
