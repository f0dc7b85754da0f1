"""Optional dependencies, imported where they are used (``import muonflow`` loads none of them).

The core (the optimizer, the maps, the dynamics' fixed-step schemes) needs torch and numpy only;
SciPy (the reference ODE solver), POT (Wasserstein distances), matplotlib (figures), tqdm
(progress bars) and scikit-learn (the bundled digits set) come with the ``repro`` extra:
``pip install 'muonflow[repro]'``.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Any


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise ``ImportError`` saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        raise ImportError(
            f"{purpose} needs {top!r}, which is not installed; install muonflow's research "
            f"extra: pip install 'muonflow[repro]'"
        ) from e


#: The ``repro`` extra: import name -> distribution name (see pyproject.toml).
REPRO_EXTRA = {
    "scipy": "scipy",
    "ot": "POT",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
    "sklearn": "scikit-learn",
}


def missing_repro() -> list[str]:
    """Distributions of the ``repro`` extra that are not installed (without importing any)."""
    return [dist for mod, dist in REPRO_EXTRA.items() if importlib.util.find_spec(mod) is None]


class _NoBar:
    """The part of tqdm's interface used here, doing nothing (progress off)."""

    def __init__(self) -> None:
        self.n: float = 0

    def update(self, k: float = 1) -> None:
        self.n += k

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress_bar(enabled: bool, **kwargs: Any) -> Any:
    """A tqdm bar when ``enabled`` (tqdm is imported then), else a no-op with the same methods."""
    if not enabled:
        return _NoBar()
    return require("tqdm", "a progress bar").tqdm(**kwargs)
