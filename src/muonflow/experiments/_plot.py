"""Figure helper: one look for every experiment (Agg backend, labelled axes).

Imported only inside the experiments' ``figure`` functions, so that nothing imports matplotlib
unless a figure is drawn.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def figure(ncols: int = 1, *, width: float = 5.0, height: float = 3.6) -> tuple[Any, Any]:
    """A figure with ``ncols`` axes side by side: ``(fig, axes)``."""
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, axes[0]
