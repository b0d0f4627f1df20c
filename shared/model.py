"""The networks, defined once and imported by the trainer and the inference service.

Every network takes a normalized batch of shape (N, 1, 28, 28) and returns log-probabilities (N, 10), so
`argmax` is the digit and `exp` the class probabilities. A checkpoint stores the architecture's name and its
keyword arguments, and `build_model(name, **kwargs)` rebuilds it without guessing.

Built with `not_digit=True`, a network has an eleventh logit, "not a digit", trained with outlier exposure on
the trainer's negatives (trainer/negatives.py), and returns (N, 11): the ten digit log-probabilities as before
(a softmax over the ten digit logits only, so the digit and its probabilities do not depend on the new class),
then the *digit log-odds* z = logsumexp(digit logits) - not-digit logit. sigmoid(z) is the eleven-class
probability that the picture is some digit (docs/not-a-digit.md). Use `digit_log_probs`, `digit_scores`,
`segment_scores` and `eleven_class_log_probs` rather than slicing by hand: they accept every shape (10, 11 or 12
columns).

Built also with `digit_distance=True`, a not-digit network has a second, independent sign of a non-digit: how far
the picture's embedding (the head's input to its last Linear) lies from every digit's, as a Mahalanobis distance
(`DigitDistance`), on z's scale. It returns (N, 12): the eleven columns above, then that penalty. The served digit
score is sigmoid(z - penalty), a score to compare with the model's threshold rather than a probability;
read_number weighs the class's own sigmoid(z) (`segment_scores`). The trainer fits the distance after training
(trainer/digit_distance.py); until then its weight is 0 and the penalty 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DIGITS = 10
NOT_DIGIT = 10  # the label of "not a digit" in the trainer's eleven classes


class _Output(nn.Module):
    """Digit logits (N, 10), or (N, 11) with the not-digit logit last -> the network's output (see the module
    docstring). `penalty` (N, 1), if given, is appended as a twelfth column."""

    def __init__(self, not_digit: bool) -> None:
        super().__init__()
        self.not_digit = not_digit

    def forward(self, logits: torch.Tensor, penalty: torch.Tensor | None = None) -> torch.Tensor:
        digits = logits[:, :DIGITS]
        log_probs = torch.log_softmax(digits, dim=1)
        if not self.not_digit:
            return log_probs
        log_odds = torch.logsumexp(digits, dim=1, keepdim=True) - logits[:, DIGITS:]
        return torch.cat([log_probs, log_odds] + ([] if penalty is None else [penalty]), dim=1)


class DigitDistance(nn.Module):
    """How far an embedding (N, D) lies from the nearest digit's, on the digit log-odds' scale -> (N, 1).

    The ten digits' embeddings are modelled as Gaussians with their own means and one shared covariance (fitted
    on training digits). m = min over digits d of (h - mean_d)^T precision (h - mean_d), computed as the squared
    distance between h @ whiten and centres_d = mean_d @ whiten, where whiten @ whiten^T = precision. Pictures
    unlike every digit lie far from all ten means even when the classifier's logits look sure. The penalty is
    weight * (log(m) - offset): offset is log m's mean on validation digits, so a typical digit is not moved,
    and weight puts log m on z's own spread (trainer/digit_distance.py). All zeros (weight 0) until fitted.
    """

    whiten: torch.Tensor
    centres: torch.Tensor
    offset: torch.Tensor
    weight: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("whiten", torch.zeros(dim, dim))  # (D, D)
        self.register_buffer("centres", torch.zeros(DIGITS, dim))  # (10, D), already whitened
        self.register_buffer("offset", torch.zeros(()))
        self.register_buffer("weight", torch.zeros(()))

    def squared_distance(self, embedding: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N,): the Mahalanobis distance squared to the nearest digit's mean."""
        whitened = embedding.float() @ self.whiten  # (N, D)
        return (whitened[:, None, :] - self.centres[None]).square().sum(dim=2).amin(dim=1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        # The small floor keeps log finite (weight 0 times a finite number is 0 while nothing is fitted).
        # (N, 1): the network's twelfth column.
        return (self.weight * (torch.log(self.squared_distance(embedding) + 1e-6) - self.offset)).unsqueeze(1)


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A normalized batch (N, 1, 28, 28) -> the embedding the network's last Linear reads, (N, D)."""
    head = cast(nn.Sequential, model.head)
    return head[:-1](cast(nn.Module, model.features)(x))


def output_from_embedding(model: nn.Module, embedding: torch.Tensor) -> torch.Tensor:
    """An embedding (N, D) -> the network's output: its last Linear, then the output with the digit distance's
    penalty when the network has one. `model(x)` is `output_from_embedding(model, embed(model, x))`."""
    logits = cast(nn.Sequential, model.head)[-1](embedding)
    distance = cast(DigitDistance | None, model.distance)
    return cast(nn.Module, model.output)(logits, None if distance is None else distance(embedding))


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Shared by the networks: features, head, output, with the digit distance when the network has one."""
    return output_from_embedding(model, embed(model, x))


def digit_log_probs(output: torch.Tensor) -> torch.Tensor:
    """A network's output (N, 10), (N, 11) or (N, 12) -> the ten digit log-probabilities (N, 10)."""
    return output[:, :DIGITS]


def digit_scores(output: torch.Tensor) -> torch.Tensor | None:
    """A network's output -> the served digit score (N,) in [0, 1]: sigmoid of the digit log-odds less the digit
    distance's penalty where the network has one; None for a network without the not-digit class."""
    if output.shape[1] == DIGITS:
        return None
    log_odds = output[:, DIGITS].float()
    if output.shape[1] > DIGITS + 1:
        log_odds = log_odds - output[:, DIGITS + 1].float()
    return torch.sigmoid(log_odds)


def segment_scores(output: torch.Tensor) -> np.ndarray:
    """A network's output -> what read_number weighs its cuts and joins with (shared/segment.py Classified), (N,)
    float64: the not-digit class's own digit score sigmoid(z), without the digit distance (which helps tell
    non-digits, but read fewer numbers right there: docs/not-a-digit.md); 1 for a network without the class."""
    if output.shape[1] == DIGITS:
        return np.ones(len(output))
    return torch.sigmoid(output[:, DIGITS].double()).numpy()


def eleven_class_log_probs(output: torch.Tensor) -> torch.Tensor:
    """A not-digit network's output (N, 11 or 12) -> log-probabilities over the eleven classes (N, 11), as trained
    (the class's own log-odds z: the digit distance is no part of training):
    log p(digit d) = log p(d | a digit) + log sigmoid(z), log p(not a digit) = log sigmoid(-z)."""
    log_odds = output[:, DIGITS : DIGITS + 1]
    return torch.cat([output[:, :DIGITS] + F.logsigmoid(log_odds), F.logsigmoid(-log_odds)], dim=1)


class MyNet(nn.Module):
    """The original notebook's network, kept so its result can be reproduced (`--preset seed`).

    Three blocks of Conv3x3-ReLU-BatchNorm-MaxPool-Dropout with 32, 64 and 128 channels; the third conv has no
    padding. Shapes: 28x28 -> 14x14 -> 7x7 -> 5x5 (unpadded conv) -> 2x2, so the head sees 128 * 2 * 2 = 512.
    """

    def __init__(self, dropout: float = 0.25, not_digit: bool = False, digit_distance: bool = False) -> None:
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
        self.distance = _distance(not_digit, digit_distance, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 1, 28, 28)
        return _forward(self, x)


def _distance(not_digit: bool, digit_distance: bool, dim: int) -> DigitDistance | None:
    if digit_distance and not not_digit:
        raise ValueError("digit_distance needs not_digit: it adjusts the not-digit class's log-odds")
    return DigitDistance(dim) if digit_distance else None


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

    def __init__(
        self, width: int = 16, dropout: float = 0.1, not_digit: bool = False, digit_distance: bool = False
    ) -> None:
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
        self.distance = _distance(not_digit, digit_distance, 4 * w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 1, 28, 28)
        return _forward(self, x)


class Ensemble(nn.Module):
    """`members` networks of one architecture from different initial weights, trained side by side, each on the
    step's digits augmented its own way; together they read better than any of them alone and flag more non-digits
    (docs/not-a-digit.md, "An ensemble of three").

    Evaluating, it returns one network's output (N, C) combined from its members' (`combine`), so the
    service, the ONNX export and every reader of an output treat it as any network. Training, it returns the
    members' own outputs stacked, (M, N, C): each member learns from its own loss (trainer/train.py), as if it
    were trained alone. A loss on the combined output would train one wide network, whose parts do not err apart.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.columns = output_columns(members[0])

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        # x: (N, 1, 28, 28) for every member, or a list of M such batches, each member's own (the trainer's).
        batches = x if isinstance(x, list) else [x] * len(self.members)
        outputs = torch.stack([member(batch) for member, batch in zip(self.members, batches, strict=True)])
        return outputs if self.training else self.combine(outputs)  # (M, N, C), or (N, C)

    def combine(self, outputs: torch.Tensor) -> torch.Tensor:
        """The members' outputs (M, N, C) -> one network's output (N, C), for what reads it.

        The digit probabilities are averaged; so is the probability that the picture is some digit, sigmoid(z),
        taken back to log-odds; the digit distance's penalty is averaged as it stands (it is on z's scale already).
        Probabilities, not log-probabilities: one member sure that it is not a 7 does not veto two that read a 7
        (tests/shared/test_model.py). M and C are the ensemble's own, not read off the tensor: the ONNX export
        traces this, and a shape read there is a traced value."""
        log_members = math.log(len(self.members))
        combined = [torch.logsumexp(outputs[:, :, :DIGITS], dim=0) - log_members]  # (N, 10): log of the mean
        if self.columns > DIGITS:
            log_odds = outputs[:, :, DIGITS]  # (M, N)
            some_digit = torch.logsumexp(F.logsigmoid(log_odds), dim=0)  # log of M times the mean, (N,)
            no_digit = torch.logsumexp(F.logsigmoid(-log_odds), dim=0)
            combined.append((some_digit - no_digit).unsqueeze(1))  # the logit of the mean probability, stably
        if self.columns > DIGITS + 1:
            combined.append(outputs[:, :, DIGITS + 1].mean(dim=0).unsqueeze(1))
        return torch.cat(combined, dim=1)


def output_columns(model: nn.Module) -> int:
    """How many columns `model`'s output has: 10, 11 with the not-digit class, 12 with its digit distance too."""
    if isinstance(model, Ensemble):
        return model.columns
    return DIGITS + int(cast(_Output, model.output).not_digit) + int(model.distance is not None)


