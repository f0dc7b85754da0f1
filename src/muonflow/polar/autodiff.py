r"""Derivatives of the exact spectral maps, valid at repeated and zero singular values.

Autograd through ``eigh``/``svd`` divides by eigenvalue gaps: at repeated eigenvalues (the zero
matrix, the identity, orthonormal inputs) it returns NaN, and near them finite but wrong
values. The maps themselves are smooth there, and their derivatives have closed forms.

**Daleckii–Krein** (the Gram paths). For symmetric :math:`A = V\,\mathrm{diag}(\lambda)V^\top`
and :math:`f(A) = V\,\mathrm{diag}(f(\lambda))V^\top`,

.. math::  Df(A)[E] = V\,\big(F \circ (V^\top E V)\big)\,V^\top, \qquad
           F_{ij} = f[\lambda_i, \lambda_j],

the divided difference, :math:`f'(\lambda_i)` where :math:`\lambda_i = \lambda_j`. ``F`` is
symmetric, so the backward is the same map applied to the symmetric part of the output's
gradient.

**Singular-value maps** (the SVD paths). For tall :math:`X = U\,\mathrm{diag}(\sigma)V^\top` and
an odd :math:`g`, :math:`\Phi(X) = U\,\mathrm{diag}(g(\sigma))V^\top` has, with
:math:`C = U^\top E V`,

.. math::  D\Phi(X)[E] = U\big(D_1 \circ \mathrm{sym}\,C + D_2 \circ \mathrm{skew}\,C\big)V^\top
           + (I - UU^\top)\,E\,V\,\mathrm{diag}(D_2)\,V^\top ,

:math:`D_1 = g[\sigma_i, \sigma_j]`, :math:`D_2 = g[\sigma_i, -\sigma_j] = (g(\sigma_i) +
g(\sigma_j))/(\sigma_i + \sigma_j)` (its diagonal is :math:`g(\sigma_i)/\sigma_i`, and
:math:`g'(0)` at :math:`\sigma = 0`); the backward is the same form applied to
:math:`U^\top \bar\Phi V`. A scale ``ε`` the function depends on gets
:math:`\sum_i (V^\top \bar M V)_{ii}\,\partial_\varepsilon f(\lambda_i)`.

Both are first derivatives: differentiating them again (``create_graph=True``, then a second
``backward``) raises instead of returning a wrong value. Derivations and the near-equality
threshold: ``docs/polar.md`` §7.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "divided_difference",
    "eigh_function",
    "inv_sqrt_divided_difference",
    "needs_grad",
    "singular_value_function",
]

#: ``f(lam, e)``: elementwise in ``lam`` (``e`` a tensor broadcasting against it, or ``None``).
ScalarFn = Callable[[Tensor, Any], Tensor]


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd records through any of ``tensors``."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def divided_difference(
    x: Tensor, y: Tensor, fx: Tensor, fy: Tensor, dfx: Tensor, dfy: Tensor
) -> Tensor:
    r"""``[..., p, q]`` divided differences :math:`f[x_i, y_j]` of a function known at the
    points ``x: [..., p]`` and ``y: [..., q]`` (values ``fx, fy``, derivatives ``dfx, dfy``).

    The secant :math:`(f(x_i) - f(y_j))/(x_i - y_j)` where the values differ relatively by
    more than :math:`\tau = u^{1/3}`, else the mean of the two derivatives. Why this
    threshold: the computed numerator errs by about :math:`u(|f(x)| + |f(y)|)`, so where the
    values differ relatively by :math:`\delta` the secant errs relatively by :math:`u/\delta`;
    the mean of the derivatives errs by :math:`|f'''|h^2/12` (:math:`h = x - y`), relatively
    :math:`O(\delta^2)` for the power-like weights used here (:math:`f \sim \lambda^p`, where a
    relative change :math:`\delta` means :math:`h \approx \delta\lambda/|p|`). Switching at
    :math:`\delta = \tau` bounds both by :math:`O(u^{2/3})` (float64: 5e-11, float32: 2e-5).
    """
    tau = torch.finfo(fx.dtype).eps ** (1 / 3)
    a, b = fx.unsqueeze(-1), fy.unsqueeze(-2)
    secant = (a - b) / (x.unsqueeze(-1) - y.unsqueeze(-2))
    mean = (dfx.unsqueeze(-1) + dfy.unsqueeze(-2)) / 2
    return torch.where((a - b).abs() > tau * (a.abs() + b.abs()), secant, mean)


def inv_sqrt_divided_difference(lam: Tensor) -> Tensor:
    r"""Divided differences of :math:`f(\lambda) = \lambda^{-1/2}` on ``lam > 0``, exactly:
    :math:`f[a, b] = -1/(\sqrt a\sqrt b\,(\sqrt a + \sqrt b))` has no cancellation and is
    :math:`f'(a) = -\tfrac12 a^{-3/2}` at :math:`a = b` (no threshold needed)."""
    s = lam.sqrt()
    si, sj = s.unsqueeze(-1), s.unsqueeze(-2)
    return -1 / (si * sj * (si + sj))


def _values_and_partials(
    f: ScalarFn, x: Tensor, e: Tensor | None, grad_e: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(f(x), f'(x), ē)`` with ``ē`` the VJP ``Σ grad_e · ∂f/∂e`` (``None`` unless asked)."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_()
        eg = None if e is None else e.detach().requires_grad_(grad_e is not None)
        fx = f(xg, eg)
        ebar = None
        if grad_e is not None and eg is not None:
            ebar = _grad(fx, eg, grad_e, retain=True)
        dfx = _grad(fx, xg, torch.ones_like(fx), retain=False)  # f elementwise: f' elementwise
    return fx.detach(), dfx, ebar


def _grad(out: Tensor, inp: Tensor, gout: Tensor, *, retain: bool) -> Tensor:
    """``∂out/∂inp`` contracted with ``gout``; zeros where ``out`` does not depend on ``inp``."""
    if not out.requires_grad:
        return torch.zeros_like(inp)
    (g,) = torch.autograd.grad(out, inp, grad_outputs=gout, allow_unused=True, retain_graph=retain)
    return torch.zeros_like(inp) if g is None else g.detach()


class _FirstOrderOnly(torch.autograd.Function):
    """Identity on ``x``, recorded against ``anchor``; its backward raises."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, anchor: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:
        raise RuntimeError(
            "second derivatives through muonflow's exact spectral maps are not implemented: "
            "their backward (Daleckii-Krein, docs/polar.md section 7) is a first derivative"
        )


