"""Exact maps: regularized_polar (eigh path) vs an independent per-matrix float64 SVD reference."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from conftest import unit_roundoff
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import relativistic_map_ref

import muonflow as mf
from muonflow.polar import NS_COEFFICIENTS, gram_newton_schulz, inv_sqrt_from_gram, newton_schulz


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
    msg = "unknown method 'qr'; valid: 'auto', 'eigh', 'mixed', 'poly', 'svd'"
    with pytest.raises(ValueError, match=msg):
        mf.regularized_polar(torch.ones(2, 2), 0.1, method="qr")


# -- gradients ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (2, 3, 3), (1, 5)])
@pytest.mark.parametrize(
    ("method", "tol"), [("eigh", None), ("svd", None), ("poly", 1e-8), ("auto", 1e-3)]
)
def test_gradcheck_every_path(shape, method, tol, gen):
    # Autograd through the computed map (float64): eigh/svd by torch's decompositions, the
    # polynomial path through its products (the schedule is fixed for a given input).
    G = torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda X: mf.regularized_polar(X, 0.3, method=method, tol=tol), (G,), eps=1e-6, atol=1e-6
    )


def test_gradcheck_eps_tensor_and_restart_and_gram(gen):
    G = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    e = torch.tensor([0.2, 0.5], dtype=torch.float64, requires_grad=True)
    for method, tol in [("eigh", None), ("poly", 1e-8)]:
        assert torch.autograd.gradcheck(
            lambda X, e, method=method, tol=tol: mf.regularized_polar(X, e, method=method, tol=tol),
            (G, e),
            eps=1e-6,
            atol=1e-6,
        )
    X = torch.randn(7, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    front = importlib.import_module("muonflow.polar.front")
    maps = importlib.import_module("muonflow.polar.maps")

    def restarted(X):
        return maps._poly_map(front.gram_front(X, 0.01, torch.float64), 1e-6, 2).reshape(X.shape)

    assert torch.autograd.gradcheck(restarted, (X,), eps=1e-6, atol=1e-5)
    for method in ("eigh", "poly"):  # through A = XᵀX (a symmetric input must stay symmetric)
        assert torch.autograd.gradcheck(
            lambda X, method=method: inv_sqrt_from_gram(X.mT @ X, 0.3, method=method, tol=1e-8),
            (X,),
            eps=1e-6,
            atol=1e-6,
        )


# -- the map from a given Gram matrix ------------------------------------------------------------
@pytest.mark.parametrize("method", ["auto", "eigh", "poly"])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, None), (torch.float32, 1e-3)])
def test_inv_sqrt_from_gram_against_reference(method, dtype, tol, gen):
    # (A + ε²I)^{-1/2} for A = XᵀX, against a float64 eigendecomposition; float32 A at
    # tol 1e-3: ≤ tol per eigen-direction relative to the A given (its rounding excluded:
    # the reference uses the float32 A itself); float64: default tol, 100 u₆₄ κ² ≈ 1e-10.
    X = torch.randn(4, 40, 12, generator=gen, dtype=torch.float64)
    eps = 0.05 * torch.linalg.matrix_norm(X, ord=2)
    A = (X.mT @ X).to(dtype)
    lam, V = torch.linalg.eigh(A.double())
    ref = (V * torch.rsqrt(lam + eps.reshape(-1, 1) ** 2).unsqueeze(-2)) @ V.mT
    out = inv_sqrt_from_gram(A, eps.to(dtype), method=method, tol=tol)
    assert out.dtype == dtype and out.shape == A.shape
    bound = 1e-10 if dtype == torch.float64 else tol + unit_roundoff(dtype)
    assert _rel_err(out, ref) <= bound


def test_inv_sqrt_from_gram_sharded_rows_equal_regularized_polar(gen):
    # The sharded recipe: all-reduce Σ_k X_kᵀX_k over row shards, then X_k @ M per shard.
    X = torch.randn(96, 24, generator=gen, dtype=torch.float64)
    shards = X.split([40, 30, 26])
    A = sum(x.mT @ x for x in shards)
    M = inv_sqrt_from_gram(A, 0.1)
    out = torch.cat([x @ M for x in shards])
    assert _rel_err(out, relativistic_map_ref(X, 0.1)) <= 1e-12
    # extreme scales: (sA, √s ε) gives M/√s
    for s in (1e-30, 1e30):
        Ms = inv_sqrt_from_gram(A * s, 0.1 * s**0.5)
        assert _rel_err(Ms * s**0.5, M) <= 1e-12


def test_inv_sqrt_from_gram_reports_what_no_gram_path_can_do(gen):
    # Two float64 Grams: a well-conditioned one, and a rank-1 one with ε = 1e-9 of its scale,
    # whose a-posteriori bound ½u·λmax/(λmin+ε²) ≈ 1e2 misses any tol: only an SVD of X
    # itself can map that matrix. ok must say so (a mutant "always ok" fails), and must not
    # flag the good one (a mutant "never ok" fails).
    X = torch.randn(2, 30, 6, generator=gen, dtype=torch.float64)
    X[1] = torch.outer(
        torch.randn(30, generator=gen, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    )
    A = X.mT @ X
    eps = torch.tensor([0.3, 1e-9]) * torch.linalg.matrix_norm(X, ord=2)
    M, ok = inv_sqrt_from_gram(A, eps, tol=1e-6, method="eigh", return_ok=True)
    assert ok.tolist() == [True, False]
    assert torch.equal(M[0], inv_sqrt_from_gram(A[:1], eps[:1], tol=1e-6, method="eigh")[0])


def test_inv_sqrt_from_gram_bad_input():
    with pytest.raises(ValueError, match="square"):
        inv_sqrt_from_gram(torch.ones(3, 2), 0.1)
    with pytest.raises(ValueError, match="non-finite"):
        inv_sqrt_from_gram(torch.tensor([[1.0, math.nan], [math.nan, 1.0]]), 0.1)
    with pytest.raises(ValueError, match="eps"):
        inv_sqrt_from_gram(torch.eye(2), 0.0)
    with pytest.raises(ValueError, match="unknown method"):
        inv_sqrt_from_gram(torch.eye(2), 0.1, method="svd")


# -- baselines ------------------------------------------------------------------------------------
def test_newton_schulz_is_the_scalar_quintic_on_singular_values(gen):
    # Independent check: NS acts on the singular values of G/||G||_F by the scalar map
    # s ← a s + b s³ + c s⁵, five times, keeping the singular vectors (float64).
    G = torch.randn(3, 12, 7, generator=gen, dtype=torch.float64)
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    s = S / torch.linalg.vector_norm(G, dim=(-2, -1)).unsqueeze(-1)
    a, b, c = NS_COEFFICIENTS
    for _ in range(5):
        s = a * s + b * s**3 + c * s**5
    ref = (U * s.unsqueeze(-2)) @ Vh
    for X in (G, G.mT.contiguous()):
        out = newton_schulz(X)
        want = ref if X is G else ref.mT
        assert float((out - want).abs().max()) <= 1e-12


@pytest.mark.parametrize("restarts", [(), (2,), (1, 3)])
def test_gram_newton_schulz_equals_newton_schulz(restarts, gen):
    # Mathematically equal iterates (float64): a wrong R update, a misplaced restart or a
    # missing a·Q term shows up at 1e-2, far above round-off.
    for shape in [(2, 20, 8), (2, 8, 20), (16, 16)]:
        G = torch.randn(*shape, generator=gen, dtype=torch.float64)
        coeffs = [(3.4445, -4.7750, 2.0315), (3.0, -3.2, 1.2), (2.5, -2.0, 0.6)] * 2
        for steps, c in [(5, NS_COEFFICIENTS), (6, coeffs)]:
            ns = newton_schulz(G, steps, c)
            gns = gram_newton_schulz(G, steps, c, restarts=restarts)
            assert float((ns - gns).abs().max()) <= 1e-10


def test_newton_schulz_float32_and_dtype_option(gen):
    G = torch.randn(4, 30, 10, generator=gen)
    ref = newton_schulz(G.double())
    for f in (newton_schulz, gram_newton_schulz):
        out = f(G)
        assert out.dtype == torch.float32 and out.shape == G.shape
        assert float((out.double() - ref).abs().max()) <= 1e-4  # float32 round-off, 5 steps
        assert f(G, dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="coefficients"):
        newton_schulz(G, 3, [(1.0, 0.0, 0.0)] * 2)
