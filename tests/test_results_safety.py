"""Results are never lost or leaked (issue #23): another profile never replaces finished results
without ``--force``; the report embeds only files inside the results folder; a read-only
folder, SIGTERM, SIGINT and SIGKILL leave clear errors and no debris; ``experiments`` never
imports ``report``. Each test names the bug of the old code it catches."""

from __future__ import annotations

import ast
import base64
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import muonflow
from muonflow.cli import main
from muonflow.experiments import REGISTRY, at_most, experiment
from muonflow.experiments import store as store_module
from muonflow.experiments.runner import reproduce, run_experiment
from muonflow.report import build_report


@pytest.fixture
def toys():
    """Two cheap registered experiments (same config in every profile); call counts."""
    calls = {"toy_a": 0, "toy_b": 0}

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        x: float = 1.0
        seed: int = 0

    def make(name):
        def simulate(cfg, progress):
            calls[name] += 1
            return {"x": cfg.x, "curve": np.arange(3.0)}

        def checks(s, cfg):
            return {"x": at_most(s["x"], 2.0, kind="claim", why="toy", catches="x too large")}

        def figure(s, cfg):
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots()
            ax.plot([0, 1], [0, float(s["x"])])
            return {"toy.png": fig}

        experiment(
            name,
            title=name,
            claim=name,
            config=Cfg,
            simulate=simulate,
            checks=checks,
            figure=figure,
        )

    make("toy_a")
    make("toy_b")
    yield calls
    del REGISTRY["toy_a"], REGISTRY["toy_b"]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# -- 1. another profile never replaces finished results ------------------------------------------
