"""Every check can fail: planted bugs must fail at least one *claim* check (smoke profiles).

- A RegMuon whose matrix update is undone after each step (momentum still accumulates, the
  AdamW part still trains) must fail a claim check of every training experiment: ``moe_flow``,
  ``practical_training``, ``convergence_rates`` and ``continuous_limit``.
- A mean-field force without the factor N (``−∂J/∂θ_i`` instead of ``−N ∂J/∂θ_i``) must fail a
  claim check of ``chaos`` and ``particles_vs_pde``.
"""

from __future__ import annotations

import pytest
import torch

from muonflow.experiments import REGISTRY
from muonflow.experiments.runner import run_experiment
from muonflow.meanfield import ProbabilityObjective
from muonflow.optim import RegMuon


@pytest.fixture
def undone_matrix_update(monkeypatch):
    """RegMuon.step restores every RegMuon-routed parameter after the real step."""
    real = RegMuon.step

    def step(self, closure=None):
        params = [p for g in self.param_groups if g["algorithm"] == "regmuon" for p in g["params"]]
        saved = [p.detach().clone() for p in params]
        out = real(self, closure)
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)
        return out

    monkeypatch.setattr(RegMuon, "step", step)


@pytest.fixture
def force_without_n(monkeypatch):
    """ProbabilityObjective forces divided by the particle count N: the Euclidean gradient."""
    real = ProbabilityObjective.value_and_force

    def value_and_force(self, theta):
        J, F = real(self, theta)
        n = self.num_particles(theta)
        if isinstance(F, tuple):
            return J, tuple(f / n for f in F)
        return J, F / n

    monkeypatch.setattr(ProbabilityObjective, "value_and_force", value_and_force)


def _failed_claims(name: str, tmp_path) -> list[str]:
    m = run_experiment(REGISTRY[name], tmp_path, profile="smoke", show_progress=False)
    assert m["status"] == "ok", m["error"]
    return [k for k, c in m["checks"].items() if c["kind"] == "claim" and not c["passed"]]


@pytest.mark.parametrize(
    "name", ["moe_flow", "practical_training", "convergence_rates", "continuous_limit"]
)
def test_undone_matrix_update_fails_a_claim(name, tmp_path, undone_matrix_update):
    assert _failed_claims(name, tmp_path)


@pytest.mark.parametrize("name", ["chaos", "particles_vs_pde"])
def test_force_without_mean_field_factor_fails_a_claim(name, tmp_path, force_without_n):
    assert _failed_claims(name, tmp_path)
