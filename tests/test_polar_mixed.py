"""The mixed-precision map: accuracy against a float64 SVD, its a-posteriori rounding estimate,
the float32 fallback, and when ``"auto"`` plans it.

Every test runs on any CPU: bfloat16 GEMMs are exact-to-bfloat16 wherever they run (slowly
where bfloat16 is emulated, so the shapes are small); where ``"auto"`` is concerned the rates
are pinned, so no plan depends on the host.
"""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import pytest
import torch
from reference import svd_spectral_map
from test_fast_polar import _CountMatmuls

import muonflow as mf

P = importlib.import_module("muonflow.polar")
PC = importlib.import_module("muonflow.polar.calibration")
PF = importlib.import_module("muonflow.polar.front")
PM = importlib.import_module("muonflow.polar.mixed")
PL = importlib.import_module("muonflow.polar.planning")
MAPS = importlib.import_module("muonflow.polar.maps")

U_BF16 = PF.unit_roundoff(torch.bfloat16)


def relative_eps(G: torch.Tensor, rel: float = 0.03) -> torch.Tensor:
    """RegMuon's relative ε per matrix: ``rel`` times the RMS singular value."""
    r = min(G.shape[-2:])
    return rel * torch.linalg.vector_norm(G.double(), dim=(-2, -1)).float() / r**0.5


