"""RegMuon: exactness against the dynamics and torch.optim.Muon, batching, state, bad input.

Tolerances are in units of the dtype's unit roundoff ``u`` (``conftest.unit_roundoff``); each
test says where its multiple comes from.
"""

from __future__ import annotations

import copy
import io
import math
import re

import pytest
import torch
from conftest import unit_roundoff
from reference import polar_ref, relativistic_map_ref, torch_muon_rule_ref
from torch import nn

import muonflow as mf
from muonflow import optim as mf_optim
from muonflow.dynamics import HamiltonianFlow, integrate
from muonflow.optim import DEFAULTS, RegMuon, default_adamw_rule, matrix_shape
from muonflow.optim import plan as mf_plan

F64 = torch.float64
U64 = unit_roundoff(F64)


# -- helpers ------------------------------------------------------------------------------------
def amax(t: torch.Tensor) -> float:
    """``max |t|`` as a float."""
    return float(t.detach().abs().max())


def snapshot(params, opt) -> tuple[list[torch.Tensor], dict]:
    """Deep copies of the parameters and of the optimizer's full state dict."""
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def assert_same_state(a: dict, b: dict) -> None:
    """Two optimizer state dicts are identical (tensors bitwise, everything else ``==``)."""
    assert a.keys() == b.keys()
    assert a["param_groups"] == b["param_groups"]
    assert a.get("regmuon") == b.get("regmuon")
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        sa, sb = a["state"][k], b["state"][k]
        assert sa.keys() == sb.keys()
        for key in sa:
            if isinstance(sa[key], torch.Tensor):
                assert torch.equal(sa[key], sb[key]), (k, key)
            else:
                assert sa[key] == sb[key], (k, key)


class Toy(nn.Module):
    """Every parameter kind the optimizer routes: linear, conv, experts, norm, embedding, head."""

    def __init__(self, dtype=torch.float32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = nn.Embedding(11, 6)
        self.conv = nn.Conv2d(2, 3, 2)  # weight [3, 2, 2, 2] -> one 3 x 8 matrix
        self.fc1 = nn.Linear(12 + 6, 8)
        self.fc2 = nn.Linear(8, 8)
        self.experts = nn.Parameter(torch.randn(3, 8, 8, generator=g) / 3)  # [E, m, n]
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 5)
        self.to(dtype)

    def forward(self, img, tok):
        a = self.conv(img).flatten(1)
        h = torch.tanh(self.fc1(torch.cat([a, self.embed(tok)], 1)))
        h = torch.tanh(self.fc2(h))
        h = h + torch.tanh(torch.einsum("bi,eij->bj", h, self.experts))
        return self.head(self.norm(h))


def toy_batch(k: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(100 + k)
    img = torch.randn(16, 2, 3, 3, generator=g).to(dtype)
    tok = torch.randint(0, 11, (16,), generator=g)
    y = torch.randint(0, 5, (16,), generator=g)
    return img, tok, y


def toy_step(model, opt, k: int, sched=None, dtype=torch.float32) -> torch.Tensor:
    img, tok, y = toy_batch(k, dtype)
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(img, tok), y)
    loss.backward()
    opt.step()
    if sched is not None:
        sched.step()
    return loss.detach()


def quad_loss(params, targets, k: int):
    """A deterministic, step-dependent smooth loss on a list of matrices."""
    loss = 0.0
    for i, (p, t) in enumerate(zip(params, targets, strict=True)):
        loss = loss + ((p - t * math.cos(0.3 * k + i)) ** 2).sum() + (p**4).sum() / 4
    return loss


def run_quad(params, opt, targets, steps: int) -> None:
    for k in range(steps):
        opt.zero_grad()
        quad_loss(params, targets, k).backward()
        opt.step()


# -- exactness: the optimizer is the discretized flow --------------------------------------------
@pytest.mark.parametrize("pot", ["relativistic", "huber", "nuclear", "quadratic"])
def test_from_dynamics_equals_muon_integrator(pot):
    """RegMuon.from_dynamics reproduces integrate(method="muon") iterate for iterate.

    Blocks of three shapes (tall, wide, a stack of experts) with a non-quadratic objective
    and a non-zero initial momentum, float64. Both sides run the same operations up to
    rounding: P = -hM (one rounding per entry per step), ε/h vs ε and the map's internal
    normalization (a few roundings). A relative perturbation c·u of P moves ∇K(P) by at most
    c·u·‖P‖/ε (∇K is 1/ε-Lipschitz; ≤ 2 for the polar factor of well-conditioned inputs),
    hence W by h·c·u·‖P‖/ε ≲ c·u per step here (h = 0.05, ‖P‖ ≲ 2, ε = 0.3); errors then
    propagate through the damped, L-smooth dynamics over t = N·h = 2 with growth ≤ e^{L t}
    (a few). So |ΔW| ≤ N · 64 u · max|W| covers c ≈ 8 with a margin of ~8; any slip in the
    mapping (η, β, ε/h, P = -hM) is an O(h) = 5e-2 error.
    """
    g = torch.Generator().manual_seed(1)
    A = torch.randn(6, 6, generator=g, dtype=F64)
    A = A @ A.T / 6 + torch.eye(6, dtype=F64)
    T1 = torch.randn(6, 4, generator=g, dtype=F64)
    T2 = torch.randn(3, 7, dtype=F64, generator=g)
    T3 = torch.randn(2, 5, 3, dtype=F64, generator=g)

    def f(W):
        W1, W2, W3 = W
        return (
            0.5 * ((W1 - T1) * (A @ (W1 - T1))).sum()
            + ((W2 - T2) ** 2).sum() / 2
            + ((W3 - T3) ** 4).sum() / 4
        )

    W0 = tuple(torch.randn(t.shape, generator=g, dtype=F64) for t in (T1, T2, T3))
    P0 = tuple(0.2 * torch.randn(t.shape, generator=g, dtype=F64) for t in (T1, T2, T3))
    h, gamma, eps, N = 0.05, 1.5, 0.3, 40
    kin = mf.potential(pot, eps if pot in ("relativistic", "huber") else None)
    traj = integrate(HamiltonianFlow(f, kin, gamma), W0, P0, N * h, h=h, method="muon")

    params = [nn.Parameter(w.clone()) for w in W0]
    opt = RegMuon.from_dynamics(params, h=h, gamma=gamma, eps=eps, potential=pot, P0=P0)
    H = []
    for _ in range(N):
        opt.zero_grad()
        loss = f(tuple(params))
        loss.backward()
        H.append(opt.hamiltonian(loss))  # H(W_k, P_k): before the step
        opt.step()
    H.append(opt.hamiltonian(f(tuple(params)).detach()))

    scale = max(amax(w) for w in traj.W)
    tol = N * 64 * U64 * scale
    for p, w, P in zip(params, traj.W, traj.P, strict=True):
        assert amax(p.detach() - w) <= tol
        P_opt = -h * opt.state[p]["momentum_buffer"]  # dynamics momentum P = -hM
        assert amax(P_opt - P) <= tol * max(1.0, amax(P))
    # The energy ledger: H = J + K in dynamics units, step for step.
    H = torch.stack(H)
    assert H.shape == traj.H.shape
    assert amax(H - traj.H) <= tol * amax(traj.H)
    assert float((opt.kinetic_energy() - traj.K[-1]).abs()) <= tol * amax(traj.H)


