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


def polar_ref(P: Tensor) -> Tensor:
    """The polar factor ``U Vᵀ`` (full-rank inputs)."""
    return svd_spectral_map(P, torch.ones_like)
