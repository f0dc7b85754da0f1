"""Measurements: Wasserstein distances (POT) and propagation of chaos by synchronous coupling."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.optimize import linear_sum_assignment

import muonflow as mf
from muonflow.meanfield import (
    Neuron,
    coupling_distance,
    fit_power_law,
    phase_space,
    propagation_of_chaos,
    teacher_student,
    wasserstein2,
)

D64 = torch.float64


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=D64)


# -- Wasserstein distances ----------------------------------------------------------------------
def test_exact_w2_equals_optimal_assignment(gen):
    # Between two uniform clouds of equal size the optimal plan is a permutation (Birkhoff), so
    # W₂² is the optimal assignment cost, which SciPy's Hungarian solver computes independently.
    # Both are exact LP optima of the same float64 costs: agreement to ~n·u relative.
    X, Y = _randn(gen, 40, 2, 3), _randn(gen, 40, 2, 3) + 0.5
    x, y = X.reshape(40, -1), Y.reshape(40, -1)
    C = torch.cdist(x, y).square().numpy()
    rows, cols = linear_sum_assignment(C)
    want = math.sqrt(C[rows, cols].mean())
    assert abs(wasserstein2(X, Y, method="exact") - want) <= 1e-12 * want


def test_w2_closed_forms(gen):
    x = _randn(gen, 50, 1)
    y = 2.0 * _randn(gen, 50, 1) + 1.0
    # in 1-D the optimal plan matches sorted samples
    want = float((x.sort(0).values - y.sort(0).values).square().mean().sqrt())
    assert abs(wasserstein2(x, y, method="exact") - want) <= 1e-12 * want
    # ... and every projection is ±x, so the sliced distance is exact too
    assert abs(wasserstein2(x, y, method="sliced", n_projections=8) - want) <= 1e-12 * want
    # a translation by v costs exactly ‖v‖
    X = _randn(gen, 30, 4)
    v = torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=D64)
    assert abs(wasserstein2(X, X + v, method="exact") - float(v.norm())) <= 1e-12 * float(v.norm())
    assert wasserstein2(X, X, method="exact") == 0.0


def test_sliced_is_a_lower_bound_and_auto_switches(gen):
    # each projection is 1-Lipschitz, so every sliced term is ≤ W₂²: SW₂ ≤ W₂ for any sample of
    # directions (a sure inequality, up to the rounding of the two LP values, ~1e-14)
    X, Y = _randn(gen, 60, 5), _randn(gen, 60, 5) * 1.5
    exact = wasserstein2(X, Y, method="exact")
    sliced = wasserstein2(X, Y, method="sliced", n_projections=64)
    assert 0 < sliced <= exact * (1 + 1e-12)
    assert wasserstein2(X, Y, exact_max=59) == wasserstein2(X, Y, method="sliced")
    assert wasserstein2(X, Y) == exact  # 60 <= exact_max: exact
    # the identity coupling is a feasible plan: W₂ ≤ its cost
    assert exact <= coupling_distance(X, Y) * (1 + 1e-12)


def test_phase_space_and_bad_clouds(gen):
    th = (_randn(gen, 4, 2, 3), _randn(gen, 4, 3, 1))
    P = (_randn(gen, 4, 2, 3), _randn(gen, 4, 3, 1))
    z = phase_space(th, P)
    assert z.shape == (4, 18)
    assert torch.equal(z[:, :6], th[0].reshape(4, 6))
    with pytest.raises(ValueError, match="different dimensions"):
        wasserstein2(_randn(gen, 3, 2), _randn(gen, 3, 4))
    with pytest.raises(ValueError, match="empty cloud"):
        wasserstein2(torch.zeros(0, 2, dtype=D64), _randn(gen, 3, 2))
    with pytest.raises(ValueError, match="unknown method 'fast'"):
        wasserstein2(_randn(gen, 3, 2), _randn(gen, 3, 2), method="fast")


def test_fit_power_law_recovers_exponent():
    n = torch.tensor([16.0, 64.0, 256.0])
    assert abs(fit_power_law(n, 3.0 * n**-0.5) + 0.5) <= 1e-12


# -- propagation of chaos -------------------------------------------------------------------------
def test_propagation_of_chaos_rate(gen):
    # Neuron particles W ∈ R^{2x3}, teacher–student squared risk, relativistic(0.3), γ = 1,
    # muon scheme h = 0.05 up to t = 1. N ∈ {16, …, 256}, N_ref = 16·256 = 4096; every N-system
    # is a block of the reference's initial draws (S = N_ref/N replicas, one batched run each).
    # Theory: e_N(t) ∝ N^{-1/2} for the linear observable m_ρ(t). The shared draws give
    # e² ∝ 1/N − 1/N_ref, which biases the fitted exponent by < 0.02; the replica averages
    # (≥ 16 replicas, 2x16-dim observable) give it a sampling sd of ≈ 0.02.
    X = _randn(gen, 3, 16)
    feature = Neuron(X, width=2)
    obj = teacher_student(feature, feature.sample(4, generator=gen))
    Ns, n_ref = [16, 32, 64, 128, 256], 4096
    theta = feature.sample(n_ref, generator=gen)
    P = 0.3 * _randn(gen, n_ref, 2, 3)
    res = propagation_of_chaos(
        obj, mf.Relativistic(0.3), 1.0, theta, P, Ns, [0.5, 1.0], h=0.05, method="muon"
    )
    print(f"\nslopes {res.slope}; per time {dict((k, v.tolist()) for k, v in res.slopes.items())}")
    print(f"errors m: {res.errors['mean_feature'].tolist()}\nerrors J: {res.errors['J'].tolist()}")
    assert res.replicas.tolist() == [256, 128, 64, 32, 16]
    assert -0.6 <= res.slope["mean_feature"] <= -0.4
    # J = R(m) is nonlinear: J_N − J = ⟨∇R(m), δm⟩ + O(|δm|²) mixes N^{-1/2} and N^{-1} (the
    # latter dominates as training drives ∇R(m) → 0), so its exponent lies between −1 and −1/2
    # (with the same ±0.1 sampling margin)
    assert -1.1 <= res.slope["J"] <= -0.4
    with pytest.raises(ValueError, match=r"N_ref >= 16 max\(Ns\) = 8192"):
        propagation_of_chaos(obj, mf.Relativistic(0.3), 1.0, theta, P, [512], [1.0], h=0.05)
