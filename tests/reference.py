"""Independent reference implementations used by the tests (float64, plain SVD, no shortcuts)."""

from __future__ import annotations

import torch
from torch import Tensor


def svd_spectral_map(P: Tensor, g) -> Tensor:
    """``U diag(g(σ)) Vᵀ`` by a float64 SVD of each matrix, looping over the batch."""
    P64 = P.detach().double()
    flat = P64.reshape(-1, *P64.shape[-2:])
    outs = []
    for X in flat:  # deliberately per-matrix: the reference must not share the batched path
        U, S, Vh = torch.linalg.svd(X, full_matrices=False)
        outs.append(U @ torch.diag(g(S)) @ Vh)
    return torch.stack(outs).reshape(P64.shape)


def relativistic_map_ref(P: Tensor, eps: float) -> Tensor:
    """``G (GᵀG + ε²I)^{-1/2}`` as ``U diag(σ/√(σ²+ε²)) Vᵀ``."""
    return svd_spectral_map(P, lambda s: s / torch.sqrt(s * s + eps * eps))


def relativistic_map_mp(G: Tensor, eps: float, *, digits: int = 32) -> Tensor:
    """``G (GᵀG + ε²I)^{-1/2}`` of the float64 values of ``G: [m, n]`` in ``digits``-digit
    arithmetic (mpmath SVD), rounded to float64: exact to ``u₆₄`` for any conditioning up to
    ``10^(digits - 16)``, so it can judge errors near float64's own roundoff."""
    import mpmath

    with mpmath.workdps(digits):
        U, S, V = mpmath.svd_r(mpmath.matrix(G.detach().double().tolist()))
        e = mpmath.mpf(eps)
        g = [S[i] / mpmath.sqrt(S[i] ** 2 + e**2) for i in range(min(G.shape))]
        return torch.tensor((U * mpmath.diag(g) * V).tolist(), dtype=torch.float64)


def polar_ref(P: Tensor) -> Tensor:
    """The polar factor ``U Vᵀ`` (full-rank inputs)."""
    return svd_spectral_map(P, torch.ones_like)


def torch_muon_rule_ref(
    W: Tensor,
    B: Tensor,
    g: Tensor,
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    adjust_lr_fn: str | None,
) -> tuple[Tensor, Tensor]:
    """One step of ``torch.optim.Muon``'s update rule with the exact polar factor.

    Newton–Schulz is replaced by ``U Vᵀ`` from a float64 SVD; everything else follows
    ``torch.optim._muon``: EMA momentum ``B ← βB + (1−β)g``, Nesterov input ``(1−β)g + βB``,
    decoupled decay ``W ← (1 − lr·λ)W`` with the unadjusted lr, then ``W ← W − lr·ρ(m, n)·UVᵀ``.
    Returns the new ``(W, B)``.
    """
    B = momentum * B + (1 - momentum) * g
    X = (1 - momentum) * g + momentum * B if nesterov else B
    m, n = W.shape
    if adjust_lr_fn in (None, "original"):
        ratio = max(1.0, m / n) ** 0.5
    elif adjust_lr_fn == "match_rms_adamw":
        ratio = 0.2 * max(m, n) ** 0.5
    else:
        ratio = 1.0
    W = W * (1 - lr * weight_decay) - lr * ratio * polar_ref(X).to(W.dtype)
    return W, B
