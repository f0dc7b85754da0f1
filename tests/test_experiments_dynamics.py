"""The reproduction experiments of the damped Hamiltonian dynamics, on their smoke profiles.

Each experiment runs through the runner (as ``muonflow reproduce`` does) into a temporary
folder: it must finish, pass every check, and write its figures, series and metrics.
"""

from __future__ import annotations

import json

import pytest
from conftest import assert_checks_pass

from muonflow.experiments import REGISTRY
from muonflow.experiments.runner import run_experiment
from muonflow.experiments.store import METRICS, load_series

DYNAMICS_EXPERIMENTS = [
    "dissipation",
    "discrete_monotonicity",
    "continuous_limit",
    "exponential_convergence",
    "convergence_rates",
    "no_gradient_dominance",
    "eps_sweep",
    "energy_ledger",
]


def test_registered_in_claim_order():
    names = list(REGISTRY)
    assert all(n in names for n in DYNAMICS_EXPERIMENTS)
    positions = [names.index(n) for n in DYNAMICS_EXPERIMENTS]
    assert positions == sorted(positions)


@pytest.mark.parametrize("name", DYNAMICS_EXPERIMENTS)
def test_smoke_profile_passes(name, tmp_path):
    metrics = run_experiment(REGISTRY[name], tmp_path, profile="smoke", show_progress=False)
    assert_checks_pass(metrics)
    assert metrics["figures"]
    for fig in metrics["figures"]:
        path = tmp_path / name / fig
        assert path.suffix == ".png" and path.stat().st_size > 10_000
    saved = json.loads((tmp_path / name / METRICS).read_text())
    assert saved["checks"] == json.loads(json.dumps(metrics["checks"]))
    assert saved["config"]["seed"] == 0 and saved["profile"] == "smoke"
    assert load_series(tmp_path / name)  # the report can rebuild from it


def test_muon_linear_rate_tends_to_the_continuous_rate():
    # The discrete prediction of convergence_rates: as h -> 0 the Muon scheme's rate tends to
    # the flow's, with an O(h) difference (first-order scheme).
    from muonflow.experiments._dynamics_problems import linear_rate, muon_linear_rate

    eigs = [0.5, 0.8, 1.3]
    r = linear_rate(eigs, 2.0, 1.0)
    gaps = [abs(muon_linear_rate(eigs, 2.0, 1.0, h) - r) for h in (0.04, 0.02, 0.01)]
    assert gaps[0] / gaps[1] == pytest.approx(2, rel=0.05)
    assert gaps[1] / gaps[2] == pytest.approx(2, rel=0.05)


def test_apriori_rate_needs_small_steps():
    # The discrete Lyapunov bound of convergence_rates exists (ρ > 0) for small h, not beyond
    # Γ = 0, and is below the continuous one (its constants are cruder).
    from muonflow.experiments.convergence_rates import apriori_rate

    args = (0.5, 1.3, 1.0, 2.0, 1.5)  # μ, L, ε, γ, B
    cont = apriori_rate(*args)[0]
    assert cont > 0
    assert 0 < apriori_rate(*args, h=0.01)[0] < cont
    assert apriori_rate(*args, h=0.3)[0] == 0.0
