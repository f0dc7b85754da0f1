"""How a mutant is planted: runtime patches of the library, undone on exit.

A mutant is a library bug, applied to the running process (never to the source files), so the
reproduction that runs afterwards in the same process sees the library exactly as if the bug
had been written there:

- :func:`replace_function` swaps a module-level function for a new one *everywhere* it is bound:
  in its own module and in every loaded ``muonflow`` module that imported it by name
  (``from ..dynamics import integrate``), as a bug in the function's body would act;
- :func:`replace_attribute` swaps one attribute of one object (a method of a class, a
  constant of a module).

Both record what they replaced on a :class:`pytest.MonkeyPatch`, whose ``undo`` restores it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

import pytest


def _owner(path: str) -> tuple[Any, str]:
    """``"muonflow.dynamics:RK4.step"`` -> (the class ``RK4``, ``"step"``)."""
    module_name, _, qual = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    *parents, name = qual.split(".")
    for p in parents:
        obj = getattr(obj, p)
    return obj, name


def original(path: str) -> Any:
    """The object at ``path`` (``"package.module:Name.attr"``) as the library defines it."""
    owner, name = _owner(path)
    return owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)


def replace_attribute(mp: pytest.MonkeyPatch, path: str, new: Any) -> None:
    """Set the attribute at ``path`` to ``new`` (a method, a classmethod, a constant)."""
    owner, name = _owner(path)
    if not hasattr(owner, name):
        raise AttributeError(f"mutant target {path} does not exist (was it renamed?)")
    mp.setattr(owner, name, new)


def replace_function(
    mp: pytest.MonkeyPatch, path: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> None:
    """Replace the function at ``path`` by ``make(real)`` in every ``muonflow`` module binding it.

    ``make`` receives the real function (to wrap it) and returns the mutant.
    """
    real = original(path)
    if not callable(real):
        raise TypeError(f"mutant target {path} is not a function")
    new = make(real)
    bound = 0
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not (mod_name == "muonflow" or mod_name.startswith("muonflow.")):
            continue
        for attr, value in list(vars(mod).items()):
            if value is real:
                mp.setattr(mod, attr, new)
                bound += 1
    if bound == 0:
        raise AttributeError(f"mutant target {path} is bound nowhere")
