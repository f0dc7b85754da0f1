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
