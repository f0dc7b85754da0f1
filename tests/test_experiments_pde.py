"""Experiments 10 (particles vs the phase-space PDE) and 11 (teacher–student), and their helpers.

Each experiment runs its smoke profile through the runner (as ``muonflow reproduce`` does): it
must finish, pass every check, write its figure and metrics, and give identical metrics when
run again with the same seed. The derived bounds the experiments rely on are tested against
direct computations: the smoothness constant against the autograd Hessian, the round-off
bound against an extended-precision evaluation, the Gauss–Newton spectrum against autograd
Jacobians.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import assert_checks_pass

import muonflow as mf
from muonflow.experiments import REGISTRY
from muonflow.experiments._meanfield_problems import scalar_problem, scalar_reference
from muonflow.experiments.particles_vs_pde import Config as PDEConfig
from muonflow.experiments.particles_vs_pde import wls_slope
from muonflow.experiments.runner import run_experiment
from muonflow.experiments.store import METRICS, load_series
from muonflow.experiments.teacher_student import (
    energy_roundoff,
    gauss_newton_spectrum,
    readout_norm,
    smoothness_bound,
    upswings,
)
from muonflow.meanfield import SubNetwork, teacher_student

D64 = torch.float64
EXPERIMENTS = ["particles_vs_pde", "teacher_student"]


def _finite_leaves(x) -> list[float]:
    """Every number in a loaded series (arrays flattened; strings are not numbers)."""
    if isinstance(x, dict):
        return [v for y in x.values() for v in _finite_leaves(y)]
    if isinstance(x, list):
        return [v for y in x for v in _finite_leaves(y)]
    if isinstance(x, np.ndarray):
        return [float(v) for v in x.ravel()]
    return [float(x)] if isinstance(x, int | float) and not isinstance(x, bool) else []


def test_independent_pde_model_agrees_with_the_library():
    # The PDE reference is written from the formulas alone; it must define the same problem
    # as the particles' library objective: feature, force (= N·(−∂J/∂θ_i), mean-field
    # scaling), risk and kinetic map agree on random points to float64 round-off.
    cfg = PDEConfig()
    model = scalar_reference(cfg.points, cfg.x_max, cfg.teacher, cfg.eps)
    obj = scalar_problem(cfg.points, cfg.x_max, cfg.teacher)
    gen = torch.Generator().manual_seed(3)
    th = 1.5 * torch.randn(257, generator=gen, dtype=D64)
    P = torch.randn(257, generator=gen, dtype=D64)
    m = obj.mean_feature(th.reshape(-1, 1, 1))
    assert torch.allclose(model.feature(th), obj.feature(th.reshape(-1, 1, 1)).reshape(257, -1),
                          rtol=0, atol=1e-15)  # fmt: skip
    _, force = obj.value_and_force(th.reshape(-1, 1, 1))
    assert torch.allclose(model.force(th, m), force.reshape(-1), rtol=1e-12, atol=1e-15)
    assert float(model.risk(m)) == pytest.approx(float(obj.value(th.reshape(-1, 1, 1))),
                                                 rel=1e-13)  # fmt: skip
    K = mf.Relativistic(cfg.eps)
    assert torch.allclose(model.velocity(P), K.grad(P.reshape(-1, 1, 1)).reshape(-1),
                          rtol=1e-13, atol=0)  # fmt: skip
    assert torch.allclose(model.kinetic(P), K.energy(P.reshape(-1, 1, 1)).reshape(-1),
                          rtol=1e-12, atol=1e-16)  # fmt: skip


def test_registered_after_the_dynamics_experiments():
    names = list(REGISTRY)
    assert names.index("particles_vs_pde") + 1 == names.index("teacher_student")
    assert names.index("energy_ledger") < names.index("particles_vs_pde")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_smoke_profile_passes_and_is_reproducible(name, tmp_path):
    metrics = run_experiment(REGISTRY[name], tmp_path / "a", profile="smoke", show_progress=False)
    assert_checks_pass(metrics)
    assert all(math.isfinite(c["value"]) for c in metrics["checks"].values())
    numbers = _finite_leaves(load_series(tmp_path / "a" / name))
    assert numbers and all(math.isfinite(v) for v in numbers)
    assert metrics["figures"]
    for fig in metrics["figures"]:
        path = tmp_path / "a" / name / fig
        assert path.suffix == ".png" and path.stat().st_size > 10_000
    saved = json.loads((tmp_path / "a" / name / METRICS).read_text())
    assert saved["checks"] == json.loads(json.dumps(metrics["checks"]))
    assert saved["config"]["seed"] == 0 and saved["profile"] == "smoke"
    # same seed, same numbers (bit for bit: one thread, seeded generators)
    again = run_experiment(REGISTRY[name], tmp_path / "b", profile="smoke", show_progress=False)
    assert again["checks"] == metrics["checks"]


# -- particles vs PDE helpers ------------------------------------------------------------------
def test_wls_slope_recovers_a_power_law_and_scales_its_error():
    x = np.log(np.array([16.0, 64.0, 256.0, 1024.0]))
    slope, se = wls_slope(x, -0.5 * x + 1.0, np.full(4, 0.1))
    assert abs(slope + 0.5) < 1e-12
    # unweighted: se = sd / sqrt(Σ(x − x̄)²); halving every sd halves it
    assert abs(se - 0.1 / math.sqrt(float(((x - x.mean()) ** 2).sum()))) < 1e-12
    assert abs(wls_slope(x, -0.5 * x, np.full(4, 0.05))[1] - se / 2) < 1e-12


# -- teacher–student helpers -------------------------------------------------------------------
def _small_problem(gen: torch.Generator, N: int = 3, hidden: int = 2, d: int = 3, B: int = 8):
    X = torch.randn(d, B, generator=gen, dtype=D64)
    feature = SubNetwork(X, hidden=hidden)
    teacher = (
        torch.randn(2, hidden, d, generator=gen, dtype=D64),
        torch.randn(2, 1, hidden, generator=gen, dtype=D64),
    )
    obj = teacher_student(feature, teacher)
    y = obj.mean_feature(teacher)
    return X, obj, y


def test_smoothness_bound_dominates_the_hessian(gen):
    # ‖∇²(N·J)‖₂ (autograd, float64) at random states, including large read-outs, must not
    # exceed the bound evaluated at the state's largest read-out norm.
    X, obj, y = _small_problem(gen)
    N, hidden, d = 3, 2, 3
    kappa = float(torch.linalg.matrix_norm(X, 2)) ** 2 / X.shape[1]
    n1 = N * hidden * d

    def nJ(flat: torch.Tensor) -> torch.Tensor:
        W1 = flat[:n1].reshape(N, hidden, d)
        W2 = flat[n1:].reshape(N, 1, hidden)
        return N * obj.risk(obj.feature((W1, W2)).mean(0))

    for scale in (0.3, 1.0, 3.0):
        flat = torch.cat(
            [
                torch.randn(n1, generator=gen, dtype=D64),
                scale * torch.randn(N * hidden, generator=gen, dtype=D64),
            ]
        )
        hess = torch.autograd.functional.hessian(nJ, flat)
        top = float(torch.linalg.eigvalsh(hess).abs().max())
        r2 = readout_norm(flat[n1:].reshape(N, 1, hidden))
        bound = smoothness_bound(r2, float(y.abs().max()), kappa, hidden)
        assert top <= bound, (scale, top, bound)


def test_energy_roundoff_bounds_the_float64_error_of_J(gen):
    # J evaluated in float64 (as the integrators do) vs numpy long double (>= 64-bit mantissa on
    # x86; skipped where long double is plain float64): the error is within the bound.
    if np.finfo(np.longdouble).eps >= np.finfo(np.float64).eps:
        pytest.skip("long double is not more precise than float64 here")
    X, obj, y = _small_problem(gen, N=16, hidden=4, d=5, B=32)
    T = 6
    W1 = torch.randn(T, 16, 4, 5, generator=gen, dtype=D64)
    W2 = 2 * torch.randn(T, 16, 1, 4, generator=gen, dtype=D64)
    P = (torch.zeros_like(W1), torch.zeros_like(W2))
    J64 = torch.stack([obj.value((W1[k], W2[k])) for k in range(T)])
    ld = np.longdouble
    Xl, yl = X.numpy().astype(ld), y.numpy().astype(ld)
    s = np.tanh(np.matmul(W1.numpy().astype(ld), Xl))  # [T, N, h, B]
    m = np.matmul(W2.numpy().astype(ld), s).mean(axis=1)  # [T, 1, B]
    J_ld = ((m - yl) ** 2).sum(axis=(-2, -1)) / (2 * X.shape[1])
    err = np.abs(J64.numpy().astype(ld) - J_ld).astype(np.float64)
    bound = energy_roundoff(X, y, (W1, W2), P, J64, torch.zeros(T, dtype=D64)).numpy()
    assert np.all(err <= bound), (err, bound)
    assert np.all(bound <= 1e-10 * (1 + J64.numpy()))  # and the bound is not vacuous


def test_gauss_newton_spectrum_matches_autograd(gen):
    # G = (1/NB) Σ_i DF_i DF_iᵀ has the non-zero eigenvalues of N·(∂m/∂θ)ᵀ(∂m/∂θ)/B.
    X, obj, _ = _small_problem(gen)
    N, hidden, d, B = 3, 2, 3, X.shape[1]
    W1 = torch.randn(N, hidden, d, generator=gen, dtype=D64)
    W2 = torch.randn(N, 1, hidden, generator=gen, dtype=D64)
    jac = torch.autograd.functional.jacobian(lambda a, b: obj.feature((a, b)).mean(0), (W1, W2))
    A = torch.cat([j.reshape(B, -1) for j in jac], dim=1)  # ∂m/∂θ: [B, params]
    expected = torch.linalg.eigvalsh(N * A @ A.T / B)
    got = gauss_newton_spectrum(X, W1, W2)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_upswings_finds_the_maximal_rising_runs():
    t = np.arange(8.0)
    J = np.array([5.0, 4.0, 4.5, 4.7, 3.0, 2.0, 2.5, 1.0])
    assert upswings(t, J) == [(1.0, 3.0, 0.7000000000000002), (5.0, 6.0, 0.5)]
    assert upswings(t, -np.arange(8.0)) == []
