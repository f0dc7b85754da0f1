"""The softmax-gated mean-field MoE objective and the MoE transformer layer.

Tolerances are derived from float64 round-off (u = 2⁻⁵³ ≈ 1.1e-16): a quantity built from
``k`` floating operations on values of magnitude ``M`` differs between two evaluation orders by
at most about ``k·u·M``; each bound below states ``k`` and keeps a margin of ~10-100x.
"""

from __future__ import annotations

import pytest
import torch

import muonflow as mf
from muonflow.meanfield.moe import (
    ExpertParticles,
    MoEFeature,
    RatioRisk,
    moe_objective,
    softmax_moe_output,
)
from muonflow.meanfield.risks import SquaredRisk
from muonflow.models.moe import MoEFeedForward, moe_transformer
from muonflow.models.transformer import TransformerConfig

U64 = 2.0**-53

D, HID, OUT, B, N = 3, 4, 2, 12, 6


def _problem(seed: int = 0, n: int = N, router_scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(D, B, generator=g, dtype=torch.float64)
    y = torch.randn(OUT, B, generator=g, dtype=torch.float64)
    theta = (
        router_scale * torch.randn(n, 1, D, generator=g, dtype=torch.float64),
        torch.randn(n, HID, D, generator=g, dtype=torch.float64) / D**0.5,
        torch.randn(n, OUT, HID, generator=g, dtype=torch.float64),
    )
    return X, y, theta


def _direct_loss(theta, X, y):
    """Independent loss: softmax over experts, no ratio, no shift (autograd-friendly)."""
    r, W1, W2 = theta
    p = torch.softmax(r @ X, dim=0)  # [N, 1, B]
    out = (p * (W2 @ torch.tanh(W1 @ X))).sum(0)  # [o, B]
    return (out - y).square().sum() / (2 * y.shape[1])


def test_ratio_form_equals_softmax_gating():
    X, y, theta = _problem()
    obj = moe_objective(X, y, hidden=HID)
    m = obj.mean_feature(theta)  # [o+1, B]
    ratio = m[:-1] / m[-1:]
    direct = softmax_moe_output(theta, X)
    # ~ (N + h + d) ≈ 15 operations per entry on values of size max|E| -> 15u·max|E|; x100.
    tol = 100 * 15 * U64 * float(direct.abs().max())
    assert torch.allclose(ratio, direct, rtol=0, atol=tol)
    J_direct = _direct_loss(theta, X, y)
    assert abs(float(obj.value(theta)) - float(J_direct)) <= 100 * 30 * U64 * float(J_direct)


def test_gate_shift_leaves_J_unchanged_and_prevents_overflow():
    X, y, theta = _problem(seed=1)
    J_max = float(moe_objective(X, y, hidden=HID, shift="max").value(theta))
    J_none = float(moe_objective(X, y, hidden=HID, shift="none").value(theta))
    # the shift multiplies a and b by e^{-c}: one extra rounding per factor (~30 ops) -> x100
    assert abs(J_max - J_none) <= 100 * 30 * U64 * abs(J_none)
    # scores ~ 1000 overflow exp() in float64 (exp(710) = inf) without the shift
    X2, y2, big = _problem(seed=1, router_scale=400.0)
    with pytest.raises(ValueError, match=r"non-finite|overflow"):
        moe_objective(X2, y2, hidden=HID, shift="none").value(big)
    J_big = float(moe_objective(X2, y2, hidden=HID).value(big))
    J_ref = float(_direct_loss(big, X2, y2))  # torch.softmax is itself shift-stabilized
    assert abs(J_big - J_ref) <= 100 * 30 * U64 * abs(J_ref)


def test_blockwise_forces_equal_autograd_with_meanfield_scaling():
    X, y, theta = _problem(seed=2)
    obj = moe_objective(X, y, hidden=HID)
    _, force = obj.value_and_force(theta)
    leaves = tuple(t.clone().requires_grad_(True) for t in theta)
    grads = torch.autograd.grad(_direct_loss(leaves, X, y), leaves)
    assert len(force) == 3
    for f, g in zip(force, grads, strict=True):
        want = -N * g  # force_i = −N ∂J/∂θ_i (mean-field scaling)
        assert f.shape == g.shape
        # a force entry is a chain of ~ (B·(o + h) + d) ≈ 80 products/sums of size max|force|
        assert torch.allclose(f, want, rtol=0, atol=100 * 80 * U64 * float(want.abs().max()))
    # the scaling is not cosmetic: the unscaled gradient is N times smaller
    assert not torch.allclose(force[2], -grads[2], rtol=0.1)


def test_blockwise_dissipation_identity_reference():
    X, y, theta = _problem(seed=3, n=4)
    obj = moe_objective(X, y, hidden=HID)
    # one potential per block, each with its own ε (router, W1, W2)
    kinetic = (mf.Relativistic(0.3), mf.Relativistic(0.5), mf.Relativistic(0.8))
    flow = mf.HamiltonianFlow(obj, kinetic, gamma=1.0)
    g = torch.Generator().manual_seed(4)
    P0 = tuple(torch.randn(t.shape, generator=g, dtype=torch.float64) for t in theta)
    traj = mf.integrate(flow, theta, P0, 1.0, h=0.25, method="reference")
    scale = float(traj.H.abs().max())
    residual = float(traj.residual().abs().max())
    # DOP853 at rtol 1e-12 over a unit time: global error ~1e-11 relative; the bound
    assert residual <= 1e-9 * scale
    assert float(traj.dissipated[-1]) > 1e-3 * scale  # the damping did real work
    assert bool((traj.H[1:] <= traj.H[:-1] + 1e-9 * scale).all())  # H non-increasing


def test_per_expert_map_equals_loop_and_differs_from_global():
    g = torch.Generator().manual_seed(5)
    P = torch.randn(5, 6, 4, generator=g, dtype=torch.float64)
    K = mf.Relativistic(0.7)
    batched = K.grad(P)
    loop = torch.stack([K.grad(P[e]) for e in range(P.shape[0])])
    # eigh of a 4x4 Gram: backward error ~ r·u·‖P‖²; ‖∇K‖ ≤ 1, conditioning ‖P‖/ε ≲ 10 -> x100
    assert torch.allclose(batched, loop, rtol=0, atol=100 * 4 * 10 * U64)
    # the flow's blockwise velocity applies each block's own potential per expert
    kin = (mf.Relativistic(0.3), mf.Relativistic(0.7))
    flow = mf.HamiltonianFlow(lambda W: W[0].sum() + W[1].sum(), kin, gamma=0.0)
    R = torch.randn(5, 1, 6, generator=g, dtype=torch.float64)
    V = flow.velocity((R, P))
    want_r = torch.stack([kin[0].grad(R[e]) for e in range(5)])
    assert torch.allclose(V[0], want_r, rtol=0, atol=100 * 10 * U64)
    assert torch.allclose(V[1], loop, rtol=0, atol=100 * 4 * 10 * U64)
    # a 1xd router block: ∇K_ε(r) = r / sqrt(‖r‖² + ε²)
    norm = R.square().sum(-1, keepdim=True)
    assert torch.allclose(V[0], R / (norm + 0.3**2).sqrt(), rtol=0, atol=100 * 10 * U64)
    # one global map of all experts flattened is a different map
    flat = K.grad(P.reshape(1, -1, 4)).reshape(P.shape)
    assert float((flat - batched).abs().max()) > 0.1


def test_permutation_of_experts_leaves_J_and_H_unchanged():
    X, y, theta = _problem(seed=6)
    obj = moe_objective(X, y, hidden=HID)
    flow = mf.HamiltonianFlow(obj, mf.Relativistic(0.5), gamma=0.5)
    g = torch.Generator().manual_seed(7)
    P = tuple(torch.randn(t.shape, generator=g, dtype=torch.float64) for t in theta)
    perm = torch.randperm(N, generator=g)
    assert not torch.equal(perm, torch.arange(N))
    theta_p = tuple(t[perm] for t in theta)
    P_p = tuple(p[perm] for p in P)
    J, F = obj.value_and_force(theta)
    Jp, Fp = obj.value_and_force(theta_p)
    # sums over N experts in another order: ≤ N·u relative per sum, ~30 ops deep -> x100
    tol = 100 * 30 * N * U64
    assert abs(float(Jp) - float(J)) <= tol * abs(float(J))
    H, Hp = flow.hamiltonian(theta, P), flow.hamiltonian(theta_p, P_p)
    assert abs(float(Hp) - float(H)) <= tol * abs(float(H))
    for f, fp in zip(F, Fp, strict=True):  # forces are permutation-equivariant
        assert torch.allclose(fp, f[perm], rtol=0, atol=tol * float(f.abs().max()))


def test_validation_errors():
    X, y, _ = _problem()
    with pytest.raises(ValueError, match="shift"):
        MoEFeature(X, hidden=HID, shift="lse")
    with pytest.raises(ValueError, match="hidden"):
        MoEFeature(X, hidden=0)
    with pytest.raises(ValueError, match=r"\[o, B\]"):
        moe_objective(X, y[:, :3], hidden=HID)
    risk = RatioRisk(SquaredRisk(y))
    bad = torch.zeros(OUT + 1, B, dtype=torch.float64)
    with pytest.raises(ValueError, match="gate mass"):
        risk(bad)


def test_ratio_risk_grad_matches_autograd():
    X, y, theta = _problem(seed=8)
    risk = RatioRisk(SquaredRisk(y))
    m = moe_objective(X, y, hidden=HID).mean_feature(theta).clone().requires_grad_(True)
    (want,) = torch.autograd.grad(risk(m), m)
    # ~10 ops per entry on values of size max|∇R| -> x100
    assert torch.allclose(
        risk.grad(m.detach()), want, rtol=0, atol=100 * 10 * U64 * float(want.abs().max())
    )


# -- the MoE transformer layer -------------------------------------------------------------------


def test_moe_layer_equals_expert_loop_and_meanfield_output():
    torch.manual_seed(0)
    layer = MoEFeedForward(5, 4, 3, activation="tanh", init_std=0.5).double().requires_grad_(False)
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    y = layer(x)
    p = torch.softmax(torch.stack([x @ layer.router[e, 0] for e in range(4)], -1), -1)
    loop = sum(
        p[..., e : e + 1] * (torch.tanh(x @ layer.w1[e].T) @ layer.w2[e].T) for e in range(4)
    )
    # ~ (d + m + E) ≈ 12 ops per entry of size max|y| -> x100
    tol = 100 * 12 * U64 * float(loop.abs().max())
    assert torch.allclose(y, loop, rtol=0, atol=tol)
    # the same numbers as the mean-field ratio form with tokens as data points (X = xᵀ)
    theta = (layer.router.detach(), layer.w1.detach(), layer.w2.detach())
    X = x.reshape(-1, 5).T
    direct = softmax_moe_output(theta, X)  # [d, tokens]
    assert torch.allclose(direct.T.reshape(y.shape), y, rtol=0, atol=tol)


def test_regmuon_on_stacked_experts_equals_per_expert_matrices():
    torch.manual_seed(1)
    W = torch.randn(4, 6, 5, dtype=torch.float64)
    G = torch.randn(4, 6, 5, dtype=torch.float64)
    stacked = torch.nn.Parameter(W.clone())
    singles = [torch.nn.Parameter(W[e].clone()) for e in range(4)]
    opts = [
        mf.RegMuon([stacked], lr=0.1, tol=None, adamw=()),
        mf.RegMuon(singles, lr=0.1, tol=None, adamw=()),
    ]
    for _ in range(2):
        stacked.grad = G.clone()
        for e, s in enumerate(singles):
            s.grad = G[e].clone()
        for opt in opts:
            opt.step()
    loop = torch.stack([s.detach() for s in singles])
    # exact map (tol=None) in float64: ~1e-15 per entry, two steps -> x100
    assert torch.allclose(stacked.detach(), loop, rtol=0, atol=100 * 10 * U64)
    assert float((stacked.detach() - W).abs().max()) > 1e-3  # it moved


def test_dense_layout_is_the_same_layer_with_one_matrix_per_block():
    E, m, d = 3, 4, 6
    layers = {}
    for layout in ("stacked", "dense"):
        torch.manual_seed(3)
        layers[layout] = MoEFeedForward(
            d, E, m, activation="tanh", init_std=0.5, layout=layout
        ).double()
    st, de = layers["stacked"], layers["dense"]
    assert tuple(de.router.shape) == (E, d) and tuple(de.w1.shape) == (E * m, d)
    assert tuple(de.w2.shape) == (d, E * m)
    # the same draws, rearranged: column block e of the dense W2 is expert e's W2
    assert torch.equal(de.w1, st.w1.reshape(E * m, d))
    for e in range(E):
        assert torch.equal(de.w2[:, e * m : (e + 1) * m], st.w2[e])
    x = torch.randn(2, 5, d, dtype=torch.float64)
    y_st, y_de = st(x), de(x)
    # the same products in the same order up to reshapes -> a few ulp of max|y|
    y_max = float(y_st.detach().abs().max())
    assert torch.allclose(y_de, y_st, rtol=0, atol=100 * 12 * U64 * y_max)
    # gradients are the same numbers, rearranged like the weights
    y_st.square().sum().backward()
    y_de.square().sum().backward()
    g_scale = float(st.w2.grad.abs().max())
    tol = 100 * 40 * U64 * g_scale  # ~ (tokens + E·m) products per entry
    assert torch.allclose(de.w1.grad, st.w1.grad.reshape(E * m, d), rtol=0, atol=tol)
    assert torch.allclose(de.router.grad, st.router.grad.reshape(E, d), rtol=0, atol=tol)
    for e in range(E):
        assert torch.allclose(de.w2.grad[:, e * m : (e + 1) * m], st.w2.grad[e], rtol=0, atol=tol)
    with pytest.raises(ValueError, match="layout"):
        MoEFeedForward(d, E, m, layout="flat")
    cfg = TransformerConfig(vocab_size=16, block_size=8, d_model=8, n_heads=2, n_layers=1, d_mlp=16)
    torch.manual_seed(4)
    dense_model = moe_transformer(cfg, 4, layout="dense")
    idx = torch.randint(0, 16, (2, 8))
    with pytest.raises(ValueError, match="stacked"):
        ExpertParticles(dense_model, idx, idx)
    torch.manual_seed(4)
    stacked_model = moe_transformer(cfg, 4)
    # float32, identical arithmetic up to reshapes: a few ulp of the logits
    a, b = dense_model(idx), stacked_model(idx)
    assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(b.detach().abs().max()))


