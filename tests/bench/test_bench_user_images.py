"""bench/bench_user_images.py's arguments and what it reports and checks, with a stand-in model and a few digits
(the benchmark's own pictures and model are its run's business)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import shared.data

import bench.bench_user_images as bench_user_images


@pytest.fixture
def stand_ins(monkeypatch, mnist):
    """A model that answers 0 for every picture, a test set of 30 digits, and the 'direct' accuracy 0.5."""
    few = SimpleNamespace(test_images=mnist.test_images[:30], test_labels=mnist.test_labels[:30])
    monkeypatch.setattr(shared.data, "load_mnist", lambda *args, **kwargs: few)
    monkeypatch.setattr(bench_user_images, "local_predictor", lambda path: lambda batch: [0] * len(batch))
    monkeypatch.setattr(bench_user_images, "mnist_direct_accuracy", lambda path, images, labels: 0.5)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--per-font", "0", "must be at least 1, got 0"),  # --check passed with no printed digit scored
        ("--mnist", "-1", "must be 0 or more, got -1"),  # ran 9,999 digits
    ],
)
def test_counts_that_score_nothing_or_wrap_around_are_refused(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_user_images.main(["--checkpoint", "model.pt", flag, value])
    assert exit_info.value.code == 2
    assert f"argument {flag}: {message}" in capsys.readouterr().err


def test_more_mnist_digits_than_there_are_says_how_many_were_scored(stand_ins, capsys):
    argv = ["--checkpoint", "model.pt", "--styles", "printed", "--per-font", "1", "--mnist", "50"]
    assert bench_user_images.main(argv) == 0
    out = capsys.readouterr().out
    assert "MNIST test digits 0..29 (all there are, not 50): 50.00% straight into the model" in out


def test_check_fails_when_a_group_asked_for_scored_nothing(stand_ins, monkeypatch, capsys):
    monkeypatch.setattr(bench_user_images, "make_printed_digits", lambda **kwargs: [])
    assert bench_user_images.main(["--checkpoint", "model.pt", "--styles", "printed", "--check"]) == 1
    assert "nothing scored: printed" in capsys.readouterr().err
