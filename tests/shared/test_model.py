"""shared.model: an ensemble of networks reads as one network, and trains as its members."""

from __future__ import annotations

import copy

import pytest
import torch

from shared.model import CompactNet, Ensemble, activation_bytes, build_model, digit_scores, networks, segment_scores
from shared.onnx_model import OnnxRunner, export_onnx

KWARGS = {"width": 4, "not_digit": True, "digit_distance": True}


def ensemble_with_distances(members: int = 3, seed: int = 0) -> Ensemble:
    """An evaluating ensemble of small random networks whose digit distances give a penalty far from 0."""
    torch.manual_seed(seed)
    model = build_model("compact", members=members, **KWARGS)
    assert isinstance(model, Ensemble)
    for network in networks(model):
        distance = network.distance
        distance.whiten.copy_(torch.eye(len(distance.whiten)))
        distance.centres.normal_()
        distance.offset.fill_(-1.0)
        distance.weight.uniform_(0.5, 2.0)
    return model.eval()


def test_an_ensemble_reads_the_mean_of_its_members_probabilities_and_penalties():
    model = ensemble_with_distances()
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        out = model(x).double()
        each = torch.stack([network(x) for network in networks(model)]).double()  # (3, 16, 12)
    assert out.shape == (16, 12)
    torch.testing.assert_close(out[:, :10].exp(), each[:, :, :10].exp().mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.sigmoid(out[:, 10]), torch.sigmoid(each[:, :, 10]).mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:, 11], each[:, :, 11].mean(0), rtol=0, atol=1e-5)
    # What the service serves and what read_number weighs, from the combined columns.
    served = torch.sigmoid(torch.logit(torch.sigmoid(each[:, :, 10]).mean(0)) - each[:, :, 11].mean(0))
    torch.testing.assert_close(digit_scores(out).double(), served, rtol=0, atol=1e-5)
    assert segment_scores(out) == pytest.approx(torch.sigmoid(each[:, :, 10]).mean(0).numpy(), abs=1e-6)


def test_one_sure_member_does_not_veto_two_that_read_otherwise():
    """Probabilities are averaged, not log-probabilities: one member at 0.999 for a 1 and a millionth for a 7, two
    at 0.9 for the 7 and 0.1 for the 1, read a 7 (mean 0.60 against 0.40); a mean of log-probabilities would read
    the 1 (the sure member's millionth weighs -13.8)."""
    model = ensemble_with_distances()
    probs = torch.full((3, 1, 10), 1e-9)
    probs[0, 0, 1], probs[0, 0, 7] = 0.999, 1e-6
    probs[1:, 0, 7], probs[1:, 0, 1] = 0.9, 0.1
    outputs = torch.cat([probs.log(), torch.zeros(3, 1, 2)], dim=2)
    assert int(model.combine(outputs)[0, :10].argmax()) == 7
    assert int(outputs[:, 0, :10].mean(0).argmax()) == 1


def test_a_training_ensemble_returns_each_members_own_output():
    model = build_model("compact", members=2, width=4).train()
    x = torch.randn(8, 1, 28, 28)
    torch.manual_seed(5)
    stacked = model(x)
    assert stacked.shape == (2, 8, 10)
    alone = copy.deepcopy(networks(model)[0]).train()
    torch.manual_seed(5)  # the same dropout: the first member draws first
    torch.testing.assert_close(stacked[0], alone(x))


def test_a_training_ensemble_given_a_batch_per_member_gives_each_its_own():
    model = build_model("compact", members=2, width=4, dropout=0.0).train()
    first, second = torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28)
    stacked = model([first, second])
    alone = [copy.deepcopy(network).train() for network in networks(model)]
    torch.testing.assert_close(stacked[0], alone[0](first))
    torch.testing.assert_close(stacked[1], alone[1](second))
    with pytest.raises(ValueError):  # a batch short: not silently one member fewer
        model([first])


def test_members_start_from_different_weights():
    first, second = networks(build_model("compact", members=2, width=4))
    assert not torch.equal(first.features[0].weight, second.features[0].weight)


def test_one_member_is_the_plain_network_and_its_weights_keep_their_names():
    model = build_model("compact", members=1, width=4)
    assert isinstance(model, CompactNet) and networks(model) == [model]
    assert "features.0.weight" in model.state_dict()
    assert "members.1.features.0.weight" in build_model("compact", members=2, width=4).state_dict()


@pytest.mark.parametrize("members", [0, -1, 1.5, True, "2", None])
def test_members_must_be_a_whole_number_of_one_or_more(members):
    with pytest.raises(ValueError, match="members must be a whole number"):
        build_model("compact", members=members, width=4)


def test_an_ensemble_exports_to_onnx_and_onnxruntime_agrees_with_torch():
    model = ensemble_with_distances(members=2, seed=3)
    runner = OnnxRunner(export_onnx(model))
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(runner(x), expected, rtol=0, atol=1e-4)


def test_activation_bytes_counts_every_modules_output_for_one_image_and_leaves_the_model_as_it_was():
    """What the service holds in its decode budget per image while the network runs (ServedModel.forward_bytes)."""
    model = build_model("compact", not_digit=True, digit_distance=True)
    model.train()
    single = activation_bytes(model)
    assert model.training
    # The first convolution's 16 x 28 x 28 floats, three times over (convolution, batch norm, ReLU), and more.
    assert single > 3 * 16 * 28 * 28 * 4
    three = activation_bytes(build_model("compact", members=3, not_digit=True, digit_distance=True))
    assert abs(three - 3 * single) < 1024  # each member's own, and one combined output
