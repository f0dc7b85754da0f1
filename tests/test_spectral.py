"""Spectral potentials: identities of docs/theory.md §1 checked against autograd and SVD references.

Tolerances: float64 identities hold to a few hundred unit roundoffs (u = 1.1e-16) times the
condition of the quantity; each test says which condition applies.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import unit_roundoff
from reference import polar_ref, svd_spectral_map

import muonflow as mf

U64 = unit_roundoff(torch.float64)
SMOOTH = [mf.Relativistic(0.3), mf.Huber(0.3)]
ALL = [*SMOOTH, mf.Nuclear(), mf.Quadratic()]
INVERTIBLE = [mf.Relativistic(0.3), mf.Huber(0.3), mf.Quadratic()]


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _orthogonal(gen: torch.Generator, n: int) -> torch.Tensor:
    Q, R = torch.linalg.qr(_randn(gen, n, n))
    return Q * torch.sign(torch.diagonal(R))


@pytest.mark.parametrize("K", [*SMOOTH, mf.Quadratic()], ids=repr)
def test_autograd_of_energy_equals_grad(K, gen):
    # energy() goes through torch.linalg.svdvals' backward, grad() through the Gram eigh path:
    # two independent computations of U diag(k'(σ)) Vᵀ. Distinct singular values (random),
    # so both are well conditioned: agreement to ~1e3 u relative, well under the 1e-10 asked.
    P = _randn(gen, 3, 7, 5).requires_grad_()
    K.energy(P).sum().backward()
    g = K.grad(P.detach())
    assert torch.linalg.norm(P.grad - g) <= 1e-10 * torch.linalg.norm(g)


@pytest.mark.parametrize("K", SMOOTH, ids=repr)
def test_gradcheck_energy_and_map(K, gen):
    P = _randn(gen, 2, 4, 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: K.energy(x), (P,))
    assert torch.autograd.gradcheck(lambda x: K.grad(x), (P,))


@pytest.mark.parametrize("K", ALL, ids=repr)
def test_fenchel_young_equality(K, gen):
    # K(P) + K*(∇K(P)) = <P, ∇K(P)>: all three terms are O(r·σ_max); float64 sums of r
    # singular-value terms are exact to ~r·u relative.
    P = _randn(gen, 4, 6, 5)
    Y = K.grad(P)
    lhs = K.energy(P) + K.conjugate(Y)
    rhs = (P * Y).sum(dim=(-2, -1))
    assert torch.allclose(lhs, rhs, rtol=1e3 * U64, atol=1e3 * U64 * float(rhs.abs().max()))


@pytest.mark.parametrize("K", INVERTIBLE, ids=repr)
def test_conjugate_grad_inverts_grad(K, gen):
    # Keep σ/ε moderate so ∇K(P) stays away from ||Y||_op = 1, where (k*)' blows up: the
    # inverse's condition is ε/(1−u²)^{3/2} ≤ 1e3 here, so 1e3·1e3 u relative error.
    P = _randn(gen, 3, 5, 4)
    if isinstance(K, mf.Huber):
        # stay in the quadratic zone σ < ε, where the map is invertible
        P = P * (0.2 / torch.linalg.matrix_norm(P, ord=2)[..., None, None])
    back = K.conjugate_grad(K.grad(P))
    assert torch.linalg.norm(back - P) <= 1e6 * U64 * torch.linalg.norm(P)


@pytest.mark.parametrize("K", ALL, ids=repr)
def test_orthogonal_equivariance_and_transpose(K, gen):
    P = _randn(gen, 6, 4)
    Q, R = _orthogonal(gen, 6), _orthogonal(gen, 4)
    g = K.grad(P)
    assert torch.allclose(K.grad(Q @ P @ R), Q @ g @ R, atol=1e3 * U64)
    assert torch.allclose(K.grad(P.mT), g.mT, atol=1e3 * U64)
    assert torch.allclose(K.energy(Q @ P @ R), K.energy(P), rtol=1e3 * U64)


@pytest.mark.parametrize("cls", [mf.Relativistic, mf.Huber])
def test_scale_covariance(cls, gen):
    # K_ε(P) = ε K_1(P/ε) and ∇K_ε(P) = ∇K_1(P/ε).
    P = _randn(gen, 2, 5, 3) * 2.0
    eps = 0.37
    Ke, K1 = cls(eps), cls(1.0)
    assert torch.allclose(Ke.energy(P), eps * K1.energy(P / eps), rtol=1e3 * U64)
    assert torch.allclose(Ke.grad(P), K1.grad(P / eps), atol=1e3 * U64)


def test_relativistic_speed_limit(gen):
    # ||∇K(P)||_op = σ_max/√(σ_max²+ε²) < 1, and at the given σ_max the exact value is known.
    P = _randn(gen, 8, 16, 9) * 100
    eps = 0.5
    g = mf.Relativistic(eps).grad(P)
    op = torch.linalg.matrix_norm(g, ord=2)
    smax = torch.linalg.matrix_norm(P, ord=2)
    assert bool((op < 1).all())
    assert torch.allclose(op, smax / torch.sqrt(smax**2 + eps**2), rtol=1e3 * U64)


def test_relativistic_lipschitz_one_over_eps(gen):
    # ||∇K(P) − ∇K(Q)||_F <= ||P − Q||_F / ε (∇K is the gradient of a 1/ε-smooth function).
    eps = 0.1
    K = mf.Relativistic(eps)
    P, Q = _randn(gen, 50, 6, 4), _randn(gen, 50, 6, 4)
    lhs = torch.linalg.matrix_norm(K.grad(P) - K.grad(Q))
    rhs = torch.linalg.matrix_norm(P - Q) / eps
    assert bool((lhs <= rhs * (1 + 1e-12)).all())


@pytest.mark.parametrize("eps", [1e-1, 1e-2, 1e-3])
def test_relativistic_converges_to_polar_factor(eps, gen):
    # Per singular direction: 1 − σ/√(σ²+ε²) = ε²/(2σ²) + O(ε⁴/σ⁴). Build P with known σ so
    # the error of each direction can be compared with ε²/(2σ²) to relative O(ε²/σ²).
    U, _ = torch.linalg.qr(_randn(gen, 7, 4))
    V = _orthogonal(gen, 4)
    sigma = torch.tensor([3.0, 1.0, 0.5, 0.25], dtype=torch.float64)
    P = U @ torch.diag(sigma) @ V.mT
    diff = polar_ref(P) - mf.Relativistic(eps).grad(P)
    per_dir = torch.diagonal(U.mT @ diff @ V)  # error per singular direction
    predicted = eps**2 / (2 * sigma**2)
    rel = (per_dir - predicted).abs() / predicted
    assert bool((rel <= 2 * (eps / sigma) ** 2 + 1e-6).all())  # next term is −(3/4)(ε/σ)² rel.


def test_huber_is_singular_value_clipping(gen):
    eps = 0.7
    P = _randn(gen, 3, 6, 5)
    ref = svd_spectral_map(P, lambda s: torch.clamp(s / eps, max=1.0))
    assert torch.allclose(mf.Huber(eps).grad(P), ref, atol=1e3 * U64)


def test_quadratic_is_identity(gen):
    P = _randn(gen, 2, 3, 4)
    K = mf.Quadratic()
    assert torch.equal(K.grad(P), P)
    assert torch.allclose(K.energy(P), 0.5 * P.square().sum(dim=(-2, -1)))


def test_nuclear_grad_is_polar_and_zero_directions_map_to_zero(gen):
    P = _randn(gen, 5, 3)
    assert torch.allclose(mf.Nuclear().grad(P), polar_ref(P), atol=1e3 * U64)
    low = _randn(gen, 6, 2) @ _randn(gen, 2, 5)  # rank 2
    g = mf.Nuclear().grad(low)
    s = torch.linalg.svdvals(g)
    assert torch.allclose(s, torch.tensor([1.0, 1.0, 0, 0, 0], dtype=torch.float64), atol=1e-10)
    assert torch.equal(mf.Nuclear().grad(torch.zeros(3, 3)), torch.zeros(3, 3))


@pytest.mark.parametrize("K", [mf.Relativistic(0.3), mf.Huber(0.3), mf.Nuclear()], ids=repr)
def test_conjugate_is_inf_outside_the_unit_ball(K, gen):
    Y = _randn(gen, 4, 3)
    Y = Y / torch.linalg.matrix_norm(Y, ord=2) * 1.5
    assert math.isinf(float(K.conjugate(Y)))
    with pytest.raises(ValueError, match="conjugate_grad"):
        K.conjugate_grad(Y)


def test_relativistic_conjugate_closed_form(gen):
    # K*(Y) = Σ ε(1 − √(1−u²)) on the domain.
    eps = 0.4
    Y = _randn(gen, 5, 3)
    Y = Y / torch.linalg.matrix_norm(Y, ord=2) * 0.9
    u = torch.linalg.svdvals(Y)
    expected = (eps * (1 - torch.sqrt(1 - u**2))).sum()
    assert torch.allclose(mf.Relativistic(eps).conjugate(Y), expected, rtol=1e3 * U64)


def test_energy_is_exact_at_small_and_huge_singular_values():
    # k(σ) = √(σ²+ε²) − ε: no cancellation for σ ≪ ε (≈ σ²/2ε), no overflow for σ ≫ ε.
    K = mf.Relativistic(1.0)
    tiny = torch.diag(torch.tensor([1e-9, 2e-9], dtype=torch.float64))
    assert torch.allclose(K.energy(tiny), torch.tensor(5e-19 + 2e-18, dtype=torch.float64))
    huge = torch.diag(torch.tensor([1e200], dtype=torch.float64))
    assert torch.allclose(K.energy(huge), torch.tensor(1e200, dtype=torch.float64))
    big32 = torch.diag(torch.tensor([1e30]))
    assert torch.isfinite(mf.Relativistic(1.0).energy(big32)).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_inputs_keep_dtype(dtype, gen):
    P = _randn(gen, 3, 8, 4).to(dtype)
    for K in ALL:
        assert K.grad(P).dtype == dtype
        assert K.energy(P).dtype == dtype
    ref = mf.Relativistic(0.5).grad(P.double())
    # bf16/fp16 results are exact maps of the rounded input, rounded once: error ≤ u_dtype·|x|.
    got = mf.Relativistic(0.5).grad(P).double()
    assert torch.allclose(got, ref, atol=2 * unit_roundoff(dtype))


def test_potential_registry():
    assert isinstance(mf.potential("relativistic", 0.1), mf.Relativistic)
    assert isinstance(mf.potential("nuclear"), mf.Nuclear)
    with pytest.raises(ValueError, match="valid: 'huber', 'nuclear', 'quadratic', 'relativistic'"):
        mf.potential("sinkhorn")
    with pytest.raises(ValueError, match="needs eps"):
        mf.potential("huber")
    with pytest.raises(ValueError, match="takes no eps"):
        mf.potential("nuclear", 0.5)


@pytest.mark.parametrize("cls", [mf.Relativistic, mf.Huber])
@pytest.mark.parametrize("bad", [-1.0, 0.0, math.nan, math.inf])
def test_bad_eps_is_rejected(cls, bad):
    with pytest.raises(ValueError, match="eps"):
        cls(bad)


def test_bad_eps_type_is_rejected():
    with pytest.raises(TypeError, match="eps"):
        mf.Relativistic("0.1")


class _Softsign(mf.SpectralPotential):
    """A new potential for the test below: k'(σ) = σ/(σ + ε), k(σ) = σ − ε log(1 + σ/ε)."""

    name = "softsign"

    def __init__(self, eps):
        super().__init__(eps)

    def k(self, s, eps):
        return s - eps * torch.log1p(s / eps)

    def dk(self, s, eps):
        return s / (s + eps)

    def kstar(self, u, eps):
        return -eps * u - eps * torch.log1p(-u)

    def dkstar(self, u, eps):
        return eps * u / (1 - u)

    def dk_over_s(self, lam, eps):
        return 1 / (torch.sqrt(lam) + eps)


