"""Small models for training benchmarks and experiments."""

from .cnn import SmallCNN
from .mlp import MLP
from .sort import SortTransformer
from .transformer import Transformer, TransformerConfig

__all__ = ["MLP", "SmallCNN", "SortTransformer", "Transformer", "TransformerConfig"]
