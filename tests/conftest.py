"""Shared fixtures and tolerance helpers."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

# One intra-op thread: the tests' matrices are small, and results are then independent of the
# machine's core count and of other processes competing for the cores.
torch.set_num_threads(1)
# The "auto" planner prices paths with this machine's measured rates (muonflow.polar
# .calibration): the tests plan with the fixed reference rates instead, so no plan depends on
# timing, and nothing is written to the user's cache (calibration tests opt back in).
# MUONFLOW_CALIBRATION=on runs the suite with this host's rates (mixed paths where bfloat16
# is native): a check of the plans the reference rates never take.
os.environ.setdefault("MUONFLOW_CALIBRATION", "off")
os.environ["MUONFLOW_CACHE_DIR"] = tempfile.mkdtemp(prefix="muonflow-tests-")


def assert_checks_pass(metrics: dict) -> None:
    """Content of an experiment's ``metrics.json``: ran, has claim checks, all pass, and each
    says why its threshold and which bug it catches."""
    assert metrics["status"] == "ok", metrics["error"]
    failed = {k: c for k, c in metrics["checks"].items() if not c["passed"]}
    assert not failed, failed
    kinds = [c["kind"] for c in metrics["checks"].values()]
    assert "claim" in kinds, "an experiment without claim checks tests no claim"
    for check in metrics["checks"].values():
        assert check["why"] and check["catches"] and check["relation"] in ("<=", ">=", "in")
        assert check["kind"] in ("claim", "sanity")


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u = eps_machine / 2``: the basis of every dtype-keyed tolerance in the tests."""
    return torch.finfo(dtype).eps / 2


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator; tests draw all randomness from it."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def map_calls(monkeypatch) -> list[tuple[int, ...]]:
    """The input shapes of every batched map call that ``muonflow.optim`` makes, in order
    (through its one interception point, ``muonflow.optim.kernel.mirror_map``)."""
    from muonflow.optim import kernel

    calls: list[tuple[int, ...]] = []
    real = kernel.mirror_map

    def counting(X, *args, **kw):
        calls.append(tuple(X.shape))
        return real(X, *args, **kw)

    monkeypatch.setattr(kernel, "mirror_map", counting)
    return calls


BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@contextlib.contextmanager
def benchmark_module(name: str) -> Iterator[ModuleType]:
    """``benchmarks/NAME.py`` imported, with its folder on ``sys.path`` meanwhile (it imports
    its siblings, such as ``bench_training``, by name)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


class SmallViT(nn.Module):
    """Patch projection, LayerNorm, self-attention (or a ``Linear`` in its place), a head: round
    10's class (normalization, raw inputs), with or without an attention layer."""

    def __init__(self, attention: bool = True) -> None:
        super().__init__()
        self.proj, self.norm = nn.Linear(4, 16), nn.LayerNorm(16)
        self.mix = (nn.MultiheadAttention(16, 2, batch_first=True) if attention
                    else nn.Linear(16, 16))  # fmt: skip
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.norm(self.proj(x))
        h = self.mix(h, h, h)[0] if isinstance(self.mix, nn.MultiheadAttention) else self.mix(h)
        return self.head(h.mean(1))
