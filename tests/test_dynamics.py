"""Damped Hamiltonian dynamics: energy ledger, integrator orders, rates, speed limit, errors.

Every tolerance is derived in a comment next to it: from the unit roundoff ``u`` and the
number of accumulated operations (round-off checks), from the solver tolerance (reference
checks), from the step size and the scheme's order (discretization checks), or from the
first neglected term of an asymptotic expansion (rate checks).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import unit_roundoff
from reference import relativistic_map_ref, svd_spectral_map
from scipy.integrate import solve_ivp

import muonflow as mf
from muonflow.dynamics import (
    INTEGRATORS,
    FunctionObjective,
    HamiltonianFlow,
    NonFiniteStateError,
    Objective,
    integrate,
    muon_energy_step_bound,
)

F64 = torch.float64
U64 = unit_roundoff(F64)
FIXED = ["muon", "hamiltonian_descent", "conformal_leapfrog", "euler", "rk4"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The matrices here are tiny: one thread avoids oversubscription on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- problems ----------------------------------------------------------------------------------
def spd(eigs: list[float], gen: torch.Generator) -> torch.Tensor:
    """A random symmetric matrix with the given eigenvalues."""
    m = len(eigs)
    Q, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=F64))
    return Q @ torch.diag(torch.tensor(eigs, dtype=F64)) @ Q.T


def quadratic(A: torch.Tensor, W_star: torch.Tensor | None = None):
    """``J(W) = ½⟨W − W*, A(W − W*)⟩`` with ``A`` acting on the left."""

    def f(W: torch.Tensor) -> torch.Tensor:
        D = W if W_star is None else W - W_star
        return 0.5 * (D * (A @ D)).sum()

    return f


def logistic(gen: torch.Generator):
    """Softmax cross-entropy of a linear model ``X W`` on 32 points, 4 features, 3 classes.

    Its Hessian is at most ``‖X‖₂²/(2·32)`` (the cross-entropy Hessian in the logits is ≤ ½ I).
    """
    X = torch.randn(32, 4, generator=gen, dtype=F64)
    labels = torch.randint(0, 3, (32,), generator=gen)

    def f(W: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(X @ W, labels)

    L = torch.linalg.matrix_norm(X, 2).item() ** 2 / (2 * 32)
    return f, L


def nonconvex(gen: torch.Generator):
    """``J(W) = ¼‖W Wᵀ − M‖_F²`` (matrix factorization; nonconvex)."""
    B = torch.randn(4, 2, generator=gen, dtype=F64)
    M = B @ B.T

    def f(W: torch.Tensor) -> torch.Tensor:
        return 0.25 * (W @ W.T - M).square().sum()

    return f


def objective(name: str, gen: torch.Generator):
    if name == "quadratic":
        return quadratic(
            spd([0.5, 1.0, 2.0, 3.0], gen), torch.randn(4, 3, generator=gen, dtype=F64)
        )
    if name == "logistic":
        return logistic(gen)[0]
    return nonconvex(gen)


def kinetic(name: str, eps: float) -> mf.SpectralPotential:
    return mf.Relativistic(eps) if name == "relativistic" else mf.Huber(eps)


def fit_order(hs: list[float], errs: list[float]) -> float:
    """Least-squares slope of ``log err`` against ``log h``."""
    return float(np.polyfit(np.log(hs), np.log(errs), 1)[0])


def energy_roundoff(W: torch.Tensor, P: torch.Tensor, A: torch.Tensor) -> float:
    """Bound on the float64 evaluation error of ``H = ½⟨W, AW⟩ + K(P)`` at one state.

    ``J``: each entry of ``AW`` is a length-``m`` dot product and the result sums ``mn`` products,
    so ``|δJ| <= (m + mn) u · ½ Σ |W| (|A||W|)`` (standard summation bounds). ``K``: a backward
    stable SVD perturbs each singular value by at most ``c u ‖P‖₂`` with ``c`` a small multiple
    of ``max(m, n)`` (take ``8 max(m, n)``); ``k`` is 1-Lipschitz for relativistic and Huber, and
    the ``r`` terms are summed: ``|δK| <= r (8 max(m, n) u ‖P‖₂) + r u K``.
    """
    m, n = W.shape[-2:]
    r = min(m, n)
    J_abs = 0.5 * (W.abs() * (A.abs() @ W.abs())).sum().item()
    P2 = torch.linalg.matrix_norm(P, 2).item()
    K = torch.linalg.svdvals(P).sum().item()
    return (m + m * n) * U64 * J_abs + r * 8 * max(m, n) * U64 * P2 + r * U64 * K


# -- registry and API --------------------------------------------------------------------------
def test_registry_declares_orders():
    assert {k: v.order for k, v in INTEGRATORS.items()} == {
        "reference": 8,
        "muon": 1,
        "hamiltonian_descent": 1,
        "conformal_leapfrog": 2,
        "euler": 1,
        "rk4": 4,
    }
    assert [k for k, v in INTEGRATORS.items() if v.adaptive] == ["reference"]
    assert isinstance(FunctionObjective(lambda W: W.sum()), Objective)


def test_flow_methods_are_consistent(gen):
    """``dH/dt`` along the vector field equals ``−power`` (checked by autograd at one state).

    ``d/ds H(W + sẆ, P + sṖ)|₀`` is computed exactly up to round-off: terms of size ``|H|`` and
    ``‖∇H‖‖(Ẇ, Ṗ)‖`` each carry ``O(10 mn u)`` relative error; ``1e-12`` relative is 30x that.
    """
    f = nonconvex(gen)
    flow = HamiltonianFlow(f, mf.Relativistic(0.7), gamma=0.8)
    W = torch.randn(4, 3, generator=gen, dtype=F64)
    P = torch.randn(4, 3, generator=gen, dtype=F64)
    dW, dP = flow.vector_field(W, P)
    torch.testing.assert_close(dW, relativistic_map_ref(P, 0.7), rtol=0, atol=64 * U64)
    Wr = W.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(Wr), Wr)
    assert torch.equal(flow.force(W), -grad)  # one backward pass of the same graph
    # dP = F − γP rounds once per entry: |error| <= u (|F| + γ|P|) per entry, then + γP again.
    bound = 4 * U64 * (grad.abs().max() + 0.8 * P.abs().max()).item()
    torch.testing.assert_close(dP + 0.8 * P, -grad, rtol=0, atol=bound)
    s = torch.zeros((), dtype=F64, requires_grad=True)
    H = f(W + s * dW) + mf.Relativistic(0.7).energy(P + s * dP)
    (dHds,) = torch.autograd.grad(H, s)
    power = flow.power(W, P)
    assert power.item() > 0.1  # a non-trivial dissipation rate
    assert abs(dHds.item() + power.item()) <= 1e-12 * (abs(H.item()) + power.item())
    assert flow.hamiltonian(W, P).item() == pytest.approx(H.item(), rel=16 * U64 * 12)
    assert flow.kinetic_weight(W) == 1.0


# -- the dissipation identity with the reference solver ----------------------------------------
@pytest.mark.parametrize("pot", ["relativistic", "huber"])
@pytest.mark.parametrize("obj", ["quadratic", "logistic", "nonconvex"])
def test_reference_dissipation_identity(obj, pot, gen):
    """``H(t) − H(0) + γ∫⟨P, ∇K(P)⟩ = 0`` along DOP853 at rtol 1e-12.

    The reference integrates ``D = γ∫⟨P,∇K⟩`` as a state component; its local errors are
    controlled at ``rtol ≈ 1e-12`` relative to the state and ``D``, and over the few hundred steps
    here the global error stays within a few hundred ``rtol`` of the energy scale: the issue's
    bound ``1e-9 (1 + |H(0)|)`` leaves that margin. The motion is far from trivial (over half of
    ``H(0)`` is dissipated), so a missing or mis-scaled dissipation term fails by ~0.1·H(0).
    """
    f = objective(obj, gen)
    K = kinetic(pot, 0.5)
    W0 = torch.randn(4, 3, generator=gen, dtype=F64)
    P0 = 2 * torch.randn(4, 3, generator=gen, dtype=F64)
    traj = integrate(HamiltonianFlow(f, K, 0.5), W0, P0, 3.0, record_states=True)
    H0 = traj.H[0].item()
    assert traj.residual().abs().max().item() <= 1e-9 * (1 + abs(H0))
    assert traj.dissipated[-1].item() >= 0.5 * H0 > 0
    assert bool((traj.dissipated.diff() >= 0).all())  # γ⟨P, ∇K(P)⟩ >= 0
    if pot == "huber":  # the trajectory crosses the kink σ = ε of k'
        sig = torch.linalg.svdvals(traj.Ps)
        assert sig.max().item() > 0.5 > sig.min().item()


@pytest.mark.parametrize("pot", ["relativistic", "huber"])
def test_reference_conserves_energy_without_damping(pot, gen):
    """γ = 0: H is constant (same 1e-9 (1+|H0|) budget) while J varies by a lot."""
    f = nonconvex(gen)
    W0 = torch.randn(4, 3, generator=gen, dtype=F64)
    P0 = torch.randn(4, 3, generator=gen, dtype=F64)
    traj = integrate(HamiltonianFlow(f, kinetic(pot, 0.5), 0.0), W0, P0, 2.0)
    H0 = traj.H[0].item()
    assert (traj.H - H0).abs().max().item() <= 1e-9 * (1 + abs(H0))
    assert bool((traj.dissipated == 0).all())
    assert (traj.J.max() - traj.J.min()).item() > 0.1 * abs(H0)


# -- orders ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", FIXED)
def test_convergence_order_and_ledger_order(method, gen):
    """Global error at t = 1 and the ledger residual both shrink like ``h^order`` (fit ± 0.2).

    Problem: logistic loss (Hessian ≤ L ≈ 1), relativistic ε = 0.5 (∇K is 1/ε-Lipschitz), so the
    linearized frequency is ω <= √(L/ε) ≈ 1.4 and the sweeps keep hω <= 0.14 (rk4) or 0.06:
    the leading error term dominates (the next one is O(hω) relative). The reference (rtol 1e-13)
    is ~1e-12 accurate, below the smallest error fitted (~1e-10 for rk4 at h = 1/80).
    The ledger quadratures are the schemes' own (module docs), so the residual
    ``H − H(0) + dissipated`` must shrink at the same order — not vanish.
    """
    f, L = logistic(gen)
    eps = 0.5
    assert math.sqrt(L / eps) < 1.5
    flow = HamiltonianFlow(f, mf.Relativistic(eps), 0.7)
    W0 = torch.randn(4, 3, generator=gen, dtype=F64)
    P0 = torch.randn(4, 3, generator=gen, dtype=F64)
    ref = integrate(flow, W0, P0, 1.0, rtol=1e-13)
    hs = [0.1, 0.05, 0.025, 0.0125] if method == "rk4" else [0.04, 0.02, 0.01, 0.005]
    errs, residuals = [], []
    for h in hs:
        traj = integrate(flow, W0, P0, 1.0, h=h, method=method)
        assert len(traj) == round(1.0 / h) + 1
        errs.append(
            torch.cat([(traj.W - ref.W).flatten(), (traj.P - ref.P).flatten()]).norm().item()
        )
        residuals.append(abs(traj.residual()[-1].item()))
    order = INTEGRATORS[method].order
    assert abs(fit_order(hs, errs) - order) <= 0.2, errs
    assert abs(fit_order(hs, residuals) - order) <= 0.2, residuals


# -- the muon scheme: exact arithmetic, exact discrete ledger, energy decrease -----------------
def test_muon_scheme_is_muon_with_sum_momentum(gen):
    """Iterates equal Muon ``M ← βM + g; W ← W − η∇K_{ε/h}(M)`` with η = h, β = 1 − γh, P = −hM.

    The two paths round differently by a few ``u`` per step; the map is 1/ε-Lipschitz and ∇J is
    L-Lipschitz, so differences grow at most by ``(1 + h√(L/ε))`` per step: over ``N = 40``
    steps with ``h√(L/ε) <= 0.05`` that is ``e² < 8``. Bound: ``8 · 8 N u (1 + max|W|, |P|)``.
    """
    f, _ = logistic(gen)
    eps, gamma, h, N = 0.5, 0.9, 0.05, 40
    W0 = torch.randn(4, 3, generator=gen, dtype=F64)
    traj = integrate(
        HamiltonianFlow(f, mf.Relativistic(eps), gamma),
        W0,
        torch.zeros_like(W0),
        N * h,
        h=h,
        method="muon",
        record_states=True,
    )
    W, M = W0.clone(), torch.zeros_like(W0)
    beta, eps_opt = 1 - gamma * h, eps / h
    scale = 1 + max(traj.Ws.abs().max().item(), traj.Ps.abs().max().item())
    for k in range(N):
        Wr = W.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f(Wr), Wr)
        M = beta * M + g
        W = W - h * mf.regularized_polar(M, eps_opt)
        torch.testing.assert_close(traj.Ws[k + 1], W, rtol=0, atol=64 * 8 * N * U64 * scale)
        torch.testing.assert_close(traj.Ps[k + 1], -h * M, rtol=0, atol=64 * 8 * N * U64 * scale)


@pytest.mark.parametrize("pot", ["relativistic", "huber"])
def test_muon_exact_discrete_ledger(pot, gen):
    """``H_k − H_0 + dissipated_k = Σ_j [D_J(W_{j+1}, W_j) − D_K(P_j, P_{j+1})]`` to round-off.

    The right side is recomputed here from the recorded states with an SVD reference map
    and autograd gradients. Each step's six terms (two energies, two Bregman inner products)
    carry ``<= 4 mn u`` relative error of the energy scale ``S = 1 + max|H|``; summed over ``N``
    steps: ``24 mn N u S``. The residual itself is O(h) (~1e-3 here), 1e9x that bound, so a
    ledger using any other quadrature (e.g. ``⟨P', ∇K(P')⟩``) fails.
    """
    f, _ = logistic(gen)
    eps, gamma, h, N = 0.5, 0.8, 0.05, 40
    K = kinetic(pot, eps)
    W0 = torch.randn(4, 3, generator=gen, dtype=F64)
    P0 = 2 * torch.randn(4, 3, generator=gen, dtype=F64)
    traj = integrate(
        HamiltonianFlow(f, K, gamma), W0, P0, N * h, h=h, method="muon", record_states=True
    )

    def grad_f(W):
        Wr = W.clone().requires_grad_(True)
        return torch.autograd.grad(f(Wr), Wr)[0]

    Ws, Ps = traj.Ws, traj.Ps
    tol = 24 * 12 * N * U64 * (1 + traj.H.abs().max().item())
    total, expected = 0.0, [0.0]
    for k in range(N):
        V1 = (Ws[k + 1] - Ws[k]) / h  # = ∇K(P_{k+1}) up to round-off; checked next
        if pot == "relativistic":
            ref_map = relativistic_map_ref(Ps[k + 1], eps)
        else:  # Huber: k'(σ) = min(σ/ε, 1)
            ref_map = svd_spectral_map(Ps[k + 1], lambda sig: torch.clamp(sig / eps, max=1))
        torch.testing.assert_close(V1, ref_map, rtol=0, atol=1e-12)
        D_J = f(Ws[k + 1]) - f(Ws[k]) - (grad_f(Ws[k]) * (Ws[k + 1] - Ws[k])).sum()
        D_K = K.energy(Ps[k]) - K.energy(Ps[k + 1]) - (ref_map * (Ps[k] - Ps[k + 1])).sum()
        assert D_K.item() >= -tol / N  # a Bregman divergence of a convex K is >= 0
        total += (D_J - D_K).item()
        expected.append(total)
    res = traj.residual()
    assert abs(res[-1].item()) > 1e-4  # O(h): the scheme's ledger is not exact per se
    torch.testing.assert_close(res, torch.tensor(expected, dtype=F64), rtol=0, atol=tol)


def adversarial_step(pot: str, h: float, eps: float, gamma: float, A: torch.Tensor, delta: float):
    """The state maximizing ``H_{k+1} − H_k`` for a given new velocity ``V' = δ q vᵀ``.

    ``q`` the top eigenvector of ``A``, ``c = 1 − γh``. Fenchel–Young is tight at
    ``P = ∇K*(cV')``; ``P' = ∇K*(V')`` and ``W = −A⁻¹(P' − cP)/h`` make the muon step produce
    exactly that ``V'``. Returns ``(W, P, predicted ΔH)`` with
    ``ΔH = K*(cV') − K*(V') + (h²/2)⟨V', AV'⟩``.
    """
    K = kinetic(pot, eps)
    _, Q = torch.linalg.eigh(A)
    V1 = delta * torch.outer(Q[:, -1], torch.tensor([0.6, 0.8], dtype=F64))
    c = 1 - gamma * h
    P = K.conjugate_grad(c * V1)
    P1 = K.conjugate_grad(V1)
    W = -torch.linalg.solve(A, P1 - c * P) / h
    dH = K.conjugate(c * V1) - K.conjugate(V1) + 0.5 * h * h * (V1 * (A @ V1)).sum()
    return W, P, dH.item()


@pytest.mark.parametrize("pot", ["relativistic", "huber"])
def test_muon_energy_nonincreasing_below_step_bound(pot, gen):
    """At ``h = 0.99 h_max``, ``h_max = 2γε/(L + γ²ε)``, H never increases (module-doc proof).

    From random states in both regimes (‖P‖ ≫ ε, the constant-speed phase, and ‖P‖ ≪ ε) and
    from the worst-case state of :func:`adversarial_step`. Each increment is compared with the
    round-off of evaluating the two energies (:func:`energy_roundoff`).
    """
    eps, gamma = 0.5, 0.6
    A = spd([0.3, 1.0, 4.0], gen)
    L = 4.0
    h = 0.99 * muon_energy_step_bound(L, eps, gamma)
    assert h == pytest.approx(0.99 * 2 * gamma * eps / (L + gamma**2 * eps))
    flow = HamiltonianFlow(quadratic(A), kinetic(pot, eps), gamma)
    n_up = 0
    for scale_P in (10.0, 0.01):
        W0 = torch.randn(3, 2, generator=gen, dtype=F64)
        P0 = scale_P * torch.randn(3, 2, generator=gen, dtype=F64)
        traj = integrate(flow, W0, P0, 150 * h, h=h, method="muon", record_states=True)
        assert len(traj) == 151
        for k in range(150):
            tol = energy_roundoff(traj.Ws[k], traj.Ps[k], A) + energy_roundoff(
                traj.Ws[k + 1], traj.Ps[k + 1], A
            )
            n_up += int((traj.H[k + 1] - traj.H[k]).item() > tol)
        assert traj.H[-1].item() < 0.5 * traj.H[0].item()  # it does dissipate
    assert n_up == 0
    W, P, dH_pred = adversarial_step(pot, h, eps, gamma, A, delta=0.05)
    step = integrate(flow, W, P, h, h=h, method="muon", record_states=True)
    dH = (step.H[1] - step.H[0]).item()
    tol = energy_roundoff(W, P, A) + energy_roundoff(step.Ws[1], step.Ps[1], A)
    assert dH_pred <= 0
    assert abs(dH - dH_pred) <= tol + 64 * U64 * step.H[0].abs().item()
    assert dH <= tol


@pytest.mark.parametrize("pot", ["relativistic", "huber"])
def test_muon_step_bound_is_sharp(pot, gen):
    """Above the bound (``h = 1.25 h_max``) the worst-case state of the derivation gains energy.

    Its increment matches the closed form ``K*(cV') − K*(V') + (h²/2)⟨V', AV'⟩`` (the Fenchel–
    Young equality case) to round-off, and is positive by ~1e-5, far above round-off (~1e-16).
    """
    eps, gamma = 0.5, 0.6
    A = spd([0.3, 1.0, 4.0], gen)
    h = 1.25 * muon_energy_step_bound(4.0, eps, gamma)
    flow = HamiltonianFlow(quadratic(A), kinetic(pot, eps), gamma)
    W, P, dH_pred = adversarial_step(pot, h, eps, gamma, A, delta=0.05)
    step = integrate(flow, W, P, h, h=h, method="muon", record_states=True)
    dH = (step.H[1] - step.H[0]).item()
    tol = energy_roundoff(W, P, A) + energy_roundoff(step.Ws[1], step.Ps[1], A)
    assert abs(dH - dH_pred) <= tol + 64 * U64 * step.H[0].abs().item()
    assert dH > 1e6 * tol


def test_explicit_euler_gains_energy_at_the_muon_bound(gen):
    """From P = 0 the first Euler step adds exactly ``K(hF(W))`` > 0 (W does not move), at the
    very step size where the muon scheme provably cannot increase H."""
    eps, gamma = 0.5, 0.6
    A = spd([0.3, 1.0, 4.0], gen)
    h = 0.99 * muon_energy_step_bound(4.0, eps, gamma)
    K = mf.Relativistic(eps)
    flow = HamiltonianFlow(quadratic(A), K, gamma)
    W0 = torch.randn(3, 2, generator=gen, dtype=F64)
    P0 = torch.zeros(3, 2, dtype=F64)
    euler = integrate(flow, W0, P0, 20 * h, h=h, method="euler")
    muon = integrate(flow, W0, P0, 20 * h, h=h, method="muon")
    gain = K.energy(h * (-A @ W0)).item()
    tol = 2 * energy_roundoff(W0, h * A @ W0, A)
    assert gain > 1e6 * tol
    assert abs((euler.H[1] - euler.H[0]).item() - gain) <= tol
    assert (muon.H.diff() <= tol).all()
    assert (euler.H.diff() > tol).sum().item() >= 1


# -- linearized rates --------------------------------------------------------------------------
def predicted_rate(a: list[float], eps: float, gamma: float) -> float:
    """``2 max_j Re λ_j``, ``λ = (−γ + √(γ² − 4a_j/ε))/2`` (docs/theory.md §4)."""
    lam = [(-gamma + complex(gamma * gamma - 4 * aj / eps) ** 0.5) / 2 for aj in a]
    return 2 * max(x.real for x in lam)


def muon_map_rate(a: list[float], eps: float, gamma: float, h: float) -> float:
    """``2 ln ρ / h``, ρ the spectral radius of the linearized muon step over all modes:
    ``p' = (1−γh)p − h a w``, ``w' = w + (h/ε) p'``."""
    rho = 0.0
    for aj in a:
        M = np.array([[1 - h * h * aj / eps, h * (1 - gamma * h) / eps], [-h * aj, 1 - gamma * h]])
        rho = max(rho, float(np.abs(np.linalg.eigvals(M)).max()))
    return 2 * math.log(rho) / h


def fitted_rate(traj, t0: float) -> float:
    sel = traj.t >= t0
    return float(np.polyfit(traj.t[sel].numpy(), np.log(traj.H[sel].numpy()), 1)[0])


RATE_CASES = {
    # regime: (γ, eigenvalues of A, t_end, fit from); ε = 1 (4a/ε vs γ² decides the regime)
    "underdamped": (0.5, [1.0, 2.0, 4.0], 40.0, 15.0),
    "overdamped": (6.0, [1.0, 2.0, 4.0], 60.0, 30.0),
}


@pytest.mark.parametrize("regime", list(RATE_CASES))
def test_linearized_decay_rate_of_the_flow(regime, gen):
    """H decays like ``exp(2 max Re λ t)`` (within 2%).

    Near equilibrium ∇K(P) = P/ε (1 − O(σ²/ε²)); starting at ‖W‖ ~ 0.3 the nonlinear term decays
    with H and is < 1e-5 relative in the fit window. Sources of error in the fitted slope:
    under-damped modes make log H oscillate with bounded amplitude (< 0.5 here), whose least
    squares slope bias is ≲ amplitude/(ω T²)·12 ≈ 1e-3 over a window T = 25; the over-damped
    fast modes are down by e^{(λ₂−λ₁)t} < 1e-2 at the window start. The solver (rtol 1e-9,
    tiny atol: the state spans 10 decades) adds < 1e-6. 2% covers all of it with margin.
    """
    gamma, a, t_end, t0 = RATE_CASES[regime]
    eps = 1.0
    flow = HamiltonianFlow(quadratic(spd(a, gen)), mf.Relativistic(eps), gamma)
    W0 = 0.3 * torch.randn(3, 2, generator=gen, dtype=F64)
    traj = integrate(flow, W0, torch.zeros_like(W0), t_end, h=0.1, rtol=1e-9, atol=1e-30)
    pred = predicted_rate(a, eps, gamma)
    meas = fitted_rate(traj, t0)
    assert abs(meas - pred) <= 0.02 * abs(pred), (meas, pred)
    if regime == "underdamped":
        assert pred == pytest.approx(-gamma)  # every mode: Re λ = −γ/2


@pytest.mark.parametrize(
    ("regime", "h"), [("underdamped", 0.2), ("underdamped", 0.4), ("overdamped", 0.1)]
)
def test_linearized_decay_rate_of_muon_scheme(regime, h, gen):
    """The muon scheme's H decays like ``ρ^{2k}``, ρ the spectral radius of the linearized step
    (within 2%; same error budget as the flow's test, without solver error). Under damping the
    discrete rate differs from the flow's by > 5%, so the check tells the two apart."""
    gamma, a, t_end, t0 = RATE_CASES[regime]
    eps = 1.0
    flow = HamiltonianFlow(quadratic(spd(a, gen)), mf.Relativistic(eps), gamma)
    W0 = 0.3 * torch.randn(3, 2, generator=gen, dtype=F64)
    traj = integrate(flow, W0, torch.zeros_like(W0), t_end, h=h, method="muon")
    pred = muon_map_rate(a, eps, gamma, h)
    meas = fitted_rate(traj, t0)
    assert abs(meas - pred) <= 0.02 * abs(pred), (meas, pred)
    if regime == "underdamped":
        assert abs(pred - predicted_rate(a, eps, gamma)) > 0.05 * abs(pred)


# -- speed limit, scalar reduction, sublinear decay --------------------------------------------
def test_speed_limit_relativistic(gen):
    """``‖Ẇ‖_op < 1`` along the flow and the muon iterates, and it gets close to 1 (‖P‖ ≫ ε).

    ``σ/√(σ²+ε²) = 1 − ε²/(2σ²) + …``: with σ(P0)/ε ≳ 100 the speed is within 1e-4 of 1, far
    above the round-off of ``(W_{k+1} − W_k)/h`` (``~u max|W|/h ≈ 1e-14``). Huber's speed would
    reach exactly 1 and fail this test.
    """
    eps = 0.05
    f = nonconvex(gen)
    flow = HamiltonianFlow(f, mf.Relativistic(eps), 0.5)
    W0 = torch.randn(4, 3, generator=gen, dtype=F64)
    P0 = 10 * torch.randn(4, 3, generator=gen, dtype=F64)
    ref = integrate(flow, W0, P0, 2.0, h=0.05, record_states=True)
    speed = torch.linalg.matrix_norm(flow.velocity(ref.Ps), 2)
    assert speed.max().item() < 1
    assert speed.max().item() > 1 - 1e-3
    h = 0.01
    muon = integrate(flow, W0, P0, 2.0, h=h, method="muon", record_states=True)
    step_speed = torch.linalg.matrix_norm(muon.Ws.diff(dim=0) / h, 2)
    assert step_speed.max().item() < 1
    assert step_speed.max().item() > 1 - 1e-3


def test_one_by_one_matrices_are_the_scalar_dynamics(gen):
    """A batch of 1×1 matrices follows ``ẇ = p/√(p²+ε²)``, ``ṗ = −φ'(w) − γp`` (double well φ).

    Against SciPy DOP853 on the scalar system (both at rtol 1e-12, errors ~1e-11): 1e-9. The
    muon scheme against the scalar recurrence: identical arithmetic up to a few ``u`` per step,
    amplified by at most ``e^{t√(L/ε)}`` (< e⁴ here): ``64 · 8 N u`` relative.
    """
    eps, gamma, T = 0.3, 0.4, 3.0
    w0 = torch.randn(5, generator=gen, dtype=F64)
    p0 = torch.randn(5, generator=gen, dtype=F64)

    def f(W):  # Σ_b φ(w_b), φ(w) = w⁴/4 − w²/2
        return (W.pow(4) / 4 - W.square() / 2).sum()

    flow = HamiltonianFlow(f, mf.Relativistic(eps), gamma)
    traj = integrate(flow, w0.reshape(5, 1, 1), p0.reshape(5, 1, 1), T)

    def rhs(t, y):
        w, p = y[:5], y[5:]
        return np.concatenate([p / np.sqrt(p * p + eps * eps), -(w**3 - w) - gamma * p])

    sol = solve_ivp(
        rhs,
        (0, T),
        np.concatenate([w0.numpy(), p0.numpy()]),
        method="DOP853",
        rtol=1e-12,
        atol=1e-12,
    )
    scalar = torch.from_numpy(sol.y[:, -1])
    torch.testing.assert_close(traj.W.reshape(5), scalar[:5], rtol=0, atol=1e-9)
    torch.testing.assert_close(traj.P.reshape(5), scalar[5:], rtol=0, atol=1e-9)

    h, N = 0.01, 300
    muon = integrate(flow, w0.reshape(5, 1, 1), p0.reshape(5, 1, 1), N * h, h=h, method="muon")
    w, p = w0.numpy().copy(), p0.numpy().copy()
    for _ in range(N):
        p = (1 - gamma * h) * p + h * (-(w**3 - w))
        w = w + h * p / np.sqrt(p * p + eps * eps)
    tol = 64 * 8 * N * U64 * (1 + np.abs(w).max())
    torch.testing.assert_close(muon.W.reshape(5), torch.from_numpy(w), rtol=0, atol=tol)
    torch.testing.assert_close(muon.P.reshape(5), torch.from_numpy(p), rtol=0, atol=tol)


def test_quartic_objective_decays_sublinearly(gen):
    """``f = ‖W‖_F⁴`` (no gradient dominance at 0): ``u = 1/‖W‖_F²`` grows linearly, so ``H ~ t⁻²``.

    Late, friction dominates and P ≪ ε, so ``ε Ẅ + γε Ẇ + 4‖W‖² W = 0``, W radial. With
    ``u = 1/‖W‖²``: ``u̇ = α + (3/(2γ)) u̇²/u − ü/γ``, ``α = 8/(γε)``, whose expansion is
    ``u = αt + β ln t + C + a/t + b (ln t + 1)/t + …`` with ``β = 3α/(2γ)``, ``b = 3β/(2γ)``,
    ``a = −(3/(2γ))(2β − C) − β/γ``. ``C`` depends on the start; it is solved from ``u(T)``, and
    the expansion then predicts ``u(T/2)``. Checks: the prediction's error is below a quarter of
    the last term kept (``|Δ(a/t + b(ln t+1)/t)|``), i.e. the series is asymptotic as derived;
    and the leading law alone is within 1% — an exponential decay would miss by orders.
    """
    gamma, eps, T = 2.0, 0.5, 200.0
    alpha = 8 / (gamma * eps)
    beta = 3 * alpha / (2 * gamma)
    b = 3 * beta / (2 * gamma)

    def tail(t: float, C: float) -> float:
        a = -(3 / (2 * gamma)) * (2 * beta - C) - beta / gamma
        return a / t + b * (math.log(t) + 1) / t

    flow = HamiltonianFlow(lambda W: W.square().sum().square(), mf.Relativistic(eps), gamma)
    W0 = 0.3 * torch.randn(3, 2, generator=gen, dtype=F64)
    traj = integrate(
        flow, W0, torch.zeros_like(W0), T, h=T / 2, rtol=1e-9, atol=1e-16, record_states=True
    )
    u = (1 / traj.Ws.square().sum((-2, -1))).tolist()  # at t = 0, T/2, T
    C = u[2] - alpha * T - beta * math.log(T)
    C -= tail(T, C)  # one fixed-point pass: the tail is a small correction
    lead = alpha * T / 2 + beta * math.log(T / 2) + C
    full = lead + tail(T / 2, C)
    assert abs(full - u[1]) <= 0.25 * abs(tail(T / 2, C) - tail(T, C))
    assert abs(lead - u[1]) <= 0.01 * u[1]
    # H ≈ f = u⁻² ≈ (αt)⁻²: decays by ~4 (not e^{rate·T/2}) from T/2 to T.
    assert traj.H[1].item() / traj.H[2].item() == pytest.approx((u[2] / u[1]) ** 2, rel=0.05)


# -- blocks and protocol objectives ------------------------------------------------------------
def test_block_states_with_their_own_potentials(gen):
    """Tuple states: K sums over blocks with per-block potentials; the identity holds; a
    separable objective integrates each block exactly as alone (bitwise: same arithmetic)."""
    W1, W2 = (
        torch.randn(3, 2, generator=gen, dtype=F64),
        torch.randn(2, 4, generator=gen, dtype=F64),
    )
    P1, P2 = (
        torch.randn(3, 2, generator=gen, dtype=F64),
        torch.randn(2, 4, generator=gen, dtype=F64),
    )
    M = torch.randn(3, 4, generator=gen, dtype=F64)
    pots = (mf.Relativistic(0.5), mf.Huber(0.3))

    def coupled(W):
        return 0.5 * (W[0] @ W[1] - M).square().sum()

    flow = HamiltonianFlow(coupled, pots, 0.6)
    traj = integrate(flow, (W1, W2), (P1, P2), 2.0)
    assert traj.K[0].item() == pytest.approx(
        (pots[0].energy(P1) + pots[1].energy(P2)).item(), rel=4 * U64
    )
    assert traj.residual().abs().max().item() <= 1e-9 * (1 + abs(traj.H[0].item()))
    assert isinstance(traj.W, tuple) and [w.shape for w in traj.W] == [W1.shape, W2.shape]

    f1, f2 = nonconvex(gen), quadratic(spd([1.0, 2.0], gen))
    Wa, Pa = (
        torch.randn(4, 3, generator=gen, dtype=F64),
        torch.randn(4, 3, generator=gen, dtype=F64),
    )
    kw = {"h": 0.05, "method": "conformal_leapfrog"}
    sep = integrate(
        HamiltonianFlow(lambda W: f1(W[0]) + f2(W[1]), pots, 0.6), (Wa, W2), (Pa, P2), 0.5, **kw
    )
    alone1 = integrate(HamiltonianFlow(f1, pots[0], 0.6), Wa, Pa, 0.5, **kw)
    alone2 = integrate(HamiltonianFlow(f2, pots[1], 0.6), W2, P2, 0.5, **kw)
    assert torch.equal(sep.W[0], alone1.W) and torch.equal(sep.P[0], alone1.P)
    assert torch.equal(sep.W[1], alone2.W) and torch.equal(sep.P[1], alone2.P)
    torch.testing.assert_close(sep.K, alone1.K + alone2.K, rtol=4 * U64, atol=0)


class MeanFieldToy:
    """A probability objective in the protocol's mean-field scaling (what the particle system
    provides): ``J(θ) = ½‖mean_i tanh(θ_i)·c − y‖²`` over ``N`` particles ``θ_i: [2, 2]``,
    force ``−N ∂J/∂θ_i``, kinetic weight ``1/N`` (``consistent=False`` breaks the weight)."""

    def __init__(self, gen: torch.Generator, consistent: bool = True) -> None:
        self.c = torch.randn(2, 3, generator=gen, dtype=F64)
        self.y = torch.randn(2, 3, generator=gen, dtype=F64)
        self.consistent = consistent

    def value(self, theta):
        return 0.5 * ((torch.tanh(theta) @ self.c).mean(0) - self.y).square().sum()

    def value_and_force(self, theta):
        with torch.enable_grad():
            t = theta.detach().requires_grad_(True)
            J = self.value(t)
            (g,) = torch.autograd.grad(J, t)
        return J.detach(), -theta.shape[0] * g

    def kinetic_weight(self, theta):
        return 1.0 / theta.shape[0] if self.consistent else 1.0


def test_protocol_objective_uses_mean_field_scaling(gen):
    """With ``F = −N∂J/∂θ_i`` and ``w = 1/N``: K is ``(1/N)ΣK(P_i)`` and the identity holds
    (reference budget as above); with an inconsistent weight it fails by orders of magnitude,
    so the check is sharp. ``N = 1`` is the plain flow on ``f = J`` (muon iterates equal)."""
    N = 6
    K = mf.Relativistic(0.4)
    obj = MeanFieldToy(gen)
    theta0 = torch.randn(N, 2, 2, generator=gen, dtype=F64)
    P0 = torch.randn(N, 2, 2, generator=gen, dtype=F64)
    flow = HamiltonianFlow(obj, K, 0.5)
    assert flow.objective is obj
    traj = integrate(flow, theta0, P0, 2.0)
    assert traj.K[0].item() == pytest.approx(K.energy(P0).sum().item() / N, rel=8 * U64)
    budget = 1e-9 * (1 + abs(traj.H[0].item()))
    assert traj.residual().abs().max().item() <= budget
    bad = integrate(HamiltonianFlow(MeanFieldToy(gen, consistent=False), K, 0.5), theta0, P0, 2.0)
    assert bad.residual().abs().max().item() > 1e3 * budget

    one = integrate(flow, theta0[:1], P0[:1], 1.0, h=0.05, method="muon")
    plain = integrate(
        HamiltonianFlow(obj.value, K, 0.5), theta0[:1], P0[:1], 1.0, h=0.05, method="muon"
    )
    torch.testing.assert_close(one.W, plain.W, rtol=0, atol=0)
    torch.testing.assert_close(one.H, plain.H, rtol=0, atol=0)


# -- recording, dtypes, progress ---------------------------------------------------------------
def test_recording_and_step_grid(gen, capsys):
    f, _ = logistic(gen)
    flow = HamiltonianFlow(f, mf.Relativistic(0.5), 0.5)
    W0 = torch.randn(4, 3, generator=gen, dtype=F64)
    P0 = torch.randn(4, 3, generator=gen, dtype=F64)
    every = integrate(flow, W0, P0, 1.0, h=0.1, method="muon", record_states=True)
    sparse = integrate(flow, W0, P0, 1.0, h=0.1, method="muon", record_every=3, progress=True)
    assert "integrate[muon]" in capsys.readouterr().err
    torch.testing.assert_close(every.t, torch.arange(11, dtype=F64) / 10, rtol=0, atol=4 * U64)
    assert sparse.t.tolist() == [every.t[i].item() for i in (0, 3, 6, 9, 10)]
    torch.testing.assert_close(sparse.H, every.H[[0, 3, 6, 9, 10]], rtol=0, atol=0)
    assert torch.equal(every.Ws[-1], every.W) and every.Ps.shape == (11, 4, 3)
    assert sparse.Ws is None and every.nfev == 11  # one force evaluation per step, plus W0
    # t_end not a multiple of h: the last step is shortened to land on t_end.
    odd = integrate(flow, W0, P0, 0.25, h=0.1, method="muon")
    assert odd.t.tolist() == pytest.approx([0.0, 0.1, 0.2, 0.25], abs=4 * U64)
    zero = integrate(flow, W0, P0, 0.0, h=0.1, method="rk4")
    assert len(zero) == 1 and torch.equal(zero.W, W0)
    assert len(integrate(flow, W0, P0, 0.0)) == 1
    ref = integrate(flow, W0, P0, 1.0, h=0.25, record_every=2)
    assert ref.t.tolist() == [0.0, 0.5, 1.0]


def test_float32_states_keep_their_dtype(gen):
    """float32 runs in float32 (the reference in float64), results come back in float32; the
    muon iterates agree with float64 ones to float32 accuracy (``u32 ≈ 6e-8`` per step, amplified
    as in the arithmetic test: ``64·8·N·u32`` relative)."""
    W0 = torch.randn(4, 3, generator=gen, dtype=F64)
    P0 = torch.randn(4, 3, generator=gen, dtype=F64)
    X32 = torch.randn(32, 4, generator=gen)
    labels = torch.randint(0, 3, (32,), generator=gen)

    def f_any(W):
        return torch.nn.functional.cross_entropy(X32.to(W.dtype) @ W, labels)

    flow = HamiltonianFlow(f_any, mf.Relativistic(0.5), 0.5)
    t32 = integrate(flow, W0.float(), P0.float(), 1.0, h=0.05, method="muon")
    t64 = integrate(flow, W0, P0, 1.0, h=0.05, method="muon")
    assert t32.W.dtype == torch.float32 and t32.H.dtype == F64
    u32 = unit_roundoff(torch.float32)
    torch.testing.assert_close(
        t32.W.double(), t64.W, rtol=0, atol=64 * 8 * 20 * u32 * (1 + t64.W.abs().max().item())
    )
    ref = integrate(flow, W0.float(), P0.float(), 0.5)
    assert ref.W.dtype == torch.float32 and ref.P.dtype == torch.float32


# -- bad input and non-finite states -----------------------------------------------------------
def _flow():
    return HamiltonianFlow(lambda W: W.square().sum(), mf.Relativistic(0.1), 0.5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"h": 0.0, "method": "muon"}, ValueError, r"h must be a finite number > 0.*got h=0.0"),
        ({"h": -0.1, "method": "rk4"}, ValueError, r"h must be .*method 'rk4', got h=-0.1"),
        ({"method": "euler"}, ValueError, r"method 'euler' needs a step size h > 0"),
        (
            {"h": 0.1, "method": "leapfrog"},
            ValueError,
            r"unknown method 'leapfrog'; valid: "
            r"'conformal_leapfrog', 'euler', 'hamiltonian_descent', 'muon', 'reference', 'rk4'",
        ),
        ({"t_end": -1.0}, ValueError, r"t_end must be a finite number >= 0, got -1.0"),
        ({"record_every": 0}, ValueError, r"record_every must be an integer >= 1, got 0"),
        ({"h": 0.1, "method": "muon", "rtol": 1e-6}, ValueError, r"rtol/atol apply to method"),
        ({"rtol": 0.0}, ValueError, r"rtol must be a finite number > 0"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    W0 = torch.zeros(3, 2, dtype=F64)
    kwargs = {"t_end": 1.0, **kwargs}
    t_end = kwargs.pop("t_end")
    with pytest.raises(error, match=match):
        integrate(_flow(), W0, W0.clone(), t_end, **kwargs)


def test_bad_states_and_flows():
    W0 = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"P0 shape \(3, 3\) does not match W0 shape \(3, 2\)"):
        integrate(_flow(), W0, torch.zeros(3, 3, dtype=F64), 1.0)
    with pytest.raises(ValueError, match=r"P0\[1\] shape \(2, 2\) does not match W0\[1\]"):
        integrate(_flow(), (W0, W0), (W0, torch.zeros(2, 2, dtype=F64)), 1.0)
    with pytest.raises(ValueError, match=r"same structure: W0 is a tensor, P0 is a tuple of 1"):
        integrate(_flow(), W0, (W0,), 1.0)
    with pytest.raises(ValueError, match=r"P0 .*float32.* must have W0's dtype"):
        integrate(_flow(), W0, W0.float(), 1.0)
    with pytest.raises(ValueError, match=r"W0 has 1 non-finite entry"):
        integrate(
            _flow(),
            W0.index_put((torch.tensor([1]), torch.tensor([0])), torch.tensor(math.nan, dtype=F64)),
            W0,
            1.0,
        )
    with pytest.raises(ValueError, match=r"gamma must be a finite number >= 0, got -0.5"):
        HamiltonianFlow(lambda W: W.sum(), mf.Relativistic(0.1), -0.5)
    with pytest.raises(TypeError, match=r"objective must be a callable .* got int"):
        HamiltonianFlow(3, mf.Relativistic(0.1), 0.5)
    with pytest.raises(TypeError, match=r"kinetic must be a spectral potential .* got str"):
        HamiltonianFlow(lambda W: W.sum(), "relativistic", 0.5)
    pair = HamiltonianFlow(lambda W: W[0].sum(), (mf.Relativistic(0.1),) * 2, 0.5)
    with pytest.raises(ValueError, match=r"kinetic has 2 potentials but the state has 1 block"):
        integrate(pair, (W0,), (W0,), 1.0, h=0.1, method="muon")
    with pytest.raises(TypeError, match=r"objective must return a real floating scalar tensor"):
        integrate(
            HamiltonianFlow(lambda W: W, mf.Relativistic(0.1), 0.5),
            W0,
            W0,
            1.0,
            h=0.1,
            method="muon",
        )


