"""Gradients of every path of the map at degenerate points (issue #23, item "autograd").

Before the Daleckii–Krein / singular-value backward (``muonflow.polar.autodiff``), autograd
went through ``torch.linalg.eigh``/``svd``, whose backward divides by eigenvalue gaps: at the
zero matrix, the identity, orthonormal inputs and repeated singular values it returned NaN
(``Relativistic(0.3).grad`` at ``P = 0``), and next to them finite but wrong values (-5.45 where
finite differences give -1.87). Every test here failed on that code (NaN, or gradcheck's
analytical-vs-numerical mismatch); each names the bug it catches.

Tolerances: gradcheck in float64 with central differences of step 1e-6 has truncation error
``~h²|f'''| ≈ 1e-12·(1/ε³)`` and rounding ``~u/h ≈ 1e-10`` per entry, far below ``atol=1e-6``
(the suite's existing setting); a wrong backward (a missing factor, a sign, the gap terms)
misses by O(1).
"""

from __future__ import annotations

import importlib

import pytest
import torch

import muonflow as mf
from muonflow.polar import inv_sqrt_from_gram
from muonflow.polar.autodiff import divided_difference, inv_sqrt_divided_difference
from muonflow.spectral import Huber, Nuclear, Relativistic

F64 = torch.float64


def _orthonormal(m: int, n: int, gen: torch.Generator) -> torch.Tensor:
    Q, _ = torch.linalg.qr(torch.randn(max(m, n), min(m, n), generator=gen, dtype=F64))
    return Q if m >= n else Q.mT


