"""Mutants of the optimizer core and of the regularized map (``muonflow.optim``/``polar``).

Each mutant patches the narrowest seam of the optimizer's pre -> map -> post structure, named in
its ``seam`` field:

- ``muonflow.optim.optimizer:group_options`` — the validated options of each parameter group,
  read at every step: wrapped, with an option changed (Nesterov, β);
- ``muonflow.optim.optimizer:directions`` — the pre and map of one bucket (``Work`` in,
  ``D`` per chunk out; ``commit`` then uses the same ``Work``): wrapped (the gradients it and the
  commit see, the momentum the map sees);
- ``muonflow.optim.kernel:mirror_map`` — the map of the update with the step's options, the one
  interception point: wrapped (relative ε, sign);
- ``muonflow.optim:RegMuon.step`` / ``RegMuon.from_dynamics``: wrapped;
- ``muonflow.polar:regularized_polar`` — the map itself, rebound in every module that imported
  it (``muonflow.spectral``, ...): wrapped (fast path, ε convention).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from .catalog import Mutant
from .patching import original, replace_attribute, replace_function

OPTIONS = "muonflow.optim.optimizer:group_options"
DIRECTIONS = "muonflow.optim.optimizer:directions"
MAP = "muonflow.optim.kernel:mirror_map"


def _options(change):
    """The options of every RegMuon group changed by ``change(options) -> options``."""

    def plant(mp: pytest.MonkeyPatch) -> None:
        def make(real):
            def group_options(group, base):
                o = real(group, base)
                return change(o) if group.get("algorithm") == "regmuon" else o

            return group_options

        replace_function(mp, OPTIONS, make)

    return plant


def _ema_one_minus_beta_squared(mp: pytest.MonkeyPatch) -> None:
    def make(real):
        def directions(work, o, map_fn=None):
            if o.momentum_form == "ema":  # bug: B ← βB + (1−β)²g (the commit sees it too)
                work.gs = [(1 - o.momentum) * g for g in work.gs]
            return real(work, o, map_fn)

        return directions

    replace_function(mp, DIRECTIONS, make)


def _map_old_momentum(mp: pytest.MonkeyPatch) -> None:
    def make(real):
        def directions(work, o, map_fn=None):
            # bug: W moves with the map of the momentum before this step's update (M' = M with
            # zero gradients, β = 1, no Nesterov); the commit still updates M with the gradients
            old = dataclasses.replace(work, gs=[torch.zeros_like(g) for g in work.gs])
            return real(old, o.replace(momentum=1.0, momentum_form="sum", nesterov=False),
                        map_fn)  # fmt: skip

        return directions

    replace_function(mp, DIRECTIONS, make)


def _relative_eps_frobenius(mp: pytest.MonkeyPatch) -> None:
    def make(real):
        def mirror_map(X, options, /, **kw):
            o = options.replace(**kw) if kw else options
            if o.eps_mode == "relative":  # bug: ε‖X‖_F, not ε‖X‖_F/√r
                o = o.replace(eps=o.eps * math.sqrt(min(X.shape[-2:])))
            return real(X, o)

        return mirror_map

    replace_function(mp, MAP, make)


def _map_sign_flipped(mp: pytest.MonkeyPatch) -> None:
    replace_function(mp, MAP, lambda real: lambda X, *a, **kw: -real(X, *a, **kw))  # W ← W + η∇K


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
        from muonflow.polar import polar_factor

        def regularized_polar(G, eps, *, method="auto", tol=None):
            if tol is not None and method == "auto":  # bug: the fast path ignores ε
                return polar_factor(G)
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
    Mutant("ema_one_minus_beta_squared", "EMA momentum B ← βB + (1−β)²g", DIRECTIONS,
           _ema_one_minus_beta_squared,
           experiments=("continuous_limit",)),
    Mutant("map_old_momentum", "the update maps M_k, not M_{k+1} = βM_k + g", DIRECTIONS,
           _map_old_momentum,
           experiments=("continuous_limit", "convergence_rates")),
    Mutant("nesterov_ignored", "nesterov=True runs the plain momentum update", OPTIONS,
           _options(lambda o: o.replace(nesterov=False)),
           experiments=("continuous_limit",)),
    Mutant("momentum_not_accumulated", "β ignored: M ← g", OPTIONS,
           _options(lambda o: o.replace(momentum=0.0)),
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
