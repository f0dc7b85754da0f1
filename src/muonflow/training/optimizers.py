r"""The optimizers the training loop compares, all routed by ``RegMuon(model)``'s one router.

``adamw``     ``torch.optim.AdamW`` on every parameter (torch's betas and ϵ; no weight decay).
``muon``      ``torch.optim.Muon`` (its defaults: EMA momentum 0.95, Nesterov, five bf16
              Newton–Schulz steps, ``adjust_lr_fn`` "original"; no weight decay) on the
              matrices ``RegMuon(model)`` sends to its matrix update, each seen as the 2-D
              ``fan_out x fan_in`` matrices RegMuon maps (:class:`MatrixMuon`); AdamW with
              RegMuon's AdamW part (lr, betas of :data:`~muonflow.optim.DEFAULTS`) on the rest.
``muon_f32``  the same with float32 Newton–Schulz (:func:`muonflow.polar.newton_schulz`).
``regmuon``   ``RegMuon(model, lr=..., eps=..., adamw_lr=...)``: every other option its default
              (the experiments pass ``weight_decay=0``: no decay in any arm).

So the matrix arms differ in the matrix update only: the same matrices, the same AdamW part.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..optim import ADJUST_LR, DEFAULTS, RegMuon, Route, route_module
from ..polar import newton_schulz

__all__ = ["OPTIMIZERS", "MatrixMuon", "make_optimizers", "matrix_views", "routed"]

#: Optimizer names accepted by :func:`make_optimizers` and :func:`~muonflow.training.train`.
OPTIMIZERS = ("adamw", "muon", "muon_f32", "regmuon")


def matrix_views(t: Tensor, route: Route) -> list[Tensor]:
    """The ``fan_out x fan_in`` 2-D views of ``t`` (a parameter or its gradient, of
    ``route.shape``) that RegMuon maps: one per matrix of its view (experts, packed q/k/v,
    gates), a conv kernel flattened, an ``in_out`` (HF ``Conv1D``) matrix transposed.
    They share ``t``'s storage."""
    if route.matrices is None:
        raise ValueError(f"{route.name} is routed to {route.algorithm}, not to a matrix update")
    k, m, n = route.matrices
    mats = t.view(k, m, n)
    return list((mats.mT if route.layout == "in_out" else mats).unbind(0))


class MatrixMuon(torch.optim.Muon):
    """``torch.optim.Muon`` over the 2-D views (:func:`matrix_views`) of routed parameters.

    ``torch.optim.Muon`` takes 2-D parameters only; here each matrix of each ``(route, param)``
    pair becomes a leaf parameter viewing the real one's storage, and before each step its
    gradient is the matching view of the real gradient. ``ns_dtype=None`` runs torch's own step
    (bf16 Newton–Schulz); a dtype runs torch's arithmetic (EMA momentum, Nesterov, decoupled
    decay, the "original" shape factor) with :func:`muonflow.polar.newton_schulz` in that dtype.
    """

    def __init__(
        self,
        routed: Sequence[tuple[Route, Tensor]],
        *,
        ns_dtype: torch.dtype | None = None,
        **options: Any,
    ) -> None:
        self._views: list[tuple[nn.Parameter, Tensor, Route, int]] = []
        for route, p in routed:
            for i, view in enumerate(matrix_views(p.detach(), route)):
                self._views.append((nn.Parameter(view), p, route, i))
        if not self._views:
            raise ValueError("MatrixMuon: no matrix parameters")
        self.ns_dtype = ns_dtype
        super().__init__([proxy for proxy, *_ in self._views], **options)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of the views *and* of the parameters they view."""
        super().zero_grad(set_to_none)
        for _, base, _, _ in self._views:
            if base.grad is not None:
                if set_to_none:
                    base.grad = None
                else:
                    base.grad.zero_()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        grads: dict[int, list[Tensor]] = {}
        for proxy, base, route, i in self._views:
            if base.grad is None:
                proxy.grad = None
                continue
            if id(base) not in grads:
                grads[id(base)] = matrix_views(base.grad, route)
            proxy.grad = grads[id(base)][i]
        if self.ns_dtype is None:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: Tensor, group: dict[str, Any]) -> None:
        """torch.optim.Muon's update of one matrix, with the Newton–Schulz of ``ns_dtype``."""
        g = p.grad
        assert g is not None
        buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(g))
        buf.lerp_(g, 1 - group["momentum"])  # B = βB + (1-β)g
        update = g.lerp(buf, group["momentum"]) if group["nesterov"] else buf
        update = newton_schulz(update, group["ns_steps"], group["ns_coefficients"],
                               eps=group["eps"], dtype=self.ns_dtype)  # fmt: skip
        factor = ADJUST_LR[group["adjust_lr_fn"] or "original"](*p.shape)
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(update.to(p.dtype), alpha=-group["lr"] * factor)


def routed(model: nn.Module) -> tuple[list[tuple[Route, Tensor]], list[Tensor]]:
    """``RegMuon(model)``'s routing of ``model``: ``([(route, matrix parameter)], [the rest])``."""
    routing, pairs = route_module(model)
    both = list(zip(routing.routes, (p for _, p in pairs), strict=True))
    return [(r, p) for r, p in both if r.algorithm == "regmuon"], [
        p for r, p in both if r.algorithm == "adamw"]  # fmt: skip


def _check(name: str, **values: Any) -> None:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    for key, value in values.items():
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"{key} must be a positive finite number, got {value!r}")


def make_optimizers(
    name: str,
    model: nn.Module,
    *,
    lr: float,
    eps: float = DEFAULTS.eps,
    adamw_lr: float = float(DEFAULTS.adamw_lr),
    tol: float | None = DEFAULTS.tol,
    weight_decay: float | None = None,
) -> list[torch.optim.Optimizer]:
    """The optimizer(s) ``name`` (see the module docstring) over ``model``'s parameters.

    ``lr`` is the learning rate of the matrices (of everything for ``adamw``); ``adamw_lr``
    that of the AdamW part of ``muon``/``muon_f32``/``regmuon``; ``eps`` and ``tol`` RegMuon's;
    ``weight_decay`` RegMuon's matrices' (``None``: ``RegMuon(model)``'s, by structure; the
    other arms have none).
    """
    _check(name, lr=lr, eps=eps, adamw_lr=adamw_lr)
    if name == "adamw":
        return [torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)]
    if name == "regmuon":
        wd: dict[str, Any] = {} if weight_decay is None else {"weight_decay": weight_decay}
        return [RegMuon(model, lr=lr, eps=eps, adamw_lr=adamw_lr, tol=tol, **wd)]
    matrices, rest = routed(model)
    ns_dtype = torch.float32 if name == "muon_f32" else None
    return [
        MatrixMuon(matrices, ns_dtype=ns_dtype, lr=lr, weight_decay=0.0),
        torch.optim.AdamW(rest, lr=adamw_lr, betas=DEFAULTS.adamw_betas,
                          eps=DEFAULTS.adamw_eps, weight_decay=0.0),
    ]  # fmt: skip
