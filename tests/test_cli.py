"""The command line, the runner and the results store: validation before work, atomic and
resumable runs, strict JSON, umask-respecting files, reports rebuilt from saved series."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from muonflow.cli import main
from muonflow.experiments import REGISTRY, at_most, experiment
from muonflow.experiments.base import parse_overrides
from muonflow.experiments.runner import reproduce, run_experiment
from muonflow.experiments.store import (
    CorruptResultError,
    load_metrics,
    load_series,
    save_series,
    try_load_metrics,
)
from muonflow.report import build_report


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "muonflow.cli", *args], cwd=cwd, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def _strict(text: str) -> object:
    """Parse JSON, refusing the non-standard NaN/Infinity tokens."""

    def bad(token: str) -> None:
        raise ValueError(f"non-strict JSON token {token}")

    return json.loads(text, parse_constant=bad)


def test_list_names_every_experiment(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in REGISTRY:
        assert name in out


def test_run_with_override_writes_metrics_and_series(tmp_path):
    out = _cli("run", "smoothing", "--profile", "smoke", "--set", "batch=2", "--no-progress",
               "--out", str(tmp_path), cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    folder = tmp_path / "smoothing"
    m = _strict((folder / "metrics.json").read_text())
    assert isinstance(m, dict)
    assert m["config"]["batch"] == 2 and m["profile"] == "smoke" and m["status"] == "ok"
    assert all(c["passed"] for c in m["checks"].values())
    assert {c["kind"] for c in m["checks"].values()} == {"claim", "sanity"}
    assert all(c["why"] and c["catches"] for c in m["checks"].values())
    assert set(m["provenance"]) >= {"muonflow", "torch", "numpy", "scipy", "cpu", "git"}
    assert m["cpu_time_s"] > 0 and m["wall_time_s"] > 0
    assert (folder / "series.npz").exists() and (folder / "series.json").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("nope=1", "unknown config key 'nope'; valid: m, n, batch"),
        ("batch=two", "--set batch='two': expected int"),
        ("batch", "must look like key=value"),
        ("eps=nan", "eps must be finite"),
        ("eps=inf", "eps must be finite"),
        ("eps=-1", "eps must be > 0"),
        ("m=0", "m must be > 0"),
        ("batch=0", "batch must be > 0"),
        ("eps_sweep=0.1", "eps_sweep needs >= 2 values"),
        ("seed=-1", "seed must be >= 0"),
    ],
)
def test_bad_config_is_rejected_before_running(tmp_path, capsys, override, message):
    code = main(["run", "smoothing", "--set", override, "--out", str(tmp_path / "r")])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing written, not even the folder


def test_bad_config_through_the_console_script(tmp_path):
    out = _cli("run", "smoothing", "--set", "eps=nan", "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert out.returncode == 2 and "smoothing: invalid config: eps must be finite" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "r").exists()


def test_unknown_experiment(tmp_path, capsys):
    assert main(["run", "warp_drive", "--out", str(tmp_path)]) == 2
    assert "unknown experiment 'warp_drive'; valid: smoothing" in capsys.readouterr().err


def test_out_that_is_a_file_or_read_only_fails_at_once(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["run", "smoothing", "--profile", "smoke", "--out", str(a_file)]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["reproduce", "--profile", "smoke", "--out", str(a_file)]) == 2
    assert main(["report", str(a_file)]) == 2
    if os.geteuid() == 0:
        pytest.skip("root can write into read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["reproduce", "--profile", "smoke", "--out", str(ro / "x")]) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def test_read_only_out_is_detected_by_the_probe(tmp_path, monkeypatch):
    # The same check without relying on file permissions (which root ignores): the probe that
    # creates a temporary folder fails -> a clear ValueError before any work.
    from muonflow.experiments import store

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(store.tempfile, "mkdtemp", refuse)
    with pytest.raises(ValueError, match="is not writable: Permission denied"):
        run_experiment(REGISTRY["smoothing"], tmp_path / "out", profile="smoke",
                       show_progress=False)  # fmt: skip


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


def test_series_round_trip_is_exact_and_strict(tmp_path):
    series = {
        "a": np.linspace(0, 1, 7),
        "nested": {"x": 3, "y": math.nan, "z": -math.inf, "name": "ok", "flag": True},
        "ints": [1, 2, 3],
        "ragged": [[1.0, 2.0], [3.0]],
        "none": None,
        "scalar": 0.1 + 0.2,
    }
    save_series(series, tmp_path)
    _strict((tmp_path / "series.json").read_text())  # no bare NaN / Infinity
    back = load_series(tmp_path)
    assert np.array_equal(back["a"], series["a"]) and back["a"].dtype == np.float64
    assert back["nested"]["x"] == 3 and math.isnan(back["nested"]["y"])
    assert back["nested"]["z"] == -math.inf and back["nested"]["name"] == "ok"
    assert back["nested"]["flag"] is True and back["none"] is None
    assert np.array_equal(back["ints"], [1, 2, 3])
    assert [list(r) for r in back["ragged"]] == [[1.0, 2.0], [3.0]]
    assert back["scalar"] == 0.1 + 0.2  # exact repr round trip


@pytest.fixture
def toy_experiments():
    """Two cheap registered experiments; their behaviour and call counts are controllable."""
    calls = {"a": 0, "b": 0}
    behaviour = {"a": "ok", "b": "ok"}

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        x: float = 1.0
        seed: int = 0

    def simulate_a(cfg, progress):
        calls["a"] += 1
        if behaviour["a"] == "crash":
            raise RuntimeError("boom a")
        return {"x": cfg.x, "curve": np.arange(3.0), "bad": math.nan}

    def simulate_b(cfg, progress):
        calls["b"] += 1
        if behaviour["b"] == "interrupt":
            raise KeyboardInterrupt
        if behaviour["b"] == "crash":
            raise RuntimeError("boom")
        return {"x": cfg.x}

    def checks_a(s, cfg):
        return {
            "x": at_most(s["x"], 2.0, kind="claim", why="toy", catches="x too large"),
            "nan_value": at_most(s["bad"], 1.0, kind="sanity", why="toy", catches="nan"),
        }

    def checks_b(s, cfg):
        return {"x": at_most(s["x"], 0.5, kind="claim", why="toy", catches="x too large")}

    def figure(s, cfg):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, float(s["x"])])
        return {"toy.png": fig}

    experiment("toy_a", title="toy a", claim="a", config=Cfg, simulate=simulate_a,
               checks=checks_a, figure=figure)  # fmt: skip
    experiment("toy_b", title="toy b", claim="b", config=Cfg, simulate=simulate_b,
               checks=checks_b, figure=figure)  # fmt: skip
    yield calls, behaviour
    del REGISTRY["toy_a"], REGISTRY["toy_b"]


def test_resume_after_interruption_recomputes_nothing_finished(tmp_path, toy_experiments):
    calls, behaviour = toy_experiments
    behaviour["b"] = "interrupt"
    with pytest.raises(KeyboardInterrupt):
        reproduce(tmp_path, only=["toy_a", "toy_b"], show_progress=False)
    a_file = tmp_path / "toy_a" / "metrics.json"
    before = a_file.read_text()
    assert calls == {"a": 1, "b": 1}
    # the interrupted experiment is recorded as such, and has no result (so it resumes)
    assert [p.name for p in (tmp_path / "toy_b").iterdir()] == ["failed_run.json"]
    record = json.loads((tmp_path / "toy_b" / "failed_run.json").read_text())
    assert record["status"] == "interrupted" and "interrupted by SIGINT" in record["error"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp debris

    behaviour["b"] = "ok"
    results = reproduce(tmp_path, only=["toy_a", "toy_b"], show_progress=False)
    assert calls == {"a": 1, "b": 2}  # toy_a reused, toy_b finished
    assert results[0]["skipped"] and a_file.read_text() == before
    assert not (tmp_path / "toy_b" / "failed_run.json").exists()  # the finished run replaced it
    build_report(tmp_path, rebuild=False)
    assert (tmp_path / "report.md").exists() and (tmp_path / "report.html").exists()


def test_nan_check_value_is_strict_json_and_fails(tmp_path, toy_experiments):
    m = run_experiment(REGISTRY["toy_a"], tmp_path, show_progress=False)
    saved = _strict((tmp_path / "toy_a" / "metrics.json").read_text())
    assert isinstance(saved, dict)
    assert saved["checks"]["nan_value"] == {**m["checks"]["nan_value"]}
    assert saved["checks"]["nan_value"]["value"] == "nan"
    assert saved["checks"]["nan_value"]["passed"] is False


def test_failed_run_keeps_the_earlier_result(tmp_path, toy_experiments):
    calls, behaviour = toy_experiments
    first = run_experiment(REGISTRY["toy_b"], tmp_path, overrides=["x=0.25"], show_progress=False)
    assert first["status"] == "ok"
    kept = (tmp_path / "toy_b" / "metrics.json").read_text()
    behaviour["b"] = "crash"
    again = run_experiment(REGISTRY["toy_b"], tmp_path, overrides=["x=0.3"], force=True,
                           show_progress=False)  # fmt: skip
    assert again["status"] == "error" and again["kept_earlier_result"]
    assert (tmp_path / "toy_b" / "metrics.json").read_text() == kept
    failed = json.loads((tmp_path / "toy_b" / "failed_run.json").read_text())
    assert "RuntimeError: boom" in failed["error"]
    # an invalid override is rejected before anything runs or is written
    with pytest.raises(ValueError, match="x must be finite"):
        run_experiment(REGISTRY["toy_b"], tmp_path, overrides=["x=nan"], show_progress=False)
    assert calls["b"] == 2 and (tmp_path / "toy_b" / "metrics.json").read_text() == kept


def test_failing_experiment_is_reported_and_others_run(tmp_path, toy_experiments):
    calls, behaviour = toy_experiments
    behaviour["b"] = "crash"
    results = reproduce(tmp_path, only=["toy_b", "toy_a"], show_progress=False)
    assert results[0]["status"] == "error" and "RuntimeError: boom" in results[0]["error"]
    assert results[1]["status"] == "ok" and calls["a"] == 1
    build_report(tmp_path, rebuild=False)
    assert "boom" in (tmp_path / "report.md").read_text()


def test_files_respect_the_umask(tmp_path, toy_experiments):
    old = os.umask(0o022)
    try:
        run_experiment(REGISTRY["toy_a"], tmp_path, show_progress=False)
    finally:
        os.umask(old)
    for path in (tmp_path / "toy_a").iterdir():
        assert path.stat().st_mode & 0o777 == 0o644, path
    assert (tmp_path / "toy_a").stat().st_mode & 0o777 == 0o755


def test_report_rebuilds_checks_and_figures_from_series(tmp_path, toy_experiments):
    calls, _ = toy_experiments
    run_experiment(REGISTRY["toy_a"], tmp_path, show_progress=False)
    folder = tmp_path / "toy_a"
    (folder / "toy.png").unlink()
    m = json.loads((folder / "metrics.json").read_text())
    m["checks"]["x"]["passed"] = False  # tampered verdict: the report recomputes it
    (folder / "metrics.json").write_text(json.dumps(m))
    rep = build_report(tmp_path)
    assert calls["a"] == 1  # nothing was simulated again
    assert (folder / "toy.png").stat().st_size > 1000
    (toy,) = [r for r in rep.results if r["name"] == "toy_a"]
    assert toy["checks"]["x"]["passed"] is True
    assert json.loads((folder / "metrics.json").read_text())["checks"]["x"]["passed"] is True


def test_report_on_a_partial_folder_says_what_is_missing(tmp_path, capsys):
    assert main(["run", "smoothing", "--profile", "smoke", "--no-progress", "--out",
                 str(tmp_path)]) == 0  # fmt: skip
    assert main(["report", str(tmp_path)]) == 1
    assert "incomplete; missing: dissipation" in capsys.readouterr().err
    assert "Partial" in (tmp_path / "report.md").read_text()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "is not a results folder" in capsys.readouterr().err


@pytest.mark.parametrize("drop", ["checks", "name"])
def test_incomplete_metrics_are_corrupt_not_a_keyerror(tmp_path, toy_experiments, drop):
    calls, _ = toy_experiments
    run_experiment(REGISTRY["toy_a"], tmp_path, show_progress=False)
    path = tmp_path / "toy_a" / "metrics.json"
    m = json.loads(path.read_text())
    del m[drop]
    path.write_text(json.dumps(m))
    hint = rf"\(missing {drop}\); rerun it: muonflow run toy_a"
    with pytest.raises(CorruptResultError, match=hint):
        load_metrics(path)
    assert try_load_metrics(path) is None
    rep = build_report(tmp_path)
    assert any("corrupt result" in p and "toy_a" in p for p in rep.problems)
    assert not rep.complete
    run_experiment(REGISTRY["toy_a"], tmp_path, show_progress=False)  # resume: not finished
    assert calls["a"] == 2 and load_metrics(path)["name"] == "toy_a"


def test_torn_metrics_are_recomputed_and_changed_config_reruns(tmp_path, toy_experiments):
    calls, _ = toy_experiments
    run_experiment(REGISTRY["toy_a"], tmp_path, show_progress=False)
    (tmp_path / "toy_a" / "metrics.json").write_text('{"name": "toy_a", "sta')  # torn write
    run_experiment(REGISTRY["toy_a"], tmp_path, show_progress=False)
    assert calls["a"] == 2
    run_experiment(REGISTRY["toy_a"], tmp_path, overrides=["x=1.5"], show_progress=False)
    assert calls["a"] == 3


def test_failed_check_gives_nonzero_exit_and_report_rebuilds(tmp_path):
    # ε/σ_min ≈ 0.2–0.5: the slope-2 law has visible O(ε²) corrections -> a failed check.
    assert main(["run", "smoothing", "--profile", "smoke", "--set", "eps_sweep=0.5,0.4",
                 "--no-progress", "--out", str(tmp_path)]) == 1  # fmt: skip
    assert main(["report", str(tmp_path)]) == 1
    assert "FAIL" in (tmp_path / "report.md").read_text()


def test_same_seed_gives_identical_metrics(tmp_path):
    a = run_experiment(REGISTRY["smoothing"], tmp_path / "a", profile="smoke", show_progress=False)
    b = run_experiment(REGISTRY["smoothing"], tmp_path / "b", profile="smoke", show_progress=False)
    assert a["checks"] == b["checks"]
    sa, sb = load_series(tmp_path / "a" / "smoothing"), load_series(tmp_path / "b" / "smoothing")
    assert sa.keys() == sb.keys()
    assert all(np.array_equal(sa[k], sb[k]) for k in sa if isinstance(sa[k], np.ndarray))


def test_no_import_cycle_and_no_plotting_at_import():
    code = (
        "import sys, muonflow.report, muonflow.experiments;"
        "assert 'muonflow.experiments.runner' not in sys.modules, 'report imports the runner';"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported without a figure'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_report_names_a_series_it_cannot_evaluate(tmp_path, toy_experiments, monkeypatch):
    run_experiment(REGISTRY["toy_a"], tmp_path, show_progress=False)

    def broken(series, cfg):
        raise KeyError("curve2")  # e.g. series saved by older code

    monkeypatch.setitem(REGISTRY, "toy_a", dataclasses.replace(REGISTRY["toy_a"], checks=broken))
    rep = build_report(tmp_path)
    assert any("toy_a: rebuilding checks and figures from the saved series failed" in p
               for p in rep.problems)  # fmt: skip
    assert not rep.all_pass


@pytest.mark.parametrize("command", [["run", "smoothing"], ["reproduce"], ["report"]])
def test_commands_that_need_the_research_extra_say_so_before_any_work(
    tmp_path, capsys, monkeypatch, command
):
    # A core install (torch + numpy) has no POT/tqdm: the command exits 2 naming the extra,
    # and writes nothing (a mutant without the up-front check would write the out folder or
    # die later with a bare ModuleNotFoundError).
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in ("ot", "tqdm") else real(name, *a),
    )
    out = tmp_path / "out"
    args = [*command, str(out)] if command == ["report"] else [*command, "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "muonflow[repro]" in err and "POT, tqdm are not installed" in err
    assert not out.exists()
