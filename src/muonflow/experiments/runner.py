"""Run experiments: resumable, atomic, one failure never stops the others.

Each experiment writes ``OUT/<name>/metrics.json`` (atomically: a temporary file renamed into
place) and its figures. A later ``reproduce`` skips an experiment whose saved metrics have the
same config hash and finished without error; a corrupt or partial ``metrics.json`` is treated
as unfinished and recomputed.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy
import torch
from tqdm import tqdm

from .. import __version__
from .base import REGISTRY, Context, Experiment, Result, config_dict, config_hash

METRICS = "metrics.json"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        "cpu_threads": torch.get_num_threads(),
        "gpu": gpu,
    }


def load_metrics(path: Path) -> dict[str, Any] | None:
    """Saved metrics, or None if missing or unreadable (a run interrupted mid-write)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "status" in data else None


def run_experiment(
    exp: Experiment,
    out_root: Path,
    *,
    profile: str = "quick",
    overrides: Iterable[str] = (),
    force: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run one experiment (or reuse its finished result) and return its metrics."""
    cfg = exp.make_config(profile, overrides)
    digest = config_hash(exp, cfg)
    out_dir = Path(out_root) / exp.name
    saved = load_metrics(out_dir / METRICS)
    if (
        not force
        and saved is not None
        and saved.get("config_hash") == digest
        and saved["status"] == "ok"
    ):
        saved["skipped"] = True
        return saved

    out_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(
        total=1000, desc=exp.name, leave=False, disable=not show_progress, file=sys.stderr,
        bar_format="{desc:>24} {percentage:3.0f}%|{bar:30}| {postfix}",
    )

    def progress(frac: float, msg: str = "") -> None:
        bar.n = int(1000 * min(max(frac, 0.0), 1.0))
        bar.set_postfix_str(msg, refresh=True)

    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    error = None
    result = Result()
    try:
        result = exp.run(cfg, Context(out_dir=out_dir, progress=progress))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    finally:
        bar.close()
    metrics: dict[str, Any] = {
        "name": exp.name,
        "title": exp.title,
        "claim": exp.claim,
        "profile": profile,
        "config": config_dict(cfg),
        "config_hash": digest,
        "seed": cfg.seed,
        "status": "ok" if error is None else "error",
        "error": error,
        "checks": {k: c.to_json() for k, c in result.checks.items()},
        "series": result.series,
        "figures": [f for f in result.figures if (out_dir / f).exists()],
        "notes": result.notes,
        "wall_time_s": round(time.perf_counter() - t0, 3),
        "provenance": provenance(),
    }
    atomic_write_text(out_dir / METRICS, json.dumps(metrics, indent=1, default=_jsonable))
    return metrics


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot save {type(obj).__name__} in metrics.json")


def passed(metrics: dict[str, Any]) -> bool:
    return metrics["status"] == "ok" and all(c["passed"] for c in metrics["checks"].values())


def select(only: Sequence[str] | None) -> list[Experiment]:
    """The registered experiments, in registry order, or those named in ``only``."""
    if not only:
        return list(REGISTRY.values())
    unknown = [n for n in only if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; valid: {', '.join(REGISTRY)}")
    return [REGISTRY[n] for n in only]


def summary_table(results: Sequence[dict[str, Any]]) -> str:
    rows = [f"{'experiment':<26} {'checks':>8} {'time [s]':>9}  status"]
    for m in results:
        n_ok = sum(c["passed"] for c in m["checks"].values())
        status = "error" if m["status"] != "ok" else ("pass" if passed(m) else "FAIL")
        if m.get("skipped"):
            status += " (reused)"
        rows.append(
            f"{m['name']:<26} {n_ok:>3}/{len(m['checks']):<4} {m['wall_time_s']:>9.1f}  {status}"
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
    """Run (or resume) the selected experiments and rebuild the report; returns all metrics."""
    from ..report import build_report

    exps = select(only)
    results = []
    for exp in tqdm(exps, desc="reproduce", disable=not show_progress, file=sys.stderr):
        results.append(
            run_experiment(exp, out, profile=profile, force=force, show_progress=show_progress)
        )
    build_report(out)
    return results
