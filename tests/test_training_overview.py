"""``benchmarks/training_overview.py``: every set's final stage on today's core, in one table."""

from __future__ import annotations

import json

import pytest
from conftest import benchmark_module


@pytest.fixture(scope="module")
def overview():
    with benchmark_module("training_overview") as module:
        yield module


@pytest.fixture(scope="module")
def smoke(overview, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    bt = overview.bt
    args = ["--profile", "smoke", "--out", str(out), "--jobs", "1"]
    assert bt.main([*args, "--stage", "baselines"]) == 0
    assert bt.main([*args, "--resume", "--stage", "final"]) == 0
    return out


def test_overview_is_the_final_stages_analysis_with_each_models_class(overview, smoke, tmp_path):
    """One row per task, each the final stage's own paired ratio and difference with Muon's
    defaults; the classes are what the rules by structure read (an LM's embedding, an MLP's
    missing normalization, the head from the first gradient); the counts add up. Mutants
    caught: a row from another task's analysis, the head's class swapped."""
    assert overview.main(["--out", str(tmp_path), f"smoke={smoke}"]) == 0
    rows = {r["task"]: r for r in json.loads((tmp_path / "overview.json").read_text())}
    final = json.loads((smoke / "analysis.json").read_text())["final"]
    assert set(rows) == set(final) == set(overview.bt.SMOKE_SUITE)
    for task, r in rows.items():
        d = final[task]["default"]
        assert (r["ratio"], r["ratio_se"]) == (d["ratio"], d["ratio_se"])
        assert r["vs_doc"] == d["vs_muon_doc"]
    assert {t: r["class"] for t, r in rows.items()} == {
        "gpt2_tiny": "embedding or recurrent", "llama_tiny": "embedding or recurrent",
        "digits_tiny": "no normalization, classifier",
        "friedman_tiny": "no normalization, regressor"}  # fmt: skip
    text = (tmp_path / "overview.md").read_text()
    within = sum(r["ratio"] <= overview.bt.TARGET for r in rows.values())
    better = sum(r["vs_doc"][0] < 0 for r in rows.values())
    assert f"4 tasks: within 1.03x of the best tuned baseline on {within}; better " in text
    assert f"documented defaults in the mean on {better}," in text
    assert all(f"| {t} | smoke |" in text for t in rows)
    assert (tmp_path / "overview.png").stat().st_size > 0


def test_overview_reads_only_todays_core(overview, smoke, tmp_path, monkeypatch):
    """After a change of the library the stored runs are an older core's: the overview refuses,
    naming the tasks to rerun, and writes nothing. Mutant caught: runs read whatever their
    core (a table of yesterday's library presented as today's)."""
    monkeypatch.setattr(overview.bt, "core_fingerprint", lambda: "changed")
    with pytest.raises(SystemExit, match="not complete on today's core for smoke: gpt2_tiny"):
        overview.main(["--out", str(tmp_path / "o"), f"smoke={smoke}"])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("arg, message", [
    ("smoke", "expected PROFILE=OUT"), ("nosuch=x", "expected PROFILE=OUT"),
    ("smoke=/nonexistent", "results.json does not exist"),
])  # fmt: skip
def test_overview_refuses_bad_sets(overview, tmp_path, arg, message):
    with pytest.raises(SystemExit, match=message):
        overview.main(["--out", str(tmp_path), arg])