def _first_order(grads: tuple[Tensor | None, ...], anchor: Tensor) -> tuple[Tensor | None, ...]:
    """``grads`` as computed; under ``create_graph`` they are marked so that differentiating
    them raises (a silent second derivative would miss every term through ``V`` and ``λ``)."""
    if not torch.is_grad_enabled():
        return grads
    return tuple(None if g is None else _FirstOrderOnly.apply(g, anchor) for g in grads)


def _sym(B: Tensor) -> Tensor:
    return (B + B.mT) / 2


# -- Gram paths: M = V f(λ) Vᵀ ---------------------------------------------------------------
def _eigh_apply(A: Tensor, e: Tensor | None, f: ScalarFn, lo: Tensor | float) -> tuple[Tensor, ...]:
    lam, V = torch.linalg.eigh(A)
    lc = lam.clamp_min(lo) if isinstance(lo, float) else torch.maximum(lam, lo)
    w = f(lc, e)
    return (V * w.unsqueeze(-2)) @ V.mT, lam, lc, V  # M = V diag(f(λ)) Vᵀ


class _EighFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, A: Tensor, e: Tensor | None, f: ScalarFn, lo: Any, exact: Any) -> Any:
        M, lam, lc, V = _eigh_apply(A, e, f, lo)
        ctx.f, ctx.exact = f, exact
        ctx.save_for_backward(lc, V, e, A)
        ctx.mark_non_differentiable(lam)
        return M, lam

    @staticmethod
    def backward(ctx: Any, gM: Tensor, _glam: Tensor | None) -> Any:
        lc, V, e, A = ctx.saved_tensors
        with torch.no_grad():
            B = _sym(V.mT @ gM @ V)  # Vᵀ M̄ V, symmetric part
            want_e = e is not None and ctx.needs_input_grad[1]
            grad_e = B.diagonal(dim1=-2, dim2=-1) if want_e else None
            fx, dfx, ebar = _values_and_partials(ctx.f, lc, e, grad_e)
            exact = ctx.exact
            F = exact(lc) if exact is not None else divided_difference(lc, lc, fx, fx, dfx, dfx)
            gA = V @ (F * B) @ V.mT  # Daleckii–Krein: V (F ∘ Vᵀ M̄ V) Vᵀ
        return (*_first_order((gA, ebar), A), None, None, None)


