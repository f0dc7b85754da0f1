"""Particle states: a tensor ``[N, ...]`` or a tuple of block tensors ``([N, ...], ...)``.

Small helpers shared by the mean-field modules; they validate at the door and name the
caller in every error.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import Tensor

#: A particle state: one tensor ``[N, ...]`` or a tuple of blocks, each ``[N, ...]``.
State = Tensor | tuple[Tensor, ...]


def describe(obj: Any) -> str:
    """A short name for a callable or object, used in error messages.

    Functions and methods give their qualified name (``<lambda>`` for lambdas); other
    callables (feature and risk objects) give their ``repr``, truncated to 80 characters.
    """
    if isinstance(obj, types.FunctionType | types.MethodType | types.BuiltinFunctionType):
        return obj.__qualname__
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


def as_blocks(theta: Any, name: str) -> tuple[tuple[Tensor, ...], bool]:
    """Split a state into its blocks; returns ``(blocks, is_tuple)``.

    Raises ``TypeError`` unless ``theta`` is a real floating tensor or a non-empty tuple of
    them, and ``ValueError`` if a block has ``ndim < 1`` or the blocks disagree on ``N``.
    """
    is_tuple = isinstance(theta, tuple | list)
    blocks = tuple(theta) if is_tuple else (theta,)
    if is_tuple and not blocks:
        raise ValueError(f"{name} is an empty tuple of blocks")
    for b, x in enumerate(blocks):
        label = f"{name}[{b}]" if is_tuple else name
        if not isinstance(x, Tensor):
            raise TypeError(f"{label} must be a torch.Tensor, got {type(x).__name__}")
        if x.is_complex() or not x.is_floating_point():
            raise TypeError(f"{label} must have a real floating dtype, got {x.dtype}")
        if x.ndim < 1:
            raise ValueError(f"{label} must have shape [N, ...], got a 0-dim tensor")
    n = blocks[0].shape[0]
    if any(x.shape[0] != n for x in blocks):
        shapes = ", ".join(str(tuple(x.shape)) for x in blocks)
        raise ValueError(f"the blocks of {name} disagree on the particle count N: {shapes}")
    return blocks, is_tuple


def from_blocks(blocks: tuple[Tensor, ...], is_tuple: bool) -> State:
    """Inverse of :func:`as_blocks`."""
    return tuple(blocks) if is_tuple else blocks[0]


def flatten(theta: State) -> Tensor:
    """``[N, D]``: each particle's blocks flattened and concatenated (``D = Σ_b numel_b``)."""
    blocks = theta if isinstance(theta, tuple | list) else (theta,)
    n = blocks[0].shape[0]
    return torch.cat([x.reshape(n, -1) for x in blocks], dim=1)
