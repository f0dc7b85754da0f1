"""Exact maps: regularized_polar (eigh path) vs an independent per-matrix float64 SVD reference."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import unit_roundoff
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import relativistic_map_ref

import muonflow as mf


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a.double() - b) / torch.linalg.norm(b).clamp_min(1e-300))


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (32, 32), (5, 9, 3), (2, 3, 4, 7)])
@pytest.mark.parametrize("eps_rel", [1.0, 1e-1, 1e-3])
def test_float64_matches_svd_reference(shape, eps_rel, gen):
    # The Gram eigh path in float64: eigenvalue errors u·||G||² give per-direction errors
    # ≤ ½u(||G||/ε)² ≤ ½·1.1e-16·1e6 ≈ 6e-11 absolute at ε = 1e-3||G||; relative to ||ref||_F
    # (≥ 1 for these ranks) this is below 1e-10. At ε ≥ 1e-1||G|| the bound is 1e-12.
    G = torch.randn(*shape, generator=gen, dtype=torch.float64)
    eps = eps_rel * float(torch.linalg.matrix_norm(G, ord=2).max())
    bound = max(1e-12, 0.5 * unit_roundoff(torch.float64) / eps_rel**2 * 100)
    ref = relativistic_map_ref(G, eps)
    for method in ("auto", "eigh", "svd"):
        assert _rel_err(mf.regularized_polar(G, eps, method=method), ref) <= bound


@pytest.mark.parametrize("eps_rel", [1.0, 1e-2, 1e-3])
def test_float32_within_1e5_when_eps_at_least_1e3_norm(eps_rel, gen):
    G = torch.randn(4, 96, 24, generator=gen)
    eps = eps_rel * float(torch.linalg.matrix_norm(G, ord=2).max())
    out = mf.regularized_polar(G, eps)
    assert out.dtype == torch.float32
    assert _rel_err(out, relativistic_map_ref(G, eps)) <= 1e-5


def test_batched_equals_loop(gen):
    G = torch.randn(3, 4, 10, 6, generator=gen, dtype=torch.float64)
    batched = mf.regularized_polar(G, 0.2)
    looped = torch.stack(
        [torch.stack([mf.regularized_polar(G[i, j], 0.2) for j in range(4)]) for i in range(3)]
    )
    assert torch.allclose(batched, looped, atol=1e3 * unit_roundoff(torch.float64))


def test_per_matrix_eps_tensor(gen):
    G = torch.randn(5, 6, 4, generator=gen, dtype=torch.float64)
    eps = torch.tensor([0.1, 0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    out = mf.regularized_polar(G, eps)
    for i in range(5):
        assert torch.allclose(out[i], relativistic_map_ref(G[i], float(eps[i])), atol=1e-12)


def test_zero_matrix_and_rank_deficient(gen):
    assert torch.equal(mf.regularized_polar(torch.zeros(2, 5, 3), 0.1), torch.zeros(2, 5, 3))
    low = torch.randn(8, 2, generator=gen, dtype=torch.float64) @ torch.randn(
        2, 6, generator=gen, dtype=torch.float64
    )
    out = mf.regularized_polar(low, 1e-2)
    assert _rel_err(out, relativistic_map_ref(low, 1e-2)) <= 1e-10
    # The null directions carry only the error of the map (≤ 1e-10 relative, above), so the
    # rank counted at that tolerance is exactly the input's.
    assert torch.linalg.matrix_rank(out, atol=1e-10) == 2


@pytest.mark.parametrize("scale", [1e-20, 1e-8, 1.0, 1e8, 1e20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_scales(scale, dtype, gen):
    # The map is invariant under (G, ε) → (sG, sε): the output must not depend on the scale.
    G = torch.randn(12, 5, generator=gen, dtype=torch.float64)
    ref = relativistic_map_ref(G, 0.3)
    out = mf.regularized_polar((G * scale).to(dtype), 0.3 * scale)
    assert torch.isfinite(out).all()
    assert _rel_err(out, ref) <= (1e-5 if dtype == torch.float32 else 1e-12)


def test_rank_deficient_with_eps_far_below_norm():
    # ‖P‖/ε = 2e16 on a rank-1 P: the Gram path's explicit V diag(w) Vᵀ would lose the weight
    # 1/‖P‖ of the range next to the weight 1/ε of the null direction and return 0. No float
    # method resolves singular values below u‖P‖ ≈ 2 > ε, so the image of the null direction
    # is undetermined; what must hold is the image of the range: u₁ᵀ ∇K(P) v₁ = σ/√(σ²+ε²) = 1.
    P = 1e16 * torch.ones(2, 2, dtype=torch.float64)
    v1 = torch.full((2,), 2**-0.5, dtype=torch.float64)
    for Y in (mf.Relativistic(1.0).grad(P), mf.regularized_polar(torch.stack([P, P]), 1.0)[1]):
        assert torch.isfinite(Y).all()
        assert abs(float(v1 @ Y @ v1) - 1.0) <= 1e-12
        assert float(torch.linalg.matrix_norm(Y, ord=2)) <= 1 + 1e-12


def test_eps_zero_gives_polar_factor(gen):
    G = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    assert torch.allclose(mf.regularized_polar(G, 0.0), U @ Vh, atol=1e-13)


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 64),
    n=st.integers(1, 64),
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=3),
    log_scale=st.floats(-12, 12),
    eps_rel=st.sampled_from([1e-3, 1e-2, 1e-1, 1.0, 10.0]),
    rank_cut=st.integers(0, 3),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_against_reference(m, n, batch, log_scale, eps_rel, rank_cut, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(*batch, m, n, generator=gen, dtype=torch.float64)
    r = min(m, n)
    if rank_cut and r > rank_cut:  # drop the last `rank_cut` singular directions
        U, S, Vh = torch.linalg.svd(G, full_matrices=False)
        S[..., r - rank_cut :] = 0
        G = U @ torch.diag_embed(S) @ Vh
    G = G * 10.0**log_scale
    op = float(torch.linalg.matrix_norm(G, ord=2).max())
    if op == 0:
        return
    eps = eps_rel * op
    ref = relativistic_map_ref(G, eps)
    out = mf.regularized_polar(G.to(dtype), eps)
    assert out.shape == G.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    # float64 bound from the eigenvalue perturbation argument (see test above); float32 is
    # promoted internally when that bound exceeds its default tol, and the output is then
    # rounded once to float32 plus the input rounding amplified by the map's 1/ε Lipschitz
    # constant: ≤ u32·(1 + ||G||/ε) relative, times √r for the Frobenius norm sum.
    if dtype == torch.float64:
        bound = 100 * unit_roundoff(torch.float64) / eps_rel**2 + 1e-13
    else:
        bound = 4 * unit_roundoff(torch.float32) * (1 + 1 / eps_rel) * math.sqrt(r)
    assert _rel_err(out, ref) <= bound


@pytest.mark.parametrize(
    ("G", "exc", "match"),
    [
        (torch.ones(3), ValueError, r"G must have shape \[..., m, n\].*\(3,\)"),
        (torch.ones(3, 3, dtype=torch.int64), TypeError, "floating dtype, got torch.int64"),
        (torch.ones(3, 3, dtype=torch.complex64), TypeError, "G must be real"),
        (torch.tensor([[1.0, math.nan]]), ValueError, "G has 1 non-finite entry"),
        (torch.tensor([[math.inf, math.inf]]), ValueError, "G has 2 non-finite entries"),
        (torch.ones(0, 3), ValueError, "empty"),
        ([[1.0]], TypeError, "G must be a torch.Tensor"),
    ],
)
def test_bad_matrix_input(G, exc, match):
    with pytest.raises(exc, match=match):
        mf.regularized_polar(G, 0.1)


@pytest.mark.parametrize("eps", [-0.1, math.nan, math.inf])
def test_bad_eps(eps):
    with pytest.raises(ValueError, match="eps"):
        mf.regularized_polar(torch.ones(2, 2), eps)


def test_bad_eps_tensor():
    with pytest.raises(ValueError, match="eps"):
        mf.regularized_polar(torch.ones(2, 2, 2), torch.tensor([0.1, 0.0]))


def test_unknown_method_lists_valid():
    msg = "unknown method 'qr'; valid: 'auto', 'eigh', 'poly', 'svd'"
    with pytest.raises(ValueError, match=msg):
        mf.regularized_polar(torch.ones(2, 2), 0.1, method="qr")