def test_from_dynamics_validates():
    w = [nn.Parameter(torch.zeros(2, 2))]
    with pytest.raises(ValueError, match=r"gamma\*h must be <= 1"):
        RegMuon.from_dynamics(w, h=0.5, gamma=3.0, eps=0.1)
    with pytest.raises(ValueError, match="h and eps must be > 0"):
        RegMuon.from_dynamics(w, h=0.0, gamma=1.0, eps=0.1)
    with pytest.raises(ValueError, match="ndim >= 2"):
        RegMuon.from_dynamics([nn.Parameter(torch.zeros(3))], h=0.1, gamma=1.0, eps=0.1)
    with pytest.raises(ValueError, match="P0 shape"):
        RegMuon.from_dynamics(w, h=0.1, gamma=1.0, eps=0.1, P0=[torch.zeros(3, 2)])


def test_ema_absolute_eps_mapping_and_relative_invariance():
    """EMA momentum with ε_B equals sum form with ε_B/(1-β) (absolute ε); relative ε: equal.

    Same map inputs up to the factor (1-β) and the scaled ε, i.e. a few roundings per step
    (float64), amplified by ≤ ‖M‖/ε through the map: N · 64 u · max|W| as in the test above.
    """
    g = torch.Generator().manual_seed(2)
    targets = [torch.randn(5, 3, generator=g, dtype=F64), torch.randn(4, 4, generator=g, dtype=F64)]
    W0 = [torch.randn(t.shape, generator=g, dtype=F64) for t in targets]
    beta, N = 0.9, 20
    for mode, eps_ema, eps_sum in [("absolute", 0.05, 0.05 / (1 - beta)), ("relative", 0.2, 0.2)]:
        runs = []
        for form, eps in [("ema", eps_ema), ("sum", eps_sum)]:
            ps = [nn.Parameter(w.clone()) for w in W0]
            opt = RegMuon(
                ps,
                adamw=(),
                lr=0.03,
                momentum=beta,
                eps=eps,
                eps_mode=mode,
                momentum_form=form,
                tol=None,
                adjust_lr="none",
            )
            run_quad(ps, opt, targets, N)
            runs.append((ps, opt.kinetic_energy()))
        (pa, Ka), (pb, Kb) = runs
        tol = N * 64 * U64 * max(amax(p) for p in pb)
        for a, b in zip(pa, pb, strict=True):
            assert amax(a - b) <= tol, mode
        assert float((Ka - Kb).abs()) <= N * 64 * U64 * float(Kb), mode


# -- equivalence with torch.optim.Muon where they coincide -------------------------------------
@pytest.mark.parametrize(
    ("nesterov", "adjust", "wd"),
    [(True, "original", 0.1), (False, "match_rms_adamw", 0.0), (True, "none", 0.05)],
)
def test_nuclear_matches_torch_muon_rule(nesterov, adjust, wd):
    """potential="nuclear" (exact polar) with EMA momentum is torch.optim.Muon's update rule.

    Compared with the SVD reference of that rule (tests/reference.py), float64, tall and wide
    matrices. The polar factor moves by ≤ 2‖δX‖/(σ_min(X) + σ_{min-1}(X)) under a perturbation
    δX; with σ_min ≳ 0.1 here (random gradients of full rank) a rounding-level δX ~ u‖X‖
    becomes ≲ 40 u per step, so N · 256 u · max(1, max|W|) bounds N = 12 steps with margin.
    """
    g = torch.Generator().manual_seed(3)
    shapes = [(7, 4), (3, 6)]
    W0 = [torch.randn(s, generator=g, dtype=F64) for s in shapes]
    G = [[torch.randn(s, generator=g, dtype=F64) for s in shapes] for _ in range(12)]
    lr, beta = 0.02, 0.9
    ps = [nn.Parameter(w.clone()) for w in W0]
    opt = RegMuon(
        ps,
        lr=lr,
        momentum=beta,
        potential="nuclear",
        momentum_form="ema",
        nesterov=nesterov,
        weight_decay=wd,
        adjust_lr=adjust,
        adamw=(),
    )
    ref_W, ref_B = [w.clone() for w in W0], [torch.zeros_like(w) for w in W0]
    for grads in G:
        for p, gk in zip(ps, grads, strict=True):
            p.grad = gk.clone()
        opt.step()
        for i, gk in enumerate(grads):
            ref_W[i], ref_B[i] = torch_muon_rule_ref(
                ref_W[i],
                ref_B[i],
                gk,
                lr=lr,
                momentum=beta,
                nesterov=nesterov,
                weight_decay=wd,
                adjust_lr_fn=adjust if adjust != "none" else "none",
            )
    tol = len(G) * 256 * U64 * max(1.0, max(amax(w) for w in ref_W))
    for p, w, b in zip(ps, ref_W, ref_B, strict=True):
        assert amax(p.detach() - w) <= tol
        assert amax(opt.state[p]["momentum_buffer"] - b) <= tol


