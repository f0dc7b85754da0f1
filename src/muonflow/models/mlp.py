"""A plain multilayer perceptron: hidden ``layers`` (matrices for RegMuon) and a ``head``."""

from __future__ import annotations

import itertools

from torch import Tensor, nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """``in_dim -> hidden (x depth) -> out_dim`` with ReLU; the last layer is named ``head``.

    ``layers.{i}`` are the hidden linear maps; ``head`` is the output layer (routed to AdamW by
    :func:`muonflow.optim.default_adamw_rule`). ``norm=True`` puts a ``LayerNorm`` (``norms.{i}``)
    between each hidden map and its ReLU.
    """

    def __init__(
        self, in_dim: int, hidden: int, out_dim: int, depth: int = 2, norm: bool = False
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        dims = [in_dim] + [hidden] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        if norm:
            self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(depth))
        self.head = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        norms = getattr(self, "norms", None)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            x = nn.functional.relu(x if norms is None else norms[i](x))
        return self.head(x)
