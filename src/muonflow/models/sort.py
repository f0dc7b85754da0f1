"""A sorting transformer built from ``torch.nn`` parts only (``nn.TransformerEncoder``).

The model reads a sequence of ``length`` tokens from a vocabulary of ``vocab_size`` and
predicts, at every position ``i``, the ``i``-th smallest token (a non-causal, per-position
classification). It is deliberately "not ours": a token ``nn.Embedding``, a *raw* positional
table ``pos`` (an ``nn.Parameter`` held directly by the model, not an embedding module), a
stack of ``nn.TransformerEncoderLayer`` (pre-norm, GELU, no dropout; attention projections in
``nn.MultiheadAttention.in_proj_weight`` ``[3d, d]`` and ``out_proj``) and a linear ``head``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SortTransformer"]


class SortTransformer(nn.Module):
    """``x: [B, length]`` (int64 in ``[0, vocab_size)``) -> logits ``[B, length, vocab_size]``.

    Args:
        vocab_size: number of distinct tokens.
        length: sequence length (the positional table has this many rows).
        d_model, n_heads, n_layers, d_ff: encoder sizes (``d_model % n_heads == 0``).
    """

    def __init__(
        self,
        vocab_size: int = 64,
        length: int = 24,
        *,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        d_ff: int = 256,
    ) -> None:
        super().__init__()
        for name, v in (
            ("vocab_size", vocab_size),
            ("length", length),
            ("d_model", d_model),
            ("n_heads", n_heads),
            ("n_layers", n_layers),
            ("d_ff", d_ff),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SortTransformer: {name} must be an int >= 1, got {v!r}")
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.vocab_size, self.length = vocab_size, length
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Parameter(0.02 * torch.randn(length, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model,
            n_heads,
            d_ff,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, n_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.length:
            raise ValueError(
                f"SortTransformer expects x of shape [B, {self.length}], got {tuple(x.shape)}"
            )
        return self.head(self.encoder(self.embed(x) + self.pos))

    def loss(self, x: Tensor) -> Tensor:
        """Mean cross-entropy (nats per position) of predicting ``sort(x)`` position by position."""
        logits = self(x)
        return nn.functional.cross_entropy(logits.flatten(0, 1), x.sort(dim=1).values.flatten())
