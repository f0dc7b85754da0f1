"""From saved series to verdicts and figures: the part of a run that ``muonflow report`` redoes.

:func:`evaluate` calls an experiment's pure ``checks`` and ``notes`` on its series and renders
its ``figure`` into PNG files; it never simulates. Used by the runner (on the series it has just
written and read back) and by the report (on series saved earlier).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Check, Experiment
from .store import atomic_write_bytes, is_figure_name


def evaluate(
    exp: Experiment, cfg: Any, series: dict[str, Any], out_dir: Path
) -> tuple[dict[str, dict[str, Any]], list[str], list[str]]:
    """``(checks as JSON, notes, figure file names)``; figures are written into ``out_dir``."""
    checks = exp.checks(series, cfg)
    for name, c in checks.items():
        if not isinstance(c, Check):
            raise TypeError(f"{exp.name}.checks returned {type(c).__name__} for {name!r}")
    notes = list(exp.notes(series, cfg)) if exp.notes is not None else []
    figures = save_figures(exp.figure(series, cfg), Path(out_dir))
    return {k: c.to_json() for k, c in checks.items()}, notes, figures


def save_figures(figures: dict[str, Any], out_dir: Path) -> list[str]:
    """Save matplotlib figures ``{file name: Figure}`` as PNG (tight, 110 dpi) and close them."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    try:
        for name, fig in figures.items():
            if not is_figure_name(name):
                raise ValueError(f"figure names must be plain '*.png' file names, got {name!r}")
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=110)
            atomic_write_bytes(out_dir / name, buf.getvalue())
            names.append(name)
    finally:
        for fig in figures.values():
            plt.close(fig)
    return names
