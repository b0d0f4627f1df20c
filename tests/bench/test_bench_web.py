"""bench/bench_web.py's arguments and report, without a browser."""

from __future__ import annotations

import numpy as np
import pytest

from bench.bench_web import first_of_class, get_args_parser, stroke_summary


def test_a_screenshot_digit_that_is_no_digit_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        get_args_parser().parse_args(["--screenshot-digits", "2", "12"])
    assert exit_info.value.code == 2
    assert "argument --screenshot-digits: must be a digit from 0 to 9, got 12" in capsys.readouterr().err


def test_a_digit_with_no_test_image_is_a_clear_error():
    labels = np.array([3, 1, 3, 7])
    assert first_of_class(labels, 3) == 0 and first_of_class(labels, 7) == 3
    with pytest.raises(SystemExit, match="no MNIST test image of the digit 5"):
        first_of_class(labels, 5)


def test_no_stroke_latency_recorded_gives_no_figure():
    assert stroke_summary([], 30) is None  # max() of nothing raised ValueError after the whole run
    assert stroke_summary([10.0, 30.0, 20.0], 3) == (
        "finished stroke -> prediction on screen (3 strokes, 3 digits): p50 20.0 ms, p90 28.0 ms, max 30.0 ms "
        "(target p50 < 50 ms)"
    )