def test_nuclear_matches_torch_optim_muon_with_exact_polar(monkeypatch):
    """The same, against torch.optim.Muon itself with its Newton–Schulz swapped for U Vᵀ.

    torch.optim.Muon calls the module-level ``_zeropower_via_newtonschulz``; replacing it by
    the exact polar factor leaves torch's own momentum/Nesterov/decay/lr arithmetic, so the
    two optimizers then share the rule exactly (tolerance as in the previous test).
    """
    muon_mod = pytest.importorskip("torch.optim._muon")
    if not hasattr(muon_mod, "_zeropower_via_newtonschulz"):
        pytest.skip("torch.optim.Muon internals changed")
    monkeypatch.setattr(muon_mod, "_zeropower_via_newtonschulz", lambda G, *a: polar_ref(G))
    g = torch.Generator().manual_seed(4)
    W0 = [torch.randn(s, generator=g, dtype=F64) for s in [(6, 4), (4, 9)]]
    G = [[torch.randn(w.shape, generator=g, dtype=F64) for w in W0] for _ in range(10)]
    a = [nn.Parameter(w.clone()) for w in W0]
    b = [nn.Parameter(w.clone()) for w in W0]
    ours = RegMuon(
        a,
        adamw=(),
        lr=0.05,
        momentum=0.95,
        potential="nuclear",
        momentum_form="ema",
        nesterov=True,
        weight_decay=0.1,
        adjust_lr="original",
    )
    theirs = torch.optim.Muon(b, lr=0.05, momentum=0.95, nesterov=True, weight_decay=0.1)
    for grads in G:
        for pa, pb, gk in zip(a, b, grads, strict=True):
            pa.grad, pb.grad = gk.clone(), gk.clone()
        ours.step()
        theirs.step()
    tol = len(G) * 256 * U64 * max(1.0, max(amax(w) for w in b))
    for pa, pb in zip(a, b, strict=True):
        assert amax(pa - pb) <= tol


def test_relativistic_tends_to_nuclear():
    """One step: |∇K_ε(M) − U Vᵀ| ≤ ε²/(2σ_min²) per singular direction (docs/theory.md, §1).

    The spectral error is exactly 1 − σ/√(σ²+ε²) ≤ ε²/(2σ²); the operator norm of the update
    difference is bounded by it at σ_min, plus float64 rounding (≪ the bound at ε = 1e-3).
    """
    g = torch.Generator().manual_seed(5)
    W0 = torch.randn(6, 4, generator=g, dtype=F64)
    grad = torch.randn(6, 4, generator=g, dtype=F64)
    smin = float(torch.linalg.svdvals(grad)[-1])
    for eps in (1e-1, 1e-2, 1e-3):
        outs = []
        for pot in ("relativistic", "nuclear"):
            p = nn.Parameter(W0.clone())
            opt = RegMuon(
                [p], adamw=(), lr=1.0, eps=eps, eps_mode="absolute", potential=pot,
                adjust_lr="none", tol=None,
            )  # fmt: skip
            p.grad = grad.clone()
            opt.step()
            outs.append(p.detach())
        diff = float(torch.linalg.matrix_norm(outs[0] - outs[1], ord=2))
        assert diff <= eps**2 / (2 * smin**2) * (1 + 1e-6)
        assert diff >= 0.25 * eps**2 / (2 * float(torch.linalg.svdvals(grad)[0]) ** 2)


# -- the map and the update of one step ----------------------------------------------------------
def test_one_step_matches_svd_reference():
    """A single step equals W − η ρ U diag(σ/√(σ²+ε²)) Vᵀ of the momentum (float64 SVD).

    With tol=None the map is exact to float64 round-off: 64 u relative (the foundation's
    bound for well-conditioned κ = ‖M‖/ε ≤ 10).
    """
    g = torch.Generator().manual_seed(6)
    W0 = torch.randn(8, 3, generator=g, dtype=F64)
    grad = torch.randn(8, 3, generator=g, dtype=F64)
    eps_rel = 0.3
    p = nn.Parameter(W0.clone())
    opt = RegMuon([p], adamw=(), lr=0.1, eps=eps_rel, tol=None)  # relative ε, adjust "original"
    p.grad = grad.clone()
    opt.step()
    eps = eps_rel * float(torch.linalg.matrix_norm(grad)) / math.sqrt(3)
    expect = W0 - 0.1 * math.sqrt(8 / 3) * relativistic_map_ref(grad, eps)
    assert amax(p.detach() - expect) <= 64 * U64


def test_relative_eps_is_scale_free():
    """Relative ε: gradients scaled by 1e-6 or 1e6 give the same iterates (float32).

    The map sees the same normalized input; differences come from rounding the scaled
    gradients and norms (a few u per step), amplified through the map by κ = √r/ε ≈ 12 and
    scaled by the step ηρ, plus at most 2 ulp of |W| when adding slightly different updates:
    per step ≤ (ηρ · 64 · 16 + 2) u · max|W|, for 5 steps.
    """
    g = torch.Generator().manual_seed(7)
    W0 = torch.randn(12, 9, generator=g)
    grads = [torch.randn(12, 9, generator=g) for _ in range(5)]
    outs = []
    for c in (1e-6, 1.0, 1e6):
        p = nn.Parameter(W0.clone())
        opt = RegMuon([p], adamw=(), lr=0.05, eps=0.25)
        for gk in grads:
            p.grad = gk * c
            opt.step()
        outs.append(p.detach())
    u32 = unit_roundoff(torch.float32)
    step = 0.05 * math.sqrt(12 / 9)
    for o in (outs[0], outs[2]):
        assert amax(o - outs[1]) <= 5 * (step * 64 * 16 + 2) * u32 * amax(outs[1])


