"""The networks, defined once and imported by the trainer and the inference service.

Every network takes a normalized batch of shape (N, 1, 28, 28) and returns log-probabilities (N, 10), so
`argmax` is the digit and `exp` the class probabilities. A checkpoint stores the architecture's name and its
keyword arguments, and `build_model(name, **kwargs)` rebuilds it without guessing.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


class MyNet(nn.Module):
    """The original notebook's network, kept so its result can be reproduced (`--preset seed`).

    Three blocks of Conv3x3-ReLU-BatchNorm-MaxPool-Dropout with 32, 64 and 128 channels; the third conv has no
    padding. Shapes: 28x28 -> 14x14 -> 7x7 -> 5x5 (unpadded conv) -> 2x2, so the head sees 128 * 2 * 2 = 512.
    """

    def __init__(self, dropout: float = 0.25) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, padding: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=padding),
                nn.ReLU(inplace=True),
                nn.BatchNorm2d(c_out),
                nn.MaxPool2d(2),
                nn.Dropout(dropout),
            )

        self.features = nn.Sequential(block(1, 32, 1), block(32, 64, 1), block(64, 128, 0))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(512, 128), nn.ReLU(inplace=True), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 1, 28, 28)
        return torch.log_softmax(self.head(self.features(x)), dim=1)


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    # No conv bias: the BatchNorm after it has its own shift.
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class CompactNet(nn.Module):
    """The default: a small all-3x3 CNN that is fast on two CPU cores and beats the original.

    One conv at 28x28, two at 14x14 and two at 7x7, then global average pooling:
    (N,1,28,28) -> (N,w,28,28) -> pool -> (N,2w,14,14) -> pool -> (N,4w,7,7) -> (N,4w) -> (N,10).
    Full resolution is the expensive place on a CPU (every BatchNorm and ReLU touches 784 pixels per channel),
    so it gets one thin conv; the wide channels sit at 14x14 and 7x7 where they are cheap. Global pooling keeps
    the head tiny and makes the network tolerant of small shifts.
    """

    def __init__(self, width: int = 16, dropout: float = 0.1) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_bn(1, w), nn.MaxPool2d(2),
            *_conv_bn(w, 2 * w), *_conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
            *_conv_bn(2 * w, 4 * w), *_conv_bn(4 * w, 4 * w),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * w, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 1, 28, 28)
        return torch.log_softmax(self.head(self.features(x)), dim=1)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mynet": MyNet,
    "compact": CompactNet,
}


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """Build the network `arch` with its keyword arguments (as stored in a checkpoint)."""
    try:
        factory = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}") from None
    return factory(**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
