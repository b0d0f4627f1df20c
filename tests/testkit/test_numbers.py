"""testkit.numbers: the special pens draw numbers a person can still read."""

from __future__ import annotations

import cv2
import numpy as np

from testkit.numbers import DOT_MAX_SIZE, write_number


def test_a_broad_pens_dots_stay_small_and_many(mnist):
    """Dots a brush wide, two widths apart, left five or six to a digit, which no one reads."""
    images = mnist.test_images.numpy()
    height, brush = 100, 18.0
    written = write_number([images[i] for i in range(4)], height, brush, np.random.default_rng(0), pen="dotted")
    count, _, stats, _ = cv2.connectedComponentsWithStats((written.coverage >= 0.5).astype(np.uint8))
    sides = stats[1:, 2:4].max(axis=1)
    assert sides.max() <= DOT_MAX_SIZE * 1.15 * height + 3  # the tallest digit is 1.15 x the line's height
    assert count - 1 >= 4 * 10  # at least ten dots to a digit
