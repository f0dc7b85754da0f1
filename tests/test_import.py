"""``import muonflow`` is cheap: no research dependency, no torch._dynamo; the core install
needs torch and numpy only (the figures: ``python benchmarks/bench_import.py``)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import muonflow

ROOT = Path(__file__).resolve().parents[1]
RESEARCH = ("scipy", "ot", "matplotlib", "sklearn", "tqdm")

PROBE = """
import json, sys
import torch
before = set(sys.modules)
import muonflow
after_import = set(sys.modules)
muonflow.RegMuon, muonflow.regularized_polar, muonflow.HamiltonianFlow, muonflow.Relativistic
print(json.dumps({"before": sorted(before), "import": sorted(after_import),
                  "names": sorted(sys.modules)}))
"""


def _top(names, prefix):
    return [m for m in names if m == prefix or m.startswith(prefix + ".")]


def test_import_loads_no_research_dependency_and_no_dynamo():
    """In a fresh interpreter: ``import muonflow`` (and the core names) load none of SciPy, POT,
    matplotlib, scikit-learn, tqdm or torch._dynamo. (torch itself imports tqdm through
    torch.hub when tqdm is installed: that one is checked as "not loaded by muonflow".)"""
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, cwd=ROOT
    )
    mods = json.loads(out.stdout)
    before = set(mods["before"])
    for stage in ("import", "names"):
        new = set(mods[stage]) - before
        for name in (*RESEARCH, "torch._dynamo"):
            assert not _top(new, name), (stage, name, _top(new, name)[:3])
        assert not _top(mods[stage], "torch._dynamo"), stage
        for name in ("scipy", "ot", "matplotlib", "sklearn"):
            assert not _top(mods[stage], name), (stage, name)
    assert not _top(set(mods["import"]) - before, "muonflow.optim")  # names load on first use


def test_public_names_resolve_lazily():
    for name in muonflow.__all__:
        assert getattr(muonflow, name) is not None, name
    assert set(muonflow.__all__) <= set(dir(muonflow))
    assert muonflow.models.moe.MoEFeedForward  # submodules too
    importlib.import_module("muonflow.polar")
    assert isinstance(muonflow.polar, types.ModuleType)  # the package, never a function

def test_core_requirements_are_torch_and_numpy():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {
        d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in meta["dependencies"]
    }
    assert core == {"torch", "numpy"}
    repro = {d.split(">")[0].strip().lower() for d in meta["optional-dependencies"]["repro"]}
    assert repro == {"scipy", "pot", "matplotlib", "tqdm", "scikit-learn"}
    assert ".[repro,dev]" in (ROOT / "Makefile").read_text()  # the README's commands get both