def networks(model: nn.Module) -> list[nn.Module]:
    """The single networks in `model`: an ensemble's members, or the network itself."""
    return list(model.members) if isinstance(model, Ensemble) else [model]


def activation_bytes(model: nn.Module) -> int:
    """The bytes every module of `model` outputs for one image in float32: the most its forward pass can hold at
    once for each image of a batch, whatever runs it (torch frees each output once the next is made, and
    onnxruntime plans buffers to share). The service holds this much of its decode budget per image while the
    network runs (inference.model_store.ServedModel.forward_bytes): a compact network's is 387 KiB, against 12-104
    KiB an image that forward passes of 256 images held here (torch and onnxruntime; bench/bench_memory.py --part
    working)."""
    sizes: list[int] = []

    def note(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel() * 4)

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(note) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            output = model(torch.zeros(1, 1, 28, 28))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return sum(sizes) + output.numel() * 4


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mynet": MyNet,
    "compact": CompactNet,
}


def build_model(arch: str, *, members: int = 1, **kwargs: Any) -> nn.Module:
    """Build the network `arch` with its keyword arguments (as stored in a checkpoint); with `members` > 1, an
    ensemble of that many of them."""
    try:
        factory = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}") from None
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise ValueError(f"members must be a whole number of networks, 1 or more, not {members!r}")
    if members == 1:
        return factory(**kwargs)
    return Ensemble([factory(**kwargs) for _ in range(members)])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
