"""The mutation suite's registry: plausible library bugs that the reproduction must see.

Each :class:`Mutant` names the bug, the library seam it patches, and the profile of
``muonflow reproduce`` that must catch it (a failed *claim* check). The mutants themselves live
in :mod:`.library` (dynamics, potentials, particles, the PDE) and in :mod:`.optim_polar`
(RegMuon's kernel and the regularized map: kept apart so that they can be re-pointed when the
optimizer's internals move).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Mutant:
    """A library bug planted at run time.

    ``plant(mp)`` applies it through the :class:`pytest.MonkeyPatch` ``mp`` (undone by
    ``mp.undo()``); ``seam`` names what it patches; ``profile`` is the reproduction profile that
    must catch it; ``experiments`` the experiments that must catch it (the suite runs these).
    """

    name: str
    bug: str
    seam: str
    plant: Callable[[pytest.MonkeyPatch], None]
    profile: str = "smoke"
    experiments: tuple[str, ...] = ()


def all_mutants() -> dict[str, Mutant]:
    """Every mutant of the suite, by name (library first, then optimizer and map)."""
    from . import library, optim_polar

    out: dict[str, Mutant] = {}
    for m in (*library.MUTANTS, *optim_polar.MUTANTS):
        if m.name in out:
            raise ValueError(f"mutant {m.name!r} defined twice")
        out[m.name] = m
    return out
