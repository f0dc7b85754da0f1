"""The functional kernels: ``regmuon(params, grads, momentum_buffers, *, ...)`` and ``adamw``.

Compared with a plain per-matrix reference written here (a Python loop over matrices, the map
by ``torch.linalg.svd`` in float64), not with the library; tolerances in units of float64's
unit roundoff ``u``.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from conftest import unit_roundoff

import muonflow.optim as mf_optim
from muonflow.optim import DEFAULTS, RegMuon, adamw, regmuon
from muonflow.optim import kernel as F

F64 = torch.float64
U64 = unit_roundoff(F64)


def svd_map(X: torch.Tensor, eps: float) -> torch.Tensor:
    """U diag(σ/√(σ²+ε²)) Vᵀ of one matrix (float64 SVD)."""
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    return (U * (S / torch.sqrt(S**2 + eps**2))) @ Vh


def reference_step(W, G, M, *, view, layout, lr, momentum, eps, nesterov, form, wd):
    """One RegMuon step of one parameter, matrix by matrix: returns (W', M')."""
    shape = W.shape
    if view == "conv":
        mats = lambda T: [T.reshape(shape[0], -1)]  # noqa: E731
    elif view.startswith("split:"):
        k = int(view.split(":")[1])
        mats = lambda T: list(T.reshape(-1, shape[-2] // k, shape[-1]))  # noqa: E731
    else:
        mats = lambda T: list(T.reshape(-1, shape[-2], shape[-1]))  # noqa: E731
    beta = momentum
    M_new = beta * M + G if form == "sum" else beta * M + (1 - beta) * G
    X = (
        M_new
        if not nesterov
        else (G + beta * M_new if form == "sum" else (1 - beta) * G + beta * M_new)
    )
    out = []
    for x in mats(X):
        m, n = x.shape
        fan_out, fan_in = (n, m) if layout == "in_out" else (m, n)
        rho = math.sqrt(max(1.0, fan_out / fan_in))
        e = eps * float(torch.linalg.matrix_norm(x)) / math.sqrt(min(m, n))
        out.append(rho * svd_map(x, e))
    D = torch.cat([d.reshape(-1) for d in out]).reshape(shape)
    return (1 - lr * wd) * W - lr * D, M_new


CASES = [  # (shape, view, layout)
    ((7, 4), "batch", "out_in"),
    ((7, 4), "batch", "out_in"),  # a same-shape twin: one stack
    ((4, 9), "batch", "in_out"),
    ((3, 5, 4), "batch", "out_in"),  # stacked experts
    ((6, 2, 3), "conv", "out_in"),  # Conv1d [out, in, k]: one 6 x 6 matrix
    ((4, 2, 2, 2), "auto", "out_in"),  # Conv2d: auto is the conv view
    ((12, 4), "split:3", "out_in"),  # packed q/k/v: three 4 x 4 matrices
    ((0, 4), "batch", "out_in"),  # empty: left alone
]


@pytest.mark.parametrize(
    ("nesterov", "form", "wd"), [(False, "sum", 0.0), (True, "sum", 0.1), (True, "ema", 0.05)]
)
def test_regmuon_matches_a_per_matrix_svd_reference(nesterov, form, wd):
    """Three steps on every kind of parameter at once (float64, exact map ``tol=None``).

    The reference maps each matrix by its own SVD; the kernel maps same-shape stacks in batched
    eigh/Gram calls. Per step both round a few times per entry, amplified through the map by at
    most κ = √r/ε ≈ 10 (relative ε = 0.3, r ≤ 9), then scaled by ηρ ≤ 0.1·√3: 3 steps ·
    64 u · 10 · max(1, max|W|) bounds the difference with a margin. A missing factor (ρ, the
    Nesterov term, 1-ηλ) or a wrong matrix view is O(0.01).
    """
    g = torch.Generator().manual_seed(0)
    shapes = [c[0] for c in CASES]
    views = [c[1] if c[1] != "auto" else "auto" for c in CASES]
    layouts = [c[2] for c in CASES]
    W = [torch.randn(s, generator=g, dtype=F64) for s in shapes]
    Ms = [torch.zeros(s, dtype=F64) for s in shapes]
    ref_W = [w.clone() for w in W]
    ref_M = [m.clone() for m in Ms]
    kw = dict(lr=0.1, momentum=0.9, eps=0.3, nesterov=nesterov, momentum_form=form,
              weight_decay=wd)  # fmt: skip
    for _ in range(3):
        G = [torch.randn(s, generator=g, dtype=F64) for s in shapes]
        regmuon(W, G, Ms, **kw, tol=None, layout=layouts, matrix_view=views)
        for i in range(len(shapes)):
            view = "conv" if views[i] == "auto" and len(shapes[i]) >= 4 else views[i]
            if not W[i].numel():
                continue
            ref_W[i], ref_M[i] = reference_step(
                ref_W[i], G[i], ref_M[i], view=view, layout=layouts[i], lr=0.1, momentum=0.9,
                eps=0.3, nesterov=nesterov, form=form, wd=wd,
            )  # fmt: skip
    for w, r, m, rm in zip(W, ref_W, Ms, ref_M, strict=True):
        scale = max(1.0, float(r.abs().max())) if r.numel() else 1.0
        assert torch.allclose(w, r, rtol=0, atol=3 * 64 * 10 * U64 * scale)
        assert torch.allclose(m, rm, rtol=0, atol=3 * 8 * U64 * scale)


def test_chunks_never_split_a_matrix(map_calls):
    """A 2-D parameter with a one-matrix chunk cap: every map call sees whole matrices and the
    result equals the unchunked one. (The old kernel took ``[k, m, n]`` views on trust and
    chunked the rows of a 2-D input, mapping row blocks: an O(0.06) change.)"""
    g = torch.Generator().manual_seed(1)
    W0 = [torch.randn(6, 4, generator=g, dtype=F64) for _ in range(3)]
    G = [torch.randn(6, 4, generator=g, dtype=F64) for _ in range(3)]
    outs = []
    for cap in (None, 1):
        map_calls.clear()
        W = [w.clone() for w in W0]
        regmuon(W, G, [torch.zeros_like(w) for w in W], tol=None, max_batch_bytes=cap)
        assert all(c[1:] == (6, 4) for c in map_calls)
        assert [c[0] for c in map_calls] == ([3] if cap is None else [1, 1, 1])
        outs.append(W)
    for a, b in zip(*outs, strict=True):
        # batched vs single LAPACK calls: a few u per entry through κ ≈ 7, step ≤ 0.1
        assert torch.allclose(a, b, rtol=0, atol=64 * 8 * U64)


def test_same_shape_matrices_share_one_map_call(map_calls):
    g = torch.Generator().manual_seed(2)
    W = [torch.randn(5, 3, generator=g) for _ in range(6)] + [torch.randn(2, 5, 3, generator=g)]
    regmuon(W, [torch.randn_like(w) for w in W], [torch.zeros_like(w) for w in W])
    assert map_calls == [(8, 5, 3)]


def test_views_of_one_stack_update_like_separate_buffers():
    """Momentum buffers that are views of one stack (as RegMuon keeps them) are updated in place
    to the same numbers as separate buffers; the map never receives the caller's storage (its
    input is a new tensor), so a map that fails or writes into its input changes nothing."""
    g = torch.Generator().manual_seed(3)
    W0 = [torch.randn(4, 3, generator=g) for _ in range(3)]
    G = [torch.randn(4, 3, generator=g) for _ in range(3)]
    packed = torch.zeros(3, 4, 3)
    views = list(packed.unbind(0))
    separate = [torch.zeros(4, 3) for _ in range(3)]
    Wa, Wb = [w.clone() for w in W0], [w.clone() for w in W0]
    seen = []

    def spy(X):
        seen.append(X.untyped_storage().data_ptr())
        return F.mirror_map(X)

    for _ in range(2):
        regmuon(Wa, G, views, map_fn=spy, nesterov=False)
        regmuon(Wb, G, separate, nesterov=False)
    assert packed.untyped_storage().data_ptr() not in seen and len(seen) == 2
    assert torch.equal(packed, torch.stack(separate))
    for a, b in zip(Wa, Wb, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("call", "exc", "msg"),
    [
        (lambda W, G, M: regmuon(W, G[:1], M), ValueError, "grads has 1 entries for 2"),
        (lambda W, G, M: regmuon(W, [G[0], G[1].T], M), ValueError, r"grads\[1\] has shape"),
        (lambda W, G, M: regmuon(W, G, [M[0], M[1].double()]), ValueError, "momentum_buffers"),
        (lambda W, G, M: regmuon(W, G, M, matrix_view="split:5"), ValueError, "divisible by 5"),
        (lambda W, G, M: regmuon(W, G, M, matrix_view="rows"), ValueError, "unknown matrix_view"),
        (lambda W, G, M: regmuon(W, G, M, layout=["out_in"]), ValueError, "layout has 1 entries"),
        (lambda W, G, M: regmuon(W, G, M, momentum=1.5), ValueError, "momentum must be"),
        (lambda W, G, M: regmuon([W[0], W[0]], G, M), ValueError, "same tensor twice"),
        (lambda W, G, M: regmuon(W, [G[0], G[1] * math.nan], M), ValueError, r"grads\[1\] has NaN"),
        (lambda W, G, M: regmuon([W[0], W[1][:, :1]], [G[0], G[1][:, :1]], M), ValueError,
         r"momentum_buffers\[1\]"),
    ],
)  # fmt: skip
def test_regmuon_validates_before_changing_anything(call, exc, msg):
    g = torch.Generator().manual_seed(4)
    W = [torch.randn(4, 3, generator=g) for _ in range(2)]
    G = [torch.randn(4, 3, generator=g) for _ in range(2)]
    M = [torch.randn(4, 3, generator=g) for _ in range(2)]
    W0, M0 = [w.clone() for w in W], [m.clone() for m in M]
    with pytest.raises(exc, match=msg):
        call(W, G, M)
    assert all(torch.equal(a, b) for a, b in zip(W + M, W0 + M0, strict=True))


def test_adamw_validates_before_changing_anything():
    p = [torch.ones(3), torch.ones(2)]
    g = [torch.ones(3), torch.ones(2)]
    m = [torch.zeros(3), torch.zeros(2)]
    v = [torch.zeros(3), torch.zeros(3)]
    with pytest.raises(ValueError, match=r"exp_avg_sqs\[1\]"):
        adamw(p, g, m, v, [1, 1])
    with pytest.raises(ValueError, match=r"steps\[0\] must be an int >= 1"):
        adamw(p, g, m, [torch.zeros(3), torch.zeros(2)], [0, 1])
    assert all(torch.equal(t, torch.ones_like(t)) for t in p)
    assert all(torch.equal(t, torch.zeros_like(t)) for t in m)


def test_map_fn_receives_every_stack(map_calls):
    """The hook a distributed or instrumented variant uses: every map call goes through it.

    With the identity map (quadratic potential's ∇K) the update is SGD with momentum:
    W - ηρ M, checked exactly. The class's map calls all go through ``kernel.mirror_map``
    (the one interception point, patched by the ``map_calls`` fixture).
    """
    seen = []

    def identity(X):
        seen.append(tuple(X.shape))
        return X

    W = [torch.ones(4, 2), torch.ones(4, 2), torch.ones(3, 3)]
    G = [torch.full_like(w, 0.5) for w in W]
    regmuon(W, G, [torch.zeros_like(w) for w in W], lr=0.1, nesterov=False, map_fn=identity)
    assert sorted(seen) == [(1, 3, 3), (2, 4, 2)]
    assert torch.equal(W[0], torch.full((4, 2), 1 - 0.1 * math.sqrt(2) * 0.5))
    ps = [torch.nn.Parameter(w.clone()) for w in W]
    opt = RegMuon(ps, adamw=())
    for p, gk in zip(ps, G, strict=True):
        p.grad = gk
    opt.step()
    assert sorted(map_calls) == [(1, 3, 3), (2, 4, 2)]


def test_one_place_for_the_options():
    """Regression test (the library against itself): the option list is spelled once, in
    ``RegMuonOptions``; the class and the kernels take an options value whose default is
    ``DEFAULTS`` (mutant caught: a signature that spells an option with its own default)."""
    from muonflow.optim import RegMuonOptions

    fields = set(RegMuonOptions.__dataclass_fields__)
    for fn in (RegMuon.__init__, regmuon, adamw, F.mirror_map):
        sig = inspect.signature(fn).parameters
        assert sig["options"].default in (DEFAULTS, None), fn
        # lr: torch's positional slot; layout, matrix_view: per-parameter lists (default None)
        assert not fields & (set(sig) - {"lr", "layout", "matrix_view"}), fn.__qualname__
    opt = RegMuon([torch.nn.Parameter(torch.ones(2, 2))], adamw=())
    assert opt.options is DEFAULTS
    for key in ("lr", "momentum", "eps", "nesterov", "tol", "eps_mode", "adjust_lr"):
        assert opt.defaults[key] == getattr(DEFAULTS, key)
    assert opt.defaults["betas"] == DEFAULTS.adamw_betas
    assert opt.max_batch_bytes == DEFAULTS.max_batch_bytes


def test_orthogonalize_is_a_deprecated_alias_of_mirror_map():
    X = torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(0))
    with pytest.warns(DeprecationWarning, match="mirror_map"):
        old = mf_optim.kernel.orthogonalize(X, eps=0.1)
    assert torch.equal(old, F.mirror_map(X, eps=0.1))


def test_finiteness_check_is_exact_when_the_fast_norm_overflows():
    """The fast check is one fused 2-norm, which overflows for finite entries beyond ~1e19
    (float32); such tensors are then checked exactly, so only a real NaN/Inf is reported, by
    its index in the list given (empty tensors included)."""
    huge = torch.full((4, 3), 1e30)
    assert not math.isfinite(float(torch._foreach_norm([huge], 2)[0]))  # the fast path fails
    assert F.first_nonfinite([torch.ones(2), huge]) is None
    assert F.first_nonfinite([torch.zeros(0), huge, torch.tensor([1.0, -math.inf])]) == 2
    assert F.first_nonfinite([torch.zeros(0), torch.tensor([math.nan])]) == 1
