r"""Energy diagnostics of RegMuon: the kinetic energy of its momenta in dynamics units.

For a stack of sum-form momenta :math:`M` with step :math:`h = \eta\rho` (``quadratic``:
:math:`h = \sqrt{\eta\rho}`), the dynamics momentum is :math:`P = -hM` and the kinetic energy
:math:`K_{\varepsilon_{dyn}}(P)` with :math:`\varepsilon_{dyn} = h\,\varepsilon_M` (SPEC §3;
see :meth:`~muonflow.optim.RegMuon.kinetic_energy`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..spectral import potential as make_potential
from .functional import lr_factor, matrix_shape

__all__ = ["kinetic_energy", "total_kinetic_energy"]


def kinetic_energy(
    M: Tensor,
    *,
    lr: float,
    lr_ratio: float,
    momentum: float,
    momentum_form: str,
    potential: str,
    eps: float,
    eps_mode: str,
) -> Tensor:
    r""":math:`\sum_i K_{\varepsilon_{dyn}}(P_i)` of a stack of momentum buffers ``M: [B, m, n]``
    (float64 0-dim tensor on ``M``'s device)."""
    m, n = M.shape[-2:]
    M = M.double()
    scale = 1 / (1 - momentum) if momentum_form == "ema" else 1.0
    M = M * scale  # sum-form momentum
    h = lr * lr_ratio
    if potential == "quadratic":
        h = math.sqrt(h)
    P = -h * M
    if potential in ("relativistic", "huber"):
        if eps_mode == "relative":
            rms = torch.linalg.vector_norm(M, dim=(-2, -1)) / math.sqrt(min(m, n))
            e = torch.where(rms > 0, eps * rms, torch.ones_like(rms))
            eps_dyn: float | Tensor = h * e
        else:
            eps_dyn = h * eps * scale
        K = make_potential(potential, eps_dyn).energy(P)
    else:
        K = make_potential(potential).energy(P)
    return K.sum()


def total_kinetic_energy(
    param_groups: Sequence[Mapping[str, Any]],
    state: Mapping[Tensor, Any],
    spec: Callable[[Tensor, Mapping[str, Any]], tuple[str, str]],
) -> Tensor:
    """:func:`kinetic_energy` summed over the RegMuon groups of an optimizer (float64, CPU).

    ``spec(p, group)`` gives the parameter's ``(matrix view, layout)``.
    """
    total = torch.zeros((), dtype=torch.float64)
    for group in param_groups:
        if group["algorithm"] != "regmuon":
            continue
        stacks: dict[tuple[int, int, float], list[Tensor]] = {}
        for p in group["params"]:
            buf = state.get(p, {}).get("momentum_buffer")
            if hasattr(buf, "full_tensor"):  # a DTensor (FSDP2): whole matrices (collective)
                buf = buf.full_tensor()
            if buf is None or buf.numel() == 0:
                continue
            view, layout = spec(p, group)
            k, m, n = matrix_shape(p.shape, view)
            rho = lr_factor(m, n, layout, group["adjust_lr"])
            stacks.setdefault((m, n, rho), []).append(buf.reshape(k, m, n))
        for (_, _, rho), bufs in stacks.items():
            K = kinetic_energy(
                torch.cat(bufs), lr=group["lr"], lr_ratio=rho, momentum=group["momentum"],
                momentum_form=group["momentum_form"], potential=group["potential"],
                eps=group["eps"], eps_mode=group["eps_mode"],
            )  # fmt: skip
            total = total + K.cpu()
    return total