def reference(G: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The exact map per matrix (float64 SVD), ε varying over the batch."""
    flat, e = G.reshape(-1, *G.shape[-2:]), eps.reshape(-1).double()
    outs = [
        svd_spectral_map(X, lambda s, e=e_b: s / torch.sqrt(s * s + e * e))
        for X, e_b in zip(flat, e, strict=True)
    ]
    return torch.stack(outs).reshape(G.shape)


def errors(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Relative Frobenius error per matrix."""
    d = (out.double() - ref).reshape(-1, *ref.shape[-2:])
    return torch.linalg.matrix_norm(d) / torch.linalg.matrix_norm(ref.reshape(d.shape))


def spectrum(kind: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """``gaussian``; ``spread``: singular values over four decades; ``lowrank``: a few
    singular values above ε and the rest far below it (the hard case for bfloat16)."""
    G = torch.randn(*shape, generator=gen, dtype=torch.float64)
    if kind != "gaussian":
        U, _, Vh = torch.linalg.svd(G, full_matrices=False)
        r = U.shape[-1]
        S = torch.logspace(0, -4, r, dtype=torch.float64)
        if kind == "lowrank":
            S = torch.arange(1, r + 1, dtype=torch.float64) ** -4.0
        G = (U * S) @ Vh
    return G.float()


CASES = [
    ("gaussian", (48, 24)),
    ("gaussian", (24, 48)),
    ("gaussian", (6, 32, 32)),
    ("gaussian", (300, 10, 6)),
    ("spread", (4, 40, 24)),
    ("lowrank", (4, 32, 32)),
]


@pytest.mark.parametrize(("kind", "shape"), CASES)
@pytest.mark.parametrize("tol", [0.0625, 0.2])
def test_mixed_meets_tol(kind, shape, tol, gen):
    # Error budget: the schedule's ≤ tol/2 (exact arithmetic) plus the rounding, which the
    # a-posteriori estimate keeps ≤ tol/2 (matrices it rejects are redone in float32).
    G = spectrum(kind, shape, gen)
    eps = relative_eps(G)
    out = mf.regularized_polar(G, eps, method="mixed", tol=tol)
    assert out.dtype == G.dtype and out.shape == G.shape
    assert float(errors(out, reference(G, eps)).max()) <= tol


def _rounding_alone(G: torch.Tensor, eps: torch.Tensor, tol: float):
    """``(estimate, measured)`` per matrix: bfloat16 minus the same plan run in float32."""
    f = PF.tighten(PF.gram_front(G, eps, torch.float32))
    plan = PM.mixed_plan(PL.poly_rho(f.kappa2), tol / 2, torch.bfloat16)
    out, est = PM.mixed_map(f, plan)
    f = PF.tighten(PF.gram_front(G, eps, torch.float32))
    exact, _ = PM.mixed_map(f, dataclasses.replace(plan, low=torch.float32))
    ref = reference(G, eps)
    d = (out.double() - exact.double()).reshape(-1, *G.shape[-2:])
    rnd = torch.linalg.matrix_norm(d) / torch.linalg.matrix_norm(ref.reshape(d.shape))
    return est.double(), rnd


def _estimate_is_sound(est: torch.Tensor, rnd: torch.Tensor) -> bool:
    """The estimate is the expected first-order error (a mean square); one matrix's rounding
    fluctuates around it, more for small matrices: per matrix within [0.5, 10]x, in the
    median at least 1x (measured 0.9-6x on the benchmark shapes, docs/polar.md)."""
    ratio = est / rnd
    return bool(ratio.min() >= 0.5 and ratio.max() <= 10 and ratio.median() >= 1.0)


@pytest.mark.parametrize(("kind", "shape"), [("gaussian", (16, 64, 32)), ("spread", (8, 48, 32))])
def test_rounding_estimate_tracks_the_rounding(kind, shape, gen):
    G = spectrum(kind, shape, gen)
    est, rnd = _rounding_alone(G, relative_eps(G), 0.1)
    assert _estimate_is_sound(est, rnd)
    assert float(rnd.max()) >= U_BF16  # there is bfloat16 rounding to estimate


@pytest.mark.parametrize("bug", ["no per-step term", "float32 roundoff", "20x too large"])
def test_rounding_estimate_check_catches(bug, gen, monkeypatch):
    # Planted bugs (kept as code): the estimate without its per-step terms, priced at
    # float32's roundoff, or 20x too large must fail the check above.
    real = PM.rounding_estimate
    if bug == "no per-step term":
        monkeypatch.setattr(PM, "ROUNDINGS_PER_STEP", 0)
    elif bug == "float32 roundoff":
        monkeypatch.setattr(
            PM, "rounding_estimate", lambda s, u, *a: real(s, PF.unit_roundoff(torch.float32), *a)
        )
    else:
        monkeypatch.setattr(PM, "rounding_estimate", lambda *a: 20 * real(*a))
    G = spectrum("gaussian", (16, 64, 32), gen)
    assert not _estimate_is_sound(*_rounding_alone(G, relative_eps(G), 0.1))


def test_estimate_rejections_are_recomputed_in_float32(gen, monkeypatch):
    # Matrices whose estimate exceeds tol/2 come from the float32 "auto" plan: corrupt two
    # results and flag them; the output must be the float32 map there and untouched elsewhere.
    G = spectrum("gaussian", (5, 24, 16), gen)
    eps = relative_eps(G)
    real = PM.mixed_map
    clean = {}

    def corrupted(front, plan):
        out, est = real(front, plan)
        clean["out"] = out.clone()
        out[[0, 3]] = 7.0
        est = est.clone()
        est[[0, 3]] = 1.0
        return out, est

    monkeypatch.setattr(MAPS, "mixed_map", corrupted)
    out = mf.regularized_polar(G, eps, method="mixed", tol=0.1)
    f32 = mf.regularized_polar(G[[0, 3]], eps[[0, 3]], method="auto", tol=0.1)
    assert torch.equal(out[[0, 3]], f32)
    keep = [1, 2, 4]
    assert torch.equal(out[keep], clean["out"][keep].reshape(out[keep].shape))


def test_mixed_plan_phases():
    # The float32 Gram phase stops at the first step whose interval satisfies (lo/hi)² ≥ 4u
    # (HIGH_MARGIN); its rounding (6u₃₂T_k) is small up to κ² = 1e5 (ε ≈ 0.003‖G‖); the
    # bfloat16 schedule reaches the target from there. At κ² = 1e6 the restart's rounding
    # exceeds tol/4 and the planner does not offer the mixed path.
    fast = dataclasses.replace(
        PC.reference_rates("cpu"),
        gemm_low=tuple((s, 16 * v) for s, v in PC.reference_rates("cpu").gemm32),
    )
    kw = {"r": 128, "batch": 48, "dtype": torch.float32, "device_type": "cpu", "rates": fast}
    assert PL.choose_method(**kw, tol=0.0625, kappa2=1e6).method != "mixed"
    assert PL.choose_method(**kw, tol=0.0625, kappa2=1e4).method == "mixed"
    for kappa2 in (30.0, 1e4, 1e5):
        for tol in (0.0625, 0.2):
            mp = PM.mixed_plan(PL.poly_rho(kappa2), tol / 2, torch.bfloat16)
            assert mp is not None
            assert (mp.lo / mp.hi) ** 2 >= PM.HIGH_MARGIN * U_BF16
            if mp.k:
                prev = mp.first.steps[mp.k - 1] if mp.k > 1 else None
                lo, hi = (prev.lo, prev.hi) if prev else (mp.first.rho, 1.0)
                assert (lo / hi) ** 2 < PM.HIGH_MARGIN * U_BF16
            assert mp.restart_error <= tol / 16
            assert mp.second.err <= tol / 2


def test_auto_plans_mixed_only_where_bfloat16_pays(gen):
    # Pinned rates: bfloat16 16x faster than float32 -> mixed at tol 0.1, not below 16u
    # (0.0625); bfloat16 slower, or not native (no table), -> never.
    G = spectrum("gaussian", (48, 128, 128), gen)
    eps = relative_eps(G)
    base = PC.reference_rates("cpu")
    fast = dataclasses.replace(base, gemm_low=tuple((s, 16 * v) for s, v in base.gemm32))
    slow = dataclasses.replace(base, gemm_low=tuple((s, v / 2) for s, v in base.gemm32))
    with P.use_rates(fast):
        plan = P.plan_auto(G, eps, 0.1)
        assert plan.method == "mixed" and plan.low == torch.bfloat16
        assert plan.cost_mixed < min(plan.cost_poly, plan.cost_eigh)
        assert P.plan_auto(G, eps, 0.05).method != "mixed"
        small = G[:2, :24, :16]
        assert torch.equal(
            mf.regularized_polar(small, eps[:2], tol=0.2),
            mf.regularized_polar(small, eps[:2], method="mixed", tol=0.2),
        ) == (P.plan_auto(small, eps[:2], 0.2).method == "mixed")
    for rates in (slow, base):
        with P.use_rates(rates):
            assert P.plan_auto(G, eps, 0.1).method != "mixed"


def test_mixed_on_float64_input_is_the_float64_path(gen):
    G = spectrum("gaussian", (3, 20, 12), gen).double()
    eps = relative_eps(G).double()
    assert torch.equal(
        mf.regularized_polar(G, eps, method="mixed", tol=0.1),
        mf.regularized_polar(G, eps, method="poly", tol=0.1),
    )


def test_mixed_is_differentiable(gen):
    # Autograd through both phases: the gradient of <W, map(G)> is close to the exact map's
    # (float64 SVD path); a detached phase or a dropped ε-block term breaks it.
    G = spectrum("spread", (3, 24, 16), gen).requires_grad_()
    W = torch.randn(3, 24, 16, generator=gen)
    eps = relative_eps(G.detach())
    (grad,) = torch.autograd.grad(
        (mf.regularized_polar(G, eps, method="mixed", tol=0.1) * W).sum(), G
    )
    G64 = G.detach().double().requires_grad_()
    out = mf.regularized_polar(G64, eps.double(), method="svd")
    (ref,) = torch.autograd.grad((out * W.double()).sum(), G64)
    rel = torch.linalg.vector_norm(grad.double() - ref) / torch.linalg.vector_norm(ref)
    assert torch.isfinite(grad).all() and float(rel) <= 0.3


@pytest.mark.parametrize("kappa_scale", [3.0, 1.0, 0.3])
def test_mixed_product_count_matches_the_cost_model(kappa_scale, gen):
    # The planner prices the mixed map by its product list (planning.Costs.mixed): the float32
    # phase's products (the front's A² given), XV, V², then per bfloat16 step the Gram matrix,
    # Q B Q (two, none at the first step), h (0-2) and X h, Q h (none at the first step).
    G = spectrum("spread", (3, 40, 24), gen)
    eps = relative_eps(G, 0.03 * kappa_scale)
    f = PF.tighten(PF.gram_front(G, eps, torch.float32))
    plan = PM.mixed_plan(PL.poly_rho(f.kappa2), 0.05, torch.bfloat16)
    first = P.PolySchedule(1.0, 1.0, plan.first.steps[: plan.k]).matmuls - 1 + 2 if plan.k else 0
    second = sum(2 + {1: 0, 2: 1, 4: 2}[s.degree] + (3 if j else 0)
                 for j, s in enumerate(plan.second.steps))  # fmt: skip
    with _CountMatmuls() as count:
        PM.mixed_map(f, plan)
    assert count.n == first + second


@pytest.mark.parametrize("tol", [0.0625, 0.1, 0.2])
def test_mixed_plan_skips_restarts_whose_rounding_covers_the_interval(tol):
    # Far from the polar factor (ρ down to 1e-4: heavy spectra, tiny ε) the float32 phase's
    # rounding cushion after one step can exceed the restarted interval itself (c >= 1). Bug
    # caught: the plan then had a negative lower end and `mixed_plan` raised ("rho must be a
    # finite number > 0"), so RegMuon's step at tol 0.1 failed wherever bfloat16 is native.
    for rho in np.geomspace(1e-4, 0.9, 60):
        mp = PM.mixed_plan(float(rho), tol / 2, torch.bfloat16)
        assert mp is None or 0 < mp.lo < mp.hi


def test_regmuon_at_its_defaults_steps_where_the_planner_prices_mixed(gen):
    # The step at the default tol with rates where bfloat16 is much faster (mixed is a
    # candidate for every matrix), on small matrices with ε far below their spectrum (ρ ~ 1e-4,
    # where torch's generic optimizer tests met it). Bug caught: the mixed plan's negative
    # interval above, reached only with bfloat16 rates (the suite prices with reference rates).
    base = PC.reference_rates("cpu")
    fast = dataclasses.replace(base, gemm_low=tuple((s, 16 * v) for s, v in base.gemm32))
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s)) for s in ((10, 5), (5, 10), (3, 3), (64, 16))]
    opt = mf.RegMuon([(f"w{i}", p) for i, p in enumerate(ps)], adamw=(), eps=1e-4,
                     eps_mode="absolute")  # fmt: skip
    assert opt.param_groups[0]["tol"] == mf.optim.DEFAULTS.tol >= 0.0625  # mixed is offered
    with P.use_rates(fast):
        for _ in range(3):
            for p in ps:
                p.grad = torch.randn_like(p)
            opt.step()
    assert all(torch.isfinite(p).all() for p in ps)
