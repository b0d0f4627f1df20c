"""testkit.user_images: a MNIST digit drawn with any pen is still the digit it is labelled."""

from __future__ import annotations

import numpy as np
import pytest

from shared.normalize import distance_to_zero

from testkit import user_images as ui

# MNIST test digits of thick writers: a 2 with a blotted foot, 3s whose middle arm is a blot, a 6 with its loop
# filled in. A fine pen tracing their centre lines drew a 1, two "ↄ" and a "(".
BLOTTED = {8102: 2, 450: 3, 5623: 3, 5989: 6}
# Ordinary strokes: a 7, a 2, a 1, a 0, a 4.
ORDINARY = (0, 1, 2, 3, 4)
HEIGHT, FINE_PEN = 90, 2.0


def left_out(digit: np.ndarray, drawn: np.ndarray) -> float:
    """The share of the digit's own shape (at the drawing's size) farther than 3/4 of its writer's stroke width
    from the drawing's ink: the parts a reader of the drawing never sees."""
    shape = ui.digit_shape(digit, HEIGHT)
    h, w = min(shape.shape[0], drawn.shape[0]), min(shape.shape[1], drawn.shape[1])
    pad = (drawn.shape[0] - shape.shape[0]) // 2  # a drawing is its shape padded on every side alike
    ink = drawn[pad : pad + h, pad : pad + w] >= 0.5
    far = distance_to_zero((~ink).astype(np.uint8)) > 0.75 * ui.stroke_width_of(shape)
    return np.count_nonzero(shape[:h, :w] & far) / np.count_nonzero(shape)


@pytest.mark.parametrize("index", sorted(BLOTTED))
def test_a_fine_pen_leaves_no_part_of_a_thick_writers_digit_out(mnist, index):
    digit = mnist.test_images[index].numpy()
    assert mnist.test_labels[index] == BLOTTED[index]
    assert left_out(digit, ui.draw_digit(digit, HEIGHT, FINE_PEN)) < 0.02


@pytest.mark.parametrize("index", ORDINARY)
def test_an_ordinary_digit_is_drawn_with_the_fine_pen_itself(mnist, index):
    digit = mnist.test_images[index].numpy()
    drawn = ui.draw_digit(digit, HEIGHT, FINE_PEN)
    assert left_out(digit, drawn) < 0.02
    assert ui.stroke_width_of(drawn >= 0.5) < 2 * FINE_PEN  # the pen's own width, not the writer's