@pytest.mark.parametrize("n_experts", [4, 16])
def test_regmuon_maps_each_shape_once_per_step_whatever_the_number_of_experts(map_calls, n_experts):
    """No Python loop over experts: one batched map call per distinct matrix shape."""
    calls = map_calls
    torch.manual_seed(5)
    cfg = TransformerConfig(
        vocab_size=16, block_size=8, d_model=16, n_heads=2, n_layers=2, d_mlp=64
    )
    model = moe_transformer(cfg, n_experts)
    opt = mf.RegMuon(model.named_parameters())
    idx = torch.randint(0, 16, (2, 8))
    model.loss(idx, idx).backward()
    opt.step()
    m = 64 // n_experts
    # 2 layers: qkv [48, 16]; proj [16, 16]; routers [1, 16]; experts [m, 16] and [16, m]
    want = {(2, 48, 16), (2, 16, 16), (2 * n_experts, 1, 16)}
    want |= {(2 * n_experts, m, 16), (2 * n_experts, 16, m)}
    if m == 16:  # square experts share the stack of the 16 x 16 attention projections
        want = {(2, 48, 16), (2 * n_experts, 1, 16), (2 + 4 * n_experts, 16, 16)}
    assert sorted(calls) == sorted(want)


def test_moe_transformer_trains_with_regmuon_and_expert_particles():
    torch.manual_seed(2)
    cfg = TransformerConfig(
        vocab_size=16, block_size=8, d_model=16, n_heads=2, n_layers=1, d_mlp=32
    )
    model = moe_transformer(cfg, n_experts=4)
    assert tuple(model.blocks[0].mlp.w1.shape) == (4, 8, 16)
    idx = torch.randint(0, 16, (4, 8))
    tgt = torch.roll(idx, -1, dims=1)
    opt = mf.RegMuon(model.named_parameters(), lr=0.02, adamw_lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model.loss(idx, tgt)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] - 0.05  # memorizing one batch: loss must drop
    # particle view: force = −E ∂J/∂θ_e on every expert block
    obj = ExpertParticles(model, idx, tgt)
    W = obj.state()
    _, F = obj.value_and_force(W)
    model.zero_grad()
    model.loss(idx, tgt).backward()
    grads = [
        model.blocks[0].mlp.router.grad,
        model.blocks[0].mlp.w1.grad,
        model.blocks[0].mlp.w2.grad,
    ]
    for f, g in zip(F, grads, strict=True):
        # float32, same graph: identical up to a few ulp of max|g| -> 1e-5 relative
        assert torch.allclose(f, -4 * g, rtol=0, atol=1e-5 * 4 * float(g.abs().max()))
    flow = mf.HamiltonianFlow(obj, mf.Relativistic(1e-3), gamma=5.0)
    P0 = tuple(torch.zeros_like(w) for w in W)
    traj = mf.integrate(flow, W, P0, 0.02, h=0.002, method="muon")
    assert traj.H.shape[0] == 11 and bool(torch.isfinite(traj.H).all())
    assert float(traj.J[-1]) < float(traj.J[0])  # the particle flow lowers the loss


def test_expert_particles_old_name_is_a_deprecated_alias():
    import muonflow.models.moe as old

    with pytest.warns(DeprecationWarning, match="meanfield.moe.ExpertParticles"):
        assert old.ExpertParticles is ExpertParticles
    with pytest.raises(AttributeError, match="no attribute"):
        _ = old.NoSuchName
