"""Run experiments: validated first, resumable, atomic, one failure never stops the others.

A run validates its config and the output folder before any work, simulates into a fresh
temporary folder beside ``OUT/<name>/`` (series, then checks and figures evaluated on the
series read back from disk, then ``metrics.json``) and swaps it into place only when it
finished. A run that raised never replaces an earlier finished result: its error is written
to ``OUT/<name>/failed_run.json`` and the earlier result stays. An interrupted run (SIGINT, or
SIGTERM delivered as :class:`Interrupted`) is recorded there too, its temporary folder removed,
and the interruption re-raised. A finished result of another profile is replaced only with
``replace=True`` (``--force``), checked for every selected experiment before the first runs. A
later ``reproduce`` skips an experiment whose saved metrics have the same config hash and
finished without error; a corrupt, partial or incomplete ``metrics.json`` counts as not
finished. Building the report is the caller's (the CLI's) step: this package never imports
:mod:`muonflow.report`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .base import REGISTRY, Experiment, config_dict, config_hash
from .evaluate import evaluate
from .store import (
    FAILED,
    METRICS,
    atomic_write_text,
    check_out_dir,
    clean_stale_temps,
    counts,
    dumps,
    load_series,
    make_temp_dir,
    passed,
    ratio,
    save_series,
    try_load_metrics,
)


def _git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance() -> dict[str, Any]:
    """Library versions and hardware, saved with every run."""
    import numpy as np
    import scipy
    import torch

    from .. import __version__

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "muonflow": __version__,
        "git": _git_revision(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_threads": torch.get_num_threads(),
        "gpu": gpu,
    }


class Interrupted(KeyboardInterrupt):
    """A termination signal (SIGTERM) raised as an exception, so that cleanup code runs."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM are held back (delivered on exit) where available: the two renames
    of a swap must not be separated by an interruption."""
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None:  # pragma: no cover - no POSIX signal masks (Windows)
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    old = mask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        mask(signal.SIG_SETMASK, old)


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Replace the folder ``final`` by ``tmp`` (old folder moved aside, then removed)."""
    old = None
    with _signals_deferred():
        if final.exists():
            old = make_temp_dir(final.parent, f".{final.name}.old-")
            os.replace(final, old / final.name)
        os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def replacement_conflicts(exps: Sequence[Experiment], out_root: Path, profile: str) -> list[str]:
    """The finished results in ``out_root`` that running ``exps`` with ``profile`` would
    replace although they were made with another profile (one line each)."""
    lines = []
    for exp in exps:
        saved = try_load_metrics(Path(out_root) / exp.name / METRICS)
        if saved is None or saved["status"] != "ok" or saved.get("profile") == profile:
            continue
        verdict = "every check passed" if passed(saved) else "some checks failed"
        lines.append(
            f"{Path(out_root) / exp.name} holds a finished result of profile "
            f"{saved.get('profile')!r} ({verdict}, {saved.get('wall_time_s', 0.0):.0f} s)"
        )
    return lines


def check_replacements(
    exps: Sequence[Experiment], out_root: Path, profile: str, *, replace: bool
) -> None:
    """Raise ``ValueError`` naming every finished result of another profile that a run with
    ``profile`` would replace, unless ``replace``; nothing is changed either way."""
    lines = [] if replace else replacement_conflicts(exps, out_root, profile)
    if lines:
        raise ValueError(
            f"the {profile!r} profile would replace finished results of another profile; "
            "nothing was changed:\n  "
            + "\n  ".join(lines)
            + f"\nuse another --out, or --force to replace {'them' if len(lines) > 1 else 'it'}"
        )


def _progress_bar(name: str, show: bool) -> tuple[Any, Any]:
    from tqdm import tqdm

    bar = tqdm(
        total=1000, desc=name, leave=False, disable=not show, file=sys.stderr,
        bar_format="{desc:>24} {percentage:3.0f}%|{bar:30}| {postfix}",
    )

    def progress(frac: float, msg: str = "") -> None:
        bar.n = int(1000 * min(max(frac, 0.0), 1.0))
        bar.set_postfix_str(msg, refresh=True)

    return bar, progress