def test_a_new_potential_is_one_class_plus_a_registry_line(monkeypatch):
    """Adding a potential is the class above plus one line in ``POTENTIALS``: the registry, the
    optimizer's step (its map is the class's k'), its kinetic energy and a checkpoint round trip
    then work with no other change. Mutant caught: a potential recognised by string anywhere
    in the optimizer (an unknown name is refused or mapped as another potential)."""
    from muonflow import spectral

    monkeypatch.setitem(spectral.POTENTIALS, "softsign", _Softsign)  # the registry line
    assert isinstance(mf.potential("softsign", 0.3), _Softsign)
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.randn(6, 4, dtype=torch.float64))
    G = torch.randn(6, 4, dtype=torch.float64)
    eps, lr = 0.3, 0.1
    opt = mf.RegMuon([("w", W)], lr=lr, momentum=0.0, nesterov=False, potential="softsign",
                     eps=eps, eps_mode="absolute", tol=None, adjust_lr="none", adamw=())
    W0 = W.detach().clone()
    W.grad = G.clone()
    loss = torch.tensor(1.5, dtype=torch.float64)
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    opt.step()  # the momentum is G: W moves by -lr k'(G)
    expected = W0 - lr * (U * (S / (S + eps))) @ Vh
    torch.testing.assert_close(W.detach(), expected, rtol=1e-10, atol=1e-12)
    # the kinetic energy in dynamics units (docs/theory.md §3): P = -hM, ε_dyn = hε with
    # h = lr; this k is homogeneous of degree one, so K = h Σ k_ε(σ(G))
    K = lr * float((S - eps * torch.log1p(S / eps)).sum())
    assert float(opt.hamiltonian(loss)) == pytest.approx(1.5 + K, rel=1e-12)
    again = mf.RegMuon([("w", W)], potential="softsign", eps=eps, adamw=())
    again.load_state_dict(opt.state_dict())
    assert again.param_groups[0]["potential"] == "softsign"
