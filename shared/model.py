"""The networks, defined once and imported by the trainer and the inference service.

Every network takes a normalized batch of shape (N, 1, 28, 28) and returns log-probabilities (N, 10), so
`argmax` is the digit and `exp` the class probabilities. A checkpoint stores the architecture's name and its
keyword arguments, and `build_model(name, **kwargs)` rebuilds it without guessing.

Built with `not_digit=True`, a network has an eleventh logit, "not a digit", trained with outlier exposure on
the trainer's negatives (trainer/negatives.py), and returns (N, 11): the ten digit log-probabilities as before
(a softmax over the ten digit logits only, so the digit and its probabilities do not depend on the new class),
then the *digit log-odds* z = logsumexp(digit logits) - not-digit logit. sigmoid(z) is the eleven-class
probability that the picture is some digit: the digit score (docs/not-a-digit.md). Use `digit_log_probs`,
`digit_scores` and `eleven_class_log_probs` rather than slicing by hand: they accept both shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

DIGITS = 10
NOT_DIGIT = 10  # the label of "not a digit" in the trainer's eleven classes


class _Output(nn.Module):
    """Digit logits (N, 10), or (N, 11) with the not-digit logit last -> the network's output (see the module
    docstring)."""

    def __init__(self, not_digit: bool) -> None:
        super().__init__()
        self.not_digit = not_digit

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        digits = logits[:, :DIGITS]
        log_probs = torch.log_softmax(digits, dim=1)
        if not self.not_digit:
            return log_probs
        log_odds = torch.logsumexp(digits, dim=1, keepdim=True) - logits[:, DIGITS:]
        return torch.cat([log_probs, log_odds], dim=1)


def digit_log_probs(output: torch.Tensor) -> torch.Tensor:
    """A network's output (N, 10) or (N, 11) -> the ten digit log-probabilities (N, 10)."""
    return output[:, :DIGITS]


def digit_scores(output: torch.Tensor) -> torch.Tensor | None:
    """A network's output -> the digit score (N,) in [0, 1] (sigmoid of the digit log-odds), or None for a network
    without the not-digit class."""
    if output.shape[1] == DIGITS:
        return None
    return torch.sigmoid(output[:, DIGITS].float())


def eleven_class_log_probs(output: torch.Tensor) -> torch.Tensor:
    """A not-digit network's output (N, 11) -> log-probabilities over the eleven classes (N, 11), as trained:
    log p(digit d) = log p(d | a digit) + log sigmoid(z), log p(not a digit) = log sigmoid(-z)."""
    log_odds = output[:, DIGITS:]
    return torch.cat([output[:, :DIGITS] + F.logsigmoid(log_odds), F.logsigmoid(-log_odds)], dim=1)


class MyNet(nn.Module):
    """The original notebook's network, kept so its result can be reproduced (`--preset seed`).

    Three blocks of Conv3x3-ReLU-BatchNorm-MaxPool-Dropout with 32, 64 and 128 channels; the third conv has no
    padding. Shapes: 28x28 -> 14x14 -> 7x7 -> 5x5 (unpadded conv) -> 2x2, so the head sees 128 * 2 * 2 = 512.
    """

    def __init__(self, dropout: float = 0.25, not_digit: bool = False) -> None:
        super().__init__()
        classes = DIGITS + int(not_digit)

        def block(c_in: int, c_out: int, padding: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=padding),
                nn.ReLU(inplace=True),
                nn.BatchNorm2d(c_out),
                nn.MaxPool2d(2),
                nn.Dropout(dropout),
            )

        self.features = nn.Sequential(block(1, 32, 1), block(32, 64, 1), block(64, 128, 0))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(512, 128), nn.ReLU(inplace=True), nn.Linear(128, classes))
        self.output = _Output(not_digit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 1, 28, 28)
        return self.output(self.head(self.features(x)))


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

    def __init__(self, width: int = 16, dropout: float = 0.1, not_digit: bool = False) -> None:
        super().__init__()
        w = width
        classes = DIGITS + int(not_digit)
        self.features = nn.Sequential(
            *_conv_bn(1, w),
            nn.MaxPool2d(2),
            *_conv_bn(w, 2 * w),
            *_conv_bn(2 * w, 2 * w),
            nn.MaxPool2d(2),
            *_conv_bn(2 * w, 4 * w),
            *_conv_bn(4 * w, 4 * w),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * w, classes))
        self.output = _Output(not_digit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 1, 28, 28)
        return self.output(self.head(self.features(x)))


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