def test_the_issue_case_smoke_result_survives_a_quick_reproduce(tmp_path, capsys):
    # The issue: `run smoothing --profile smoke`, then `reproduce --profile quick --only
    # smoothing` deleted the smoke result with exit 0. Now: exit 2, the result named, untouched.
    out = tmp_path / "R"
    assert main(["run", "smoothing", "--profile", "smoke", "--no-progress", "--out", str(out)]) == 0
    before = _tree(out)
    capsys.readouterr()
    code = main(
        [
            "reproduce",
            "--profile",
            "quick",
            "--only",
            "smoothing",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"{out / 'smoothing'} holds a finished result of profile 'smoke'" in err
    assert "nothing was changed" in err and "--force" in err
    assert _tree(out) == before


def test_every_conflict_is_named_before_anything_runs(tmp_path, toys, capsys):
    run_experiment(REGISTRY["toy_a"], tmp_path, profile="smoke", show_progress=False)
    run_experiment(REGISTRY["toy_b"], tmp_path, profile="full", show_progress=False)
    before = _tree(tmp_path)
    with pytest.raises(ValueError) as info:
        reproduce(tmp_path, profile="quick", only=["toy_a", "toy_b"], show_progress=False)
    msg = str(info.value)
    assert "profile 'smoke'" in msg and "profile 'full'" in msg and "replace them" in msg
    assert toys == {"toy_a": 1, "toy_b": 1} and _tree(tmp_path) == before
    # `run` of another profile is refused the same way; --force replaces
    assert main(["run", "toy_a", "--no-progress", "--out", str(tmp_path)]) == 2
    assert "holds a finished result of profile 'smoke'" in capsys.readouterr().err
    assert _tree(tmp_path) == before
    assert main(["run", "toy_a", "--force", "--no-progress", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "toy_a" / "metrics.json").read_text())["profile"] == "quick"
    results = reproduce(
        tmp_path, profile="quick", only=["toy_a", "toy_b"], force=True, show_progress=False
    )
    assert [m["profile"] for m in results] == ["quick", "quick"]


def test_same_profile_reruns_and_failed_results_are_not_protected(tmp_path, toys):
    # What stays allowed: `run` recomputes its own profile, and a failed result of another
    # profile (nothing finished to lose) is replaced
    run_experiment(REGISTRY["toy_a"], tmp_path, profile="smoke", show_progress=False)
    run_experiment(REGISTRY["toy_a"], tmp_path, profile="smoke", force=True, show_progress=False)
    assert toys["toy_a"] == 2
    path = tmp_path / "toy_a" / "metrics.json"
    m = json.loads(path.read_text())
    path.write_text(json.dumps({**m, "status": "error", "error": "boom"}))
    run_experiment(REGISTRY["toy_a"], tmp_path, profile="quick", show_progress=False)
    assert json.loads(path.read_text())["profile"] == "quick"


# -- 3. the report embeds only files inside the results folder -----------------------------------
def _secret(tmp_path: Path) -> tuple[Path, str]:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET 42")
    return secret, base64.b64encode(secret.read_bytes()).decode()


@pytest.mark.parametrize("status", ["ok", "error"])
def test_report_refuses_a_figure_outside_the_folder(tmp_path, toys, status, capsys):
    # catches: "figures": ["../../secret.txt"] embedded as base64 in report.html (the old code
    # read any path a metrics.json named; error results are never rebuilt, so their list is
    # used as saved)
    out = tmp_path / "R"
    _, b64 = _secret(tmp_path)
    run_experiment(REGISTRY["toy_a"], out, show_progress=False)
    path = out / "toy_a" / "metrics.json"
    m = json.loads(path.read_text())
    m.update(status=status, error=None if status == "ok" else "boom")
    m["figures"] = ["../../secret.txt"]
    path.write_text(json.dumps(m))
    for rebuild in (False, True):
        rep = build_report(out, rebuild=rebuild)
        html = (out / "report.html").read_text()
        assert b64 not in html and "TOP SECRET" not in html
        if rebuild and status == "ok":  # rebuilt from the series: the figure list is redone
            assert not rep.problems
        else:
            assert any("figures must be plain '*.png' file names" in p for p in rep.problems)
    path.write_text(json.dumps(m))
    capsys.readouterr()
    assert main(["report", str(out)]) == 1  # (also: the folder lacks the real experiments)
    assert ("figures must be plain" in capsys.readouterr().err) == (status == "error")


def test_report_refuses_a_symlink_out_of_the_folder(tmp_path, toys):
    out = tmp_path / "R"
    secret, b64 = _secret(tmp_path)
    run_experiment(REGISTRY["toy_a"], out, show_progress=False)
    fig = out / "toy_a" / "toy.png"
    fig.unlink()
    fig.symlink_to(secret)
    rep = build_report(out, rebuild=False)
    assert b64 not in (out / "report.html").read_text()
    assert any("is a link to" in p and "outside" in p for p in rep.problems)
    fig.unlink()  # a link inside the folder is fine
    (out / "toy_a" / "real.png").write_bytes(b"\x89PNG fake")
    fig.symlink_to(out / "toy_a" / "real.png")
    assert not build_report(out, rebuild=False).problems


@pytest.mark.parametrize("name", ["/etc/passwd", "a/b.png", "..png", ".hidden.png", "x.txt", 3])
def test_figure_names_are_plain_png_names(tmp_path, name):
    with pytest.raises(store_module.CorruptResultError, match="plain"):
        store_module.figure_path(tmp_path, name)


# -- 7. read-only folders, signals, debris --------------------------------------------------------
def test_report_on_a_read_only_folder_is_a_clear_error(tmp_path, toys, capsys, monkeypatch):
    # catches: a PermissionError traceback (the old code wrote without checking), and a
    # report.md written while report.html failed
    out = tmp_path / "R"
    run_experiment(REGISTRY["toy_a"], out, show_progress=False)
    before = _tree(out)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(store_module.tempfile, "mkdtemp", refuse)
    monkeypatch.setattr(store_module.tempfile, "mkstemp", refuse)
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is not writable: Permission denied" in err and "Traceback" not in err
    assert _tree(out) == before
    monkeypatch.undo()
    # a failure while writing the second report file leaves the first one as it was
    build_report(out)
    old_md = (out / "report.md").read_text()
    real = store_module.tempfile.mkstemp

    def second_fails(*args, prefix="", **kwargs):
        if prefix.startswith(".report.html"):
            raise OSError(28, "No space left on device")
        return real(*args, prefix=prefix, **kwargs)

    (out / "toy_a" / "metrics.json").write_text(
        json.dumps({**json.loads((out / "toy_a" / "metrics.json").read_text()), "notes": ["new"]})
    )
    monkeypatch.setattr(store_module.tempfile, "mkstemp", second_fails)
    with pytest.raises(ValueError, match=r"cannot write the report .* No space left"):
        build_report(out, rebuild=False)
    assert (out / "report.md").read_text() == old_md
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


_SLOW = textwrap.dedent(
    """
    import dataclasses, sys, time
    from muonflow.cli import main
    from muonflow.experiments import at_most, experiment

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        seed: int = 0

    def simulate(cfg, progress):
        print("simulating", flush=True)
        time.sleep(60)
        return {"x": 1.0}

    experiment("toy_slow", title="slow", claim="slow", config=Cfg, simulate=simulate,
               checks=lambda s, c: {"x": at_most(s["x"], 2.0, kind="claim", why="t", catches="t")},
               figure=lambda s, c: {})
    sys.exit(main(sys.argv[1:]))
    """
)


def _start_slow(tmp_path: Path, out: Path) -> subprocess.Popen[str]:
    script = tmp_path / "slow.py"
    script.write_text(_SLOW)
    proc = subprocess.Popen(
        [sys.executable, str(script), "run", "toy_slow", "--no-progress", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_default,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "simulating"  # inside simulate, temp folder made
    assert [p for p in out.iterdir() if p.name.startswith(".toy_slow.run-")]
    return proc


def _sigint_default() -> None:
    """In the child: SIGINT as in a terminal, whatever the test runner inherited (a job started
    in the background by a non-interactive shell, or under nohup, has SIGINT ignored, and an
    ignored signal stays ignored across exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_is_recorded_and_leaves_no_debris(tmp_path, sig, code):
    # catches: SIGTERM leaving `.NAME.run-*.tmp` folders, SIGINT exiting -2 without a
    # failed_run.json (docs/reproduction.md promises a record and a resumable folder)
    out = tmp_path / "R"
    out.mkdir()
    proc = _start_slow(tmp_path, out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"interrupted by {signal.Signals(sig).name}" in err and "Traceback" not in err
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    record = json.loads((out / "toy_slow" / "failed_run.json").read_text())
    assert record["status"] == "interrupted" and signal.Signals(sig).name in record["error"]
    assert not (out / "toy_slow" / "metrics.json").exists()  # not finished: `reproduce` reruns


def test_what_a_killed_run_left_is_removed_by_the_next_run(tmp_path, toys):
    # SIGKILL cannot be caught: the next run in the folder removes the dead process's temp
    # folder (and untagged ones of older versions), never a live process's
    out = tmp_path / "R"
    out.mkdir()
    proc = _start_slow(tmp_path, out)
    proc.kill()
    proc.communicate(timeout=60)
    (left,) = [p for p in out.iterdir() if p.name.startswith(".toy_slow.run-")]
    legacy = out / ".toy_b.run-abcd1234.tmp"
    legacy.mkdir()
    host = store_module._host()
    live = out / f".toy_b.run-{host}-{os.getpid()}-abcd1234.tmp"
    live.mkdir()
    run_experiment(REGISTRY["toy_a"], out, show_progress=False)
    assert not left.exists() and not legacy.exists() and live.exists()


# -- 8. arrows: experiments never import report -------------------------------------------------
def test_experiments_never_import_report():
    # catches: the runner importing muonflow.report (a cycle held by a lazy import); the CLI
    # builds the report after `reproduce`
    pkg = Path(muonflow.__file__).parent / "experiments"
    for path in pkg.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [f"{'.' * node.level}{node.module or ''}"]
                names += [f"{names[0]}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            bad = [n for n in names if n in ("..report", "muonflow.report") or n == "...report"]
            assert not bad, f"{path.name} imports {bad}"
    code = "import sys, muonflow.experiments.runner; assert 'muonflow.report' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_seed_out_of_range_is_named(tmp_path, capsys):
    # catches: "Overflow when unpacking long long" from torch.manual_seed
    big = "99999999999999999999999"
    assert main(["run", "smoothing", "--set", f"seed={big}", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"seed must be an integer in [0, {2**63 - 1}] (2**63 - 1), got {big}" in err
    assert not (tmp_path / "r").exists()
    assert (
        main(
            [
                "train",
                "--task",
                "digits",
                "--optimizer",
                "adamw",
                "--steps",
                "1",
                "--lr",
                "0.1",
                "--seed",
                big,
            ]
        )
        == 2
    )
    assert f"--seed must be an integer in [0, {2**63 - 1}], got {big}" in capsys.readouterr().err


def test_interrupted_reproduce_resumes(tmp_path, toys, monkeypatch):
    # an interrupt in the second experiment: the first is kept, the second recorded; the same
    # command then runs only the second
    real = REGISTRY["toy_b"].simulate

    def interrupted(cfg, progress):
        raise KeyboardInterrupt

    monkeypatch.setitem(
        REGISTRY, "toy_b", dataclasses.replace(REGISTRY["toy_b"], simulate=interrupted)
    )
    assert (
        main(["reproduce", "--only", "toy_a", "toy_b", "--no-progress", "--out", str(tmp_path)])
        == 130
    )
    assert json.loads((tmp_path / "toy_b" / "failed_run.json").read_text())["status"] == (
        "interrupted"
    )
    monkeypatch.setitem(REGISTRY, "toy_b", dataclasses.replace(REGISTRY["toy_b"], simulate=real))
    assert (
        main(["reproduce", "--only", "toy_a", "toy_b", "--no-progress", "--out", str(tmp_path)])
        == 0
    )
    assert toys == {"toy_a": 1, "toy_b": 1}
