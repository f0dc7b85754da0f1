"""The training experiments (MoE flow, practical training) on their smoke profiles."""

from __future__ import annotations

from conftest import assert_checks_pass

from muonflow.experiments import REGISTRY
from muonflow.experiments.runner import run_experiment
from muonflow.experiments.store import load_series


def test_moe_flow_smoke(tmp_path):
    m = run_experiment(REGISTRY["moe_flow"], tmp_path, profile="smoke", show_progress=False)
    assert_checks_pass(m)
    assert "regmuon_blockwise_beats_frozen_matrices" in m["checks"]
    assert {"H_monotone_smallest_h_exact", "H_monotone_smallest_h_newton_schulz",
            "transformer_fast_map_within_tol", "flow_fast_map_within_tol"} <= set(m["checks"])
    assert (tmp_path / "moe_flow" / "moe_flow.png").stat().st_size > 10_000


def test_practical_training_smoke(tmp_path):
    m = run_experiment(
        REGISTRY["practical_training"], tmp_path, profile="smoke", show_progress=False
    )
    assert_checks_pass(m)
    assert {
        "digits_regmuon_beats_frozen_matrices",
        "digits_regmuon_not_worse_than_muon",
        "digits_muon_beats_frozen_matrices",
        "digits_adamw_learns",
        "digits_regmuon_hamiltonian_finite",
        "digits_fast_map_within_tol",
        "digits_fast_map_check_sees_eps",
    } == set(m["checks"])
    assert m["figures"] == ["practical_training.png"]
    arms = load_series(tmp_path / "practical_training")["digits"]["arms"]
    assert set(arms) >= {"AdamW", "Muon", "matrices frozen"}
    assert all(len(a["test_loss"]) == 3 for a in arms.values())  # paired seeds
