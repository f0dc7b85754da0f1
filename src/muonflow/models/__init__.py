"""Small models for training benchmarks and experiments."""

from .mlp import MLP
from .transformer import Transformer, TransformerConfig

__all__ = ["MLP", "Transformer", "TransformerConfig"]
