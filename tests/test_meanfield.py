"""Probability objectives J(ρ) = R(∫F dρ) (docs/theory.md §5): forces, features, risks.

Tolerances: float64 throughout. The quantities compared are short sums and products of O(1)
terms (dot products of length ≤ B·width ≤ 200), so two computations that differ only in
rounding order agree to ``c·n·u`` relative with n the longest reduction; each test states its
bound. The dynamics tests derive theirs from the step count and the flow's Lipschitz growth.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import unit_roundoff

import muonflow as mf
from muonflow.dynamics import HamiltonianFlow, integrate
from muonflow.meanfield import (
    ACTIVATIONS,
    CrossEntropyRisk,
    HuberRisk,
    LogisticRisk,
    Neuron,
    ProbabilityObjective,
    RandomFeatures,
    SquaredRisk,
    SubNetwork,
    make_risk,
    teacher_student,
)

U64 = unit_roundoff(torch.float64)
D64 = torch.float64


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=D64)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _features(gen: torch.Generator) -> list:
    X = _randn(gen, 3, 10)
    return [
        Neuron(X, width=2),
        SubNetwork(X, hidden=4, out=2, activation="gelu"),
        RandomFeatures(X, num_features=6, out=2, activation="sin", generator=gen),
    ]


def _risks(gen: torch.Generator, out: int = 2, B: int = 10) -> list:
    y = _randn(gen, out, B)
    return [
        SquaredRisk(y),
        HuberRisk(y, delta=0.3),
        LogisticRisk(torch.where(y > 0, 1.0, -1.0).to(D64)),
        CrossEntropyRisk(torch.randint(0, out, (B,), generator=gen), num_classes=out),
    ]


def _blocks(x):
    return x if isinstance(x, tuple) else (x,)


def _autograd_force(feature, risk, theta):
    """−N ∂J/∂θ_i with J = R(mean_i F(θ_i)) by plain autograd (the definition)."""
    leaves = tuple(b.detach().clone().requires_grad_() for b in _blocks(theta))
    arg = leaves if isinstance(theta, tuple) else leaves[0]
    J = risk(feature(arg).mean(0))
    grads = torch.autograd.grad(J, leaves)
    n = leaves[0].shape[0]
    return J.detach(), tuple(-n * g for g in grads)


# -- risks and features --------------------------------------------------------------------------
@pytest.mark.parametrize("which", range(4), ids=["squared", "huber", "logistic", "xent"])
def test_risk_grad_matches_autograd(which, gen):
    # ∇R in closed form vs autograd of R: elementwise formulas, one reduction of length C·B=20.
    risk = _risks(gen)[which]
    m = _randn(gen, 3, 2, 10)  # batched: three mean features at once
    m.requires_grad_()
    risk(m).sum().backward()
    g = risk.grad(m.detach())
    assert g.shape == m.shape
    assert _rel(g, m.grad) <= 64 * U64


def test_huber_risk_is_squared_inside_delta(gen):
    y = _randn(gen, 1, 8)
    m = y + 0.01 * _randn(gen, 1, 8)  # all residuals far inside δ = 1
    # both are (1/2B)Σr²: identical formula on identical residuals, up to one rounding per term
    assert abs(float(HuberRisk(y, 1.0)(m) - SquaredRisk(y)(m))) <= 16 * U64 * float(
        SquaredRisk(y)(m)
    )


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_derivative_and_bounds(name):
    act = ACTIVATIONS[name]
    h = torch.linspace(-40, 40, 80001, dtype=D64, requires_grad=True)  # softplus' → 1 at +∞
    s = act.fn(h)
    (d1,) = torch.autograd.grad(s.sum(), h, create_graph=True)
    if d1.requires_grad:
        (d2,) = torch.autograd.grad(d1.sum(), h)
    else:  # σ' constant (identity)
        d2 = torch.zeros_like(d1)
    # closed-form σ' vs autograd: one transcendental each, agreement to a few u
    assert torch.allclose(act.deriv(h.detach(), s.detach()), d1.detach(), rtol=0, atol=32 * U64)
    # the declared sup|σ'|, sup|σ''| are upper bounds, and tight (attained on the grid to the
    # grid's resolution: a smooth maximum is missed by O(Δh²) = O(1e-5) relative)
    for got, bound in ((d1.detach().abs().max(), act.d1), (d2.abs().max(), act.d2)):
        assert float(got) <= bound * (1 + 1e-12)
        assert float(got) >= bound * (1 - 1e-4)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_inplace_path_matches(name, gen):
    # the buffer-saving path (σ in place, σ' from σ) computes the same kernels: bitwise equal
    act = ACTIVATIONS[name]
    h = 3 * _randn(gen, 4, 5)
    s, ds = act.apply_with_deriv_(h.clone())
    assert torch.equal(s, act.fn(h))
    assert torch.equal(ds, act.deriv(h, act.fn(h)))
    assert torch.equal(act.apply_(h.clone()), act.fn(h))


@pytest.mark.parametrize("which", range(3), ids=["neuron", "subnetwork", "random_features"])
@pytest.mark.parametrize("per_particle", [False, True])
def test_feature_pullback_matches_autograd(which, per_particle, gen):
    # explicit DF(θ_i)ᵀ c vs autograd of Σ_i ⟨c_i, F(θ_i)⟩; reductions of length ≤ B = 10.
    feature = _features(gen)[which]
    theta = feature.sample(5, generator=gen)
    c = _randn(gen, *((5,) if per_particle else ()), *feature.out_shape)
    F, pullback = feature.vjp(theta)
    got = _blocks(pullback(c))
    leaves = tuple(b.clone().requires_grad_() for b in _blocks(theta))
    F_ag = feature(leaves if isinstance(theta, tuple) else leaves[0])
    want = torch.autograd.grad((F_ag * c).sum(), leaves)
    assert torch.equal(F, F_ag.detach())
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert _rel(g, w) <= 64 * U64
    # the pullback alone (value=False, used by the chunked force pass) is the same map
    _, pullback_only = feature.vjp(theta, value=False)
    for g, w in zip(_blocks(pullback_only(c)), got, strict=True):
        assert torch.equal(g, w)


# -- forces ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fi", range(3), ids=["neuron", "subnetwork", "random_features"])
@pytest.mark.parametrize("ri", range(4), ids=["squared", "huber", "logistic", "xent"])
def test_force_is_minus_N_times_autograd(fi, ri, gen):
    # force_i = −DF(θ_i)ᵀ∇R(m) vs −N ∂J/∂θ_i by autograd through the mean: the same terms in a
    # different order (autograd scales by 1/N then we multiply by N = 7): ≤ 64 u relative.
    feature, risk = _features(gen)[fi], _risks(gen)[ri]
    theta = feature.sample(7, generator=gen)
    J_ref, f_ref = _autograd_force(feature, risk, theta)
    for chunk in (None, 3):
        obj = ProbabilityObjective(feature, risk, chunk_size=chunk)
        J, force = obj.value_and_force(theta)
        assert J.ndim == 0
        assert abs(float(J - J_ref)) <= 16 * U64 * abs(float(J_ref))
        for f, w in zip(_blocks(force), f_ref, strict=True):
            assert _rel(f, w) <= 64 * U64
        assert obj.kinetic_weight(theta) == 1 / 7


def test_top_level_export():
    assert mf.ProbabilityObjective is ProbabilityObjective


def test_force_of_plain_callables_uses_autograd(gen):
    # lambdas hide the explicit pullback and the closed-form ∇R: the autograd fallbacks must
    # give the same forces (same bound as above).
    feature, risk = _features(gen)[1], _risks(gen)[0]
    theta = feature.sample(6, generator=gen)
    J0, f0 = ProbabilityObjective(feature, risk).value_and_force(theta)
    J1, f1 = ProbabilityObjective(lambda t: feature(t), lambda m: risk(m)).value_and_force(theta)
    assert abs(float(J1 - J0)) <= 16 * U64 * abs(float(J0))
    for a, b in zip(f1, f0, strict=True):
        assert _rel(a, b) <= 64 * U64


def test_forces_do_not_shrink_with_N(gen):
    # mean-field scaling: duplicating every particle (N -> 2N) leaves ρ_N, J and every force
    # unchanged, while ∂J/∂θ_i halves. Sums of duplicated terms: exact up to a few u.
    feature, risk = _features(gen)[0], _risks(gen)[0]
    theta = feature.sample(5, generator=gen)
    obj = ProbabilityObjective(feature, risk)
    J1, f1 = obj.value_and_force(theta)
    J2, f2 = obj.value_and_force(torch.cat([theta, theta]))
    assert abs(float(J2 - J1)) <= 16 * U64 * abs(float(J1))
    assert _rel(f2[:5], f1) <= 64 * U64 and _rel(f2[5:], f1) <= 64 * U64


def test_permutation_invariance(gen):
    # J is symmetric and forces are equivariant; reordering the mean's sum of N = 9 terms
    # changes m by ≤ 9u·max|F|, hence J and the forces by a few tens of u relative.
    feature, risk = _features(gen)[1], _risks(gen)[1]
    theta = feature.sample(9, generator=gen)
    perm = torch.randperm(9, generator=gen)
    obj = ProbabilityObjective(feature, risk)
    J, f = obj.value_and_force(theta)
    Jp, fp = obj.value_and_force(tuple(b[perm] for b in theta))
    assert abs(float(Jp - J)) <= 64 * U64 * abs(float(J))
    for a, b in zip(fp, f, strict=True):
        assert _rel(a, b[perm]) <= 64 * U64


def test_packed_systems_equal_separate_objectives(gen):
    # S = 3 systems of N = 4 packed along the particle axis: each system's forces and J are
    # those of the system alone (same arithmetic up to summation order: ≤ 64 u).
    feature, risk = _features(gen)[1], _risks(gen)[0]
    theta = feature.sample(12, generator=gen)
    packed = ProbabilityObjective(feature, risk, systems=3)
    single = ProbabilityObjective(feature, risk)
    J, f = packed.value_and_force(theta)
    parts = [single.value_and_force(tuple(b[4 * s : 4 * s + 4] for b in theta)) for s in range(3)]
    assert abs(float(J) - sum(float(p[0]) for p in parts) / 3) <= 64 * U64 * abs(float(J))
    for b in range(2):
        want = torch.cat([p[1][b] for p in parts])
        assert _rel(f[b], want) <= 64 * U64
    assert packed.kinetic_weight(theta) == 1 / 12
    assert packed.num_particles(theta) == 4
    assert packed.mean_feature(theta).shape == (3, *feature.out_shape)
    for chunk in (5, 7):  # slabs that straddle system boundaries
        Jc, fc = ProbabilityObjective(feature, risk, systems=3, chunk_size=chunk).value_and_force(
            theta
        )
        assert abs(float(Jc - J)) <= 64 * U64 * abs(float(J))
        assert all(_rel(a, b) <= 64 * U64 for a, b in zip(fc, f, strict=True))


def test_first_variation_is_the_weight_derivative(gen):
    # δJ/δρ(θ_i) = ∂J(Σ_j w_j δ_θj)/∂w_i: the first variation is the derivative of J along
    # mass moved onto θ_i. Autograd through the weighted mean vs ⟨∇R(m), F(θ_i)⟩: ≤ 64 u.
    feature, risk = _features(gen)[1], _risks(gen)[2]
    theta = feature.sample(6, generator=gen)
    obj = ProbabilityObjective(feature, risk)
    w = torch.full((6,), 1 / 6, dtype=D64, requires_grad=True)
    (dJ_dw,) = torch.autograd.grad(obj.value(theta, weights=w), w)
    fv = obj.first_variation(theta)
    assert _rel(fv, dJ_dw) <= 64 * U64
    # at other points: the mixture derivative d/dε J((1−ε)ρ + εδ_θ') = δJ/δρ(θ') − ∫δJ/δρ dρ,
    # by a central difference: truncation ε²|d³J/dε³|/6 with |d³J/dε³| ≤ ‖D³R‖·‖F(θ') − m‖³
    # = O(1) here, so ≈ 2e-9 at ε = 1e-4; rounding u·|J|/ε ≈ 1e-12. Asserted: 1e-7.
    other = feature.sample(2, generator=gen)
    fv_other = obj.first_variation(theta, at=other)
    allp = tuple(torch.cat([a, b]) for a, b in zip(theta, other, strict=True))
    for k in range(2):

        def J_mix(e: float, k: int = k) -> float:
            w = torch.cat([torch.full((6,), (1 - e) / 6, dtype=D64), torch.zeros(2, dtype=D64)])
            w[6 + k] = e
            return float(obj.value(allp, weights=w))

        e = 1e-4
        fd = (J_mix(e) - J_mix(-e)) / (2 * e)
        assert abs(fd - float(fv_other[k] - fv.mean())) <= 1e-7


def test_force_at_matches_value_and_force(gen):
    # the force field evaluated at the particles for their own m is the particle force
    feature, risk = _features(gen)[0], _risks(gen)[0]
    theta = feature.sample(5, generator=gen)
    obj = ProbabilityObjective(feature, risk)
    _, f = obj.value_and_force(theta)
    assert torch.equal(obj.force_at(theta, obj.mean_feature(theta)), f)


def test_teacher_student_minimum_at_teacher(gen):
    feature = _features(gen)[1]
    teacher = feature.sample(4, generator=gen)
    for name in ("squared", "huber"):
        obj = teacher_student(feature, teacher, risk=name)
        J, force = obj.value_and_force(teacher)
        assert float(J) == 0.0  # m = target exactly: the target is this very mean
        assert all(float(f.abs().max()) == 0.0 for f in force)
    other = feature.sample(4, generator=gen)
    assert float(teacher_student(feature, teacher).value(other)) > 0
    logistic = teacher_student(feature, teacher, risk="logistic")
    m_t = ProbabilityObjective(feature, SquaredRisk(torch.zeros(feature.out_shape, dtype=D64)))
    assert torch.equal(logistic.risk.labels, torch.where(m_t.mean_feature(teacher) >= 0, 1.0, -1.0))
    xent = teacher_student(feature, teacher, risk="cross_entropy")
    assert torch.equal(xent.risk.labels, m_t.mean_feature(teacher).argmax(0))


# -- dynamics of the particle system ---------------------------------------------------------
def test_one_particle_is_the_single_matrix_flow(gen):
    # N = 1: the particle system is the flow of f(W) = R(F(W)) on one matrix. Forces agree to
    # ~64u·|F| per evaluation; over n = 40 muon steps of h = 0.05 the discrepancy grows at most
    # like n·h·δF·e^{L t}, L ≤ 1/ε + Lip(∇f) ≈ 4 + 2 here: ≤ 40·0.05·1e-14·e^{12} ≈ 4e-9; we
    # assert 1e-9 relative on the final state, which the observed ~1e-15 passes by far.
    X = _randn(gen, 3, 10)
    feature = Neuron(X, width=2)
    risk = SquaredRisk(_randn(gen, 2, 10))
    W0 = feature.sample(1, generator=gen)
    K, gamma = mf.Relativistic(0.25), 0.7
    particle = integrate(
        HamiltonianFlow(ProbabilityObjective(feature, risk), K, gamma),
        W0,
        torch.zeros_like(W0),
        2.0,
        h=0.05,
        method="muon",
    )
    single = integrate(
        HamiltonianFlow(lambda W: risk(feature(W.unsqueeze(0))[0]), K, gamma),
        W0[0],
        torch.zeros_like(W0[0]),
        2.0,
        h=0.05,
        method="muon",
    )
    assert _rel(particle.W[0], single.W) <= 1e-9
    assert _rel(particle.P[0], single.P) <= 1e-9
    assert torch.allclose(particle.H, single.H, rtol=1e-9, atol=0)


def test_blocks_equal_separate_flows(gen):
    # A separable two-block objective, F(W1, W2) = (F1(W1), F2(W2)) and R = R1 + R2, moves each
    # block as its own particle system: the blockwise flow equals two separate flows. Same
    # elementwise arithmetic per block (autograd path vs explicit): ≤ 1e-12 relative over 30 steps.
    X = _randn(gen, 3, 10)
    f1, f2 = Neuron(X, width=2), Neuron(X, width=3, activation="sigmoid")
    y1, y2 = _randn(gen, 2, 10), _randn(gen, 3, 10)
    r1, r2 = SquaredRisk(y1), SquaredRisk(y2)

    def both(theta):
        return torch.cat([f1(theta[0]), f2(theta[1])], dim=1)  # [N, 5, B]

    def risk(m):
        return r1(m[:2]) + r2(m[2:])

    K, gamma, N = mf.Relativistic(0.3), 0.5, 6
    th = (f1.sample(N, generator=gen), f2.sample(N, generator=gen))
    P = (0.1 * _randn(gen, N, 2, 3), 0.1 * _randn(gen, N, 3, 3))
    run = dict(h=0.05, method="muon")
    joint = integrate(
        HamiltonianFlow(ProbabilityObjective(both, risk), K, gamma), th, P, 1.5, **run
    )
    sep = [
        integrate(HamiltonianFlow(ProbabilityObjective(f, r), K, gamma), t, p, 1.5, **run)
        for f, r, t, p in ((f1, r1, th[0], P[0]), (f2, r2, th[1], P[1]))
    ]
    for b in range(2):
        assert _rel(joint.W[b], sep[b].W) <= 1e-12
        assert _rel(joint.P[b], sep[b].P) <= 1e-12
    # H_N = J1 + J2 + (1/N)ΣK: the energies add up
    assert torch.allclose(joint.H, sep[0].H + sep[1].H, rtol=1e-12, atol=0)


def test_dissipation_identity_reference(gen):
    # H_N(t) − H_N(0) + γ/N ∫Σ⟨P_i, ∇K(P_i)⟩ = 0 exactly for the flow; the adaptive DOP853
    # reference (rtol 1e-12) keeps it to ~1e-12 relative. Asked: ≤ 1e-9.
    X = _randn(gen, 4, 16)
    feature = SubNetwork(X, hidden=3, out=2)
    obj = teacher_student(feature, feature.sample(3, generator=gen))
    th = feature.sample(8, generator=gen, std=0.7)
    P = tuple(0.3 * _randn(gen, *b.shape) for b in th)
    traj = integrate(
        HamiltonianFlow(obj, mf.Relativistic(0.2), 0.8), th, P, 3.0, method="reference"
    )
    assert float(traj.dissipated[-1]) > 0.1 * float(traj.H[0])  # the identity is not vacuous
    assert float(traj.residual().abs().max()) <= 1e-9 * float(traj.H.abs().max())
    assert bool((traj.H.diff() <= 1e-9 * float(traj.H[0])).all())  # H_N is non-increasing


# -- validation at the door ------------------------------------------------------------------
def test_bad_input_messages(gen):
    feature, risk = _features(gen)[1], _risks(gen)[0]
    obj = ProbabilityObjective(feature, risk)
    empty = (torch.zeros(0, 4, 3, dtype=D64), torch.zeros(0, 2, 4, dtype=D64))
    with pytest.raises(ValueError, match=r"at least one particle.*\(0, 4, 3\)"):
        obj.value_and_force(empty)
    with pytest.raises(ValueError, match=r"disagree on the particle count"):
        obj.value((torch.zeros(3, 4, 3, dtype=D64), torch.zeros(2, 2, 4, dtype=D64)))
    with pytest.raises(ValueError, match=r"SubNetwork.*expects particle blocks"):
        obj.value((torch.zeros(3, 4, 4, dtype=D64), torch.zeros(3, 2, 4, dtype=D64)))
    wrong_risk = ProbabilityObjective(feature, SquaredRisk(_randn(gen, 3, 10)))
    with pytest.raises(ValueError, match=r"SubNetwork.*\(2, 10\).*SquaredRisk.*\(3, 10\)"):
        wrong_risk.value_and_force(feature.sample(2, generator=gen))
    theta = feature.sample(4, generator=gen)
    theta[0][2, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"non-finite values for 1 of 4 particles.*\[2\]"):
        obj.value_and_force(theta)

    def short(t):
        return feature(t)[:1]

    with pytest.raises(
        ValueError, match=r"feature .*short.* must map θ of shape .* to \[3, \.\.\.\]"
    ):
        ProbabilityObjective(short, risk).value(feature.sample(3, generator=gen))

    def vector_risk(m):
        return m.sum(-1)

    with pytest.raises(ValueError, match=r"risk .*vector_risk.* 0-dim .*\(2, 10\).*got \(2,\)"):
        ProbabilityObjective(feature, vector_risk).value(feature.sample(3, generator=gen))
    with pytest.raises(ValueError, match=r"not a multiple of systems=2"):
        ProbabilityObjective(feature, risk, systems=2).value(feature.sample(3, generator=gen))
    with pytest.raises(ValueError, match="chunk_size"):
        ProbabilityObjective(feature, risk, chunk_size=0)
    with pytest.raises(TypeError, match="feature must be callable"):
        ProbabilityObjective(3, risk)
    with pytest.raises(ValueError, match=r"SquaredRisk.*\[\.\.\., 2, 10\], got \(10,\)"):
        risk(torch.zeros(10, dtype=D64))
    with pytest.raises(ValueError, match="unknown risk 'hinge'"):
        make_risk("hinge", _randn(gen, 1, 4))
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        Neuron(_randn(gen, 2, 3), activation="relu")
    with pytest.raises(ValueError, match=r"Neuron: the dataset X must have shape \[d, B\]"):
        Neuron(_randn(gen, 2))
