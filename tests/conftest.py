"""Shared fixtures and tolerance helpers."""

from __future__ import annotations

import pytest
import torch


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u = eps_machine / 2``: the basis of every dtype-keyed tolerance in the tests."""
    return torch.finfo(dtype).eps / 2


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator; tests draw all randomness from it."""
    return torch.Generator().manual_seed(1234)
