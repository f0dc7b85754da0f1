"""Figure helpers: one look for every experiment (Agg backend, labelled axes, saved as PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def figure(ncols: int = 1, *, width: float = 5.0, height: float = 3.6) -> tuple[Any, Any]:
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, axes[0]


def save(fig: Any, path: Path) -> str:
    """Save ``fig`` to ``path`` (PNG, tight) and close it; returns the file name."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path).name