# -- batching --------------------------------------------------------------------------------------
def test_batched_equals_per_parameter_loop_and_one_map_call(map_calls):
    """Same-shape matrices are mapped in one call per step; results equal a per-matrix loop.

    The loop reference uses one optimizer per parameter. float64, tol=None: batched and
    single LAPACK/BLAS calls can round differently (≤ a few u per entry per step, amplified
    by κ = √r/ε ≈ 7 through the map), so N · 64 u · 8 · max|W|.
    """
    calls = map_calls
    g = torch.Generator().manual_seed(8)
    shapes = [(5, 4)] * 6 + [(4, 5)] * 2 + [(3, 5, 4)]  # plus a 3-stack of 5x4 experts
    targets = [torch.randn(s, generator=g, dtype=F64) for s in shapes]
    W0 = [torch.randn(s, generator=g, dtype=F64) for s in shapes]
    N = 6
    kw = dict(lr=0.05, momentum=0.9, eps=0.3, nesterov=True, weight_decay=0.01, tol=None)
    batched = [nn.Parameter(w.clone()) for w in W0]
    run_quad(batched, RegMuon(batched, adamw=(), max_batch_bytes=None, **kw), targets, N)
    assert calls == [(9, 5, 4), (2, 4, 5)] * N  # one call per shape per step
    # max_batch_bytes -> matrices per call: an int caps the bytes of one map input (5x4 float64
    # matrices: 4 per call, or 1 for a cap below one matrix); "auto" maps these small stacks whole.
    for cap, rows in [(5 * 4 * 8 * 4, 4), (1, 1), ("auto", 9)]:
        calls.clear()
        chunked = [nn.Parameter(w.clone()) for w in W0]
        run_quad(chunked, RegMuon(chunked, adamw=(), max_batch_bytes=cap, **kw), targets, N)
        assert max(c[0] for c in calls) == rows
        for a, b in zip(chunked, batched, strict=True):
            assert amax(a - b) <= N * 64 * 8 * U64 * amax(b)
    loop = [nn.Parameter(w.clone()) for w in W0]
    opts = [RegMuon([p], adamw=(), **kw) for p in loop]
    for k in range(N):
        for o in opts:
            o.zero_grad()
        quad_loss(loop, targets, k).backward()
        for o in opts:
            o.step()
    for a, b in zip(loop, batched, strict=True):
        assert amax(a - b) <= N * 64 * 8 * U64 * amax(b)


