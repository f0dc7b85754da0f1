"""Mutants of the optimizer core and of the regularized map (``muonflow.optim``/``polar``).

Kept apart from :mod:`.library` because these internals are being restructured: each mutant
patches the narrowest public seam, and the seam it patches is named in its ``seam`` field, so
it can be re-pointed after a move:

- ``muonflow.optim.functional.regmuon`` — the functional kernel
  ``regmuon(params, grads, momentum_buffers, *, lr, momentum, momentum_form, nesterov, ...)``
  that ``RegMuon.step`` calls: wrapped, with its arguments changed (EMA momentum, Nesterov,
  β, the momentum the map sees);
- ``muonflow.optim.functional.orthogonalize`` — the map of the update with the call's options
  (``eps``, ``eps_mode``): wrapped (relative ε, sign);
- ``muonflow.optim.RegMuon.step`` / ``RegMuon.from_dynamics``: wrapped;
- ``muonflow.polar.regularized_polar`` — the map itself, rebound in every module that imported
  it (``muonflow.optim``, ``muonflow.spectral``, ...): wrapped (fast path, ε convention).
"""

from __future__ import annotations

import math

import pytest
import torch

from .catalog import Mutant
from .patching import original, replace_attribute, replace_function

KERNEL = "muonflow.optim.functional:regmuon"
MAP = "muonflow.optim.functional:orthogonalize"


def _kernel(change):
    """A kernel whose keyword options are changed by ``change(kw) -> kw`` before it runs."""

    def plant(mp: pytest.MonkeyPatch) -> None:
        def make(real):
            def regmuon(params, grads, momentum_buffers, **kw):
                return real(params, grads, momentum_buffers, **change(dict(kw)))

            return regmuon

        replace_function(mp, KERNEL, make)

    return plant


def _ema_one_minus_beta_squared(mp: pytest.MonkeyPatch) -> None:
    def make(real):
        def regmuon(params, grads, momentum_buffers, **kw):
            if kw.get("momentum_form") == "ema":  # bug: B ← βB + (1−β)²g
                beta = kw.get("momentum")
                grads = [(1 - beta) * g for g in grads]
            return real(params, grads, momentum_buffers, **kw)

        return regmuon

    replace_function(mp, KERNEL, make)


def _map_old_momentum(mp: pytest.MonkeyPatch) -> None:
    def make(real):
        def regmuon(params, grads, momentum_buffers, **kw):
            # bug: W moved with the map of the momentum before this step's update
            zero = [torch.zeros_like(g) for g in grads]
            real(params, zero, momentum_buffers,
                 **{**kw, "momentum": 1.0, "momentum_form": "sum", "nesterov": False})
            return real(params, grads, momentum_buffers, **{**kw, "lr": 0.0, "weight_decay": 0.0})

        return regmuon

    replace_function(mp, KERNEL, make)


def _relative_eps_frobenius(mp: pytest.MonkeyPatch) -> None:
    def make(real):
        def orthogonalize(X, **kw):
            if kw.get("eps_mode", "relative") == "relative":  # bug: ε‖X‖_F, not ε‖X‖_F/√r
                kw["eps"] = kw.get("eps") * math.sqrt(min(X.shape[-2:]))
            return real(X, **kw)

        return orthogonalize

    replace_function(mp, MAP, make)


def _map_sign_flipped(mp: pytest.MonkeyPatch) -> None:
    replace_function(mp, MAP, lambda real: lambda X, **kw: -real(X, **kw))  # bug: W ← W + η∇K


def _undone_matrix_update(mp: pytest.MonkeyPatch) -> None:
    real = original("muonflow.optim:RegMuon.step")

    def step(self, closure=None):
        params = [p for g in self.param_groups if g["algorithm"] == "regmuon" for p in g["params"]]
        saved = [p.detach().clone() for p in params]
        out = real(self, closure)
        with torch.no_grad():  # bug: the matrix update is undone (momentum, AdamW part intact)
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
        return out

    replace_attribute(mp, "muonflow.optim:RegMuon.step", step)


def _from_dynamics_eps_times_h(mp: pytest.MonkeyPatch) -> None:
    real = original("muonflow.optim:RegMuon.from_dynamics").__func__

    def from_dynamics(cls, params, *, h, gamma, eps, **kw):
        return real(cls, params, h=h, gamma=gamma, eps=eps * h * h, **kw)  # bug: ε_opt = εh

    replace_attribute(mp, "muonflow.optim:RegMuon.from_dynamics", classmethod(from_dynamics))


def _fast_map_polar_factor(mp: pytest.MonkeyPatch) -> None:
    def make(real):
        from muonflow.polar import polar

        def regularized_polar(G, eps, *, method="auto", tol=None):
            if tol is not None and method == "auto":  # bug: the fast path ignores ε
                return polar(G)
            return real(G, eps, method=method, tol=tol)

        return regularized_polar

    replace_function(mp, "muonflow.polar:regularized_polar", make)


def _map_eps_not_squared(mp: pytest.MonkeyPatch) -> None:
    def make(real):
        def regularized_polar(G, eps, *, method="auto", tol=None):
            e = eps.sqrt() if isinstance(eps, torch.Tensor) else math.sqrt(eps)
            return real(G, e, method=method, tol=tol)  # bug: G(GᵀG + εI)^{-1/2}

        return regularized_polar

    replace_function(mp, "muonflow.polar:regularized_polar", make)


MUTANTS: tuple[Mutant, ...] = (
    Mutant("ema_one_minus_beta_squared", "EMA momentum B ← βB + (1−β)²g", KERNEL,
           _ema_one_minus_beta_squared,
           experiments=("continuous_limit",)),
    Mutant("map_old_momentum", "the update maps M_k, not M_{k+1} = βM_k + g", KERNEL,
           _map_old_momentum,
           experiments=("continuous_limit", "convergence_rates")),
    Mutant("nesterov_ignored", "nesterov=True runs the plain momentum update", KERNEL,
           _kernel(lambda kw: {**kw, "nesterov": False}),
           experiments=("continuous_limit",)),
    Mutant("momentum_not_accumulated", "β ignored: M ← g", KERNEL,
           _kernel(lambda kw: {**kw, "momentum": 0.0}),
           experiments=("continuous_limit",)),
    Mutant("relative_eps_frobenius", "relative ε = ε‖X‖_F instead of ε‖X‖_F/√min(m, n)", MAP,
           _relative_eps_frobenius,
           experiments=("moe_flow", "practical_training")),
    Mutant("map_sign_flipped", "the update adds η∇K(X) instead of subtracting it", MAP,
           _map_sign_flipped,
           experiments=("continuous_limit", "practical_training")),
    Mutant("undone_matrix_update", "RegMuon's matrix update undone after every step",
           "muonflow.optim:RegMuon.step", _undone_matrix_update,
           experiments=("continuous_limit", "moe_flow", "practical_training")),
    Mutant("from_dynamics_eps_times_h", "from_dynamics sets ε_opt = εh instead of ε/h",
           "muonflow.optim:RegMuon.from_dynamics", _from_dynamics_eps_times_h,
           experiments=("continuous_limit", "convergence_rates")),
    Mutant("fast_map_polar_factor", "the fast map (tol set) returns the ε = 0 polar factor",
           "muonflow.polar:regularized_polar", _fast_map_polar_factor,
           experiments=("moe_flow", "practical_training")),
    Mutant("map_eps_not_squared", "the map computes G(GᵀG + εI)^{-1/2} (ε for ε²)",
           "muonflow.polar:regularized_polar", _map_eps_not_squared,
           experiments=("smoothing", "continuous_limit")),
)  # fmt: skip
