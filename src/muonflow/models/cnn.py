"""A small convolutional network for small images, the 8x8 digits by default (conv kernels are
matrices for RegMuon)."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """``x: [B, C·S·S]`` or ``[B, C, S, S]`` -> logits ``[B, n_classes]`` (``C = in_channels``,
    ``S = size``, even; the digits' ``1`` and ``8`` by default).

    ``conv1`` (3x3, ``channels[0]``) -> ReLU -> ``conv2`` (3x3, ``channels[1]``) -> ReLU ->
    2x2 max-pool -> ``fc`` (``hidden``) -> ReLU -> ``head``. Conv kernels ``[out, in, 3, 3]``
    are ``out x (in·9)`` matrices for a matrix optimizer; ``head`` is the output layer.
    ``norm=True`` puts a ``BatchNorm2d`` (``bn1``, ``bn2``) between each conv and its ReLU.
    """

    def __init__(
        self,
        channels: tuple[int, int] = (16, 32),
        hidden: int = 64,
        n_classes: int = 10,
        norm: bool = False,
        *,
        in_channels: int = 1,
        size: int = 8,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        for name, v in (("channels[0]", c1), ("channels[1]", c2), ("hidden", hidden),
                        ("in_channels", in_channels), ("size", size)):  # fmt: skip
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SmallCNN: {name} must be an int >= 1, got {v!r}")
        if size % 2:
            raise ValueError(f"SmallCNN: size must be even (a 2x2 max-pool), got {size}")
        self.in_channels, self.size = in_channels, size
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        if norm:
            self.bn1, self.bn2 = nn.BatchNorm2d(c1), nn.BatchNorm2d(c2)
        self.fc = nn.Linear(c2 * (size // 2) ** 2, hidden)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(-1, self.in_channels, self.size, self.size)
        for conv, bn in ((self.conv1, "bn1"), (self.conv2, "bn2")):
            x = conv(x)
            x = nn.functional.relu(getattr(self, bn)(x) if hasattr(self, bn) else x)
        x = nn.functional.max_pool2d(x, 2)  # [B, c2, S/2, S/2]
        return self.head(nn.functional.relu(self.fc(x.flatten(1))))
