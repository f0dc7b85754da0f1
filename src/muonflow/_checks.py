"""Validation at the door: clear errors that name the argument and the bad value."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor


def check_matrix(x: Any, name: str, *, finite: bool = True) -> Tensor:
    """Return ``x`` if it is a real floating tensor of shape ``[..., m, n]``; raise otherwise.

    Raises ``TypeError`` for non-tensors, integer/bool and complex dtypes; ``ValueError`` for
    ``ndim < 2``, empty matrices and (with ``finite=True``) NaN/Inf entries.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{name} must be real; complex dtype {x.dtype} is not supported")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have shape [..., m, n] (ndim >= 2), got shape {tuple(x.shape)}"
        )
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise ValueError(f"{name} has an empty matrix dimension: shape {tuple(x.shape)}")
    if finite:
        check_finite(x, name)
    return x


def check_finite(x: Tensor, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` if ``x`` has NaN or Inf entries."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        n_bad = int(bad.sum())
        raise ValueError(
            f"{name} has {n_bad} non-finite entr{'y' if n_bad == 1 else 'ies'} "
            f"(NaN or Inf) out of {x.numel()}"
        )


def check_scale(value: Any, name: str, *, allow_zero: bool) -> float | Tensor:
    """Validate a non-negative scale (a float, or a tensor of per-matrix scales)."""
    if isinstance(value, Tensor):
        if value.is_complex() or not value.is_floating_point():
            raise TypeError(f"{name} must be a real floating tensor, got {value.dtype}")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} must be finite, got {value}")
        lo = float(value.min()) if value.numel() else 0.0
        if lo < 0 or (not allow_zero and lo == 0):
            raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got min {lo}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (not allow_zero and v == 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {v}")
    return v


def check_choice(value: str, name: str, choices: Any) -> str:
    """Raise ``ValueError`` listing the valid choices if ``value`` is not one of them."""
    if value not in choices:
        valid = ", ".join(repr(c) for c in sorted(choices))
        raise ValueError(f"unknown {name} {value!r}; valid: {valid}")
    return value