def eigh_function(
    A: Tensor,
    e: Tensor | None,
    f: ScalarFn,
    *,
    lo: Tensor | float = 0.0,
    exact: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    r"""``(M, lam)``: :math:`M = V\,\mathrm{diag}(f(\max(\lambda, lo), e))\,V^\top` for symmetric
    ``A: [..., r, r]`` (``lam``: the computed spectrum ``[..., r]``, not differentiable).

    Differentiable in ``A`` and ``e`` by Daleckii–Krein, the clamp ``lo`` (a rounding guard)
    taken as the identity; ``exact(lam)``: the divided differences in closed form, if known.
    Raises ``torch.linalg.LinAlgError`` if ``eigh`` does not converge.
    """
    if needs_grad(A, e):
        return _EighFunction.apply(A, e, f, lo, exact)
    M, lam, _, _ = _eigh_apply(A, e, f, lo)
    return M, lam


# -- SVD paths: Φ = U g(σ) Vᵀ ----------------------------------------------------------------
def _svd_apply(X: Tensor, e: Tensor | None, g: ScalarFn) -> tuple[Tensor, ...]:
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    return (U * g(S, e).unsqueeze(-2)) @ Vh, U, S, Vh


def _svd_backward(U: Tensor, S: Tensor, V: Tensor, gS: Tensor, dgS: Tensor, gP: Tensor) -> Tensor:
    """``X̄`` of a tall ``X = U diag(S) Vᵀ`` for the output gradient ``gP`` (formula above)."""
    B = U.mT @ gP @ V  # Uᵀ Φ̄ V
    D1 = divided_difference(S, S, gS, gS, dgS, dgS)  # g[σ_i, σ_j]
    D2 = divided_difference(S, -S, gS, -gS, dgS, dgS)  # g[σ_i, −σ_j], g odd
    C = D1 * _sym(B) + D2 * (B - B.mT) / 2
    W = D2.diagonal(dim1=-2, dim2=-1)  # g(σ)/σ, g'(0) at σ = 0
    rest = gP - U @ (U.mT @ gP)  # (I − UUᵀ) Φ̄
    return U @ C @ V.mT + ((rest @ V) * W.unsqueeze(-2)) @ V.mT


class _SVDFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, X: Tensor, e: Tensor | None, g: ScalarFn) -> Tensor:
        out, U, S, Vh = _svd_apply(X, e, g)
        ctx.g = g
        ctx.save_for_backward(U, S, Vh, e, X)
        return out

    @staticmethod
    def backward(ctx: Any, gP: Tensor) -> Any:
        U, S, Vh, e, X = ctx.saved_tensors
        with torch.no_grad():
            want_e = e is not None and ctx.needs_input_grad[1]
            grad_e = (U.mT @ gP @ Vh.mT).diagonal(dim1=-2, dim2=-1) if want_e else None
            gS, dgS, ebar = _values_and_partials(ctx.g, S, e, grad_e)
            if U.shape[-2] >= Vh.shape[-1]:  # tall: X = U S Vᵀ
                gX = _svd_backward(U, S, Vh.mT, gS, dgS, gP)
            else:  # wide: Xᵀ = V S Uᵀ is tall and Φᵀ its map
                gX = _svd_backward(Vh.mT, S, U, gS, dgS, gP.mT).mT
        return (*_first_order((gX, ebar), X), None)


def singular_value_function(X: Tensor, e: Tensor | None, g: ScalarFn) -> Tensor:
    r""":math:`U\,\mathrm{diag}(g(\sigma, e))\,V^\top` from a thin SVD of ``X: [..., m, n]``.

    ``g`` odd in ``σ`` (``g(0) = 0``), elementwise, ``e`` broadcasting against ``σ: [..., r]``.
    Differentiable in ``X`` and ``e`` by the singular-value formula above.
    """
    if needs_grad(X, e):
        return _SVDFunction.apply(X, e, g)
    return _svd_apply(X, e, g)[0]