def test_auto_chunking_caps_a_call_at_the_largest_matrix_workspace(monkeypatch, map_calls):
    """``max_batch_bytes="auto"``: a call's workspace estimate may reach ``max(floor, largest)``.

    ``largest`` is the estimate for mapping the optimizer's largest matrix alone (the peak of a
    per-matrix loop); the floor is patched so the rule can be exercised on a 70-matrix stack of
    3x2 matrices (``map_workspace_bytes(3, 2)`` bytes each), then a 20x20 matrix joins and its
    own workspace becomes the cap.
    """
    calls = map_calls
    per = mf_plan.map_workspace_bytes(3, 2)
    big = mf_plan.map_workspace_bytes(20, 20)
    assert mf_plan.auto_workspace_cap([(3, 2)] * 70) == mf_plan.AUTO_WORKSPACE_FLOOR
    floor = mf_plan.AUTO_WORKSPACE_FLOOR
    assert mf_plan.auto_workspace_cap([(3, 2), (20, 20)]) == max(big, floor)
    assert mf_plan.chunk_rows(70, 3, 2, 8, "auto", mf_plan.AUTO_WORKSPACE_FLOOR) is None
    g = torch.Generator().manual_seed(9)
    many = [nn.Parameter(torch.randn(3, 2, generator=g, dtype=F64)) for _ in range(70)]
    large = nn.Parameter(torch.randn(20, 20, generator=g, dtype=F64))

    def step(params):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=F64)
        calls.clear()
        RegMuon(params, adamw=()).step()
        return [c[0] for c in calls if c[1:] == (3, 2)], [c for c in calls if c[1:] == (20, 20)]

    for floor, want in [(70 * per, [70]), (70 * per - 1, [69, 1]), (24 * per + 5, [24, 24, 22]),
                        (per - 1, [1] * 70)]:  # fmt: skip
        monkeypatch.setattr(mf_plan, "AUTO_WORKSPACE_FLOOR", floor)
        assert step(many) == (want, []), floor
    monkeypatch.setattr(mf_plan, "AUTO_WORKSPACE_FLOOR", 0)
    k = big // per  # 3x2 matrices per call once the 20x20 matrix sets the cap
    assert 1 < k < 70
    assert step([*many, large]) == ([k] * (70 // k) + [70 % k] * (70 % k > 0), [(1, 20, 20)])


class _LiveBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Peak bytes of the tensor storages that aten ops return while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[object, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.multiprocessing.reductions import StorageWeakRef

        out = func(*args, **(kwargs or {}))
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        for t in torch.utils._pytree.tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                if st.data_ptr() and st.data_ptr() not in self.live:
                    self.live[st.data_ptr()] = (StorageWeakRef(st), st.nbytes())
        self.peak = max(self.peak, sum(n for _, n in self.live.values()))
        return out


@pytest.mark.parametrize(
    "shape",
    [(6, 64, 64), (6, 96, 32), (6, 32, 96), (12, 8, 64), (12, 1, 64), (8, 2, 2), (1, 512, 128)],
)
@pytest.mark.parametrize("path", ["poly32", "poly64", "eigh", "mixed"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_map_workspace_is_within_the_auto_chunking_estimate(shape, path, dtype):
    """The measured peak of the map's temporaries is within ``map_workspace_bytes`` per matrix.

    Paths: the fast map in float32 (well-conditioned momentum), forced to float64 by a strong
    rank-one component (κ² above float32's reach), the exact ``eigh`` map (``tol=None``) and
    the mixed-precision map (``method="mixed"``, ``tol=0.1``);
    float32 and float64 inputs; square, tall and wide. The estimate is what
    ``max_batch_bytes="auto"`` relies on; the float64 matmul-only path on square float32
    matrices reaches 0.95 of it, so a kernel that grows its workspace by more than ~5% fails
    here.
    """
    g = torch.Generator().manual_seed(10)
    B, m, n = shape
    X = torch.randn(shape, generator=g, dtype=dtype)
    if path == "poly64":
        u = torch.randn(B, m, 1, generator=g, dtype=dtype)
        X = X + 30 * u @ torch.randn(B, 1, n, generator=g, dtype=dtype)
    method = "mixed" if path == "mixed" else "auto"
    kw = dict(potential="relativistic", eps=0.03, eps_mode="relative", method=method)
    tol = {"eigh": None, "mixed": 0.1}.get(path, 1e-3)
    tracker = _LiveBytes()
    with tracker:
        mf_optim.mirror_map(X, tol=tol, **kw)
    assert 0 < tracker.peak <= B * mf_plan.map_workspace_bytes(m, n)


def test_state_buffers_are_views_of_one_stack():
    ps = [nn.Parameter(torch.randn(4, 3)) for _ in range(3)]
    opt = RegMuon(ps, adamw=())
    for p in ps:
        p.grad = torch.randn(4, 3)
    opt.step()
    bufs = [opt.state[p]["momentum_buffer"] for p in ps]
    assert all(b.shape == (4, 3) for b in bufs)
    base = bufs[0].untyped_storage().data_ptr()
    assert all(b.untyped_storage().data_ptr() == base for b in bufs)
    # Replacing a buffer from outside is honoured (repacked, not silently ignored).
    opt.state[ps[1]]["momentum_buffer"] = torch.zeros(4, 3)
    before = ps[1].detach().clone()
    for p in ps:
        p.grad = torch.ones(4, 3)
    opt.step()
    m = opt.state[ps[1]]["momentum_buffer"]
    assert torch.equal(m, torch.ones(4, 3))  # 0.95 * 0 + 1
    assert not torch.equal(ps[1].detach(), before)


# -- parameter kinds and routing -----------------------------------------------------------------
def test_routing_of_a_whole_model():
    model = Toy()
    opt = RegMuon(model.named_parameters())
    algo = {n: g["algorithm"] for g in opt.param_groups for n in g["param_names"]}
    assert algo == {
        "embed.weight": "adamw",
        "conv.weight": "regmuon",
        "conv.bias": "adamw",
        "fc1.weight": "regmuon",
        "fc1.bias": "adamw",
        "fc2.weight": "regmuon",
        "fc2.bias": "adamw",
        "experts": "regmuon",
        "norm.weight": "adamw",
        "norm.bias": "adamw",
        "head.weight": "adamw",
        "head.bias": "adamw",
    }
    assert [g["lr"] for g in opt.param_groups] == [DEFAULTS.lr, DEFAULTS.adamw_lr]
    # Predicates and patterns; unnamed parameters see name None.
    opt = RegMuon(model.named_parameters(), adamw=[r"^fc2\."])
    assert "embed.weight" in opt.param_groups[0]["param_names"]
    assert "fc2.weight" in opt.param_groups[1]["param_names"]
    opt = RegMuon(model.parameters(), adamw=lambda name, p: p.shape == (5, 8))
    assert any(p is model.head.weight for p in opt.param_groups[1]["params"])
    assert any(p is model.embed.weight for p in opt.param_groups[0]["params"])
    assert default_adamw_rule("transformer.wte.weight", model.fc1.weight)
    assert default_adamw_rule("model.embed_tokens.weight", model.fc1.weight)
    assert not default_adamw_rule("blocks.0.attn.heads.weight", model.fc1.weight)
    assert not default_adamw_rule(None, model.fc1.weight)


def test_matrix_views():
    assert matrix_shape((4, 5)) == (1, 4, 5)
    assert matrix_shape((3, 4, 5)) == (3, 4, 5)
    assert matrix_shape((8, 2, 3, 3)) == (1, 8, 18)
    assert matrix_shape((8, 2, 3), "conv") == (1, 8, 6)
    assert matrix_shape((2, 3, 4, 5), "batch") == (6, 4, 5)
    with pytest.raises(ValueError, match="ndim >= 2"):
        matrix_shape((4,))


def _one_step(params, grads, **kw) -> list[torch.Tensor]:
    ps = [nn.Parameter(p.clone()) for p in params]
    opt = RegMuon(ps, adamw=(), tol=None, **kw)
    for _ in range(3):
        for p, gk in zip(ps, grads, strict=True):
            p.grad = gk.clone()
        opt.step()
    return [p.detach() for p in ps]


def test_conv_experts_and_transposed_weights_are_their_matrices():
    """Conv kernels = their (out, in·kh·kw) matrix; experts = separate matrices; a Conv1D-style
    [in, out] weight with layout="in_out" = the transpose of the [out, in] one.

    Each pair runs the same map on the same numbers (up to a transposed memory layout, which
    may change BLAS rounding: ≤ 3 steps · 64 u · κ(≈4) · max|W|, float64).
    """
    g = torch.Generator().manual_seed(9)
    tol = 3 * 64 * 4 * U64 * 4
    conv_w = torch.randn(4, 2, 3, 3, generator=g, dtype=F64)
    conv_g = torch.randn(4, 2, 3, 3, generator=g, dtype=F64)
    (a,) = _one_step([conv_w], [conv_g])
    (b,) = _one_step([conv_w.reshape(4, 18)], [conv_g.reshape(4, 18)])
    assert amax(a.reshape(4, 18) - b) <= tol

    ex_w = torch.randn(3, 5, 4, generator=g, dtype=F64)
    ex_g = torch.randn(3, 5, 4, generator=g, dtype=F64)
    (a,) = _one_step([ex_w], [ex_g])
    singles = _one_step(list(ex_w), list(ex_g))
    assert amax(a - torch.stack(singles)) <= tol

    lin_w = torch.randn(9, 4, generator=g, dtype=F64)  # [out, in]: ρ = √(9/4)
    lin_g = torch.randn(9, 4, generator=g, dtype=F64)
    (a,) = _one_step([lin_w], [lin_g])
    (b,) = _one_step([lin_w.T.contiguous()], [lin_g.T.contiguous()], layout="in_out")
    assert amax(a - b.T) <= tol
    (c,) = _one_step([lin_w.T.contiguous()], [lin_g.T.contiguous()])  # wrong layout: ρ = 1
    assert amax(a - c.T) > 1e-3


def test_non_viewable_parameters_are_updated_in_place():
    """A channels_last conv kernel (strides that cannot be viewed as its matrix) is updated
    through a copy and written back: bitwise the contiguous kernel's update (same numbers)."""
    g = torch.Generator().manual_seed(14)
    w = torch.randn(4, 3, 2, 2, generator=g)
    grad = torch.randn(4, 3, 2, 2, generator=g)
    a = nn.Parameter(w.clone())
    b = nn.Parameter(w.clone().to(memory_format=torch.channels_last))
    assert not b.is_contiguous()
    oa, ob = RegMuon([a], adamw=()), RegMuon([b], adamw=())
    for _ in range(2):
        a.grad, b.grad = grad.clone(), grad.clone().to(memory_format=torch.channels_last)
        oa.step()
        ob.step()
    assert torch.equal(a, b) and not torch.equal(a, w)
    assert b.stride() == w.to(memory_format=torch.channels_last).stride()


def test_tied_frozen_and_gradless_parameters():
    g = torch.Generator().manual_seed(10)
    tied = nn.Parameter(torch.randn(4, 4, generator=g))
    other = nn.Parameter(torch.randn(4, 4, generator=g))
    frozen = nn.Parameter(torch.randn(4, 4, generator=g), requires_grad=False)
    unused = nn.Parameter(torch.randn(4, 4, generator=g))
    ref_tied, ref_other = nn.Parameter(tied.detach().clone()), nn.Parameter(other.detach().clone())
    with pytest.warns(UserWarning, match="duplicate parameters"):  # torch.optim's warning
        opt = RegMuon([tied, other, tied, frozen, unused], adamw=())  # tied twice: one entry
    ref = RegMuon([ref_tied, ref_other], adamw=())
    assert len(opt.param_groups[0]["params"]) == 4
    frozen0, unused0 = frozen.detach().clone(), unused.detach().clone()
    for k in range(3):
        for o, (a, b) in ((opt, (tied, other)), (ref, (ref_tied, ref_other))):
            o.zero_grad()
            ((a @ b).sin().sum() + k * a.sum()).backward()  # grad of a shared weight accumulates
            o.step()
    assert torch.equal(tied, ref_tied) and torch.equal(other, ref_other)  # updated once
    assert torch.equal(frozen, frozen0) and torch.equal(unused, unused0)
    assert frozen not in opt.state and unused not in opt.state
    # A parameter that starts receiving gradients later joins the batch (repacked).
    unused.grad = torch.ones(4, 4)
    tied.grad, other.grad = torch.ones(4, 4), torch.ones(4, 4)
    opt.step()
    assert torch.equal(opt.state[unused]["momentum_buffer"], torch.ones(4, 4))
    assert not torch.equal(unused, unused0)


def test_adamw_part_matches_torch_adamw():
    """The built-in AdamW is torch.optim.AdamW's arithmetic (foreach path): bitwise on CPU."""
    g = torch.Generator().manual_seed(11)
    vecs = [torch.randn(s, generator=g) for s in [(7,), (3,), (5, 2)]]
    a = [nn.Parameter(v.clone()) for v in vecs]
    b = [nn.Parameter(v.clone()) for v in vecs]
    ours = RegMuon(
        [{"params": a, "algorithm": "adamw"}],
        adamw_lr=3e-3,
        weight_decay=0.1,
        adamw_betas=(0.8, 0.95),
        adamw_eps=1e-6,
    )
    theirs = torch.optim.AdamW(
        b, lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, foreach=True
    )
    assert ours.param_groups[0]["lr"] == 3e-3
    for _ in range(7):
        grads = [torch.randn(v.shape, generator=g) for v in vecs]
        for pa, pb, gk in zip(a, b, grads, strict=True):
            pa.grad, pb.grad = gk.clone(), gk.clone()
        ours.step()
        theirs.step()
    for pa, pb in zip(a, b, strict=True):
        assert torch.equal(pa, pb)


def test_bf16_parameters():
    """bfloat16 parameters: state in bf16, the map in float32, one step as in float32.

    The bf16 step rounds the map output (u_b relative, plus the map's tol = 1e-3) and the new
    weights (u_b · |W'|): |W'_bf16 − W'_f32| ≤ u_b |W'| + ηρ (u_b + 1e-3) |D| entrywise; twice
    that as slack for the float32 reference's own rounding.
    """
    g = torch.Generator().manual_seed(13)
    W0 = torch.randn(16, 8, generator=g).bfloat16()
    grad = torch.randn(16, 8, generator=g).bfloat16()
    p = nn.Parameter(W0.clone())
    opt = RegMuon([p], adamw=(), lr=0.1, eps=0.1)
    p.grad = grad.clone()
    opt.step()
    buf = opt.state[p]["momentum_buffer"]
    assert buf.dtype == torch.bfloat16 and torch.equal(buf, grad)
    step = 0.1 * math.sqrt(16 / 8)
    eps = 0.1 * float(torch.linalg.matrix_norm(grad.double())) / math.sqrt(8)
    D = relativistic_map_ref(grad.double(), eps)
    expect = W0.double() - step * D
    ub = unit_roundoff(torch.bfloat16)
    bound = 2 * (ub * expect.abs() + step * (ub + 1e-3) * D.abs())
    assert bool(((p.detach().double() - expect).abs() <= bound).all())


# -- state: resume, old checkpoints, schedulers, groups ------------------------------------------
def _make_toy_opt(model):
    opt = RegMuon(
        model.named_parameters(), lr=0.03, nesterov=True, weight_decay=0.01, adamw_lr=2e-3
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    return opt, sched


def test_bitwise_resume():
    """2k steps == k steps + save/load (model, optimizer, scheduler) + k steps, bitwise (CPU)."""
    k = 4
    torch.manual_seed(0)
    model = Toy()
    init = copy.deepcopy(model.state_dict())
    opt, sched = _make_toy_opt(model)
    for i in range(2 * k):
        toy_step(model, opt, i, sched)

    model2 = Toy()
    model2.load_state_dict(init)
    opt2, sched2 = _make_toy_opt(model2)
    for i in range(k):
        toy_step(model2, opt2, i, sched2)
    blob = io.BytesIO()
    torch.save(
        {"model": model2.state_dict(), "opt": opt2.state_dict(), "sched": sched2.state_dict()}, blob
    )
    blob.seek(0)
    ckpt = torch.load(blob, weights_only=True)
    model3 = Toy()
    model3.load_state_dict(ckpt["model"])
    opt3, sched3 = _make_toy_opt(model3)
    opt3.load_state_dict(ckpt["opt"])
    sched3.load_state_dict(ckpt["sched"])
    for i in range(k, 2 * k):
        toy_step(model3, opt3, i, sched3)
    for (n, a), b in zip(model.named_parameters(), model3.parameters(), strict=True):
        assert torch.equal(a, b), n
    assert_same_state(opt.state_dict(), opt3.state_dict())


def test_old_state_dict_loads_with_defaults():
    model = Toy()
    opt = RegMuon(model.named_parameters(), tol=1e-2)
    toy_step(model, opt, 0)
    sd = copy.deepcopy(opt.state_dict())
    for group in sd["param_groups"]:  # a checkpoint written before these options existed
        del group["tol"], group["layout"], group["algorithm"]
    del sd["regmuon"]
    opt2 = RegMuon(Toy().named_parameters(), tol=1e-2)
    opt2.load_state_dict(sd)
    assert all(g["tol"] == 1e-2 and g["layout"] == "out_in" for g in opt2.param_groups)
    assert [g["algorithm"] for g in opt2.param_groups] == ["regmuon", "adamw"]
    assert opt2.skipped_steps == 0
    model2 = Toy()
    opt3 = RegMuon(model2.named_parameters(), tol=1e-2)
    opt3.load_state_dict(sd)
    toy_step(model2, opt3, 1)  # steps without a KeyError


def test_scheduler_scales_both_parts():
    """LambdaLR on RegMuon == setting each group's lr by hand (bitwise)."""

    def run(use_sched: bool):
        torch.manual_seed(0)
        model = Toy()
        opt = RegMuon(model.named_parameters(), lr=0.04, adamw_lr=1e-2)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t)) if use_sched else None
        lrs = []
        for i in range(4):
            if not use_sched:
                for g, base in zip(opt.param_groups, (0.04, 1e-2), strict=True):
                    g["lr"] = base * (1 / (1 + i))  # LambdaLR: base_lr * lambda(t)
            lrs.append([g["lr"] for g in opt.param_groups])
            toy_step(model, opt, i, sched)
        return model, lrs

    (ma, la), (mb, lb) = run(True), run(False)
    assert la == lb and la[3] == [0.01, 0.0025]
    for a, b in zip(ma.parameters(), mb.parameters(), strict=True):
        assert torch.equal(a, b)


def test_param_group_overrides():
    """Each group uses its own options: two groups == two single-group optimizers (bitwise)."""
    g = torch.Generator().manual_seed(12)
    W = [torch.randn(6, 4, generator=g) for _ in range(2)]
    grads = [[torch.randn(6, 4, generator=g) for _ in range(2)] for _ in range(4)]
    over = {"lr": 0.1, "eps": 0.5, "potential": "huber", "momentum": 0.5, "nesterov": True}
    a = [nn.Parameter(w.clone()) for w in W]
    opt = RegMuon([{"params": [a[0]]}, {"params": [a[1]], **over}], adamw=(), lr=0.03)
    assert opt.param_groups[1]["potential"] == "huber" and opt.param_groups[0]["eps"] == 0.03
    b0, b1 = nn.Parameter(W[0].clone()), nn.Parameter(W[1].clone())
    ref0 = RegMuon([b0], adamw=(), lr=0.03)
    ref1 = RegMuon([b1], adamw=(), **{**over, "lr": 0.1})
    for gk in grads:
        a[0].grad, a[1].grad, b0.grad, b1.grad = gk[0], gk[1], gk[0].clone(), gk[1].clone()
        opt.step()
        ref0.step()
        ref1.step()
    assert torch.equal(a[0], b0) and torch.equal(a[1], b1)
    assert not torch.equal(a[0], a[1])


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["fc2.weight", "experts", "norm.bias", "embed.weight"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nonfinite_gradient_raises_and_changes_nothing(where, value):
    model = Toy()
    opt = RegMuon(model.named_parameters(), nesterov=True, weight_decay=0.1)
    for i in range(2):
        toy_step(model, opt, i)
    img, tok, y = toy_batch(5)
    opt.zero_grad()
    nn.functional.cross_entropy(model(img, tok), y).backward()
    dict(model.named_parameters())[where].grad.view(-1)[3] = value
    params0, state0 = snapshot(list(model.parameters()), opt)
    msg = re.escape(f"non-finite gradient (NaN or Inf) in parameter '{where}'")
    with pytest.raises(ValueError, match=msg):
        opt.step()
    for p, p0 in zip(model.parameters(), params0, strict=True):
        assert torch.equal(p, p0)
    assert_same_state(opt.state_dict(), state0)


def test_nonfinite_gradient_skip_mode_counts_and_changes_nothing():
    model = Toy()
    opt = RegMuon(model.named_parameters(), on_nonfinite="skip")
    toy_step(model, opt, 0)
    img, tok, y = toy_batch(1)
    opt.zero_grad()
    nn.functional.cross_entropy(model(img, tok), y).backward()
    model.fc1.weight.grad[0, 0] = math.inf
    params0, state0 = snapshot(list(model.parameters()), opt)
    opt.step()
    for p, p0 in zip(model.parameters(), params0, strict=True):
        assert torch.equal(p, p0)
    state1 = opt.state_dict()
    assert state1["regmuon"] == {"skipped_steps": 1}
    state0["regmuon"] = {"skipped_steps": 1}
    state0["param_groups"][0]["regmuon_extras"] = '{"skipped_steps": 1}'  # DCP's copy
    assert_same_state(state1, state0)
    opt2 = RegMuon(Toy().named_parameters())
    opt2.load_state_dict(state1)
    assert opt2.skipped_steps == 1


def test_sparse_gradient_raises_and_changes_nothing():
    emb = nn.Embedding(10, 4, sparse=True)
    lin = nn.Linear(4, 4)
    params = [("emb.weight", emb.weight), *[(f"lin.{n}", p) for n, p in lin.named_parameters()]]
    opt = RegMuon(params)
    lin(emb(torch.tensor([1, 2]))).sum().backward()
    p0, s0 = snapshot([emb.weight, lin.weight, lin.bias], opt)
    with pytest.raises(RuntimeError, match=r"sparse gradients: parameter 'emb.weight'"):
        opt.step()
    for p, q in zip([emb.weight, lin.weight, lin.bias], p0, strict=True):
        assert torch.equal(p, q)
    assert_same_state(opt.state_dict(), s0)
    assert len(opt.state) == 0


def test_complex_parameters_are_rejected():
    with pytest.raises(TypeError, match="complex"):
        RegMuon([nn.Parameter(torch.randn(3, 3, dtype=torch.complex64))])
    with pytest.raises(TypeError, match="complex"):
        RegMuon([nn.Parameter(torch.randn(3, dtype=torch.complex64))])


@pytest.mark.parametrize(
    ("kw", "exc", "msg"),
    [
        ({"lr": -0.1}, ValueError, "lr must be .* got -0.1"),
        ({"lr": math.nan}, ValueError, "lr must be .* got nan"),
        ({"momentum": 1.5}, ValueError, "momentum must be .* got 1.5"),
        ({"momentum": 1.0, "momentum_form": "ema"}, ValueError, r"momentum must be .*1.0\)"),
        ({"eps": 0.0}, ValueError, "eps must be > 0, got 0.0"),
        ({"eps": -1.0}, ValueError, "eps must be .* got -1.0"),
        ({"eps_mode": "rel"}, ValueError, "unknown eps_mode 'rel'"),
        ({"potential": "cosh"}, ValueError, "unknown potential 'cosh'"),
        ({"momentum_form": "polyak"}, ValueError, "unknown momentum_form 'polyak'"),
        ({"nesterov": 1}, TypeError, "nesterov must be a bool, got 1"),
        ({"weight_decay": -1e-3}, ValueError, "weight_decay must be .* got -0.001"),
        ({"adjust_lr": "sqrt"}, ValueError, "unknown adjust_lr 'sqrt'"),
        ({"tol": 0.0}, ValueError, "tol must be > 0 or None, got 0.0"),
        ({"method": "qr"}, ValueError, "unknown method .* 'qr'"),
        ({"potential": "huber", "method": "newton_schulz"}, ValueError, "'newton_schulz'"),
        ({"layout": "row"}, ValueError, "unknown layout 'row'"),
        ({"matrix_view": "flat"}, ValueError, "unknown matrix_view 'flat'"),
        ({"adamw_lr": -1.0}, ValueError, "lr must be .* got -1.0"),
        ({"adamw_betas": (0.9, 1.0)}, ValueError, r"betas\[1\] must be .* got 1.0"),
        ({"adamw_eps": 0}, ValueError, "adamw_eps must be > 0, got 0"),
        ({"on_nonfinite": "warn"}, ValueError, "unknown on_nonfinite 'warn'"),
        ({"max_batch_bytes": 0}, ValueError, "max_batch_bytes must be .* got 0"),
        ({"adamw": "embed"}, TypeError, "adamw must be a predicate"),
        ({"lr": "0.1"}, TypeError, "lr must be a float, got str '0.1'"),
    ],
)
def test_constructor_validates_and_names_the_value(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        RegMuon([nn.Parameter(torch.zeros(3, 3))], **kw)


def test_group_overrides_are_validated():
    p = nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"eps must be .* got -2"):
        RegMuon([{"params": [p], "eps": -2}])
    with pytest.raises(ValueError, match="unknown algorithm 'sgd'"):
        RegMuon([{"params": [p], "algorithm": "sgd"}])
    with pytest.raises(ValueError, match="ndim >= 2"):
        RegMuon([{"params": [nn.Parameter(torch.zeros(3))], "algorithm": "regmuon"}])


# -- integration: compile, devices ---------------------------------------------------------------
# (A compiled training step is tested in test_optim_ecosystem.py.)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    """One float64 step of the toy model on CUDA equals the CPU step (64 u · κ(≈10) · |W|)."""
    torch.manual_seed(0)
    cpu = Toy(F64)
    gpu = copy.deepcopy(cpu).cuda()
    oc = RegMuon(cpu.named_parameters(), tol=None)
    og = RegMuon(gpu.named_parameters(), tol=None)
    for i in range(2):
        toy_step(cpu, oc, i, dtype=F64)
        img, tok, y = toy_batch(i, F64)
        og.zero_grad()
        nn.functional.cross_entropy(gpu(img.cuda(), tok.cuda()), y.cuda()).backward()
        og.step()
    for a, b in zip(cpu.parameters(), gpu.parameters(), strict=True):
        assert amax(a - b.cpu()) <= 2 * 64 * 10 * U64 * max(1.0, amax(a))


def test_bfloat16_momentum_state_halves_memory_and_rounds_once_per_step():
    """``momentum_dtype="bfloat16"``: the state is bf16 (half of float32's bytes, also in the
    checkpoint); each step computes ``M' = βM + g`` and the Nesterov input in the parameters'
    float32 from the stored bf16 ``M``, and stores ``M'`` rounded once. Checked against that
    recipe written out (mutants caught: the update computed from the rounded ``M'``, the
    momentum rounded twice, the state silently kept in float32)."""
    g = torch.Generator().manual_seed(3)
    W0 = torch.randn(6, 4, generator=g)
    grads = [torch.randn(6, 4, generator=g) for _ in range(3)]
    p = nn.Parameter(W0.clone())
    opt = RegMuon([p], lr=0.1, adamw=(), momentum_dtype="bfloat16", tol=None)
    W, M = W0.clone(), torch.zeros(6, 4, dtype=torch.bfloat16)
    beta = opt.options.momentum
    for G in grads:
        p.grad = G.clone()
        opt.step()
        Mp = M.float() * beta + G  # in float32, from the stored bf16 momentum
        X = Mp * beta + G  # Nesterov, from the unrounded M'
        D = mf_optim.mirror_map(X[None], opt.options)[0]
        W = W.add(D, alpha=-0.1 * mf_optim.lr_factor(6, 4, "out_in", "original"))
        M = Mp.to(torch.bfloat16)  # rounded once
        buf = opt.state[p]["momentum_buffer"]
        assert buf.dtype == torch.bfloat16 and torch.equal(buf, M)
        assert torch.equal(p.detach(), W)
    sd = opt.state_dict()
    assert sd["state"][0]["momentum_buffer"].dtype == torch.bfloat16
    assert sd["state"][0]["momentum_buffer"].element_size() * 2 == W0.element_size()
    opt2 = RegMuon([p], lr=0.1, adamw=(), momentum_dtype="bfloat16", tol=None)
    opt2.load_state_dict(copy.deepcopy(sd))  # torch casts to float32; the next step re-packs
    p.grad = grads[0].clone()
    opt2.step()
    assert opt2.state[p]["momentum_buffer"].dtype == torch.bfloat16
