"""Small models for training benchmarks and experiments."""

from .cnn import SmallCNN
from .mlp import MLP
from .rnn import CharRNN
from .sort import SortTransformer
from .transformer import Transformer, TransformerConfig

__all__ = ["MLP", "CharRNN", "SmallCNN", "SortTransformer", "Transformer", "TransformerConfig"]
