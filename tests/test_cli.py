"""The command line and the experiment runner: list, run, overrides, report, resume, determinism."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from muonflow.experiments import REGISTRY, Result, experiment
from muonflow.experiments.base import at_most, parse_overrides
from muonflow.experiments.runner import reproduce, run_experiment


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "muonflow.cli", *args], cwd=cwd, capture_output=True, text=True,
        timeout=300,
    )


def test_list_names_every_experiment(tmp_path):
    out = _cli("list", cwd=tmp_path)
    assert out.returncode == 0
    for name in REGISTRY:
        assert name in out.stdout


def test_run_with_override_writes_metrics(tmp_path):
    out = _cli("run", "smoothing", "--profile", "smoke", "--set", "batch=2", "--no-progress",
               "--out", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    m = json.loads((tmp_path / "smoothing" / "metrics.json").read_text())
    assert m["config"]["batch"] == 2 and m["profile"] == "smoke" and m["status"] == "ok"
    assert all(c["passed"] for c in m["checks"].values())
    assert set(m["provenance"]) >= {"muonflow", "torch", "numpy", "scipy", "cpu", "git"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("nope=1", "unknown config key 'nope'; valid: m, n, batch"),
        ("batch=two", "--set batch='two': expected int"),
        ("batch", "must look like key=value"),
    ],
)
def test_bad_override_is_rejected_with_valid_list(tmp_path, override, message):
    out = _cli("run", "smoothing", "--set", override, "--out", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr
    assert not (tmp_path / "smoothing").exists()


def test_unknown_experiment(tmp_path):
    out = _cli("run", "warp_drive", "--out", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 2
    assert "unknown experiment 'warp_drive'; valid: smoothing" in out.stderr  # registry order


def test_override_types():
    @dataclasses.dataclass(frozen=True)
    class C:
        a: float = 1.0
        b: tuple[float, ...] = (1.0,)
        c: bool = False
        d: int | None = None
        seed: int = 0

    got = parse_overrides(C, ["a=2.5", "b=1e-2, 3", "c=true", "d=none"])
    assert got == {"a": 2.5, "b": (1e-2, 3.0), "c": True, "d": None}
    assert parse_overrides(C, ["d=7"]) == {"d": 7}


@pytest.fixture
def toy_experiments():
    """Two cheap registered experiments; the second can be made to crash or be interrupted."""
    calls = {"a": 0, "b": 0}
    behaviour = {"b": "ok"}

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        x: float = 1.0
        seed: int = 0

    @experiment("toy_a", title="toy a", claim="a", config=Cfg)
    def _a(cfg, ctx):
        calls["a"] += 1
        return Result(checks={"x": at_most(cfg.x, 2.0, "toy")}, series={"x": cfg.x})

    @experiment("toy_b", title="toy b", claim="b", config=Cfg)
    def _b(cfg, ctx):
        calls["b"] += 1
        if behaviour["b"] == "interrupt":
            raise KeyboardInterrupt
        if behaviour["b"] == "crash":
            raise RuntimeError("boom")
        return Result(checks={"x": at_most(cfg.x, 0.5, "toy")})

    yield calls, behaviour
    del REGISTRY["toy_a"], REGISTRY["toy_b"]


def test_resume_after_interruption_recomputes_nothing_finished(tmp_path, toy_experiments):
    calls, behaviour = toy_experiments
    behaviour["b"] = "interrupt"
    with pytest.raises(KeyboardInterrupt):
        reproduce(tmp_path, only=["toy_a", "toy_b"], show_progress=False)
    a_file = tmp_path / "toy_a" / "metrics.json"
    before = a_file.read_text()
    assert calls == {"a": 1, "b": 1} and not (tmp_path / "toy_b" / "metrics.json").exists()

    behaviour["b"] = "ok"
    results = reproduce(tmp_path, only=["toy_a", "toy_b"], show_progress=False)
    assert calls == {"a": 1, "b": 2}  # toy_a reused, toy_b finished
    assert results[0]["skipped"] and a_file.read_text() == before
    assert (tmp_path / "report.md").exists() and (tmp_path / "report.html").exists()


def test_corrupt_metrics_are_recomputed_and_changed_config_reruns(tmp_path, toy_experiments):
    calls, _ = toy_experiments
    run_experiment(REGISTRY["toy_a"], tmp_path, show_progress=False)
    (tmp_path / "toy_a" / "metrics.json").write_text('{"name": "toy_a", "sta')  # torn write
    run_experiment(REGISTRY["toy_a"], tmp_path, show_progress=False)
    assert calls["a"] == 2
    run_experiment(REGISTRY["toy_a"], tmp_path, overrides=["x=1.5"], show_progress=False)
    assert calls["a"] == 3


def test_failing_experiment_is_reported_and_others_run(tmp_path, toy_experiments):
    calls, behaviour = toy_experiments
    behaviour["b"] = "crash"
    results = reproduce(tmp_path, only=["toy_b", "toy_a"], show_progress=False)
    assert results[0]["status"] == "error" and "RuntimeError: boom" in results[0]["error"]
    assert results[1]["status"] == "ok" and calls["a"] == 1
    assert "boom" in (tmp_path / "report.md").read_text()


def test_failed_check_gives_nonzero_exit_and_report_rebuilds(tmp_path):
    out = _cli("run", "smoothing", "--profile", "smoke", "--set", "eps_sweep=0.5,0.4",
               "--no-progress", "--out", str(tmp_path), cwd=tmp_path)
    # ε/σ_min ≈ 0.2–0.5: the slope-2 law has visible O(ε²) corrections -> a failed check.
    assert out.returncode == 1
    rebuilt = _cli("report", str(tmp_path), cwd=tmp_path)
    assert rebuilt.returncode == 1 and "FAIL" in (tmp_path / "report.md").read_text()


def test_same_seed_gives_identical_metrics(tmp_path):
    a = run_experiment(REGISTRY["smoothing"], tmp_path / "a", profile="smoke", show_progress=False)
    b = run_experiment(REGISTRY["smoothing"], tmp_path / "b", profile="smoke", show_progress=False)
    assert a["checks"] == b["checks"] and a["series"] == b["series"]