def run_experiment(
    exp: Experiment,
    out_root: Path,
    *,
    profile: str = "quick",
    overrides: Iterable[str] = (),
    force: bool = False,
    replace: bool | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run one experiment (or reuse its finished result) and return its metrics.

    ``force``: recompute a finished result of the same config; ``replace`` (default:
    ``force``): allow replacing a finished result of another profile. Raises ``ValueError``
    before any work for an invalid config, output folder, or a replacement not allowed.
    """
    cfg = exp.make_config(profile, overrides)
    out_root = check_out_dir(Path(out_root))
    check_replacements([exp], out_root, profile, replace=force if replace is None else replace)
    clean_stale_temps(out_root)
    digest = config_hash(exp, cfg)
    final = out_root / exp.name
    saved = try_load_metrics(final / METRICS)
    if (
        not force
        and saved is not None
        and saved["config_hash"] == digest
        and saved["status"] == "ok"
    ):
        saved["skipped"] = True
        return saved

    tmp = make_temp_dir(out_root, f".{exp.name}.run-")
    try:
        metrics = _attempt(exp, cfg, profile, digest, tmp, final, show_progress)
        if metrics["error"] is not None and saved is not None and saved["status"] == "ok":
            # keep the earlier finished result; leave a record of the failed attempt beside it
            atomic_write_text(final / FAILED, dumps(metrics))
            shutil.rmtree(tmp, ignore_errors=True)
            metrics["kept_earlier_result"] = True
            return metrics
        atomic_write_text(tmp / METRICS, dumps(metrics))
        _swap_into_place(tmp, final)
        return metrics
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _attempt(
    exp: Experiment,
    cfg: Any,
    profile: str,
    digest: str,
    tmp: Path,
    final: Path,
    show_progress: bool,
) -> dict[str, Any]:
    """Simulate into ``tmp`` and evaluate; the metrics of the attempt (``error`` set if it
    raised). An interruption is recorded in ``final/failed_run.json`` and re-raised."""
    import torch

    bar, progress = _progress_bar(exp.name, show_progress)
    torch.manual_seed(cfg.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    error = None
    checks: dict[str, Any] = {}
    notes: list[str] = []
    figures: list[str] = []
    sim: tuple[float, float] | None = None  # (wall, CPU) seconds of simulate and save
    try:
        series = exp.simulate(cfg, progress)
        save_series(series, tmp)
        sim = (time.perf_counter() - t0, time.process_time() - c0)
        # checks and figures see exactly what `muonflow report` will see: the saved series
        checks, notes, figures = evaluate(exp, cfg, load_series(tmp), tmp)
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM as Interrupted: record, re-raise
        name = exc.args[0] if isinstance(exc, Interrupted) else "SIGINT"
        record = {
            "name": exp.name, "profile": profile, "config": config_dict(cfg),
            "config_hash": digest, "status": "interrupted",
            "error": f"interrupted by {name} after {time.perf_counter() - t0:.1f} s; the "
                     "earlier result (if any) is kept; run the same command again to resume",
            "provenance": provenance(),
        }  # fmt: skip
        with _signals_deferred():
            atomic_write_text(final / FAILED, dumps(record))
        exc.record = final / FAILED  # type: ignore[attr-defined]
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    finally:
        bar.close()
    t_sim, c_sim = sim or (time.perf_counter() - t0, time.process_time() - c0)
    return {
        "name": exp.name,
        "title": exp.title,
        "claim": exp.claim,
        "profile": profile,
        "config": config_dict(cfg),
        "config_hash": digest,
        "version": exp.version,
        "seed": cfg.seed,
        "status": "ok" if error is None else "error",
        "error": error,
        "checks": checks,
        "notes": notes,
        "figures": figures,
        "simulate_wall_s": round(t_sim, 3),
        "wall_time_s": round(time.perf_counter() - t0, 3),
        "cpu_time_s": round(time.process_time() - c0, 3),
        "simulate_cpu_s": round(c_sim, 3),
        "provenance": provenance(),
    }


def select(only: Sequence[str] | None) -> list[Experiment]:
    """The registered experiments, in registry order, or those named in ``only``."""
    if not only:
        return list(REGISTRY.values())
    unknown = [n for n in only if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; valid: {', '.join(REGISTRY)}")
    return [REGISTRY[n] for n in only]


def summary_table(results: Sequence[dict[str, Any]]) -> str:
    """Per experiment: claim checks, sanity checks, wall and CPU time, status."""
    rows = [f"{'experiment':<26} {'claim':>7} {'sanity':>7} {'wall [s]':>9} {'cpu [s]':>8}  status"]
    tot = {"claim": [0, 0], "sanity": [0, 0]}
    wall = cpu = 0.0
    for m in results:
        c = counts(m)
        for k in tot:
            tot[k][0] += c[k][0]
            tot[k][1] += c[k][1]
        status = "error" if m["status"] != "ok" else ("pass" if passed(m) else "FAIL")
        if m.get("skipped"):
            status += " (reused)"
        if m.get("kept_earlier_result"):
            status += " (earlier result kept)"
        else:
            wall += m.get("wall_time_s", 0.0)
            cpu += m.get("cpu_time_s", 0.0)
        rows.append(
            f"{m['name']:<26} {ratio(c['claim']):>7} {ratio(c['sanity']):>7} "
            f"{m.get('wall_time_s', 0.0):>9.1f} {m.get('cpu_time_s', 0.0):>8.1f}  {status}"
        )
    rows.append(
        f"{'total':<26} {ratio(tot['claim']):>7} {ratio(tot['sanity']):>7} "
        f"{wall:>9.1f} {cpu:>8.1f}"
    )
    return "\n".join(rows)


def reproduce(
    out: Path,
    *,
    profile: str = "quick",
    only: Sequence[str] | None = None,
    force: bool = False,
    show_progress: bool = True,
) -> list[dict[str, Any]]:
    """Run (or resume) the selected experiments; returns all metrics (the caller builds the
    report, :func:`muonflow.report.build_report`).

    Every selected experiment's config, the output folder and the results a run would replace
    (another profile's, refused unless ``force``) are validated before the first one runs.
    """
    from tqdm import tqdm

    exps = select(only)
    for exp in exps:
        exp.make_config(profile)
    out = check_out_dir(Path(out))
    check_replacements(exps, out, profile, replace=force)
    results = []
    for exp in tqdm(exps, desc="reproduce", disable=not show_progress, file=sys.stderr):
        results.append(
            run_experiment(exp, out, profile=profile, force=force, show_progress=show_progress)
        )
    return results
