"""The moving average of the weights (trainer/ema.py) that a training run evaluates, checkpoints and publishes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainer.config import TrainConfig
from trainer.ema import WeightAverage, weight_average


def small_network() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def step(network: nn.Module, seed: int) -> None:
    """New weights for every tensor, as an optimizer step and a BatchNorm forward would leave them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in network.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
            else:
                tensor.add_(1)


def test_the_average_takes_in_each_step_with_the_warmed_up_decay():
    network = small_network()
    average = WeightAverage(network, decay=0.9)
    expected: dict[str, torch.Tensor] = {}
    for t in range(120):  # past t = 80, where the warm-up reaches the decay and the cap takes over
        step(network, seed=t)
        average.update(network)
        # The first weights are copied; then d = min(0.9, (1 + t) / (10 + t)): 0.18, 0.25, ... up to 0.9 at t = 80.
        d = 0.0 if t == 0 else min(0.9, (1 + t) / (10 + t))
        for name, tensor in network.state_dict().items():
            if tensor.is_floating_point():
                expected[name] = tensor.clone() if t == 0 else d * expected[name] + (1 - d) * tensor
    assert average.steps == 120
    assert average.weight_of_new() == pytest.approx(1 - 0.9)  # settled at the decay, not the warm-up's 0.93
    for name, tensor in average.network.state_dict().items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_counters_are_the_latest_not_averaged():
    network = small_network()
    average = WeightAverage(network, decay=0.99)
    for t in range(5):
        step(network, seed=t)
        average.update(network)
    counter = average.network.state_dict()["1.num_batches_tracked"]
    assert counter.dtype == torch.long and int(counter) == int(network.state_dict()["1.num_batches_tracked"]) == 5


def test_the_averaged_network_is_a_copy_that_takes_no_gradients():
    network = small_network()
    average = WeightAverage(network, decay=0.99)
    assert not average.network.training
    assert all(not p.requires_grad for p in average.network.parameters())
    step(network, seed=1)
    assert not torch.equal(average.network[0].weight, network[0].weight), "the average must not share storage"


def test_decay_zero_means_no_average_and_other_values_outside_are_refused():
    assert weight_average(small_network(), 0.0) is None
    for decay in (1.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            WeightAverage(small_network(), decay)


def test_a_run_from_before_the_average_resumes_without_one():
    """Its checkpoints hold the optimizer's weights as "model": continuing with an average would publish a
    network of two kinds of weights."""
    stored = {k: v for k, v in TrainConfig().to_dict().items() if k != "ema_decay"}
    assert TrainConfig.from_dict(stored).ema_decay == 0.0
    assert TrainConfig().ema_decay > 0, "the default keeps an average"
