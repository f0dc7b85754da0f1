"""Matmul-only regularized map ("poly"), its minimax schedules and the ``auto`` policy (issue #6).

Accuracy contract under test (module docs of :mod:`muonflow.polar`): with a requested ``tol``
the ``"poly"`` and ``"auto"`` paths keep every singular direction within ``tol/2`` from the
polynomial schedule (exact arithmetic) and within ``tol/2`` from rounding (the working dtype
is chosen so that the Gram term ``½ u κ²`` fits), so the Frobenius relative error
``||out − ref||_F / ||ref||_F``, which is at most the largest per-direction relative error,
is ``<= tol`` before the final cast; the cast to the output dtype adds one roundoff ``u_out``.
References are float64 SVDs of the inputs as given (already rounded to their dtype), so input
rounding is not part of the error.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import math

import pytest
import torch
from conftest import unit_roundoff
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import polar_ref, relativistic_map_ref
from torch.utils._python_dispatch import TorchDispatchMode

import muonflow as mf

P = importlib.import_module("muonflow.polar")
S = importlib.import_module("muonflow.polar.schedules")
PN = importlib.import_module("muonflow.polar.polynomial")
PL = importlib.import_module("muonflow.polar.planning")
PC = importlib.import_module("muonflow.polar.calibration")

EPS_RELS = [1.0, 1e-1, 1e-2, 1e-3, 1e-4]
SHAPES = [(96, 24), (24, 96), (40, 40), (3, 40, 16)]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.norm(out.double() - ref) / torch.linalg.norm(ref).clamp_min(1e-300))


def spread_matrix(shape, gen, *, decades: float = 6.0, rank: int | None = None) -> torch.Tensor:
    """float64 ``U diag(σ) Vᵀ`` with σ log-spaced over ``decades`` below ``||G||_op = 1``: for
    every ε of the tests some singular direction sits near σ = ε, where the map bends."""
    *batch, m, n = shape
    r = min(m, n)
    G = torch.randn(*batch, m, n, generator=gen, dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    S = torch.logspace(0, -decades, r, dtype=torch.float64).expand(*batch, r).clone()
    if rank is not None:
        S[..., rank:] = 0
    return U @ torch.diag_embed(S) @ Vh


def op_norm(G: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(G.double(), ord=2).max())


# -- minimax steps and schedules ------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.9, 0.3, 0.03, 1e-3])
@pytest.mark.parametrize("degree", [1, 2, 4])
def test_minimax_step_equioscillates(ratio, degree):
    # de la Vallée Poussin: if 1 − p alternates in sign at d + 2 points with magnitudes ≥ m,
    # the best error over σ h(σ²), deg h = d (a Haar space of dimension d + 1), is ≥ m. So
    # E/m bounds how far p is from the minimax polynomial; the Remez exchange on a 1200-point
    # grid gets within 1e-3 (observed ≤ 1e-4). Checked on a 2e5-point grid.
    coeffs, pmin, pmax, amp = P.minimax_odd(ratio, degree)
    lo = math.log10(ratio)
    s = (
        torch.cat(
            [
                torch.logspace(lo, 0, 100_000, dtype=torch.float64),
                torch.linspace(ratio, 1, 100_000, dtype=torch.float64),
            ]
        )
        .sort()
        .values
    )
    p = s * sum(cj * s ** (2 * j) for j, cj in enumerate(coeffs))
    err = 1 - p
    E = float(err.abs().max())
    assert pmin <= float(p.min()) and float(p.max()) <= pmax  # the reported range holds
    # ... and is the true one widened by at most the 1e-3 margin (plus evaluation noise)
    assert max(1 - pmin, pmax - 1) <= E * (1 + 2e-3) + 1e-14
    cut = (torch.sign(err[1:]) != torch.sign(err[:-1])).nonzero().flatten() + 1
    runs = torch.tensor_split(err.abs(), cut.tolist())  # sign-constant runs of 1 − p
    peaks = [float(r.max()) for r in runs]
    assert len(peaks) >= degree + 2
    m = max(min(peaks[i : i + degree + 2]) for i in range(len(peaks) - degree - 1))
    assert E <= m * (1 + 1e-3)
    assert math.isfinite(amp) and amp >= 1


@pytest.mark.parametrize("rho", [0.7, 0.1, 1e-2, 1e-3, 1e-5])
@pytest.mark.parametrize("tol", [1e-2, 5e-4, 1e-7, 1e-13])
def test_schedule_maps_interval_within_target(rho, tol):
    # Exact-arithmetic guarantee of the composition, replayed in float64 on 2e4 points of
    # [ρ, 1] (log- and linearly spaced) plus ρ and 1: every σ ends in [1 − E, 1 + E], E ≤ tol.
    # float64 evaluation of a degree ≤ 9 polynomial with these coefficients errs by ≲ 1e-15.
    sch = P.poly_schedule(rho, tol)
    assert sch.rho <= rho and sch.err <= max(tol, P.TARGET_MIN)
    s = torch.cat(
        [
            torch.logspace(math.log10(rho), 0, 10_000, dtype=torch.float64),
            torch.linspace(rho, 1, 10_000, dtype=torch.float64),
        ]
    )
    errs = []
    for step in sch.steps:
        s = s * sum(c * s ** (2 * j) for j, c in enumerate(step.coeffs))
        assert float(s.min()) >= step.out_lo - 1e-15 and float(s.max()) <= step.out_hi + 1e-15
        errs.append(float((s - 1).abs().max()))
    assert errs[-1] <= sch.err + 1e-15
    if len(sch.steps) >= 2:  # the finishing step improves on the one before
        assert sch.steps[-1].err < sch.steps[-2].err


def test_schedule_rounding_amplification_is_bounded():
    # A step's relative rounding error is about u·amp (minimax_odd); schedules for float32
    # keep amp ≤ target/(8u) so each step's rounding stays below an eighth of the target.
    for rho, tol in [(1e-2, 5e-4), (1e-4, 5e-4), (0.1, 5e-3)]:
        sch = P.poly_schedule(rho, tol, torch.float32)
        limit = P.amp_limit(sch.target, torch.float32)
        assert (
            max(s.amp for s in sch.steps)
            <= limit
            <= sch.target / (8 * unit_roundoff(torch.float32))
        )


def test_schedule_cost_regression():
    # Measured schedule lengths (r x r products incl. Y²) for the float32 optimizer setting
    # tol/2 = 5e-4; guards against the planner degrading (not a theoretical bound).
    for rho, most in [(0.7, 2), (0.1, 9), (1e-2, 15), (1e-3, 21)]:
        assert P.poly_schedule(rho, 5e-4, torch.float32).matmuls <= most


class _CountMatmuls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        aten = torch.ops.aten
        if func.overloadpacket in (aten.bmm, aten.baddbmm, aten.baddbmm_, aten.mm, aten.addmm):
            self.n += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("rho", [0.5, 1e-2, 1e-4])
def test_kernel_product_count_matches_cost_model(rho, gen):
    sch = P.poly_schedule(rho, 1e-6)
    A = torch.randn(2, 12, 12, generator=gen, dtype=torch.float64)
    Y = A @ A.mT
    Y = Y / torch.linalg.matrix_norm(Y, ord=2, keepdim=True)
    Y2 = Y @ Y
    with _CountMatmuls() as count:
        P.gram_poly_inv_sqrt(Y, sch, Y2=Y2)
    assert count.n == sch.matmuls - 1  # the first step's Y² was given


def test_error_decreases_with_iterations(gen):
    # Truncating the schedule after k steps leaves every direction within steps[k-1].err of
    # the exact map (relative), so the Frobenius relative error is ≤ that, and it must fall.
    G = spread_matrix((60, 20), gen, decades=3)
    eps = 1e-2
    ref = relativistic_map_ref(G, eps)
    A = G.mT @ G + eps**2 * torch.eye(20, dtype=torch.float64)
    L = float(torch.linalg.matrix_norm(A @ A).sqrt()) * (1 + 1e-3)
    sch = P.poly_schedule(eps / math.sqrt(L), 1e-12)
    Y = (A / L).unsqueeze(0)
    errs = []
    for k in range(1, len(sch.steps) + 1):
        Q = P.gram_poly_inv_sqrt(Y, sch.truncated(k))[0]
        errs.append(rel_err(G @ Q / math.sqrt(L), ref))
        # float64 rounding: ½u κ² with κ² = L/ε² ≈ 1e4 (first-order Gram term), ≪ the bound
        assert errs[-1] <= sch.steps[k - 1].err + 1e-11
    assert len(errs) >= 3
    assert all(b < a for a, b in itertools.pairwise(errs))
    assert errs[-1] <= 1e-11


# -- accuracy against the float64 reference --------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps_rel", EPS_RELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", ["poly", "auto"])
def test_within_tol_against_reference(shape, eps_rel, dtype, method, gen):
    # Derivation in the module docstring: ≤ tol before the cast, + u_out for the cast to the
    # output dtype (per entry, hence relative in the Frobenius norm too).
    tol = 1e-3
    G = spread_matrix(shape, gen).to(dtype)
    eps = eps_rel * op_norm(G)
    ref = relativistic_map_ref(G, eps)
    out = mf.regularized_polar(G, eps, method=method, tol=tol)
    assert out.dtype == dtype and out.shape == G.shape and torch.isfinite(out).all()
    assert rel_err(out, ref) <= tol + unit_roundoff(dtype)


@pytest.mark.parametrize("eps_rel", EPS_RELS)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-6), (torch.float64, 1e-10)])
def test_tight_tol_promotes_and_stays_within(eps_rel, dtype, tol, gen):
    # Tight requests: float32 work cannot deliver 1e-6 (tol < 64u₃₂ = 3.8e-6), so the path
    # runs in float64; float64 meets 1e-10 while ½u₆₄κ² ≤ tol/2, i.e. ε ≥ 1e-3·||G||. Below
    # that "poly" verifies its result a posteriori and refuses (ValueError) what it cannot
    # show to be within tol, while "auto" switches to the SVD (which does not square the
    # conditioning). Fails if "poly" returns a result outside tol (the old floor ½u₆₄κ² was
    # returned silently), or refuses where its a-priori float64 floor fits tol.
    G = spread_matrix((48, 20), gen).to(dtype)
    eps = eps_rel * op_norm(G)
    ref = relativistic_map_ref(G, eps)
    # First-order floor of the float64 iteration: ½u₆₄κ² from forming A, plus ½u₆₄ L/ε² from
    # the first step's rounding relative to its smallest eigenvalue, L/λ_max ≤ r^(1/4).
    kappa2 = 1 + 1 / eps_rel**2
    floor = P.gram_floor(kappa2, torch.float64) * (1 + 20**0.25)
    try:
        out = mf.regularized_polar(G, eps, method="poly", tol=tol)
    except ValueError as exc:
        assert "method='poly' cannot meet tol" in str(exc)
        assert floor > tol / 2, "refused although float64 fits a priori"
    else:
        assert rel_err(out, ref) <= tol + unit_roundoff(dtype)
    assert rel_err(mf.regularized_polar(G, eps, method="auto", tol=tol), ref) <= (
        tol + unit_roundoff(dtype)
    )


@pytest.mark.parametrize("tol", [1e-2, 1e-4])
def test_gaussian_batched_stack_within_tol(tol, gen):
    # The optimizer's case: a stack of experts, one ε per matrix (relative to its own norm).
    G = torch.randn(6, 32, 24, generator=gen)
    eps = 1e-2 * torch.linalg.matrix_norm(G.double(), ord=2).float()
    ref = torch.stack([relativistic_map_ref(G[i], float(eps[i])) for i in range(6)])
    for method in ("poly", "auto"):
        assert rel_err(mf.regularized_polar(G, eps, method=method, tol=tol), ref) <= (
            tol + unit_roundoff(torch.float32)
        )


def test_batched_poly_kernel_equals_loop(gen):
    # Same schedule, batched vs one matrix at a time: bmm and per-matrix products may sum in a
    # different order; the iteration amplifies roundoff by ≤ Σ amp ~ 1e3, so 1e3·64·u₆₄.
    sch = P.poly_schedule(1e-2, 1e-8)
    A = torch.randn(4, 10, 10, generator=gen, dtype=torch.float64)
    Y = A @ A.mT + 1e-4 * torch.eye(10, dtype=torch.float64)
    Y = Y / torch.linalg.matrix_norm(Y, ord=2, keepdim=True)
    batched = P.gram_poly_inv_sqrt(Y, sch)
    looped = torch.cat([P.gram_poly_inv_sqrt(Y[i : i + 1], sch) for i in range(4)])
    assert float((batched - looped).abs().max()) <= 1e3 * 64 * unit_roundoff(torch.float64)


# -- robustness ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["poly", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_zero_matrix_maps_to_zero(method, dtype):
    Z = torch.zeros(3, 7, 5, dtype=dtype)
    assert torch.equal(mf.regularized_polar(Z, 0.1, method=method, tol=1e-3), Z)


@pytest.mark.parametrize("method", ["poly", "auto"])
def test_rank_deficient(method, gen):
    G = spread_matrix((30, 12), gen, decades=1, rank=3)
    ref = relativistic_map_ref(G, 1e-3)
    out = mf.regularized_polar(G.float(), 1e-3, method=method, tol=1e-3)
    assert rel_err(out, ref) <= 1e-3 + unit_roundoff(torch.float32)
    # exactly zero rows (a left null space) stay exactly zero: out = X M row by row
    Z = G.float().clone()
    Z[::3] = 0
    assert torch.equal(mf.regularized_polar(Z, 1e-3, method=method, tol=1e-3)[::3], Z[::3])


@pytest.mark.parametrize("scale", [1e-30, 1e-8, 1.0, 1e8, 1e30])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", ["poly", "auto"])
def test_extreme_scales_are_finite_and_scale_free(scale, dtype, method, gen):
    # 0-homogeneity in (G, ε): the same matrix at any scale gives the same answer within tol.
    G = spread_matrix((20, 8), gen, decades=2)
    Gs = (G * scale).to(dtype)
    ref = relativistic_map_ref(Gs.double() / scale, 0.05)
    out = mf.regularized_polar(Gs, 0.05 * scale, method=method, tol=1e-3)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= 1e-3 + unit_roundoff(dtype)


@pytest.mark.parametrize("method", ["poly", "auto"])
def test_eps_far_above_norm(method, gen):
    # ε ≫ ||G||: the map is G/ε to relative accuracy (σ/ε)², and ε² must not overflow.
    # ε = 1e-36·||G||: ε² underflows any Gram matrix, κ² = 1e72 is far beyond every floor
    # ("auto" takes the SVD, "poly" clamps ρ at RHO_MIN); this 9x4 Gaussian has
    # σ_min/σ_max ≈ 0.3 ≫ RHO_MIN, so both must still return its polar factor, finite.
    G = torch.randn(9, 4, generator=gen)
    for eps in (1e6, 1e30):
        out = mf.regularized_polar(G, eps, method=method, tol=1e-3)
        assert rel_err(out, relativistic_map_ref(G, eps)) <= 1e-3 + unit_roundoff(torch.float32)
    tiny = mf.regularized_polar(G * 1e30, 1e-6, method=method, tol=1e-3)
    assert torch.isfinite(tiny).all()
    assert rel_err(tiny, polar_ref(G.double())) <= 1e-3 + unit_roundoff(torch.float32)


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 24),
    n=st.integers(1, 24),
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    log_scale=st.floats(-20, 20),
    eps_rel=st.sampled_from([1e-4, 1e-2, 1e-1, 1.0, 100.0]),
    rank_cut=st.integers(0, 3),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64]),
    tol=st.sampled_from([1e-2, 1e-3, 1e-5]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_never_nan_and_within_tol(
    m, n, batch, log_scale, eps_rel, rank_cut, dtype, tol, seed
):
    # Shapes tall/wide/square/stacks/1 x n, inputs in every dtype, scales 1e-20..1e20 (float16:
    # 1e-3..1e3, its normal range for N(0, 1) entries), ranks cut, ε from 1e-4 to 100 ‖G‖.
    # Bound: tol before the final cast (module contract) + one roundoff of the output dtype;
    # the reference is the float64 SVD of the input as rounded to its dtype.
    if dtype == torch.float16:
        log_scale = max(-3.0, min(3.0, log_scale))
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(*batch, m, n, generator=gen, dtype=torch.float64)
    r = min(m, n)
    if rank_cut and r > rank_cut:
        U, S, Vh = torch.linalg.svd(G, full_matrices=False)
        S[..., r - rank_cut :] = 0
        G = U @ torch.diag_embed(S) @ Vh
    G = (G * 10.0**log_scale).to(dtype)
    op = op_norm(G)
    if op == 0:
        return
    eps = eps_rel * op
    ref = relativistic_map_ref(G, eps)
    for method in ("poly", "auto"):
        out = mf.regularized_polar(G, eps, method=method, tol=tol)
        assert out.dtype == dtype and out.shape == G.shape
        assert torch.isfinite(out).all()
        assert rel_err(out, ref) <= tol + unit_roundoff(dtype)


# -- the auto policy -------------------------------------------------------------------------------
def test_auto_with_default_tol_is_the_exact_eigh_path(gen):
    G = torch.randn(3, 20, 12, generator=gen)
    assert P.plan_auto(G, 0.1).method == "eigh"
    assert torch.equal(mf.regularized_polar(G, 0.1), mf.regularized_polar(G, 0.1, method="eigh"))


@pytest.mark.parametrize(
    ("r", "batch", "device", "dtype", "tol", "kappa2", "method", "work", "restart"),
    [
        (8, 4096, "cpu", torch.float32, 1e-3, 1e4, "poly", torch.float32, False),  # tiny, many
        (1024, 1, "cpu", torch.float32, 1e-3, 1e4, "eigh", torch.float32, False),  # ε=‖G‖/100
        (1024, 1, "cpu", torch.float32, 1e-3, 2.0, "poly", torch.float32, False),  # ε = ‖G‖
        (1024, 1, "cuda", torch.float32, 1e-3, 1e4, "poly", torch.float32, False),  # no GPU eigh
        # ½u₃₂κ² = 0.03 > tol/2: a restart keeps float32 (cheaper than float64 at r = 64)
        (64, 16, "cpu", torch.float32, 1e-3, 1e6, "poly", torch.float32, True),
        (256, 1, "cuda", torch.bfloat16, 1e-3, 1e6, "poly", torch.float32, True),
        (64, 1, "cpu", torch.float64, 1e-6, 1e16, "svd", torch.float64, False),  # ½u₆₄κ² > tol/2
        (64, 1, "cpu", torch.float32, None, 1e4, "eigh", torch.float32, False),  # default: exact
    ],
)
def test_choose_method_policy(r, batch, device, dtype, tol, kappa2, method, work, restart):
    # With the reference rates (calibration/reference_rates): what each shape's cheapest
    # accurate path is.
    plan = P.choose_method(
        r=r, batch=batch, dtype=dtype, device_type=device, tol=tol, kappa2=kappa2
    )
    assert (plan.method, plan.dtype, plan.restart > 0) == (method, work, restart)
    if method in ("poly", "eigh") and tol is not None:
        assert (plan.cost_poly < plan.cost_eigh) == (method == "poly")
    if restart:  # without the input matrix (a given Gram matrix) float64 is the way
        plan = P.choose_method(
            r=r, batch=batch, dtype=dtype, device_type=device, tol=tol, kappa2=kappa2,
            restart=False,
        )  # fmt: skip
        assert (plan.dtype, plan.restart) == (torch.float64, 0)


def test_policy_follows_the_rates():
    # The same call flips between eigh and poly when the host's eigh is 100x faster or slower
    # (a planner that ignored the rates, or priced eigh by the wrong entry, fails one side).
    base = PC.reference_rates("cpu")
    kw = {"r": 256, "batch": 4, "dtype": torch.float32, "device_type": "cpu", "tol": 1e-2,
          "kappa2": 1e4}  # fmt: skip
    fast = dataclasses.replace(base, eigh32=tuple((r, t / 100) for r, t in base.eigh32))
    slow = dataclasses.replace(base, eigh32=tuple((r, t * 100) for r, t in base.eigh32))
    assert P.choose_method(**kw, rates=fast).method == "eigh"
    assert P.choose_method(**kw, rates=slow).method == "poly"
    # per-call overhead: at 1 ms an op the one-call eigh beats any schedule
    busy = dataclasses.replace(base, overhead=1e-3)
    assert P.choose_method(**kw, rates=busy).method == "eigh"


def test_accelerator_policy_uses_half_precision_only_where_it_fits():
    # float16 (u = 4.9e-4) for the restarted phase at tol 1e-2; never at tol 1e-3, never on CPU
    kw = {"r": 256, "batch": 16, "dtype": torch.float32, "kappa2": 1e4}
    plan = P.choose_method(**kw, device_type="cuda", tol=1e-2)
    assert plan.restart > 0 and plan.phase2 == torch.float16
    for device, tol in [("cuda", 1e-3), ("cpu", 1e-2)]:
        plan = P.choose_method(**kw, device_type=device, tol=tol)
        assert plan.phase2 is None


def test_cost_model_pieces():
    # reference CPU rates: eigh at 5 + 1200/r GEMMs of its size (the AVX2 host's measurements,
    # docs/polar.md), within 30 %; a GEMM's time grows with its flops; passes with bytes
    rates = PC.reference_rates("cpu")
    c = PL.Costs(rates, 1, 256, 256.0)
    for r, measured in [(32, 51), (128, 14.5), (256, 10), (512, 8.2), (1024, 6.3)]:
        ratio = (rates.eigh(torch.float32, 1, r) - rates.overhead) / (
            rates.gemm(torch.float32, 1, r, r, r) - rates.overhead
        )
        assert abs(ratio / measured - 1) <= 0.3
    assert c.gemm(torch.float32, 256, 1024, 256) > 3 * (c.rr(torch.float32) - rates.overhead)
    assert c.gemm(torch.float64, 256, 256, 256) > 1.9 * (c.rr(torch.float32) - rates.overhead)
    assert c.passes(1, torch.float64) > c.passes(1, torch.float32)
    assert P.float32_gemm_roundoff("cpu") == unit_roundoff(torch.float32)
    # the poly cost model: first step with Y² given, middle and last steps of each degree
    assert [S._step_matmuls(d, True, False) for d in (1, 2, 4)] == [2, 3, 4]
    assert [S._step_matmuls(d, False, False) for d in (1, 2, 4)] == [3, 4, 5]
    assert [S._step_matmuls(d, False, True) for d in (1, 2, 4)] == [1, 2, 3]


def test_auto_follows_its_plan(gen):
    # poly and svd plans reuse the explicit methods' code path: identical results.
    small = torch.randn(64, 16, 8, generator=gen)
    eps_small = 0.1 * float(torch.linalg.matrix_norm(small, ord=2).max())
    assert P.plan_auto(small, eps_small, 1e-3).method == "poly"
    assert torch.equal(
        mf.regularized_polar(small, eps_small, tol=1e-3),
        mf.regularized_polar(small, eps_small, method="poly", tol=1e-3),
    )
    G = torch.randn(16, 8, generator=gen, dtype=torch.float64)
    assert P.plan_auto(G, 1e-9, 1e-6).method == "svd"
    assert torch.equal(
        mf.regularized_polar(G, 1e-9, tol=1e-6), mf.regularized_polar(G, 1e-9, method="svd")
    )


def test_relativistic_grad_routes_through_auto(gen):
    G = torch.randn(5, 12, 6, generator=gen)
    pot = mf.Relativistic(0.3)
    assert torch.equal(pot.grad(G, tol=1e-3), mf.regularized_polar(G, 0.3, tol=1e-3))
    assert torch.equal(
        pot.grad(G, method="poly", tol=1e-3), mf.regularized_polar(G, 0.3, method="poly", tol=1e-3)
    )


# -- mixed precision --------------------------------------------------------------------------
def test_step_dtypes_policy():
    sch = P.poly_schedule(1e-2, 5e-4, torch.float32)
    assert set(P.step_dtypes(sch, 1e-3, torch.float32, "cpu")) == {torch.float32}
    # tol = 1e-3 on a GPU: float16 (u = 4.9e-4) never fits ½u(hi/lo)² ≤ tol/(4K)
    assert set(P.step_dtypes(sch, 1e-3, torch.float32, "cuda")) == {torch.float32}
    loose = P.poly_schedule(1e-2, 2.5e-2, torch.float32)
    dts = P.step_dtypes(loose, 0.5, torch.float32, "cuda")
    assert dts[0] == torch.float32 and torch.float16 in dts  # early steps are the intolerant ones


def test_float16_steps_stay_within_their_bound(gen):
    # Run the GPU policy's float16 steps on CPU (slow there, but the rounding is the same).
    # First-order error budget: the schedule's err; per step k run with roundoff u_k,
    # ½u_k((hi_k/lo_k)² + amp_k) (its smallest eigenvalues perturbed relatively by
    # u_k (hi_k/lo_k)², its h by u_k amp_k); forming A in float32, ½u₃₂ L/ε²; the cast, u₃₂.
    tol = 0.5
    sch = P.poly_schedule(1e-2, 2.5e-2, torch.float32)
    dts = P.step_dtypes(sch, tol, torch.float32, "cuda")
    assert torch.float16 in dts
    G = spread_matrix((40, 16), gen, decades=2).float()
    eps = 1e-2
    A = (G.mT @ G + eps**2 * torch.eye(16)).unsqueeze(0)
    L = float(torch.linalg.matrix_norm(A @ A).sqrt()) * (1 + 1e-3)
    assert eps / math.sqrt(L) >= sch.rho  # the schedule covers the spectrum
    Q = P.gram_poly_inv_sqrt(A / L, sch, dtypes=dts)[0]
    out = G @ Q / math.sqrt(L)
    u32 = unit_roundoff(torch.float32)
    bound = sch.err + 0.5 * u32 * L / eps**2 + u32
    bound += sum(
        0.5 * unit_roundoff(dt) * ((s.hi / s.lo) ** 2 + s.amp)
        for s, dt in zip(sch.steps, dts, strict=True)
    )
    assert bound < 0.2
    assert rel_err(out, relativistic_map_ref(G, eps)) <= bound


# -- ε = 0: matmul-only polar factor ------------------------------------------------------
def test_polar_poly_full_rank(gen):
    # σ_min/σ_max = 1e-2 ≥ floor: every direction within tol/2 (schedule) + ½u₃₂/floor²·...
    # float32 is used only if ½u₃₂/floor² ≤ tol/2 (here 3e-2 > 5e-4, so float64).
    G = spread_matrix((50, 20), gen, decades=2)
    for dtype in (torch.float32, torch.float64):
        out = mf.polar_factor(G.to(dtype), method="poly", tol=1e-3)
        assert rel_err(out, polar_ref(G.to(dtype))) <= 1e-3 + unit_roundoff(dtype)
    assert torch.equal(
        mf.regularized_polar(G, 0.0, method="poly", tol=1e-3),
        mf.polar_factor(G, method="poly", tol=1e-3),
    )


def test_polar_poly_rank_deficient_and_zero(gen):
    G = spread_matrix((30, 10), gen, decades=1, rank=4)
    out = mf.polar_factor(G, method="poly", tol=1e-4)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    partial = U[:, :4] @ Vh[:4]
    assert rel_err(out, partial) <= 1e-4
    assert torch.equal(mf.polar_factor(torch.zeros(4, 3), method="poly"), torch.zeros(4, 3))
    G = spread_matrix((20, 10), gen, decades=8)
    S = torch.linalg.svdvals(mf.polar_factor(G, method="poly"))
    assert float(S.max()) <= 1 + 1e-6 and float(S.min()) >= 0  # below the floor: in [0, 1]


# -- validation ------------------------------------------------------------------------------------
def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown method 'qr'"):
        mf.polar_factor(torch.ones(2, 2), method="qr")
    with pytest.raises(ValueError, match="tol"):
        mf.regularized_polar(torch.ones(2, 2), 0.1, method="poly", tol=0.0)
    with pytest.raises(ValueError, match="rho"):
        P.poly_schedule(0.0, 1e-3)
    with pytest.raises(ValueError, match="k must be"):
        P.poly_schedule(0.1, 1e-3).truncated(0)


# -- restarted iteration: float32 beyond the Gram floor --------------------------------------------
@pytest.mark.parametrize("eps_rel", [3e-3, 1e-3])
def test_restart_keeps_float32_accurate_beyond_gram_floor(eps_rel, gen):
    # κ² = 1.1e5..1.1e6: the plain float32 Gram path's first-order error ½u₃₂κ² = 3.4e-3..3.4e-2
    # misses tol = 1e-3 (measured 4.9e-4..3.9e-3 on these spectra); the restarted iteration's
    # bound (restart_bound <= tol/2) is what lets "poly"/"auto" stay in float32. Six decades of
    # singular values put directions at every scale around ε.
    tol = 1e-3
    G = spread_matrix((3, 96, 48), gen).float()
    eps = eps_rel * op_norm(G)
    ref = relativistic_map_ref(G, eps)
    plan = P.plan_auto(G, eps, tol)
    assert (plan.method, plan.dtype) == ("poly", torch.float32) and plan.restart > 0
    for method in ("poly", "auto"):
        out = mf.regularized_polar(G, eps, method=method, tol=tol)
        assert out.dtype == torch.float32
        assert rel_err(out, ref) <= tol + unit_roundoff(torch.float32)


def test_restart_model_matches_plain_gram_floor_and_orders_restarts(gen):
    # restart_bound after all K steps is the plain path's model ½uκ² (same calibration; a
    # wrong divided difference or missing √y factor moves it by orders of magnitude), and an
    # early restart is what beats it.
    u = unit_roundoff(torch.float32)
    for kappa2 in (1e4, 1e5, 1e6):
        sch = P.poly_schedule(kappa2**-0.5, 5e-4, torch.float32)
        K = len(sch.steps)
        plain = PN.restart_bound(sch, K, u) - 2.5 * u  # minus the restarted phase's own terms
        assert 0.5 <= plain / (0.5 * u * kappa2) <= 2.0
        assert min(PN.restart_bound(sch, k, u) for k in range(1, K)) < plain / 4


def test_restart_error_within_its_bound(gen):
    # The measured error of each restart point is below its first-order bound (the model is
    # conservative: it takes ‖δY‖ = u in every pair of directions).
    G = spread_matrix((2, 64, 40), gen).float()
    eps = 1e-3 * op_norm(G)
    ref = relativistic_map_ref(G, eps)
    f0 = P.gram_front(G, eps, torch.float32)
    sch = P.poly_schedule(f0.rho, 2.5e-4, torch.float32)
    for k in range(1, len(sch.steps)):
        f = P.gram_front(G, eps, torch.float32)
        out = PN.poly_restart(f, sch, k, target=2.5e-4).reshape(G.shape)
        spec = float(torch.linalg.matrix_norm(out.double() - ref, ord=2).max())
        bound = PN.restart_bound(sch, k, unit_roundoff(torch.float32)) + sch.err
        assert spec <= bound


@pytest.mark.parametrize(
    ("low", "tol"), [(torch.float16, 1e-2), (torch.float16, 3e-2), (torch.bfloat16, 0.15)]
)
def test_half_precision_restarted_phase_on_cpu(low, tol, gen):
    # The accelerator path: float32 first phase, restarted phase in float16/bfloat16 where
    # the policy's bound fits (run here on CPU at a small size; the rounding is the same).
    G = spread_matrix((2, 64, 32), gen, decades=4).float()
    eps = 1e-2 * op_norm(G)
    ref = relativistic_map_ref(G, eps)
    f = P.gram_front(G, eps, torch.float32)
    rs = PL.best_restart(f.kappa2, tol, torch.float32, "cuda", phase2=low)
    assert rs is not None
    sch = P.poly_schedule(f.rho, tol / 2, torch.float32)
    out = PN.poly_restart(f, sch, rs[0], target=tol / 2, phase2=low).reshape(G.shape)
    assert out.dtype == torch.float32
    assert rel_err(out, ref) <= tol
    # bfloat16 (u = 3.9e-3) fits only Muon-like tolerances (>= 0.15); float16 not at 1e-3
    assert PL.best_restart(f.kappa2, 0.1, torch.float32, "cuda", torch.bfloat16) is None
    assert PL.best_restart(f.kappa2, 1e-3, torch.float32, "cuda", torch.float16) is None


@pytest.mark.parametrize("shape", [(40, 24), (24, 40), (3, 20, 20)])
@pytest.mark.parametrize("tol", [1e-2, 1e-3])
def test_error_per_singular_direction_float64(shape, tol, gen):
    # The contract per singular direction: |u_iᵀ Φ v_i / g(σ_i) − 1| <= tol (the schedule's
    # share tol/2, exactly, in float64 where ½u₆₄κ² <= 6e-9 here), and the off-diagonal part
    # of Uᵀ Φ V (directions mixed) is as small.
    G = spread_matrix(shape, gen, decades=4)
    eps = 1e-3 * op_norm(G)
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    g = S / torch.sqrt(S * S + eps * eps)
    for method in ("poly", "auto"):
        out = mf.regularized_polar(G, eps, method=method, tol=tol)
        C = U.mT @ out @ Vh.mT  # = diag(g) exactly
        diag = torch.diagonal(C, dim1=-2, dim2=-1)
        assert float(((diag - g).abs() / g).max()) <= tol / 2 + 1e-7
        off = C - torch.diag_embed(diag)
        assert float(off.abs().max()) <= 1e-7


def test_polar_is_the_package_and_its_call_the_deprecated_polar_factor():
    """``import muonflow.polar as p`` gives the package (the function no longer shadows it);
    calling ``muonflow.polar(G)`` still works for one release, with a DeprecationWarning."""
    import types

    import muonflow.polar as p

    assert isinstance(p, types.ModuleType) and p is mf.polar and p.regularized_polar
    G = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    with pytest.warns(DeprecationWarning, match="polar_factor"):
        old = mf.polar(G)
    assert torch.equal(old, mf.polar_factor(G))
