"""shared/segment.py on its own: how touching digits are cut (the ReadNumber tests check the readings end to end)."""

from __future__ import annotations

import cv2
import numpy as np

from shared import segment
from shared.normalize import estimate_background, ink_contrast


def touching_pair() -> tuple[segment.Pieces, segment.Region, float]:
    """Two thick-stroked zeros whose sides touch, dark on white: one piece of ink, one region, and its height."""
    picture = np.full((120, 200), 255, np.uint8)
    cv2.ellipse(picture, (62, 60), (32, 44), 0, 0, 360, 0, 9)
    cv2.ellipse(picture, (132, 60), (32, 44), 0, 0, 360, 0, 9)
    ink = ink_contrast(picture, estimate_background(picture))
    pieces = segment.find_pieces(ink)
    groups = segment.group_pieces(pieces, 0.0)
    assert len(groups) == 1, "the two zeros should touch"
    region = segment.region_of(pieces, segment.group_mask(pieces, groups[0]), 0.0)
    return pieces, region, float(groups[0].height)


def left_sides(region: segment.Region, cuts: list[segment.Cut]) -> list[np.ndarray]:
    """Each cut's left half as a mask over the whole region."""
    out = []
    for cut in cuts:
        left = np.zeros_like(region.mask)
        x, y = cut.left.x - region.x, cut.left.y - region.y
        h, w = cut.left.mask.shape
        left[y : y + h, x : x + w] = cut.left.mask
        out.append(left)
    return out


def test_cuts_that_move_only_a_sliver_of_ink_are_tried_once(monkeypatch):
    pieces, region, height = touching_pair()
    total = int(region.mask.sum())
    cuts = segment.cut_candidates(pieces, region, 0.0, height)
    assert cuts, "the touching zeros should have a cut"
    sides = left_sides(region, cuts)
    for i in range(len(sides)):
        for j in range(i):
            moved = np.count_nonzero(sides[i] ^ sides[j])
            assert moved > segment.CUT_SAME_INK * total, f"cuts {j} and {i} differ by {moved} of {total} pixels"
    # Without the rule, paths through the same touching point give near-copies of one cut, each made into two
    # digit images and classified: the rule is what keeps them out.
    monkeypatch.setattr(segment, "CUT_SAME_INK", 0.0)
    assert len(segment.cut_candidates(pieces, region, 0.0, height)) > len(cuts)


def test_the_cheapest_cut_of_touching_zeros_splits_them_where_they_touch():
    pieces, region, height = touching_pair()
    cut = min(segment.cut_candidates(pieces, region, 0.0, height), key=lambda c: c.ink)
    left, right = cut.left.box, cut.right.box
    touch_x = 97 - region.x  # where the two rings meet, in the region
    assert abs(left[0] + left[2] - region.x - touch_x) <= 8 and abs(right[0] - region.x - touch_x) <= 8
    assert cut.ink <= 1.5
