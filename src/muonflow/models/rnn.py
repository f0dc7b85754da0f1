"""A recurrent character-level language model: embedding -> LSTM or GRU -> linear head."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["CELLS", "CharRNN"]

#: Recurrent layer types of :class:`CharRNN`.
CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


class CharRNN(nn.Module):
    """``x: [B, T]`` (int64 tokens) -> next-token logits ``[B, T, vocab_size]``.

    ``embed`` (``nn.Embedding``) -> ``rnn`` (``nn.LSTM``/``nn.GRU``, ``n_layers`` layers of
    width ``d_model``, batch first) -> ``head`` (``nn.Linear``). The recurrent weights
    ``weight_ih_l{k}``/``weight_hh_l{k}`` stack the gates' matrices by rows (LSTM 4, GRU 3).
    """

    def __init__(
        self, vocab_size: int = 128, d_model: int = 64, n_layers: int = 1, cell: str = "lstm"
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; valid: {', '.join(CELLS)}")
        for name, v in (("vocab_size", vocab_size), ("d_model", d_model), ("n_layers", n_layers)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"CharRNN: {name} must be an int >= 1, got {v!r}")
        self.embed = nn.Embedding(vocab_size, d_model)
        self.rnn = CELLS[cell](d_model, d_model, n_layers, batch_first=True)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(self.embed(x))
        return self.head(out)