def degenerate_points(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Points where singular values repeat or vanish, and a generic one (tall, wide, batched)."""
    u = torch.randn(5, 1, generator=gen, dtype=F64)
    v = torch.randn(1, 3, generator=gen, dtype=F64)
    return {
        "zero": torch.zeros(4, 3, dtype=F64),
        "identity": torch.eye(3, dtype=F64),
        "tall_identity": torch.eye(5, 3, dtype=F64),
        "orthonormal_tall": _orthonormal(6, 3, gen),
        "orthonormal_wide": _orthonormal(3, 6, gen),
        "repeated": torch.diag(torch.tensor([2.0, 2.0, 0.5], dtype=F64)),
        "rank_one": u @ v,  # rank-deficient: two zero singular values
        "nearly_orthonormal": _orthonormal(5, 3, gen)
        + 1e-9 * torch.randn(5, 3, generator=gen, dtype=F64),
        "batch_mixed": torch.stack(
            [
                torch.eye(4, 3, dtype=F64),
                torch.zeros(4, 3, dtype=F64),
                torch.randn(4, 3, generator=gen, dtype=F64),
            ]
        ),
        "generic": torch.randn(6, 4, generator=gen, dtype=F64),
    }


POINTS = list(degenerate_points(torch.Generator().manual_seed(0)))


def _check(fn, *inputs) -> None:
    inputs = tuple(x.detach().clone().requires_grad_() for x in inputs)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize(
    ("method", "tol"),
    [("eigh", None), ("svd", None), ("poly", 1e-8), ("auto", 1e-3), ("auto", None)],
)
def test_regularized_polar_gradcheck_at_degenerate_points(point, method, tol, gen):
    # catches: NaN or gap-divided (wrong) gradients of the eigh/svd backward at repeated
    # eigenvalues; a Daleckii–Krein matrix without its diagonal f'(λ) or with a wrong sign
    G = degenerate_points(gen)[point]
    _check(lambda X: mf.regularized_polar(X, 0.3, method=method, tol=tol), G)


@pytest.mark.parametrize("point", ["zero", "identity", "repeated", "rank_one", "batch_mixed"])
@pytest.mark.parametrize("method", ["eigh", "svd"])
def test_gradient_with_respect_to_a_tensor_eps(point, method, gen):
    # catches: a backward that drops ε's own gradient (V diag(∂w/∂ε) Vᵀ) at degenerate points
    G = degenerate_points(gen)[point]
    e = torch.full(G.shape[:-2] or (1,), 0.3, dtype=F64)
    _check(lambda X, e: mf.regularized_polar(X, e, method=method), G, e)


@pytest.mark.parametrize("point", POINTS)
def test_potential_grads_at_degenerate_points(point, gen):
    # catches: Relativistic(0.3).grad backward NaN at P = 0 (the example); Huber's
    # weight 1/max(√λ, ε) differentiating √λ at λ = 0 (0·∞ = NaN)
    G = degenerate_points(gen)[point]
    for pot in (Relativistic(0.3), Huber(0.3)):
        for method in ("eigh", "svd"):
            _check(lambda X, pot=pot, method=method: pot.grad(X, method=method), G)


@pytest.mark.parametrize(
    "point",
    ["identity", "tall_identity", "orthonormal_tall", "orthonormal_wide", "repeated", "generic"],
)
def test_polar_factor_gradcheck_at_repeated_singular_values(point, gen):
    # The polar factor is smooth at full rank; repeated singular values (orthonormal inputs)
    # made torch's SVD backward NaN. catches: D₂ = (g_i + g_j)/(σ_i + σ_j) or the complement
    # term (I − UUᵀ)Φ̄ V diag(g/σ) Vᵀ missing or wrong
    G = degenerate_points(gen)[point]
    _check(lambda X: mf.polar_factor(X), G)
    _check(lambda X: Nuclear().grad(X), G)


@pytest.mark.parametrize("point", ["zero", "identity", "repeated", "rank_one", "generic"])
@pytest.mark.parametrize("method", ["eigh", "poly"])
def test_inv_sqrt_from_gram_gradcheck_at_degenerate_points(point, method, gen):
    # Through A = XᵀX (a symmetric input stays symmetric); catches: the eigh backward's NaN
    # at A = 0 (all eigenvalues ε²) or A = I, and a non-symmetric gradient with respect to A
    X = degenerate_points(gen)[point]
    _check(lambda X: inv_sqrt_from_gram(X.mT @ X, 0.3, method=method, tol=1e-8), X)


@pytest.mark.parametrize("sep", [0.0, 1e-15, 1e-13])
@pytest.mark.parametrize("method", ["eigh", "svd"])
def test_near_degenerate_gradient_matches_finite_differences(sep, method):
    # The "finite but wrong" case: singular values equal, or 1e-15..1e-13 apart.
    # torch's eigh backward multiplies the off-diagonal terms by 1/(λ_i − λ_j) while the
    # weights differ by rounding; the old code gave -1.68 (sep 0), -1.06 (1e-15) and an error
    # of 1e-3 (1e-13) where finite differences give -1.2001. catches: the secant used where
    # the weights agree to rounding (the u^{1/3} switch of divided_difference)
    gen = torch.Generator().manual_seed(3)
    Q = _orthonormal(5, 3, gen)
    D = torch.randn(5, 3, generator=gen, dtype=F64)
    W = torch.randn(5, 3, generator=gen, dtype=F64)
    G = Q * torch.tensor([1.0, 1.0 + sep, 1.0 - sep], dtype=F64)
    X = G.clone().requires_grad_()
    (g,) = torch.autograd.grad((mf.regularized_polar(X, 0.3, method=method) * W).sum(), X)
    h = 1e-5

    def f(Y: torch.Tensor) -> float:
        return float((mf.regularized_polar(Y, 0.3, method="svd") * W).sum())

    fd = (f(G + h * D) - f(G - h * D)) / (2 * h)
    # central differences: truncation h²/6·|third derivative| ~ 1e-10/ε³ ≈ 4e-9, rounding
    # u/h ≈ 1e-11
    assert abs(float((g * D).sum()) - fd) <= 1e-7 * max(1.0, abs(fd))


def test_divided_differences_limits_and_secants():
    # catches: a threshold that takes the mean of derivatives for well-separated points, or
    # the cancelling secant for (near-)equal ones; the closed form of λ^{-1/2}
    lam = torch.tensor([0.25, 0.25 * (1 + 1e-12), 1.0, 4.0], dtype=F64)
    f = lam.rsqrt()
    df = -0.5 * lam.pow(-1.5)
    F = divided_difference(lam, lam, f, f, df, df)
    exact = inv_sqrt_divided_difference(lam)
    assert torch.allclose(F, exact, rtol=1e-9, atol=0)
    assert torch.allclose(exact.diagonal(), df, rtol=1e-15, atol=0)
    assert float(exact[2, 3]) == pytest.approx((1.0 - 0.5) / (1.0 - 4.0), rel=1e-15)


def test_second_derivative_is_refused_not_wrong(gen):
    # The backward is a first derivative: a Hessian through the map
    # raises instead of returning a silently wrong value. catches: a double backward through
    # the detached factors V, λ of the forward
    X = torch.randn(4, 3, generator=gen, dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(
        mf.regularized_polar(X, 0.3, method="eigh").sum(), X, create_graph=True
    )
    with pytest.raises(RuntimeError, match="second derivatives through muonflow"):
        torch.autograd.grad(g.sum(), X)


# -- mutants: each plausible bug in the backward must fail a gradient check above ---------------
def _secant_only(x, y, fx, fy, dfx, dfy):
    return (fx.unsqueeze(-1) - fy.unsqueeze(-2)) / (x.unsqueeze(-1) - y.unsqueeze(-2))


def _mean_only(x, y, fx, fy, dfx, dfy):
    return (dfx.unsqueeze(-1) + dfy.unsqueeze(-2)) / 2


def _no_complement(U, S, V, gS, dgS, gP):
    # Φ̄ projected on range(U): drops (I − UUᵀ) Φ̄ V diag(g/σ) Vᵀ, keeps Uᵀ Φ̄ V
    return _SVD_BACKWARD(U, S, V, gS, dgS, U @ (U.mT @ gP))


def _inv_sqrt_sign_flip(lam):
    return -inv_sqrt_divided_difference(lam)


autodiff = importlib.import_module("muonflow.polar.autodiff")
_SVD_BACKWARD = autodiff._svd_backward
MUTANTS = {
    "secant everywhere (0/0 at repeated values)": ("divided_difference", _secant_only),
    "derivative mean everywhere (wrong off the diagonal)": ("divided_difference", _mean_only),
    "no complement term for tall inputs": ("_svd_backward", _no_complement),
    "Daleckii–Krein matrix with the wrong sign": (
        "inv_sqrt_divided_difference",
        _inv_sqrt_sign_flip,
    ),
}


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_backward_mutants_are_caught(mutant, monkeypatch, gen):
    name, fake = MUTANTS[mutant]
    monkeypatch.setattr(autodiff, name, fake)
    if name == "inv_sqrt_divided_difference":  # bound at import by exact.py
        monkeypatch.setattr(importlib.import_module("muonflow.polar.exact"), name, fake)
    for G in degenerate_points(gen).values():
        X = G.clone().requires_grad_()
        for fn in (
            lambda X: mf.regularized_polar(X, 0.3, method="svd"),
            lambda X: mf.regularized_polar(X, 0.3, method="eigh", tol=1e-3),
            lambda X: Huber(0.3).grad(X, method="eigh"),
        ):
            try:
                ok = torch.autograd.gradcheck(fn, (X,), eps=1e-6, atol=1e-6, raise_exception=False)
            except (RuntimeError, ValueError):  # NaN gradients may trip other checks first
                ok = False
            if not ok:
                return  # caught
    pytest.fail(f"mutant not caught: {mutant}")
