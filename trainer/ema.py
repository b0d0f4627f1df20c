"""An exponential moving average (EMA) of the weights: what a run evaluates, checkpoints and publishes.

SGD at a high learning rate jitters around good weights; the average of the last few hundred steps sits near
their centre, so it is more accurate than the weights of any one step until the learning rate has come down
(docs/training.md gives the figures). At the end of a one-cycle run the learning rate is near zero, where the two
agree.

After every optimizer step: average = d * average + (1 - d) * weights, for the parameters and the BatchNorm
running statistics alike, so the averaged network carries statistics that match its averaged weights. d warms up
as min(decay, (1 + t) / (10 + t)) at step t (TensorFlow's ExponentialMovingAverage with num_updates): early on,
when the weights change fast, the average follows them closely, and a short run (tests, --dry-run) is not held
back by its random initial weights. torch.optim.swa_utils.AveragedModel has no such warm-up.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """The moving average of a network's weights, kept in a copy of the network (`network`, in eval mode)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"the weights' moving average needs a decay between 0 and 1, not {decay}")
        self.decay = decay
        self.steps = 0  # weights taken in so far
        self.network = copy.deepcopy(model).eval()  # same device and memory format as the model
        self.network.requires_grad_(False)

    def weight_of_new(self) -> float:
        """1 - d for the next step's weights (see the module docstring); 1 for the first, which is copied."""
        t = self.steps
        return 1.0 if t == 0 else 1.0 - min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Take in `model`'s current weights (the same architecture as `network`)."""
        weight = self.weight_of_new()
        averaged, current = [], []
        for mine, theirs in zip(self.network.state_dict().values(), model.state_dict().values(), strict=True):
            if mine.is_floating_point():
                averaged.append(mine)
                current.append(theirs.detach())
            else:
                mine.copy_(theirs)  # counters (BatchNorm's num_batches_tracked): the latest
        torch._foreach_lerp_(averaged, current, weight)  # one fused pass: mine += weight * (theirs - mine)
        self.steps += 1


def weight_average(model: nn.Module, decay: float) -> WeightAverage | None:
    """The moving average of `model`'s weights with this decay; None for decay 0 (the run uses its own weights)."""
    return None if decay == 0 else WeightAverage(model, decay)
