r"""Baselines: Muon's Newton–Schulz quintic and Gram Newton–Schulz, batched over ``[..., m, n]``.

Not exact maps (they leave the singular values in about ``[0.7, 1.2]``); they are the speed
baselines of ``benchmarks/`` and the Newton–Schulz arm of the experiments. Newton–Schulz
(Jordan et al., 2024; the coefficients of ``torch.optim.Muon``) iterates on the wide
orientation ``X`` (``r x M``, ``r <= M``):

.. math::  A = X X^\top, \qquad X \leftarrow a X + (b A + c A^2) X .

Gram Newton–Schulz (Zhang, Amsel, Chen, Dao 2026) computes the same iterates while touching
``X`` only at the start, at restarts and at the end: with :math:`R = XX^\top` and
:math:`h_k = aI + bR_k + cR_k^2`,

.. math::  Q \leftarrow Q h_k, \qquad R_{k+1} = h_k R_k h_k, \qquad X_K = Q X_0 ,

restarting (``X ← QX``, ``R ← XXᵀ``, ``Q ← I``) at the given iterations so that rounding in
``R`` does not accumulate in low precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["NS_COEFFICIENTS", "gram_newton_schulz", "newton_schulz"]

#: ``(a, b, c)`` of Muon's quintic (Keller Jordan's; ``torch.optim.Muon``'s default).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

Coefficients = tuple[float, float, float] | Sequence[tuple[float, float, float]]


def _per_step(coefficients: Coefficients, steps: int) -> list[tuple[float, float, float]]:
    items: list = list(coefficients)
    if len(items) == 3 and all(isinstance(c, int | float) for c in items):
        a, b, c = (float(x) for x in items)
        return [(a, b, c)] * steps
    triples = [tuple(float(x) for x in t) for t in items]
    if len(triples) != steps or any(len(t) != 3 for t in triples):
        raise ValueError(f"coefficients must be one (a, b, c) or {steps} of them")
    return [(t[0], t[1], t[2]) for t in triples]


def _wide_normalized(G: Tensor, eps: float, dtype: torch.dtype | None) -> tuple[Tensor, bool]:
    """``G`` flattened to ``[B, r, M]`` (``r <= M``), divided by its Frobenius norm."""
    m, n = G.shape[-2:]
    X = G.reshape(-1, m, n).to(G.dtype if dtype is None else dtype)
    tall = m > n
    if tall:
        X = X.mT
    X = X / torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True).clamp_min(eps)
    return X, tall


def newton_schulz(
    G: Tensor,
    steps: int = 5,
    coefficients: Coefficients = NS_COEFFICIENTS,
    *,
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Muon's Newton–Schulz iteration on every matrix of ``G: [..., m, n]``.

    ``coefficients``: one ``(a, b, c)`` for every step or one per step; ``dtype``: the working
    dtype (default ``G``'s). ``G`` is divided by ``max(||G||_F, eps)`` first, as in
    ``torch.optim.Muon``. Returns ``[..., m, n]`` in the working dtype.
    """
    X, tall = _wide_normalized(G, eps, dtype)
    for a, b, c in _per_step(coefficients, steps):
        A = torch.bmm(X, X.mT)  # A = X Xᵀ
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # B = bA + cA²
        X = torch.baddbmm(X, B, X, beta=a)  # X = aX + BX
    return (X.mT if tall else X).reshape(G.shape)


def gram_newton_schulz(
    G: Tensor,
    steps: int = 5,
    coefficients: Coefficients = NS_COEFFICIENTS,
    *,
    restarts: Sequence[int] = (2,),
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Gram Newton–Schulz: the iterates of :func:`newton_schulz`, on the ``r x r`` Gram matrix.

    ``restarts``: iterations (``0 < i < steps``) at which ``X ← QX`` and ``R ← XXᵀ`` are
    recomputed (default ``(2,)``, as in the reference implementation). Other arguments as in
    :func:`newton_schulz`; the result equals it in exact arithmetic.
    """
    X, tall = _wide_normalized(G, eps, dtype)
    restart = {i for i in restarts if 0 < i < steps}
    R = torch.bmm(X, X.mT)  # R = X Xᵀ
    Q: Tensor | None = None
    for i, (a, b, c) in enumerate(_per_step(coefficients, steps)):
        if i in restart:
            assert Q is not None
            X = torch.bmm(Q, X)  # X ← Q X
            R = torch.bmm(X, X.mT)
            Q = None
        Z = torch.baddbmm(R, R, R, beta=b, alpha=c)  # Z = bR + cR²; h = aI + Z
        if Q is None:
            Q = Z.clone()
            Q.diagonal(dim1=-2, dim2=-1).add_(a)  # Q = h = aI + Z
        else:
            Q = torch.baddbmm(Q, Q, Z, beta=a)  # Q ← Q h = aQ + QZ
        if i < steps - 1 and i + 1 not in restart:
            RZ = torch.baddbmm(R, R, Z, beta=a)  # R h
            R = torch.baddbmm(RZ, Z, RZ, beta=a)  # h R h
    assert Q is not None
    X = torch.bmm(Q, X)
    return (X.mT if tall else X).reshape(G.shape)
