"""The digit distance: a not-digit network's second sign of a non-digit, fitted after training
(trainer/digit_distance.py, shared.model.DigitDistance)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shared.data import normalize
from shared.model import DIGITS, build_model, digit_scores, embed

from trainer.digit_distance import DISTANCE_WEIGHT, fit_digit_distance
from trainer.train import load_weights


def small_net(seed: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("compact", width=4, not_digit=True, **kwargs).eval()


@pytest.fixture(scope="module")
def fitted(mnist):
    """A small random network fitted on 2,000 MNIST training digits, scaled on 500 others."""
    model = small_net(0, digit_distance=True)
    x, y = mnist.train_images[:2000], mnist.train_labels[:2000]
    val = mnist.train_images[2000:2500]
    figures = fit_digit_distance(model, x, y, val, torch.device("cpu"), torch.Generator().manual_seed(0))
    return model, x, y, val, figures


def test_an_unfitted_digit_distance_changes_nothing(mnist):
    plain, with_distance = small_net(1), small_net(1, digit_distance=True)
    load_weights(with_distance, plain.state_dict())  # a checkpoint from before the distance existed loads
    x = normalize(mnist.test_images[:64])
    with torch.no_grad():
        before, after = plain(x), with_distance(x)
    assert torch.equal(after[:, : DIGITS + 1], before)
    assert torch.equal(after[:, DIGITS + 1], torch.zeros(len(x)))  # no penalty until fitted
    assert torch.equal(digit_scores(after), digit_scores(before))


def test_the_distance_is_mahalanobis_to_the_nearest_digit_mean(fitted):
    """Recomputed here in NumPy from the same embeddings: class means, one shared covariance, its inverse."""
    model, x, y, _val, _ = fitted
    with torch.no_grad():
        h = embed(model, normalize(x)).double().numpy()
    labels = y.numpy()
    means = np.stack([h[labels == d].mean(axis=0) for d in range(DIGITS)])
    centred = h - means[labels]
    covariance = centred.T @ centred / len(h)
    covariance += 1e-4 * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    probe = h[:50] + np.random.default_rng(0).normal(0, 0.5, (50, h.shape[1]))  # near and between the digits
    expected = np.min(
        [np.einsum("nd,nd->n", probe - m, np.linalg.solve(covariance, (probe - m).T).T) for m in means], axis=0
    )
    got = model.distance.squared_distance(torch.from_numpy(probe).float()).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=2e-3)


def test_the_fit_puts_the_distance_on_the_class_log_odds_scale(fitted):
    """On the validation digits the penalty has mean 0 (a typical digit is not moved) and the spread of the class's
    own log-odds times DISTANCE_WEIGHT."""
    model, _x, _y, val, figures = fitted
    with torch.no_grad():
        v = normalize(val)
        h = embed(model, v)
        output = model(v).double()
        penalty = model.distance(h)[:, 0].double()
    assert torch.equal(output[:, DIGITS + 1], penalty)  # the twelfth column
    class_log_odds = output[:, DIGITS]  # what the eleventh class alone says
    assert abs(float(penalty.mean())) < 1e-3 * float(penalty.std())
    assert float(penalty.std()) == pytest.approx(DISTANCE_WEIGHT * float(class_log_odds.std()), rel=1e-3)
    assert figures["weight"] == pytest.approx(float(model.distance.weight))


def test_pictures_unlike_every_digit_lose_digit_score(fitted, mnist):
    """Flat grey and salt-and-pepper noise lie far from all ten digit means: the penalty is positive for them and
    larger than for test digits."""
    model = fitted[0]
    rng = np.random.default_rng(0)
    odd = np.concatenate(
        [np.full((20, 28, 28), 128, np.uint8), (rng.random((20, 28, 28)) < 0.5).astype(np.uint8) * 255]
    )
    with torch.no_grad():
        penalty_odd = model.distance(embed(model, normalize(torch.from_numpy(odd))))[:, 0]
        penalty_digits = model.distance(embed(model, normalize(mnist.test_images[:500])))[:, 0]
    assert float(penalty_odd.median()) > 0
    assert float(penalty_odd.median()) > float(penalty_digits.quantile(0.9))


def test_a_checkpoint_missing_other_weights_is_still_refused():
    model = small_net(2, digit_distance=True)
    state = {k: v for k, v in small_net(2).state_dict().items() if not k.startswith("head.")}
    with pytest.raises(RuntimeError, match="head"):
        load_weights(model, state)


def test_a_digit_distance_needs_the_not_digit_class():
    with pytest.raises(ValueError, match="not_digit"):
        build_model("compact", width=4, digit_distance=True)


def test_read_number_weighs_its_cuts_with_the_class_score_and_serves_the_distance():
    """The served digit score includes the distance's penalty (the twelfth column); read_number's cuts and joins
    weigh the class's own (shared.model.segment_scores), which read more numbers right (docs/not-a-digit.md)."""
    from shared.model import segment_scores

    digits = torch.log_softmax(torch.randn(4, DIGITS), dim=1)
    log_odds = torch.tensor([[3.0], [3.0], [-1.0], [0.0]])
    penalty = torch.tensor([[0.0], [4.0], [-2.0], [1.0]])
    output = torch.cat([digits, log_odds, penalty], dim=1)  # (4, 12)
    torch.testing.assert_close(digit_scores(output), torch.sigmoid(torch.tensor([3.0, -1.0, 1.0, -1.0])))
    np.testing.assert_allclose(segment_scores(output), torch.sigmoid(log_odds[:, 0].double()).numpy())
    np.testing.assert_allclose(segment_scores(output[:, : DIGITS + 1]), segment_scores(output))  # no distance
    np.testing.assert_array_equal(segment_scores(output[:, :DIGITS]), np.ones(4))  # a plain digit network


@pytest.mark.parametrize("arch", ["compact", "mynet"])
def test_both_networks_give_twelve_columns_with_a_digit_distance(arch):
    model = build_model(arch, not_digit=True, digit_distance=True).eval()
    with torch.no_grad():
        out = model(torch.zeros(3, 1, 28, 28))
    assert out.shape == (3, DIGITS + 2)


def test_digits_that_cannot_fit_it_leave_the_distance_unfitted(mnist):
    """A --dry-run's one batch may lack a digit: the class's own score is then served, nothing NaN."""
    model = small_net(3, digit_distance=True)
    x, y = mnist.train_images[:300], mnist.train_labels[:300]
    keep = y != 4
    figures = fit_digit_distance(model, x[keep], y[keep], mnist.train_images[300:400], torch.device("cpu"))
    assert "digit 4" in figures["skipped"]
    assert float(model.distance.weight) == 0
    with torch.no_grad():
        out = model(normalize(mnist.test_images[:16]))
    assert torch.isfinite(out).all() and torch.equal(out[:, DIGITS + 1], torch.zeros(16))