@pytest.mark.parametrize("method", ["euler", "muon"])
def test_nonfinite_state_stops_with_a_clear_error(method):
    """An unstable objective (J = −exp‖W‖², Euclidean kinetic energy) overflows within a few
    steps; the error names the step, the time and the last finite energy, and carries the
    trajectory up to the last finite state."""
    flow = HamiltonianFlow(lambda W: -torch.exp(W.square().sum()), mf.Quadratic(), 0.0)
    W0 = torch.full((2, 2), 0.8, dtype=F64)
    with pytest.raises(
        NonFiniteStateError,
        match=r"non-finite .* at step \d+ \(t = .*\); last finite energy H = .* at step \d+",
    ) as info:
        integrate(flow, W0, torch.zeros_like(W0), 1000.0, h=0.5, method=method)
    err = info.value
    assert err.step == err.last_step + 1 and err.time == pytest.approx(0.5 * err.step)
    assert math.isfinite(err.last_energy) and err.step < 100
    assert err.trajectory is not None and bool(torch.isfinite(err.trajectory.H).all())
    assert len(err.trajectory) == err.step
    assert err.trajectory.H[-1].item() == err.last_energy


def test_nonfinite_in_reference_solver():
    """The reference stops on a NaN objective (here: NaN once W₀₀ > 1) with the time and the
    last finite energy; a finite-time blow-up (step size underflow) is a clear RuntimeError."""

    def f(W):
        return 0.5 * W.square().sum() + torch.where(W[0, 0] > 1, math.nan, 0.0)

    flow = HamiltonianFlow(f, mf.Relativistic(1.0), 0.0)
    W0 = torch.full((2, 2), 0.3, dtype=F64)
    with pytest.raises(
        NonFiniteStateError,
        match=r"method 'reference' stopped: non-finite objective value J = nan at field "
        r"evaluation \d+ \(t ≈ .*\); last finite energy H = \d",
    ):
        integrate(flow, W0, 3 * torch.eye(2, dtype=F64), 10.0)

    def g(W):  # the force 1/√(1 − ‖W‖²) blows up in finite time, at ‖W‖ = 1
        return -torch.sqrt(1 - W.square().sum())

    # Depending on its steps the solver lands beyond the singularity (NaN) or its step size
    # underflows before it; either way the error names the reference solver and the time.
    with pytest.raises((NonFiniteStateError, RuntimeError), match=r"reference.*t [=≈] \d"):
        integrate(
            HamiltonianFlow(g, mf.Relativistic(1.0), 0.0), W0, torch.ones_like(W0), 10.0, rtol=1e-6
        )
