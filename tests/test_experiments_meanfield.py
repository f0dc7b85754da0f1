"""The reproduction experiments of the mean-field flow (chaos, stability), on their smoke profiles.

Each experiment runs through the runner (as ``muonflow reproduce`` does) twice with the same
seed: it must finish, pass every check, write its figures and finite metrics, and give
identical results the second time.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from conftest import assert_checks_pass

from muonflow.experiments import REGISTRY
from muonflow.experiments._meanfield_problems import teacher_student_problem
from muonflow.experiments.runner import run_experiment
from muonflow.experiments.store import METRICS, load_series
from muonflow.meanfield.bounds import comparison_bound, force_bounds

MEANFIELD_EXPERIMENTS = ["chaos", "stability"]


def _numbers(x: Any) -> list[float]:
    """Every number in a JSON-like tree (strings such as 'nan' count as non-finite)."""
    if isinstance(x, dict):
        return [v for item in x.values() for v in _numbers(item)]
    if isinstance(x, list | tuple):
        return [v for item in x for v in _numbers(item)]
    if isinstance(x, bool) or x is None:
        return []
    if isinstance(x, int | float):
        return [float(x)]
    if isinstance(x, str) and x.lower() in ("nan", "inf", "-inf"):
        return [math.nan]
    return []


def test_registered_after_the_dynamics_experiments():
    names = list(REGISTRY)
    assert names.index("energy_ledger") < names.index("chaos") < names.index("stability")


def _leaves(x: Any) -> list[Any]:
    if isinstance(x, dict):
        return [v for item in x.values() for v in _leaves(item)]
    return [x]


@pytest.mark.parametrize(("name", "twice"), [("chaos", False), ("stability", True)])
def test_smoke_profile_passes_and_is_reproducible(name, twice, tmp_path):
    first = run_experiment(REGISTRY[name], tmp_path / "a", profile="smoke", show_progress=False)
    assert_checks_pass(first)
    saved = json.loads((tmp_path / "a" / name / METRICS).read_text())
    assert saved["checks"] == json.loads(json.dumps(first["checks"]))
    assert saved["config"]["seed"] == 0 and saved["profile"] == "smoke"
    series = load_series(tmp_path / "a" / name)
    arrays = [np.asarray(v, float) for v in _leaves(series)]
    values = [float(x) for a in arrays for x in a.ravel()]
    values += _numbers([c["value"] for c in saved["checks"].values()])
    assert values and all(math.isfinite(v) for v in values)
    assert first["figures"]
    for fig in first["figures"]:
        path = tmp_path / "a" / name / fig
        assert path.suffix == ".png" and path.stat().st_size > 10_000
    if not twice:
        return
    # the same seed gives the same numbers, bit for bit (single-threaded, float64)
    second = run_experiment(REGISTRY[name], tmp_path / "b", profile="smoke", show_progress=False)
    assert second["status"] == "ok"
    assert json.loads((tmp_path / "b" / name / METRICS).read_text())["checks"] == saved["checks"]
    again = load_series(tmp_path / "b" / name)
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(series), _leaves(again), strict=True))


def test_force_lipschitz_constant_bounds_force_differences():
    # The a-priori constant a of the experiments: for ANY two clouds coupled particle by
    # particle, RMS‖force_i − force'_i‖ <= a · RMS‖θ_i − θ'_i‖ (own-particle term plus the
    # mean-field term through m). Checked on near and far pairs; a sure inequality.
    gen = torch.Generator().manual_seed(0)
    feature, obj = teacher_student_problem(3, 2, 16, 4, gen)
    a = force_bounds(feature, obj).lipschitz
    theta = feature.sample(64, std=2.0, generator=gen)
    assert isinstance(theta, torch.Tensor)
    _, f0 = obj.value_and_force(theta)
    for scale in (1e-4, 1e-1, 3.0):
        other = theta + scale * torch.randn(theta.shape, generator=gen, dtype=theta.dtype)
        _, f1 = obj.value_and_force(other)
        assert isinstance(f0, torch.Tensor) and isinstance(f1, torch.Tensor)
        ratio = float((f1 - f0).square().sum().sqrt() / (other - theta).square().sum().sqrt())
        assert 0 < ratio <= a


def test_comparison_bound_closed_form_without_coupling():
    # a = 0, no source: D_P decays geometrically, (1 − γh)^k D_P0, and D_θ accumulates it.
    out = comparison_bound(0.0, 0.5, 1.0, 0.1, 5, start=(0.0, 1.0))
    assert out[:, 1] == pytest.approx([0.9**k for k in range(6)], rel=1e-14)
    assert out[5, 0] == pytest.approx(0.2 * sum(0.9**k for k in range(1, 6)), rel=1e-14)
    with pytest.raises(ValueError, match="γh <= 1"):
        comparison_bound(1.0, 0.5, 30.0, 0.1, 5)
