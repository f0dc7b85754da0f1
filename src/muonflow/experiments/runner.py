"""Run experiments: validated first, resumable, atomic, one failure never stops the others.

A run validates its config and the output folder before any work, simulates into a fresh
temporary folder beside ``OUT/<name>/`` (series, then checks and figures evaluated on the
series read back from disk, then ``metrics.json``) and swaps it into place only when it
finished. A run that raised (or was interrupted) never replaces an earlier finished result:
its error is written to ``OUT/<name>/failed_run.json`` and the earlier result stays. A later
``reproduce`` skips an experiment whose saved metrics have the same config hash and finished
without error; a corrupt, partial or incomplete ``metrics.json`` counts as not finished.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .base import REGISTRY, Experiment, config_dict, config_hash
from .evaluate import evaluate
from .store import (
    FAILED,
    METRICS,
    atomic_write_text,
    check_out_dir,
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


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Replace the folder ``final`` by ``tmp`` (old folder moved aside, then removed)."""
    old = None
    if final.exists():
        old = make_temp_dir(final.parent, f".{final.name}.old-")
        os.replace(final, old / final.name)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run one experiment (or reuse its finished result) and return its metrics.

    Raises ``ValueError`` before any work for an invalid config or output folder.
    """
    import torch

    cfg = exp.make_config(profile, overrides)
    out_root = check_out_dir(Path(out_root))
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
        bar, progress = _progress_bar(exp.name, show_progress)
        torch.manual_seed(cfg.seed)
        t0, c0 = time.perf_counter(), time.process_time()
        error = None
        checks: dict[str, Any] = {}
        notes: list[str] = []
        figures: list[str] = []
        try:
            series = exp.simulate(cfg, progress)
            save_series(series, tmp)
            t_sim, c_sim = time.perf_counter() - t0, time.process_time() - c0
            # checks and figures see exactly what `muonflow report` will see: the saved series
            checks, notes, figures = evaluate(exp, cfg, load_series(tmp), tmp)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            t_sim, c_sim = time.perf_counter() - t0, time.process_time() - c0
        finally:
            bar.close()
        metrics: dict[str, Any] = {
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
        if error is not None and saved is not None and saved["status"] == "ok":
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
    """Run (or resume) the selected experiments and rebuild the report; returns all metrics.

    Every selected experiment's config and the output folder are validated before the first
    one runs.
    """
    from tqdm import tqdm

    from ..report import build_report

    exps = select(only)
    for exp in exps:
        exp.make_config(profile)
    out = check_out_dir(Path(out))
    results = []
    for exp in tqdm(exps, desc="reproduce", disable=not show_progress, file=sys.stderr):
        results.append(
            run_experiment(exp, out, profile=profile, force=force, show_progress=show_progress)
        )
    build_report(out, rebuild=False)
    return results
