"""A decoded picture of one digit -> MNIST's geometry: paper, ink, strokes, box and centre.

Works on arrays that shared/decode.py produced (uint8, at most WORK_MAX_SIDE on the long side), so nothing here
reads untrusted bytes. The steps, each one OpenCV or NumPy call on a whole array (no Python loop touches
pixels):

2. estimate_background   the paper: a smooth quadratic surface per colour channel, fitted robustly (the ink is
                  a minority and is rejected as outliers), so a lighting gradient or vignette is not ink.
3. ink_contrast   how far each pixel is from the paper, in the colour channel where it differs most. Dark ink
                  on white, light ink on black and red ink on equally bright green all become bright ink on black:
                  no polarity guess, no inversion step that can go wrong.
4. find_ink       threshold (Otsu, never below a contrast floor and the noise level), keep the connected
                  strokes that form the digit and drop specks of noise by their size relative to the digit, not
                  by morphology, so a one-pixel pen stroke survives. Nothing left -> ImageRejected (blank).
5. crop           to the ink, at working resolution, with a soft (anti-aliased) ink map rather than a binary one.
6. normalize_stroke_width   measure the stroke width (2 x area / perimeter) relative to the digit's size and
                  bring it into MNIST's range (median 0.11 of the box): thin pen strokes are grown, paint-brush
                  strokes are thinned, using distance transforms (cost independent of the width).
7. fit_in_box + centre_by_mass   scale so the longer side is 20 pixels (area averaging = anti-aliasing) and
                  paste into 28x28 with the centre of mass on pixel (14, 14), as MNIST's mean is (13.99, 14.01).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import NoReturn

import cv2
import numpy as np

from shared.decode import WORK_MAX_SIDE, ImageRejected, sample_grid

# ---------------------------------------------------------------------------------------------------------------
# Constants. The MNIST figures were measured on the 10,000 test digits (see docs/pipeline.md).

MNIST_SIDE = 28
MNIST_BOX = 20  # the longer side of every MNIST digit's bounding box
MNIST_CENTRE = 14.0  # mean centre of mass of MNIST digits, in pixel-index coordinates: (13.99, 14.01)

# Stroke width / longer side of the bounding box, as 2*area/perimeter of the digit at 4x: MNIST's 10th, 50th and
# 90th percentiles are 0.082, 0.110 and 0.153, nearly the same for every digit (0.103..0.115 medians).
STROKE_RATIO_TARGET = 0.11
STROKE_RATIO_THIN = 0.07  # below this (MNIST's 3rd percentile) the stroke is grown to STROKE_RATIO_TARGET
STROKE_RATIO_THICK = 0.17  # above this (MNIST's 95th percentile) it is thinned to STROKE_RATIO_THICK_TARGET
STROKE_RATIO_THICK_TARGET = 0.13  # MNIST's 75th percentile: bold, but with open loops
MAX_THINNING_FRACTION = 0.3  # never remove more than this fraction of the stroke width (thin parts would vanish)

# Stroke widths are adjusted on the cropped digit at this many pixels on its long side: fine enough for one-pixel
# precision at MNIST's scale (x8 of the 20-px box), cheap enough that the distance transforms cost ~0.2 ms.
STROKE_WORK_MAX_SIDE = 160
STROKE_WORK_MIN_SIDE = 64
# A crop shrunk f > 1 times to that side is ink where it is at least this / f (stroke_mask_level).
STROKE_MASK_PIXEL_LEVEL = 0.4

BACKGROUND_GRID_SIDE = 48  # the paper is modelled on at most this many samples along the long side
BACKGROUND_FIT_ROUNDS = 3
BACKGROUND_MIN_TOLERANCE = 12.0  # grey levels: the robust fit's smallest inlier band (paper noise, texture, JPEG)
# Where the smooth paper and the local one disagree by more than SHADOW_CONTRAST grey levels over more than
# SHADOW_FRACTION of the picture, there is a shadow. (The local estimate sits 2-3 noise levels above the paper:
# it is the brightest pixel of each cell.)
SHADOW_CONTRAST = 24
SHADOW_FRACTION = 0.03
LOCAL_BACKGROUND_MIN_SIDE = 64  # pixels: a picture narrower than this is never estimated locally
LOCAL_BACKGROUND_CELLS = 96  # the local paper estimate works on cells of 1/96 of the long side...
LOCAL_BACKGROUND_KERNEL = 17  # ...and fills strokes up to 17 cells wide: a sixth of the picture

MIN_INK_CONTRAST = 40  # grey levels (of 255) between ink and paper below which nothing counts as ink
NOISE_MULTIPLE = 5.0  # the ink threshold also stays this many times above the typical background residue
SOFT_FLOOR_MIN = 6  # the soft ink map starts at this contrast (or 3x the noise level, if higher)
KEEP_AREA_FRACTION = 0.04  # strokes smaller than this fraction of the largest stroke are specks of noise...
KEEP_NEAR_FRACTION = 0.6  # ...and strokes this far from the largest (x its size) that are not big are stray marks
KEEP_BIG_FRACTION = 0.25  # a stroke at least this fraction of the largest is kept wherever it is
KEEP_CONTRAST_FRACTION = 0.4  # ...but no mark less than this fraction as dark as the digit's strokes
MIN_DIGIT_SIDE = 5  # pixels at working resolution; a smaller blob is a speck, not a digit
DIGIT_LEAST_FRACTION = 0.1  # of the picture's long side: the least a single digit sent alone is (ruled paper)
SPECK_FRACTION = 0.05  # ...and, beside a line cut off by the edge, so is a mark under 1/20 of the shorter side
# A frame (frame_components) holds a mark at least FRAME_CONTENT of its box's shorter side (a 0's dot is not a digit
# in a box) and either encloses it, or spans FRAME_MIN_SPAN of the picture both ways with ink within FRAME_CORNER of
# its shorter side of each corner of its box (a box left open somewhere).
FRAME_MIN_SPAN = 0.5
FRAME_CORNER = 0.1
FRAME_CONTENT = 0.3
FRAME_MAX_SOLID = 0.5  # a frame is an outline: its ink at most this much of its shape with its holes filled
RING_MIN_ROUND = 0.8  # a ring without corners is a frame if its box is this near a square
# An oval taller than wide, less round than that down to OVAL_MIN_ROUND (a digit circled with an oval, its own
# shape), is one only round a mark as tall as a circled digit, OVAL_MIN_FILL of the hole's height, and not a line,
# or an upright line (a 1: within LINE_MAX_TILT degrees of vertical and OVAL_MIN_FILL_LINE of the hole) that keeps
# LINE_MIN_GAP of the hole's height clear of the oval, as a circled 1 with room round it does and a 0's free slash
# reaching across the 0 does not. A line is a mark whose second moments' minor axis is at most LINE_MAX_ELONGATION
# of its major one (as standard deviations).
OVAL_MIN_ROUND = 0.4
OVAL_MIN_FILL = 0.6
OVAL_MIN_FILL_LINE = 0.7
LINE_MAX_ELONGATION = 0.3
LINE_MAX_TILT = 30.0
LINE_MIN_GAP = 0.07
OVAL_MAX_SOLID = 0.7  # ...and a mark that is no line fills at most this of its box (a 0's big dot fills 0.78)
FRAME_CANDIDATES = 4  # the components with the largest boxes: a frame's box is larger than the digit's
# A sheet lying on a desk (sheet_in), in a picture of SHEET_MIN_PICTURE pixels a side or more: its window covers at
# least SHEET_MIN_AREA of the picture, its strokes SHEET_MIN_SOLID of its shape, and its outline is four straight
# sides within SHEET_STRAIGHT of its length, a convex quadrilateral whose area is its shape's within SHEET_QUAD_FIT
# and whose corners are within SHEET_MAX_SKEW degrees of square: a rectangle seen from above, or at an angle.
SHEET_MIN_PICTURE = 64
SHEET_MIN_AREA = 0.08
SHEET_MIN_SOLID = 0.8
# The least of its upright window a sheet fills, turned: a rectangle r times as long as wide fills 2r / (r + 1)^2 of
# its window turned by 45 degrees, 0.28 at 5:1. (Half, the bound before, left out a 3.5:1 note turned by 20 degrees,
# which fills 0.45 of it, 0.40 less its writing: its digits were read as one.)
SHEET_MIN_WINDOW_FILL = 0.25
SHEET_STRAIGHT = 0.02
SHEET_QUAD_FIT = 0.05
SHEET_MAX_SKEW = 30.0
SHEET_SIDE_MIDDLE = 0.7  # a side's line is fitted to this much of its middle, away from its corners' rounding
SHEET_EDGE = 0.02  # it is read without this much of its edge (of the square root of its area)
# A sheet turned by this many degrees or more is turned back upright before it is read (upright_sheet): what is
# written on a note is written along its sides, so a note photographed askew holds a digit as askew (300 notes
# turned by -25 / 35 / -40 degrees: 288 / 269 / 245 read right as they lay, 299 / 299 / 297 turned back). Under it,
# within the rotations the network trains with (trainer/augment.py, 10 degrees), the sheet is read as it lies,
# unresampled.
SHEET_MIN_TURN = 10.0
# A sheet photographed at an angle (a phone tilted back: its far edge shorter) is a quadrilateral, not a rectangle;
# one with a corner this many degrees or more from square is mapped corner to corner onto an upright rectangle
# (upright_sheet). A note whose top edge is 80 % of its bottom (corners 6 degrees from square) is read as well as
# one seen from above; at 70 % it was not found as a sheet at all.
SHEET_MIN_SKEW = 6.0
BOX_OUTLINE = 0.15  # a box whose ink lies within this fraction of its shorter side of its outline is taken out
# A frame drawn along the picture's edge (a screenshot's or a canvas export's border) is at most this fraction of
# the shorter side deep: deeper, the flat band is the paper around a large digit drawn as a square (a 0).
EDGE_FRAME_MAX_DEPTH = 1 / 8
# ...and the paper inside it runs along this much of its inner edge: a filled disc or square, or bold hatching, that
# comes near the edge all round meets the ring where it begins in a few places, and the next one in half of it.
EDGE_FRAME_INNER_EDGE = 0.9
RULING_MIN_PICTURE = 160  # pixels on the long side: smaller pictures are crops of a digit, without paper lines
RULING_MIN_LENGTH = 0.5  # a straight line across at least half the picture is the paper's, not the digit's
RULING_MAX_TILT = 8.0  # degrees from horizontal or vertical
RULING_BAND = 5  # pixels: a line's band, its thickness and blur included
EDGE_LINE_ELONGATION = 12  # length / mean thickness of a line-like piece at the picture's edge
RULING_SPAN = 0.85  # a lone straight line is the paper's (a margin) only if it crosses this much of the picture
LONE_LINE_LENGTH = 1.3  # ...and is this many times as long as the largest mark left (a 1 is as tall as a digit)
# Hough's strongest candidate lines kept per search: ruled and squared paper gave at most 31 (every paper kind and
# drawn style of the tests); a page of random dots gave 2,500, and a full-frame band for each took 2.5 GB and
# seconds on a 215 KB PNG.
MAX_RULING_CANDIDATES = 128
# A line of ruled or squared paper that the writing crosses along its length (a line of a number written on a
# rule) has too little thin ink to be found as the others are. Within a family it is looked for again among all the
# ink, at the family's angle (within RULING_HIDDEN_TILT degrees), and taken if its band has ink along nearly all of
# its length (a paper line is unbroken; a line drawn through the writing finds ink only on the strokes it crosses)
# and it reaches as far as the family's lines do.
RULING_HIDDEN_COVER = 0.9
RULING_HIDDEN_TILT = 1.0
RULING_HIDDEN_PHASE = 0.2  # of the family's spacing: how far from a whole number of spacings such a line may lie
RULING_HIDDEN_THIN = 0.35  # of its ink at least with paper on both sides (the writing along it makes the rest)
RULING_LOCAL = 0.2  # of the picture's long side: the window over which the ruling's own contrast is taken
RULING_MIN_BITS = 6  # bits of a faint line in a row (at squared paper's crossings, say) that make it a line
MAX_DASHES = 2000  # pieces shaped as a line's dashes or bits: more is noise, not the paper's lines, and not searched


# ---------------------------------------------------------------------------------------------------------------
# 2-3. Paper and ink


@dataclass(frozen=True)
class Paper:
    """The paper under the digit, and how ink differs from it."""

    surface: np.ndarray  # (H, W[, C]) uint8: the paper's colour at every pixel
    # None: a smooth paper (a canvas, an evenly lit sheet); ink is any difference from it, either way.
    # (C,) of -1 / +1: paper estimated locally around a shadow; ink is darker (-1) or lighter (+1) than it, per
    # channel, and measured relative to the paper's brightness, as a shadow dims ink and paper alike.
    sign: np.ndarray | None = None

    def at_size_of(self, image: np.ndarray) -> Paper:
        """This paper, estimated on a shrunk copy of `image` (H, W[, C]), brought to its size: interpolated, and a
        local estimate (a shadow) kept on the paper's side of the picture, as local_background does."""
        if self.sign is not None:
            return Paper(local_background(image, self.surface, self.sign), self.sign)
        height, width = image.shape[:2]
        return Paper(cv2.resize(self.surface, (width, height), interpolation=cv2.INTER_LINEAR).reshape(image.shape))


def estimate_background(image: np.ndarray) -> Paper:
    """The paper under the digit.

    First a smooth surface (paper_fit), which absorbs lighting gradients and vignettes and is exact
    for canvases. A shadow's edge is a step in the light that no smooth surface follows, so the paper is also
    estimated locally, at the scale of the strokes (local_paper_cells); where the two disagree over a region
    (more than SHADOW_FRACTION of the picture by more than SHADOW_CONTRAST grey levels, in regions that reach the
    picture's edge), there is a shadow, and the local estimate is used.
    """
    smooth, frame = paper_fit(image)
    if min(image.shape[:2]) < LOCAL_BACKGROUND_MIN_SIDE:  # a strip or a thumbnail: no room for a shadow's edge
        return Paper(smooth)
    if frame:  # the edge is a frame drawn along it, of one colour all round: no shadow reaches it there
        return Paper(smooth)
    # Looking for a shadow needs the light, not the colours: the luminance alone, whose ink sign is its own.
    grey, grey_smooth = luminance(image), luminance(smooth)
    cells, cell = local_paper_cells(grey, ink_sign(grey, grey_smooth))
    on_cells = cell_centres(grey_smooth, cell)
    if shadow_cells(cv2.absdiff(cells, on_cells) > SHADOW_CONTRAST) < SHADOW_FRACTION * cells.size:
        return Paper(smooth)
    if lies_on_a_desk(grey, grey_smooth):  # a sheet with the desk all round it: the sheet is read on its own
        return Paper(smooth)
    if image.ndim == 3:  # the ink's colour matters for its contrast: the local paper per channel
        sign = ink_sign(image, smooth)
        cells, _ = local_paper_cells(image, sign)
    else:
        sign = ink_sign(grey, grey_smooth)
    return Paper(local_background(image, cells, sign), sign)


def lies_on_a_desk(grey: np.ndarray, grey_smooth: np.ndarray) -> bool:
    """Whether the part of a (H, W) picture that differs most from its smooth paper `grey_smooth` (by SHADOW_CONTRAST)
    is a sheet lying on a desk (sheet_in) with the desk all round it: a page photographed with the table showing
    beyond its four sides. The local estimate took the sheet's edges for a shadow's and read them as strokes; the
    desk is the paper, and the sheet is then cut out and read (image_pipeline.read_sheet). A shadow is cast from
    outside the picture, so it reaches the edge."""
    labels, stats = connected_components((cv2.absdiff(grey, grey_smooth) > SHADOW_CONTRAST).astype(np.uint8))
    if len(stats) < 2:
        return False
    k = int(stats[1:, cv2.CC_STAT_AREA].argmax()) + 1
    x, y, w, h = (int(v) for v in stats[k, :4])
    if x == 0 or y == 0 or x + w == grey.shape[1] or y + h == grey.shape[0]:
        return False
    # A shadow reaching the edge besides the sheet (a phone's, over a dark card or a shadowed block round the digit):
    # that shadow is what the local estimate is for.
    left, top, right, bottom = stats[:, 0], stats[:, 1], stats[:, 0] + stats[:, 2], stats[:, 1] + stats[:, 3]
    edge = (left == 0) | (top == 0) | (right == grey.shape[1]) | (bottom == grey.shape[0])
    edge[0] = False
    if stats[edge, cv2.CC_STAT_AREA].sum() >= SHADOW_FRACTION * grey.size:
        return False
    return sheet_in(labels[y : y + h, x : x + w] == k, grey.shape) is not None


def cell_centres(image: np.ndarray, cell: int) -> np.ndarray:
    """Every `cell`-th pixel of (H, W[, C]) at cell centres; a side shorter than half a cell still gets one."""
    h, w = image.shape[:2]
    return np.ascontiguousarray(image[min(cell // 2, h - 1) :: cell, min(cell // 2, w - 1) :: cell])


def luminance(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def shadow_cells(disagree: np.ndarray) -> int:
    """How many cells of a (h, w) bool map of disagreement lie in regions that reach the picture's edge.

    A shadow is cast from outside the frame (a phone, a hand), so it reaches the edge. A stroke wider than
    the local estimate can fill (a paint brush) also makes the two disagree, inside the stroke, but a digit
    is drawn inside the frame: counting only regions that reach the edge tells the two apart.
    """
    _count, _labels, stats, _ = cv2.connectedComponentsWithStats(disagree.astype(np.uint8), connectivity=8)
    h, w = disagree.shape
    x, y, bw, bh, area = (stats[1:, i] for i in range(5))
    touches = (x == 0) | (y == 0) | (x + bw == w) | (y + bh == h)
    return int(area[touches].sum())


def border_band(channel: np.ndarray) -> np.ndarray:
    """The pixels of (H, W) `channel` within a sixteenth of its short side of the edge (at least one), flattened."""
    depth = max(1, min(channel.shape) // 16)
    return np.concatenate(
        [
            channel[:depth].ravel(),
            channel[-depth:].ravel(),
            channel[depth:-depth, :depth].ravel(),
            channel[depth:-depth, -depth:].ravel(),
        ]
    )


def ink_sign(image: np.ndarray, paper: np.ndarray) -> np.ndarray:
    """Per channel, whether the ink is darker (-1) or lighter (+1) than the paper. (C,) int.

    The paper's level is the median of a band along the border, a sixteenth of the short side deep, of `paper`,
    the smooth paper fitted to the picture (paper_fit, the same shape as `image`). The paper nearly always reaches
    the border; a band, not the outermost pixels alone, since a frame drawn along the picture's edge, a
    screenshot's or a canvas export's, is darker than the paper. The fit, not the picture's own
    band: a box drawn a few pixels inside the edge, thicker than half that band, made the band's median the box's
    black, and a black-on-white digit in it read as light ink, the paper then estimated as the strokes themselves.
    The fit is robust to such a box (its samples are few) and to a frame (edge_frame_depths). The ink is the
    picture's extreme that lies farther from the paper *in ratio*: light falling on the page scales paper and ink
    alike, so the bright side of a shadow is at most a few times brighter than the dark side, while ink is many
    times darker than its paper (or, in dark mode, many times lighter).
    """
    signs = []
    for channel, paper_channel in zip(_channels(image), _channels(paper)):
        level = float(np.median(border_band(paper_channel))) + 1.0
        sample = np.ascontiguousarray(channel[::2, ::2])  # a quarter of the pixels: enough for 0.2 % tails
        counts = np.cumsum(cv2.calcHist([sample], [0], None, [256], [0, 256]).ravel())
        darkest = float(np.searchsorted(counts, 0.002 * counts[-1])) + 1.0
        brightest = float(np.searchsorted(counts, 0.998 * counts[-1])) + 1.0
        signs.append(-1 if np.log(level / darkest) >= np.log(brightest / level) else 1)
    return np.array(signs)


def local_paper_cells(image: np.ndarray, sign: np.ndarray) -> tuple[np.ndarray, int]:
    """The paper on a coarse grid: (cells (h, w[, C]) uint8, cell size in pixels).

    Per channel, on the side away from the ink (the brightest pixels, for dark ink): the picture is pooled into
    cells of 1/LOCAL_BACKGROUND_CELLS of its long side (a stroke thinner than a cell vanishes), and strokes up to
    LOCAL_BACKGROUND_KERNEL cells wide are filled by a closing (an opening, for light ink), which keeps the step
    of a shadow's edge where it is. Near that edge the estimate is then pulled to the darker side by two cells,
    so that it is never brighter than the shadow it lies in.
    """
    height, width = image.shape[:2]
    cell = max(1, int(np.ceil(max(height, width) / LOCAL_BACKGROUND_CELLS)))
    pool = np.ones((cell, cell), np.uint8)
    fill = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (LOCAL_BACKGROUND_KERNEL, LOCAL_BACKGROUND_KERNEL))
    guard = np.ones((5, 5), np.uint8)
    out = []
    for channel, channel_sign in zip(_channels(image), sign):
        away_from_ink, towards_ink = (cv2.dilate, cv2.erode) if channel_sign < 0 else (cv2.erode, cv2.dilate)
        small = cell_centres(away_from_ink(channel, pool), cell)
        small = towards_ink(away_from_ink(small, fill), fill)  # closing for dark ink, opening for light
        out.append(towards_ink(small, guard))
    return (out[0] if image.ndim == 2 else cv2.merge(out)), cell


def local_background(image: np.ndarray, cells: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """The local paper at full size, (H, W[, C]) uint8, and never darker than the picture itself for dark ink
    (lighter, for light ink): paper on the bright side of a shadow's edge, where the guarded estimate is too
    dark, is then paper, not ink."""
    height, width = image.shape[:2]
    surface = cv2.resize(cells, (width, height), interpolation=cv2.INTER_LINEAR)
    out = [
        cv2.max(paper, channel) if channel_sign < 0 else cv2.min(paper, channel)
        for paper, channel, channel_sign in zip(_channels(surface), _channels(image), sign)
    ]
    return out[0] if image.ndim == 2 else cv2.merge(out)


def _channels(image: np.ndarray) -> list[np.ndarray]:
    return [image] if image.ndim == 2 else list(cv2.split(image))


def paper_samples(image: np.ndarray) -> np.ndarray:
    """(h, w, C) samples of (H, W[, C]) `image` on the grid the paper is fitted on, in the picture's own dtype."""
    samples = sample_grid(image, BACKGROUND_GRID_SIDE)
    return samples if samples.ndim == 3 else samples[:, :, None]


def edge_frame_depth(image: np.ndarray) -> int:
    """How many rings of the paper's samples (paper_samples) a frame drawn along the picture's edge takes, 0 if
    there is none (edge_frame_depths)."""
    return int(edge_frame_depths(paper_samples(image)[None])[0])


def quadratic_background(image: np.ndarray) -> np.ndarray:
    """The paper under the digit, (H, W[, 3]) uint8: a quadratic surface per channel, fitted robustly (paper_fit)."""
    return paper_fit(image)[0]


def paper_fit(image: np.ndarray) -> tuple[np.ndarray, int]:
    """The smooth paper under the digit, (H, W[, 3]) uint8, and the depth of a frame drawn along the edge (in rings
    of samples, 0 for none: edge_frame_depths).

    The picture is sampled on a grid of at most BACKGROUND_GRID_SIDE points a side. A quadratic in (x, y) covers a
    lighting gradient and a vignette. The fit starts from the border's median colour (the paper almost always
    reaches the border, even when a bold digit covers half the picture) and is refitted on the samples that lie
    within a tolerance of the current surface, so the ink samples (a minority) do not pull the paper towards them.
    Inside a frame drawn along the edge, the paper is the median and the fit of the samples inside it, and the
    frame is ink to it.
    """
    samples = paper_samples(image)  # (h, w, C)
    h, w, channels = samples.shape
    values = samples.reshape(-1, channels).astype(np.float64)  # (h*w, C)
    fitted = np.broadcast_to(row_medians(edge_rings(samples[None], 0))[0], values.shape)  # the border's median
    residual = np.abs(values - fitted).max(axis=1)  # (h*w,): the first round's, and what a frame is found on
    # The samples the paper is fitted to: all of them, or those inside a frame drawn along the edge (`depth` rings
    # deep). A frame's colour is no paper: the fit that started from it and took it in bent from the frame to the
    # paper over a small picture, where the frame is a large share of the samples, and the digit's contrast with it
    # broke up.
    depth = int(frame_depths((residual > MIN_INK_CONTRAST).reshape(1, h, w))[0])
    inside = None  # (h*w,) bool: the samples inside the frame, if there is one
    if depth:
        within = np.zeros((h, w), bool)
        within[depth : h - depth, depth : w - depth] = True
        inside = within.ravel()
        fitted = np.broadcast_to(row_medians(values[inside].T), values.shape)
        residual = np.abs(values - fitted).max(axis=1)
    design = quadratic_design(h, w)  # (h*w, 6)
    previous = None  # the last fit's inliers
    if len(values) >= 4 * design.shape[1]:
        for fit_round in range(BACKGROUND_FIT_ROUNDS):
            if fit_round:
                residual = np.abs(values - fitted).max(axis=1)  # (h*w,)
            tolerance = float(robust_tolerance(residual[None] if inside is None else residual[None, inside])[0])
            inliers = residual <= tolerance if inside is None else (residual <= tolerance) & inside
            if previous is not None and np.array_equal(inliers, previous):
                break  # the same inliers give the same fit, bit for bit, and so every round after it
            if np.count_nonzero(inliers) < 2 * design.shape[1]:
                break
            fitted = fit_least_squares(design[inliers], values[inliers], design)
            previous = inliers
    surface = np.clip(fitted.reshape(h, w, channels) + 0.5, 0, 255).astype(np.uint8)
    full = cv2.resize(surface, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    return full.reshape(image.shape), depth


def edge_rings(samples: np.ndarray, depth: int) -> np.ndarray:
    """(B, n, C): the samples `depth` rings in from the edge of (B, h, w, C) samples, the four sides one after
    another (the corners twice). Ring 0 is the border the paper fit starts from."""
    h, w = samples.shape[1:3]
    return np.concatenate(
        [
            samples[:, depth, depth : w - depth],
            samples[:, h - 1 - depth, depth : w - depth],
            samples[:, depth : h - depth, depth],
            samples[:, depth : h - depth, w - 1 - depth],
        ],
        axis=1,
    )


def edge_frame_depths(samples: np.ndarray) -> np.ndarray:
    """(B,) int: how many rings of (B, h, w, C) samples in from the edge are a frame drawn along it, 0 for none
    (frame_depths, on the samples far from the border's median colour)."""
    colour = row_medians(edge_rings(samples, 0))  # (B, C): the border's
    return frame_depths(np.abs(samples - colour[:, None, None]).max(axis=3) > MIN_INK_CONTRAST)


def frame_depths(far: np.ndarray) -> np.ndarray:
    """(B,) int: how many rings in from the edge are a frame drawn along it, 0 for none, from (B, h, w) bool maps of
    the samples far from the border's median colour (MIN_INK_CONTRAST away in some channel).

    A frame: no sample of the rings from the border to the frame's inner edge is far from that colour (a JPEG's
    frame rings by a dozen grey levels or more near its edges), that edge is at most EDGE_FRAME_MAX_DEPTH of the
    shorter side deep, EDGE_FRAME_INNER_EDGE of the ring there (or of the one after it: an anti-aliased edge) and
    most of the picture's middle (inside twice the deepest frame) are far from the frame's colour. Paper reaching
    the edge is none: the ring where the ink begins is still mostly paper, and so is the middle (a digit drawn as a
    large square, and a box drawn a little inside the edge, around paper of the border's colour, included).
    """
    count, h, w = far.shape
    depths = np.zeros(count, np.int64)
    deepest = int(min(h, w) * EDGE_FRAME_MAX_DEPTH)
    if deepest < 1:
        return depths
    # Two necessary conditions first, on the rings near the edge alone (every Predict pays for this; the rest costs
    # four times as much): a border of one colour (no far sample on it: most photos are done with here), and, as the
    # frame's inner edge or the ring after it is at most `deepest` + 1 rings in and mostly far, that many far
    # samples on rings 1 to `deepest` + 1 (MNIST's digits, whose ink reaches those rings in three pictures of four,
    # are nearly all done with here).
    weights, least = frame_band(h, w, deepest)
    candidates = np.flatnonzero(far.reshape(count, h * w) @ weights >= least)
    if len(candidates):
        depths[candidates] = ring_frame_depths(far[candidates], deepest)
    return depths


def ring_frame_depths(far: np.ndarray, deepest: int) -> np.ndarray:
    """frame_depths ring by ring, on (b, h, w) far maps whose border has no far sample (b,)."""
    count, h, w = far.shape
    depths = np.zeros(count, np.int64)
    membership, size, size_inwards = ring_membership(h, w)
    # The middle of the picture, inside twice the deepest frame: most of it is paper, and within a frame that paper
    # is far from the frame's colour. (Measured there, not just inside the frame: a thick box drawn a little inside
    # the edge, with a bold digit in it, made most of what lies inside its outer margin far from the margin's
    # colour, and the margin passed for a frame.) With fewer far samples in all there is none (MNIST's ink on its
    # black, a drawing on a white canvas: at once).
    centre = 2 * deepest
    if not (2 * far.sum(axis=(1, 2)) > size_inwards[centre]).any():
        return depths
    first = np.where(far, edge_distance(h, w), h + w).min(axis=(1, 2))  # (b,): the first ring with a far sample
    # Per ring, and inwards of each ring (it and those inside it): the samples far from that colour.
    far_in_ring = far.reshape(count, -1).astype(np.float32) @ membership  # (b, rings)
    far_inwards = np.cumsum(far_in_ring[:, ::-1], axis=1)[:, ::-1]
    depth = np.minimum(first, deepest)  # a valid index of every ring array; only 1 <= first <= deepest counts
    rows = np.arange(count)
    edge = EDGE_FRAME_INNER_EDGE
    after = (far_in_ring[rows, depth] >= edge * size[depth]) | (far_in_ring[rows, depth + 1] >= edge * size[depth + 1])
    middle = 2 * far_inwards[:, centre] > size_inwards[centre]
    return np.where((first >= 1) & (first <= deepest) & after & middle, first, 0)


@functools.lru_cache(maxsize=64)
def frame_band(h: int, w: int, deepest: int) -> tuple[np.ndarray, np.float32]:
    """For frame_depths' first test on an (h, w) grid: (h*w,) float32 weights, 1 on rings 1 to `deepest` + 1 and
    -h*w on the border, so that a far map's product with them is its far samples on those rings, and negative if
    any lies on the border; and the least product a frame gives, EDGE_FRAME_INNER_EDGE of the smallest of those
    rings, computed as ring_frame_depths compares a ring's far samples (in float32). Read-only, cached."""
    ring_of = edge_distance(h, w).ravel()
    weights = ((ring_of >= 1) & (ring_of <= deepest + 1)).astype(np.float32)
    weights[ring_of == 0] = -h * w
    weights.flags.writeable = False
    size = ring_membership(h, w)[1]
    return weights, (EDGE_FRAME_INNER_EDGE * size[1 : deepest + 2]).min()


@functools.lru_cache(maxsize=64)
def edge_distance(h: int, w: int) -> np.ndarray:
    """(h, w) int: the ring each position of an (h, w) grid lies on, counted from the edge (0). Read-only, cached."""
    ys, xs = np.mgrid[0:h, 0:w]
    distance = np.minimum(np.minimum(ys, h - 1 - ys), np.minimum(xs, w - 1 - xs))
    distance.flags.writeable = False
    return distance


@functools.lru_cache(maxsize=64)
def ring_membership(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For an (h, w) grid: (h*w, rings) float32, 1 where a position lies on that ring (edge_distance); (rings,) the
    number of positions on each ring; (rings,) on it and inside it. Read-only, cached."""
    ring_of = edge_distance(h, w).ravel()
    membership = np.zeros((h * w, int(ring_of.max()) + 1), np.float32)
    membership[np.arange(h * w), ring_of] = 1
    size = membership.sum(axis=0)
    size_inwards = np.cumsum(size[::-1])[::-1]
    for array in (membership, size, size_inwards):
        array.flags.writeable = False
    return membership, size, size_inwards


def row_medians(values: np.ndarray) -> np.ndarray:
    """np.median(values.astype(np.float64), axis=1) of a (B, n[, C]) uint8 array, bit for bit, in a fifth of the time.

    np.median's generic machinery cost 25 us on one picture's border, a tenth of the whole fit. For whole numbers
    the mean of the two middle values, (a + b) / 2, is exact in float64, as it is in np.median.
    """
    ordered = np.sort(values, axis=1)
    half = ordered.shape[1] // 2
    upper = ordered[:, half].astype(np.float64)
    return upper if ordered.shape[1] % 2 else (ordered[:, half - 1] + upper) / 2


def robust_tolerance(residual: np.ndarray) -> np.ndarray:
    """max(BACKGROUND_MIN_TOLERANCE, 3 x the 40th percentile of each row of `residual` (B, n)), as the robust fit
    of the paper decides it (quadratic_background; shared.fast_path's batched fit).

    The percentile interpolates between two order statistics, so it is at most the upper one: when that many
    residuals lie at or below a third of the floor, the tolerance is the floor, exactly, with no percentile to
    compute (np.percentile cost a millisecond per batch, more than the rest of the fit). MNIST-like pictures are
    mostly black, so that is nearly always the case.
    """
    count, n = residual.shape
    upper = int(np.ceil(0.4 * (n - 1)))  # np.percentile(..., 40) lies between order statistics upper - 1 and upper
    tolerance = np.full(count, BACKGROUND_MIN_TOLERANCE, np.float64)
    at_floor = (residual <= BACKGROUND_MIN_TOLERANCE / 3.0).sum(axis=1) > upper
    rest = ~at_floor
    if rest.any():
        tolerance[rest] = np.maximum(BACKGROUND_MIN_TOLERANCE, 3.0 * np.percentile(residual[rest], 40, axis=1))
    return tolerance


def fit_least_squares(design: np.ndarray, values: np.ndarray, evaluate_at: np.ndarray) -> np.ndarray:
    """Least squares through the normal equations: design (n, k), values (n, C) -> fit at evaluate_at (m, C).

    A 6x6 solve rather than np.linalg.lstsq, whose SVD took 8-30 ms instead of 0.05 ms on the shared 2-core
    machine (LAPACK waking its threads for a tiny problem).
    """
    normal = design.T @ design + 1e-6 * np.eye(design.shape[1])  # (k, k); the ridge keeps it invertible
    coefficients = np.linalg.solve(normal, design.T @ values)  # (k, C)
    return evaluate_at @ coefficients


@functools.lru_cache(maxsize=64)
def quadratic_design(h: int, w: int) -> np.ndarray:
    """(h*w, 6) rows [1, x, y, x^2, xy, y^2] for the grid's cell centres, x and y in [-1, 1]. Read-only, cached."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    x = (2 * xs + 1) / w - 1
    y = (2 * ys + 1) / h - 1
    design = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1).reshape(-1, 6)
    design.flags.writeable = False  # shared between calls (and threads)
    return design


def channel_contrast(image: np.ndarray, paper: Paper) -> np.ndarray:
    """(H, W[, C]) uint8: per pixel and channel, how far the picture is from the paper.

    Against a smooth paper, the difference either way. Against a local paper (a shadow), one-sided and relative
    to the paper's brightness: dark ink is 255 * (paper - picture) / paper, so ink in a shadow that halves the
    light keeps its contrast.
    """
    if paper.sign is None:
        return cv2.absdiff(image, paper.surface)
    parts = []
    for channel, surface, channel_sign in zip(_channels(image), _channels(paper.surface), paper.sign):
        if channel_sign < 0:
            parts.append(cv2.divide(cv2.subtract(surface, channel), np.maximum(surface, 1), scale=255))
        else:
            parts.append(cv2.subtract(channel, surface))
    return parts[0] if len(parts) == 1 else cv2.merge(parts)


def ink_contrast(image: np.ndarray, paper: Paper) -> np.ndarray:
    """(H, W) uint8: per pixel, the largest difference from the paper over the colour channels."""
    return strongest_and_weakest(channel_contrast(image, paper))[0]


def strongest_and_weakest(contrast: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W[, C]) per-channel contrast -> its largest and smallest over the channels, (H, W) uint8 each.

    The smallest tells coloured marks from neutral ones: a blue ruling barely differs from white paper in the
    blue channel, black or dark-blue ink differs in all three."""
    if contrast.ndim == 2:
        return contrast, contrast
    a, b, c = cv2.split(contrast)
    return cv2.max(cv2.max(a, b), c), cv2.min(cv2.min(a, b), c)


# ---------------------------------------------------------------------------------------------------------------
# 4-5. Strokes and crop


@dataclass(frozen=True)
class InkRegion:
    """The digit found in an ink-contrast map, as a window (x, y, w, h) of it holding the kept strokes."""

    window: tuple[int, int, int, int]  # x, y, width, height in the ink map
    strokes: np.ndarray  # (h, w) bool: pixels of the kept strokes
    soft: np.ndarray  # (h, w) float32 in [0, 1]: anti-aliased ink on the kept strokes and a one-pixel fringe
    threshold: float  # the contrast that counted as ink


def find_ink(ink: np.ndarray, weakest: np.ndarray | None = None) -> InkRegion:
    """The digit's strokes in an ink-contrast map (H, W) uint8; ImageRejected when there are none.

    `weakest` (H, W) uint8, the contrast in the channel where each pixel differs least from the paper, lets
    coloured ruling be told from neutral ink (find_ruling); None treats every mark as neutral.
    """
    noise = noise_level(ink)
    threshold = ink_threshold(ink, noise)
    marks = (ink >= threshold).astype(np.uint8)
    strong, removed = without_ruling(ink, marks, weakest)
    if removed is not None:
        # The ruling search takes a box drawn around the digit for lines (its sides are long and straight) and
        # leaves its corners and stubs, which are then kept as strokes: a box is taken out whole first.
        unboxed = without_boxes(marks)
        if unboxed is not None:
            strong, removed = without_ruling(ink, unboxed, weakest)
    labels, stats = connected_components(strong)
    # (components,) bool; label 0 (the paper) is never kept. A single stroke is the digit whatever its contrast
    # (digit_components), so the contrasts are measured only where there are several.
    contrast = component_contrast(ink, labels, stats) if len(stats) > 2 else None
    keep = digit_components(stats, strong.shape, contrast, frames=frame_components(labels, stats))
    if not keep.any():
        raise_blank(ink, threshold, noise)
    x0, y0, x1, y1 = union_box(stats[keep])
    if max(x1 - x0, y1 - y0) < MIN_DIGIT_SIDE:
        raise ImageRejected(
            f"no digit found: the only marks are specks of at most {max(x1 - x0, y1 - y0)} pixels. Send a picture "
            "in which the digit is clearly visible and fills a good part of the frame"
        )
    # Grow the window by one pixel for the anti-aliased fringe around the strokes.
    height, width = ink.shape
    x0, y0, x1, y1 = max(x0 - 1, 0), max(y0 - 1, 0), min(x1 + 1, width), min(y1 + 1, height)
    strokes = keep[labels[y0:y1, x0:x1]]  # (h, w) bool, by looking each pixel's label up
    ruling = None if removed is None else removed[y0:y1, x0:x1]
    soft = soft_ink(ink[y0:y1, x0:x1], strokes, noise, threshold, ruling)
    return InkRegion((x0, y0, x1 - x0, y1 - y0), strokes, soft, threshold)


def sheet_in(strokes: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """Where the "digit" found may be the sheet the digit is written on, lying on something else (a sticky note or a
    page on a desk, photographed from above or at an angle; the desk was taken for the paper and the sheet for
    ink), given the stroke's pixels `strokes` (h, w) bool over its window: the same window's sheet with its holes
    filled (the writing on it), else None.

    A sheet is a solid quadrilateral in a photo (SHEET_MIN_PICTURE pixels a side or more: a 28x28 picture is no
    photo of a desk, and the fast path's pictures keep their answer). Its window covers SHEET_MIN_AREA of the
    picture (of `shape` (H, W)); its strokes fill SHEET_MIN_SOLID of its shape (a digit's strokes, however bold,
    leave more paper, and so does a box with a cross in it); its shape is a quadrilateral (sheet_corners: a bold
    8 in a heavy typeface is solid too, but its outline is curved; a disc or a long oval is no quadrilateral).
    Whether a digit is written on it is for the caller to find (image_pipeline.read_sheet, segment.read_number): a
    filled rectangle drawn on a canvas is a solid quadrilateral too.
    """
    if min(shape) < SHEET_MIN_PICTURE or strokes.size < SHEET_MIN_AREA * shape[0] * shape[1]:
        return None
    if strokes.mean() < SHEET_MIN_SOLID * SHEET_MIN_WINDOW_FILL:
        return None  # cheap, and necessary (most digits' strokes fill less of their window: no flood fill for them)
    sheet = strokes | enclosed(strokes)
    if strokes.sum() < SHEET_MIN_SOLID * float(sheet.sum()):
        return None
    return sheet if sheet_corners(sheet) is not None else None


def sheet_corners(sheet: np.ndarray) -> np.ndarray | None:
    """The four corners (4, 2) float64 x, y of the sheet `sheet` (h, w) bool, top left, top right, bottom right,
    bottom left as it lies (turned by less than 45 degrees), or None where it is no quadrilateral: its outline four
    straight sides, none of its points farther than SHEET_STRAIGHT of its length from them, convex, its area (all
    its pieces') within SHEET_QUAD_FIT of theirs (an oval five times as long as wide is within SHEET_STRAIGHT of a
    rhombus, which holds 65 % of it), its corners within SHEET_MAX_SKEW degrees of square (seen at an angle)."""
    contours, _ = cv2.findContours(sheet.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    outline = max(contours, key=cv2.contourArea)
    tolerance = SHEET_STRAIGHT * cv2.arcLength(outline, True)
    corners = cv2.approxPolyDP(outline, tolerance, True)
    if len(corners) != 4 or not cv2.isContourConvex(corners):
        return None
    # The area against the corners where the sides meet: approxPolyDP's cut a rounded corner off (a 200x150 note
    # whose corners are rounded by 15 px holds 10 % more than their quadrilateral).
    corners = sides_meet(sheet, corners.reshape(4, 2), tolerance)
    quad = cv2.contourArea(corners.astype(np.float32))
    if abs(sum(cv2.contourArea(c) for c in contours) - quad) > SHEET_QUAD_FIT * quad:
        return None
    # In order round the sheet from its top left: by their angle about its centre, the sheet turned upright first.
    upright = (corners - corners.mean(axis=0)) @ cv2.getRotationMatrix2D((0.0, 0.0), -sheet_turn(corners), 1.0)[:, :2].T
    corners = corners[np.argsort(np.arctan2(upright[:, 1], upright[:, 0]))]  # y down: -135, -45, 45, 135 degrees
    return corners if corner_skew(corners) <= SHEET_MAX_SKEW else None


def sides_meet(sheet: np.ndarray, corners: np.ndarray, tolerance: float) -> np.ndarray:
    """Where the lines along the four sides of the sheet `sheet` (h, w) bool meet, each fitted to the middle
    SHEET_SIDE_MIDDLE of its side of the outline, given the corners (4, 2) approxPolyDP found (points of the outline
    within `tolerance` of them, not the corners: at the far, obtuse corners of a wide sheet seen at an angle, up to
    20 px off, and its skew 6 degrees; a rounded corner cut off). (4, 2) float64 in the outline's order; those
    corners themselves where a side is shorter than twice `tolerance` (in outline points) or the lines meet
    farther than twice `tolerance` from them."""
    contours, _ = cv2.findContours(sheet.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    points = max(contours, key=cv2.contourArea).reshape(-1, 2).astype(np.float64)
    at = sorted(int(np.abs(points - corner).sum(axis=1).argmin()) for corner in corners)
    found = points[at]  # approxPolyDP's corners, in the outline's order
    lines = []
    for start, end in zip(at, [*at[1:], at[0] + len(points)]):
        if end - start < 2 * tolerance:
            # A side this short (a thin strip's end) may hold approxPolyDP's corner anywhere along it, or a
            # stretch of the long side beside it: no line to fit.
            return found
        side = np.take(points, np.arange(start, end + 1), axis=0, mode="wrap")
        trim = int((1 - SHEET_SIDE_MIDDLE) / 2 * len(side))
        middle = side[trim : len(side) - trim]
        vx, vy, x0, y0 = cv2.fitLine(middle.astype(np.float32), cv2.DIST_L2, 0, 0.01, 0.01).ravel()
        lines.append(np.cross([x0, y0, 1.0], [x0 + vx, y0 + vy, 1.0]))  # the line through two of its points
    met = np.array([np.cross(lines[k - 1], lines[k]) for k in range(4)])  # corner k: where side k - 1 meets side k
    if np.abs(met[:, 2]).min() < 1e-9:
        return found  # two neighbouring sides parallel: no corner between them
    meet = met[:, :2] / met[:, 2:]
    return meet if np.linalg.norm(meet - found, axis=1).max() <= 2 * tolerance else found


def corner_skew(corners: np.ndarray) -> float:
    """How far the corners of a quadrilateral (4, 2) in order round it are from square: the largest of their
    angles' differences from 90, in degrees."""
    before, after = np.roll(corners, 1, axis=0) - corners, np.roll(corners, -1, axis=0) - corners
    cosine = (before * after).sum(axis=1) / (np.linalg.norm(before, axis=1) * np.linalg.norm(after, axis=1))
    return float(np.abs(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))) - 90.0).max())


def cut_out_sheet(work: np.ndarray, sheet: np.ndarray, x: int, y: int) -> np.ndarray | None:
    """The sheet (sheet_in) lying at (x, y) in the prepared picture `work` (H, W[, 3]), `sheet` (h, w) bool at its
    resolution, cut out: its box, everything off it or within SHEET_EDGE of its side from its edge (the edge's
    blend of desk and paper, its shadow) painted the sheet's own colour (the median of the rest: it is mostly
    paper). None if nothing is left of it so far from its edge."""
    margin = max(1, int(SHEET_EDGE * np.sqrt(sheet.sum())))
    square = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    # Off the picture is off the sheet: the sheet meets its box's sides, and its edge there must go too.
    inside = cv2.erode(sheet.astype(np.uint8), square, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    if not inside.any():
        return None
    h, w = sheet.shape
    cut = work[y : y + h, x : x + w].copy()
    cut[~inside] = np.median(cut[inside], axis=0).astype(np.uint8)
    return cut


def sheet_picture(work: np.ndarray, sheet: np.ndarray, x: int, y: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The sheet (sheet_in) lying at (x, y) in the prepared picture `work` (H, W[, 3]), `sheet` (h, w) bool at its
    resolution, as it is read: cut out (cut_out_sheet), upright and square (upright_sheet). Returns (the picture to
    read, the 3x3 map from its pixels to `work`'s), or None if nothing is left of the sheet away from its edge. The
    one way in for both readers (image_pipeline.read_sheet, segment.read_sheet), so that neither reads a cut as it
    lies."""
    cut = cut_out_sheet(work, sheet, x, y)
    return None if cut is None else upright_sheet(cut, sheet, x, y)


def upright_sheet(cut: np.ndarray, sheet: np.ndarray, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
    """The cut-out sheet `cut` (h, w[, 3]) uint8 (cut_out_sheet of the sheet `sheet` (h, w) bool at (x, y) in the
    prepared picture) read upright and square: seen at an angle (a corner SHEET_MIN_SKEW degrees or more from
    square), its corners mapped onto an upright rectangle as long as its longer opposite sides (squared_sheet);
    else turned back upright if it lies turned by SHEET_MIN_TURN degrees or more (sheet_turn), on the sheet's own
    upright box, beyond the cut its border continued (the cut's border is the sheet's own colour). Either is shrunk
    to the picture's working size (WORK_MAX_SIDE) if it is longer (a long strip lying along the picture's
    diagonal). Returns (the picture to read, the 3x3 map from its pixels to the prepared picture's: box_through)."""
    corners = sheet_corners(sheet)
    if corners is not None and corner_skew(corners) >= SHEET_MIN_SKEW:
        return squared_sheet(cut, corners, x, y)
    outline = sheet_outline(sheet)
    turn = sheet_turn(outline)
    if abs(turn) < SHEET_MIN_TURN:
        return cut, moved_back(np.eye(3), x, y)  # the cut as it lies: a shift back to where it was cut from
    forward = cv2.getRotationMatrix2D((0.0, 0.0), -turn, 1.0)  # (2, 3): cut -> upright, about the cut's origin
    upright = outline @ forward[:, :2].T
    low, size = upright.min(axis=0), upright.max(axis=0) - upright.min(axis=0) + 1  # the upright sheet's box
    scale = min(1.0, WORK_MAX_SIDE / float(size.max()))
    forward = np.hstack([scale * forward[:, :2], (-scale * low)[:, None]])
    width, height = (int(v) for v in np.ceil(scale * size))
    turned = cv2.warpAffine(cut, forward, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return turned, moved_back(np.vstack([forward, [0.0, 0.0, 1.0]]), x, y)


def squared_sheet(cut: np.ndarray, corners: np.ndarray, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
    """The cut-out sheet `cut` seen at an angle, its `corners` (sheet_corners) mapped onto the corners of an upright
    rectangle as wide as its wider of top and bottom and as tall as its taller side (how much shorter it is for
    being seen at an angle, nothing here can tell), within WORK_MAX_SIDE: upright_sheet's (picture, map)."""
    sides = np.linalg.norm(np.roll(corners, -1, axis=0) - corners, axis=1)  # top, right, bottom, left
    long, tall = float(max(sides[0], sides[2])) + 1, float(max(sides[1], sides[3])) + 1
    scale = min(1.0, WORK_MAX_SIDE / max(long, tall))
    width, height = max(2, round(scale * long)), max(2, round(scale * tall))
    square = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float32)
    forward = cv2.getPerspectiveTransform(corners.astype(np.float32), square)  # (3, 3): cut -> squared
    squared = cv2.warpPerspective(
        cut, forward, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return squared, moved_back(forward, x, y)


def moved_back(forward: np.ndarray, x: int, y: int) -> np.ndarray:
    """The 3x3 map back from a picture made of a cut by `forward` (3, 3) to the prepared picture the cut lies in at
    (x, y)."""
    return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]]) @ np.linalg.inv(forward)


def sheet_outline(sheet: np.ndarray) -> np.ndarray:
    """(n, 2) float64: the x, y of the points on the outline of the sheet `sheet` (h, w) bool (its corners)."""
    contours, _ = cv2.findContours(sheet.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return np.vstack(contours).reshape(-1, 2).astype(np.float64)


def sheet_turn(outline: np.ndarray) -> float:
    """How far a sheet with the outline `outline` (sheet_outline) lies turned from upright, in degrees within
    (-45, 45]: the angle of its smallest rectangle's sides, counter-clockwise as the picture shows it. A square note
    turned by 50 degrees is one turned by -40: which side is its top, nothing here can tell."""
    corners = cv2.boxPoints(cv2.minAreaRect(outline.astype(np.float32)))  # (4, 2): x, y
    dx, dy = corners[1] - corners[0]
    angle = float(np.degrees(np.arctan2(-dy, dx))) % 90.0  # y grows downwards: -dy is up
    return angle - 90.0 if angle > 45.0 else angle


def mapped(points: np.ndarray, through: np.ndarray) -> np.ndarray:
    """Points (n, 2) x, y mapped by the 3x3 `through` (upright_sheet's map): (n, 2)."""
    moved = np.hstack([points, np.ones((len(points), 1))]) @ through.T
    return moved[:, :2] / moved[:, 2:]


def scale_at(through: np.ndarray, point: tuple[float, float]) -> float:
    """How many of the prepared picture's pixels one pixel at `point` (x, y) becomes through the 3x3 `through`
    (upright_sheet's map), along a side: the square root of its Jacobian's determinant there, det / w^3 for a
    projective map (a sheet seen at an angle is shrunk more at its far edge)."""
    w = float(through[2] @ (point[0], point[1], 1.0))
    return float(np.sqrt(abs(np.linalg.det(through) / w**3)))


def box_through(
    through: np.ndarray, box: tuple[int, int, int, int], within: tuple[int, int] | None = None
) -> tuple[int, int, int, int]:
    """The box (x, y, w, h) holding `box` (x, y, w, h) mapped by the 3x3 `through` (upright_sheet's map), inside a
    picture of `within` (W, H) if given (a turned box's corners may pass the edge of a sheet that meets it)."""
    x, y, w, h = box
    corners = mapped(np.array([[x, y], [x + w, y], [x, y + h], [x + w, y + h]], np.float64), through)
    x0, y0 = np.floor(corners.min(axis=0)).astype(int)
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int)
    if within is not None:
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, within[0]), min(y1, within[1])
    return int(x0), int(y0), int(x1 - x0), int(y1 - y0)


def soft_ink(
    window: np.ndarray, strokes: np.ndarray, noise: float, threshold: float, ruling: np.ndarray | None = None
) -> np.ndarray:
    """Anti-aliased ink (h, w) float32 in [0, 1] on the strokes (h, w) bool of an ink window and a one-pixel fringe:
    the noise floor -> 0, the strokes' typical contrast -> 1. A paper line beside a stroke (`ruling`, (h, w) bool)
    is not its anti-aliased edge. For the digit (find_ink), and for each digit of a number (shared.segment)."""
    fringe = cv2.dilate(strokes.astype(np.uint8), np.ones((3, 3), np.uint8))
    if ruling is not None:
        fringe[ruling & ~strokes] = 0
    low = max(SOFT_FLOOR_MIN, min(3.0 * noise, threshold / 2))
    high = max(percentile_uint8(window[strokes], 75), threshold + 1.0)
    return np.clip((window.astype(np.float32) - low) / (high - low), 0, 1) * fringe


def without_ruling(
    ink: np.ndarray,
    strong: np.ndarray,
    weakest: np.ndarray | None,
    what: str = "the digit",
    least_fraction: float = DIGIT_LEAST_FRACTION,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(the ink mask `strong` (H, W) uint8 without the lines of ruled or squared paper, the (H, W) bool pixels
    taken out, or None if none were). One step of find_ink, and of shared.segment's search for a number's pieces:
    a number on ruled paper must lose its lines as a single digit does, or the lines join its digits into one.

    Strokes that cross a line keep their pixels on it (keep_strokes_across_ruling); `weakest` is as for find_ink.
    A picture with nothing but ruling left (no piece of ink left whose longer side is `least_fraction` of the
    picture's, see digit_sized_ink) is refused, saying so; a single long straight line with nothing else is no
    ruling but the writing itself (a 1), and is kept. So is a lone line (no family of lines on the page) less
    than LONE_LINE_LENGTH times as long as the tallest mark left: a margin crosses the page, a 1 in a tightly
    cropped number is as tall as its neighbours."""
    if max(ink.shape) < RULING_MIN_PICTURE:
        return strong, None
    ruling, family = find_ruling(strong)
    if not ruling.any():
        return strong, None
    removed = ruling & ~keep_strokes_across_ruling(strong, ruling, ink if weakest is None else weakest, ink)
    off_ruling = strong.copy()
    off_ruling[removed] = 0
    _, left = connected_components(off_ruling)
    if not family and not longer_than_writing(removed, left):
        return strong, None  # a lone straight stroke no longer than the writing beside it: a 1 among digits
    if digit_sized_ink(left, off_ruling.shape, least_fraction):
        return off_ruling, removed
    if family:  # ruled or squared paper and nothing else on it
        raise ImageRejected(
            f"no digit found: only the lines of ruled or squared paper. Write {what} darker than the lines (a pen "
            "rather than a pencil), or photograph it closer so that it fills more of the frame"
        )
    return strong, None  # one long straight line and nothing else: it is the digit (a 1), not the paper's


def longer_than_writing(lines: np.ndarray, rest_stats: np.ndarray) -> bool:
    """Whether the lines (H, W) bool (taken together: a worn margin is many dashes) reach LONE_LINE_LENGTH times the
    longer side of the largest mark left (`rest_stats`: connected_components' stats of the ink without them), or
    there is no mark."""
    rows, cols = np.nonzero(lines)
    if len(rest_stats) < 2 or len(rows) == 0:
        return len(rest_stats) < 2
    reach = max(int(rows.max() - rows.min()), int(cols.max() - cols.min())) + 1
    largest = rest_stats[1 + int(np.argmax(rest_stats[1:, cv2.CC_STAT_AREA]))]
    return reach >= LONE_LINE_LENGTH * max(largest[cv2.CC_STAT_WIDTH], largest[cv2.CC_STAT_HEIGHT])


def digit_sized_ink(stats: np.ndarray, shape: tuple[int, ...], least_fraction: float = DIGIT_LEAST_FRACTION) -> bool:
    """Whether an ink mask of `shape` (H, W), its components' stats from connected_components, has anything a digit
    could be made of: a component, not a speck, at least MIN_DIGIT_SIDE on its long side and `least_fraction` of the
    mask's own largest extent."""
    if len(stats) < 2:
        return False
    sides = np.maximum(stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT])
    return bool((sides >= max(MIN_DIGIT_SIDE, least_fraction * max(shape))).any())


def find_ruling(strong: np.ndarray) -> tuple[np.ndarray, bool]:
    """((H, W) bool, family): the pixels of `strong` (an ink mask, uint8 0/1) on the lines of ruled or squared
    paper, or
    on a margin line: straight lines within RULING_MAX_TILT degrees of horizontal or vertical (a photo is rarely
    held quite straight), each taken as a band RULING_BAND pixels wide (a ruling's thickness and blur).

    Candidates come from a Hough transform of the thin ink alone (paper on both sides across the line's
    direction): straight runs across at least RULING_MIN_LENGTH of the picture, of which at least half the ink
    is thin (not a run inside a brush stroke). A digit's stroke can be that
    long and straight (a 1 in a tight crop), so a candidate is paper only if it is part of a family (at least
    three parallel lines, as ruled and squared paper have) or nearly spans the picture (RULING_SPAN, a margin).
    `family` says whether any line was of a family: then the picture surely shows ruled or squared paper.
    """
    height, width = strong.shape
    tilt = np.radians(RULING_MAX_TILT)
    ink = strong.astype(bool)
    # Per direction (0: horizontal lines, 1: vertical), the ink with paper on both sides across that direction.
    # Only these pixels can vote for a line: inside a paint brush's stroke every straight run is a candidate, and
    # a thick 1 gave hundreds of them (0.3 s) where a ruling gives a few.
    beside = [besides(ink, direction) for direction in (0, 1)]
    candidates = []  # (direction: 0 horizontal / 1 vertical, rho, the flat indices of the ink in its band)
    searches = (
        (0, np.pi / 2 - tilt, np.pi / 2 + tilt, width),
        (1, 0.0, tilt, height),
        (1, np.pi - tilt, np.pi, height),
    )
    band = np.zeros_like(strong)
    for direction, low, high, length in searches:
        for rho, theta in straight_lines(ink & ~beside[direction], length, low, high):
            candidates.append((direction, float(rho), band_ink(ink, rho, theta, band), float(theta)))
    ruling = np.zeros(strong.shape, bool)
    in_family = False
    rest: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None  # (ruling pixels then, components of the ink off it)
    for direction in (0, 1):
        family = [c for c in candidates if c[0] == direction and thin_fraction(c[2], beside[direction]) >= 0.5]
        distinct = distinct_lines([(rho, theta) for _, rho, _, theta in family], direction)
        for _, _, pixels, _ in family:
            if distinct >= 3 or line_extent(pixels, width, direction) >= RULING_SPAN * (width, height)[direction]:
                ruling.flat[pixels] = True
                in_family |= distinct >= 3
        if distinct >= 3:
            for pixels in lines_behind_writing(ink, direction, family, beside[direction]):
                ruling.flat[pixels] = True
            # Vertical lines leaning either way come back near 0 and near pi: one side of 0 for their median.
            thetas = [c[3] - np.pi if c[3] > np.pi / 2 and direction == 1 else c[3] for c in family]
            angle: float | None = float(np.median(thetas))
        else:  # a lone line in dashes (a faint margin)
            angle = None
        # The ink off the lines found so far, in pieces: labelled once for both directions when nothing changed it
        # (no line at all, as in most pictures), a pass less on every photo Predict reads.
        taken = int(np.count_nonzero(ruling))
        if rest is None or rest[0] != taken:
            rest = (taken, connected_components((ink & ~ruling).astype(np.uint8)))
        ruling |= dashed_lines(rest[1], direction, angle)
    return ruling, in_family


def distinct_lines(lines: list[tuple[float, float]], direction: int) -> int:
    """How many distinct lines Hough's (rho, theta) pairs in `direction` (0 horizontal, 1 vertical) are. Hough finds
    a thick line at several neighbouring distances, so distances within 2 RULING_BAND of the next are one line.
    A vertical line comes back near theta 0 (rho = x) and near pi (rho = -x): folded to one side first. Rounded
    into fixed bins of distance, as before, one straight 1 at x = 203 came back as 204, 206, -204 and -202, three
    "lines": a family of ruled paper, and the 1 was refused as nothing but paper."""
    rhos = sorted(-rho if direction == 1 and theta > np.pi / 2 else rho for rho, theta in lines)
    return (1 if rhos else 0) + sum(b - a > 2 * RULING_BAND for a, b in itertools.pairwise(rhos))


def dashed_lines(components: tuple[np.ndarray, np.ndarray], direction: int, theta: float | None) -> np.ndarray:
    """(H, W) bool: the dashes of paper lines too faint to be found whole, among the pieces of an ink map
    (`components`: connected_components' labels and stats), in `direction`:
    at the angle `theta` (Hough's, radians) of the family of lines found there (give or take RULING_HIDDEN_TILT
    degrees), or, for a lone line (a margin; `theta` None), at any angle within RULING_MAX_TILT of the direction.

    Where the paper's contrast is near the threshold, a line breaks into dashes and bits (near the picture's edge,
    in the vignette). A dash is a piece no thicker than a line's band, lying along the direction, and at least two
    bands long; a bit is such a piece shorter than that, but not a single pixel (grain). Pieces whose distances
    from the origin at the angle lie within one band of each other are one line if they reach across
    RULING_MIN_LENGTH of the picture and at least three of them are dashes or, in a family, RULING_MIN_BITS of them
    are bits or dashes (only a faint grid's crossings may be left of it). A lone line's dashes must cross
    RULING_SPAN of the picture, three dashes at least, as a lone line found whole must. No writing makes pieces
    that thin, in one band, that far."""
    labels, stats = components
    height, width = labels.shape
    out = np.zeros(labels.shape, bool)
    x, y, w, h, area = (stats[1:, i].astype(np.float64) for i in range(5))
    across, along = (h, w) if direction == 0 else (w, h)
    # Thin (a band's thickness on average) and lying along the lines (its box no taller than a line tilted by
    # RULING_MAX_TILT would make it); not a pixel of grain.
    aligned = across <= RULING_BAND + along * np.tan(np.radians(RULING_MAX_TILT))
    pieces = np.flatnonzero((area <= RULING_BAND * along) & aligned & (along >= 2))  # indices into stats[1:]
    if len(pieces) < 3 or len(pieces) > MAX_DASHES:
        return out
    long = along[pieces] >= 2 * RULING_BAND  # the dashes proper
    if theta is None:  # a lone line
        thetas = np.pi / 2 * (1 - direction) + np.radians(np.arange(-RULING_MAX_TILT, RULING_MAX_TILT + 0.01, 0.5))
        reach, least_bits = RULING_SPAN, np.inf
    else:
        thetas = theta + np.radians(np.arange(-RULING_HIDDEN_TILT, RULING_HIDDEN_TILT + 0.01, 0.25))
        reach, least_bits = RULING_MIN_LENGTH, RULING_MIN_BITS
    centre_x, centre_y = x[pieces] + w[pieces] / 2, y[pieces] + h[pieces] / 2
    start, end = (x[pieces], x[pieces] + w[pieces]) if direction == 0 else (y[pieces], y[pieces] + h[pieces])
    length = (width, height)[direction]
    chosen = np.zeros(len(stats), bool)
    for angle in thetas:
        rho = centre_x * np.cos(angle) + centre_y * np.sin(angle)
        order = np.argsort(rho)
        first = 0
        for k in range(1, len(order) + 1):  # runs of pieces within one band of the run's first
            if k < len(order) and rho[order[k]] - rho[order[first]] <= RULING_BAND:
                continue
            run = order[first:k]
            first = k
            enough = np.count_nonzero(long[run]) >= 3 or len(run) >= least_bits
            if enough and end[run].max() - start[run].min() >= reach * length:
                chosen[pieces[run] + 1] = True
    if chosen.any():
        out = chosen[labels]
    return out


def lines_behind_writing(ink: np.ndarray, direction: int, family: list, beside: np.ndarray) -> list[np.ndarray]:
    """The ink (flat indices into (H, W)) of each further line of a family of paper lines (`family`: find_ruling's
    candidates (direction, rho, pixels, theta) in `direction`) that writing along it hid from find_ruling's search
    of the thin ink: see RULING_HIDDEN_COVER. It lies a whole number of the family's spacings from its lines
    (within RULING_HIDDEN_PHASE), and RULING_HIDDEN_THIN of its ink is thin (`beside` as for thin_fraction): the
    edge of a dark table beyond the sheet has ink along its whole length too, but on one side only (a quarter of
    it thin at most, where the lines behind writing measured 0.40-0.49). Lines already in the family are not given
    again."""
    height, width = ink.shape
    thetas = np.array([theta for _, _, _, theta in family])
    if np.ptp(thetas) > np.pi / 2:  # vertical lines leaning both ways (theta near 0 and near pi): not searched
        return []
    spread = np.radians(RULING_HIDDEN_TILT)
    low, high = max(0.0, float(thetas.min()) - spread), min(np.pi, float(thetas.max()) + spread)
    found = straight_lines(ink, (width, height)[direction], low, high)
    if len(found) == 0:
        return []
    reach = float(np.median([line_extent(pixels, width, direction) for _, _, pixels, _ in family]))
    known = [rho for _, rho, _, _ in family]
    # The family's lines (Hough's neighbouring distances of one line merged) and their spacing: a line behind the
    # writing lies a whole number of spacings from them, as the paper's lines do.
    ordered = np.sort(known)
    runs = np.split(ordered, np.flatnonzero(np.diff(ordered) >= 2 * RULING_BAND) + 1)
    family_lines = [float(np.mean(run)) for run in runs]
    # Not halved for a family of two lines, whose one gap may be two spacings around a rule hidden by a number: a
    # digit's own straight bar half-way between them (a 7's top, a 4's) was then in step and taken out as a rule.
    spacing = family_spacing(family_lines)
    band = np.zeros(ink.shape, np.uint8)
    lines: list[np.ndarray] = []
    for rho, theta in found:
        if min(abs(rho - k) for k in known) < 2 * RULING_BAND:
            continue  # a line of the family, or its neighbour at the next distance
        pixels = band_ink(ink, rho, theta, band)
        along = pixels % width if direction == 0 else pixels // width
        extent = line_extent(pixels, width, direction)
        covered = len(np.unique(along)) >= RULING_HIDDEN_COVER * extent
        steps = min(abs(rho - line) for line in family_lines) / spacing if spacing > 0 else 0.0
        in_step = round(steps) >= 1 and abs(steps - round(steps)) <= RULING_HIDDEN_PHASE
        if (
            extent >= RULING_SPAN * reach
            and covered
            and in_step
            and thin_fraction(pixels, beside) >= RULING_HIDDEN_THIN
        ):
            lines.append(pixels)
            known.append(rho)
    return lines


def family_spacing(lines: list[float]) -> float:
    """The spacing of a family of paper lines at these distances (sorted, one per line; 0 for fewer than two): the
    largest of which every gap between them is a whole number, within RULING_HIDDEN_PHASE (the median gap where
    none fits them all: a strong perspective). A line hidden behind the writing between two found ones leaves a gap
    of two spacings: with the rules above and two below a number found, the one through it hidden, the median gap
    was 1.5 spacings, the hidden rule 0.67 of it off the others, and it stayed, joining the digits into one."""
    gaps = np.diff(lines)
    if len(gaps) == 0:
        return 0.0
    steps = gaps / gaps.min()
    if np.all(np.abs(steps - np.round(steps)) <= RULING_HIDDEN_PHASE):
        return float(gaps.sum() / np.round(steps).sum())
    return float(np.median(gaps))


def straight_lines(mask: np.ndarray, length: int, low: float, high: float) -> np.ndarray:
    """(n, 2) float32: (rho, theta) of the straight lines through at least RULING_MIN_LENGTH x `length` pixels of a
    (H, W) bool mask, theta (radians) between `low` and `high`, most voted for first, at most
    MAX_RULING_CANDIDATES. The transform runs at half resolution (a quarter of the cost; max-pooled, so one-pixel
    lines stay); rho is given at full resolution (doubled: exact)."""
    height, width = mask.shape
    half = cv2.resize(
        cv2.dilate(mask.astype(np.uint8), np.ones((2, 2), np.uint8)),
        (max(1, width // 2), max(1, height // 2)),
        interpolation=cv2.INTER_NEAREST,
    )
    found = cv2.HoughLines(half, 1, np.pi / 360, int(RULING_MIN_LENGTH * length / 2), min_theta=low, max_theta=high)
    if found is None:
        return np.empty((0, 2), np.float32)
    lines = found[:MAX_RULING_CANDIDATES, 0].copy()  # float32, as OpenCV gives them: the bands drawn depend on it
    lines[:, 0] *= 2
    return lines


def band_ink(ink: np.ndarray, rho: float, theta: float, band: np.ndarray) -> np.ndarray:
    """The flat indices of the (H, W) bool ink in the band RULING_BAND pixels wide along the line (rho, theta) across
    the whole picture. `band` (H, W) uint8 is scratch space."""
    height, width = ink.shape
    band[:] = 0
    a, b = np.cos(theta), np.sin(theta)
    x, y, far = a * rho, b * rho, 2 * (width + height)
    cv2.line(band, (int(x - far * b), int(y + far * a)), (int(x + far * b), int(y - far * a)), 1, RULING_BAND)
    return np.flatnonzero(band.astype(bool) & ink)


def besides(ink: np.ndarray, direction: int) -> np.ndarray:
    """(H, W) bool: where a (H, W) bool ink map has ink a few pixels beyond a line's band on either side, across
    a horizontal line (direction 0: above or below) or a vertical one (1: left or right)."""
    reach = RULING_BAND // 2 + 3
    axis = 0 if direction == 0 else 1  # across a horizontal line is up and down
    return np.roll(ink, reach, axis=axis) | np.roll(ink, -reach, axis=axis)


def thin_fraction(pixels: np.ndarray, beside: np.ndarray) -> float:
    """The share of a candidate line's ink pixels (flat indices into (H, W)) with paper on both sides of it
    (`beside`, (H, W) bool from besides): near 1 for a ruling (crossing strokes aside), near 0 for a straight run
    inside a paint brush's stroke."""
    if len(pixels) == 0:
        return 0.0
    return np.count_nonzero(~beside.ravel()[pixels]) / len(pixels)


def line_extent(pixels: np.ndarray, width: int, direction: int) -> int:
    """How far the pixels (flat indices into (H, `width`)) of a band extend along it: columns for a horizontal
    line (0), rows for a vertical one (1)."""
    if len(pixels) == 0:
        return 0
    along = pixels % width if direction == 0 else pixels // width
    return int(along.max() - along.min() + 1)


def keep_strokes_across_ruling(
    strong: np.ndarray, ruling: np.ndarray, weakest: np.ndarray, strongest: np.ndarray
) -> np.ndarray:
    """(H, W) bool: the pixels of the ruling that belong to the digit after all.

    - where a stroke crosses a line: the line's pixels between the stroke's two sides (a closing of the ink off
      the lines by a little more than the band), so a crossing stroke is kept whole;
    - where the ink is much darker than the ruling (a pen over faint printed lines): pixels at least 1.5 times
      the ruling's typical contrast around them;
    - where the line is coloured and the ink is not (blue or red ruling, black or dark-blue ink): pixels that
      differ from the paper in every channel, unlike the ruling's own.
    """
    off_lines = (strong.astype(bool) & ~ruling).astype(np.uint8)
    bridge = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (RULING_BAND + 4, RULING_BAND + 4))
    kept = ruling & cv2.morphologyEx(off_lines, cv2.MORPH_CLOSE, bridge).astype(bool)
    contrast = strongest[ruling].astype(np.float32)
    # The ruling's typical contrast where each pixel is: its mean over a window RULING_LOCAL of the picture wide,
    # each pixel counted at most 1.5 times the whole ruling's median. A line printed unevenly, or under uneven
    # light, is twice as dark at one end as at the other, and against the median alone its darker end was kept as
    # writing; the cap keeps a pen stroke that runs along a line for a while from raising the line's own level.
    side = max(3, round(RULING_LOCAL * max(ruling.shape))) | 1
    on = ruling.astype(np.float32)
    capped = np.minimum(strongest.astype(np.float32), 1.5 * float(np.median(contrast)))
    total = cv2.boxFilter(capped * on, -1, (side, side), normalize=False)
    count = cv2.boxFilter(on, -1, (side, side), normalize=False)
    rescued = contrast >= 1.5 * (total[ruling] / np.maximum(count[ruling], 1))
    neutrality = weakest[ruling].astype(np.float32) / np.maximum(contrast, 1)
    if np.median(neutrality) < 0.4:  # a coloured ruling: its marks differ from the paper in one channel only
        rescued |= neutrality > 0.6
    kept[ruling] |= rescued
    return kept


def percentile_uint8(values: np.ndarray, q: float) -> float:
    """The q-th percentile of uint8 values by counting (linear time, unlike sorting)."""
    counts = np.cumsum(np.bincount(values.ravel(), minlength=256))
    return float(np.searchsorted(counts, q / 100 * counts[-1]))


def noise_level(ink: np.ndarray) -> float:
    """The typical contrast of the paper itself (its texture, noise, JPEG artefacts): the 30th percentile."""
    sample = ink[::2, ::2] if ink.size > 40_000 else ink  # a quarter of the pixels is plenty, and 4x faster
    return percentile_uint8(sample, 30)


def ink_threshold(ink: np.ndarray, noise: float) -> float:
    """Otsu's split between paper and ink, but never below the contrast floor or well inside the noise."""
    otsu, _ = cv2.threshold(ink, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return max(float(otsu), float(MIN_INK_CONTRAST), NOISE_MULTIPLE * noise)


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a (H, W) uint8 mask: (labels (H, W), stats (n, 5): x, y, w, h, area).

    16-bit labels make OpenCV's statistics pass twice as fast; a noisy picture with more than 65,535
    components falls back to 32-bit labels.
    """
    try:
        _, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(mask, 8, cv2.CV_16U, cv2.CCL_DEFAULT)
    except cv2.error:
        _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    return labels, stats


def digit_components(
    stats: np.ndarray,
    shape: tuple[int, int] | None = None,
    contrast: np.ndarray | None = None,
    frames: np.ndarray | None = None,
) -> np.ndarray:
    """Which connected components (rows of OpenCV's stats: x, y, w, h, area) belong to the digit.

    Keep the largest stroke, every stroke at least KEEP_BIG_FRACTION of its size, and smaller strokes (a 5's flag,
    a 7's bar, a pen that skipped) within KEEP_NEAR_FRACTION of its size from it. Specks below KEEP_AREA_FRACTION
    of it are noise. Sizes, not morphology, decide, so a one-pixel-wide stroke is as safe as a thick one.
    Given the map's (H, W) `shape`, thin straight pieces cut off by the picture's edge (the rest of a ruling, the
    edge of the sheet) are not the digit, unless nothing else is there. Given each component's mean `contrast`
    (components,), the digit is the component with the most ink (area x contrast), not merely the largest, and
    marks far fainter than it (KEEP_CONTRAST_FRACTION: a shading the paper estimate left, a smudge) are not kept.
    Components marked in `frames` (components,) bool (frame_components: a box drawn around the digit) are not.
    """
    if len(stats) == 2 and stats[1, cv2.CC_STAT_AREA] > 0:
        # One stroke (most digits): every rule below compares a stroke with the main one, which is this one.
        return np.array([False, True])
    area = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
    area[0] = 0  # label 0 is the background
    if frames is not None:
        area[frames] = 0
    if shape is not None:
        edge_lines = edge_line_pieces(stats, shape)
        rest = ~edge_lines & (area > 0)
        # Dropped only for something that can be a digit: a thin 1 or 7 drawn up to the edge beside a speck was
        # dropped for the speck, which became the digit.
        if rest.any() and np.maximum(stats[rest, 2], stats[rest, 3]).max() >= speck_side(shape):
            area[edge_lines] = 0
    keep = np.zeros(len(stats), bool)
    if len(stats) < 2 or area.max() == 0:
        return keep
    main = int(area.argmax()) if contrast is None else int((area * contrast).argmax())
    mx, my, mw, mh = stats[main, :4]
    x, y, w, h = (stats[:, i] for i in range(4))
    gap_x = np.maximum(0, np.maximum(mx - (x + w), x - (mx + mw)))  # 0 when the boxes overlap horizontally
    gap_y = np.maximum(0, np.maximum(my - (y + h), y - (my + mh)))
    near = np.hypot(gap_x, gap_y) <= KEEP_NEAR_FRACTION * max(mw, mh)
    big = area >= KEEP_BIG_FRACTION * area[main]
    keep = (area >= KEEP_AREA_FRACTION * area[main]) & (big | near)
    if shape is not None and max(shape) >= RULING_MIN_PICTURE:
        # In a photo, a mark cut off by the picture's edge and away from the digit is something of the scene (the
        # edge of a shadow, the sheet's corner), however big: the digit is drawn inside the frame.
        keep &= near | ~touches_edge(stats, shape)
    if contrast is not None:
        keep &= contrast >= KEEP_CONTRAST_FRACTION * contrast[main]
    keep[0] = False
    return keep


def frame_components(labels: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """(components,) bool: boxes and rings drawn around the digit, as on a form or to circle an answer, in a (H, W)
    map of `labels` with OpenCV's `stats` (x, y, w, h, area). A frame holds a mark that can be a digit inside its
    box, FRAME_CONTENT of its size and no speck (a rectangle alone, or around a dot, is what was drawn), and either
    spans FRAME_MIN_SPAN of the picture both ways with ink in each corner of its box (a box left open somewhere),
    or holds that mark wholly in a hole of its own: a closed box (ink in its corners), however small, a ring
    round enough to be drawn around something (RING_MIN_ROUND), or an oval taller than wide (OVAL_MIN_ROUND)
    round a mark that is a circled digit, not a 0's slash or long dot (circled_in_oval: a 0 is taller than wide, and
    one with a mark inside that does not touch it is a 0, not a circled 1). The FRAME_CANDIDATES largest boxes are
    looked at, and only outlines (ink FRAME_MAX_SOLID of the shape at most: a sheet lying on a desk, a solid block
    with the writing in its holes, is read by image_pipeline.read_sheet). The ruling search takes only lines
    across most of a picture of 160 pixels or more, so a box around the digit was the digit (a 0) or part of it.
    """
    frames = np.zeros(len(stats), bool)
    if len(stats) < 3:
        return frames
    shape = labels.shape
    x, y, w, h, area = (stats[:, i].astype(np.int64) for i in range(5))
    right, bottom, side = x + w, y + h, np.maximum(w, h)
    wide = (w >= FRAME_MIN_SPAN * shape[1]) & (h >= FRAME_MIN_SPAN * shape[0])
    for k in np.argsort(-(w * h)[1:], kind="stable")[:FRAME_CANDIDATES] + 1:
        inside = (x >= x[k]) & (y >= y[k]) & (right <= right[k]) & (bottom <= bottom[k]) & (area > 0)
        inside &= side >= max(speck_side(shape), FRAME_CONTENT * min(w[k], h[k]))
        inside[[0, k]] = False
        if not inside.any():
            continue
        window = labels[y[k] : bottom[k], x[k] : right[k]]
        box = window == k
        holes = enclosed(box)
        if area[k] > FRAME_MAX_SOLID * (area[k] + holes.sum()):
            continue  # a solid block (a sheet lying on a desk, read by image_pipeline.read_sheet), no outline
        c = max(2, int(FRAME_CORNER * min(w[k], h[k])))
        cornered = box[:c, :c].any() and box[:c, -c:].any() and box[-c:, :c].any() and box[-c:, -c:].any()
        round_ring = min(w[k], h[k]) >= RING_MIN_ROUND * max(w[k], h[k])
        oval = not round_ring and OVAL_MIN_ROUND * h[k] <= w[k] < h[k]
        if wide[k] and cornered:
            frames[k] = True
        elif cornered or round_ring or oval:
            # A mark wholly in a hole has no pixel outside the holes: one count over the window for all of them.
            outside = np.bincount(window[~holes].ravel(), minlength=len(stats))
            candidates = np.flatnonzero(inside)
            held = candidates[outside[candidates] == 0]
            if cornered or round_ring:
                frames[k] = held.size > 0
            else:
                rows = np.flatnonzero(holes.any(axis=1))
                hole_height = int(rows[-1] - rows[0] + 1) if rows.size else 0
                frames[k] = any(circled_in_oval(window == j, box, hole_height) for j in held)
    return frames


def circled_in_oval(mark: np.ndarray, oval: np.ndarray, hole_height: int) -> bool:
    """Whether `mark`, held in the hole of `oval` (both (h, w) bool over the oval's box; the hole `hole_height`
    pixels tall), is a digit circled by it rather than a 0's slash or dot: as tall as a circled digit
    (OVAL_MIN_FILL), and strokes that are not a line (LINE_MAX_ELONGATION, OVAL_MAX_SOLID), or an upright line
    nearly as tall as the hole (a 1: LINE_MAX_TILT, OVAL_MIN_FILL_LINE) that keeps LINE_MIN_GAP of the hole clear
    of the oval: a 0's free slash runs across the 0, near the ring at both ends."""
    ys, xs = np.nonzero(mark)
    height = int(ys.max() - ys.min() + 1)
    if height < OVAL_MIN_FILL * hole_height:
        return False
    (var_y, cov), (_, var_x) = np.cov(np.stack([ys, xs]).astype(np.float64))
    # Eigenvalues of the 2x2 covariance: its principal axes' variances.
    mean, spread = (var_x + var_y) / 2, np.hypot((var_x - var_y) / 2, cov)
    major, minor = mean + spread, max(mean - spread, 0.0)
    if minor > LINE_MAX_ELONGATION**2 * major:
        return len(ys) <= OVAL_MAX_SOLID * height * int(xs.max() - xs.min() + 1)  # a digit's strokes, not a dot
    tilt = abs(np.degrees(0.5 * np.arctan2(2 * cov, var_y - var_x)))  # of the major axis from vertical
    if tilt > LINE_MAX_TILT or height < OVAL_MIN_FILL_LINE * hole_height:
        return False
    clear = cv2.distanceTransform((~oval).astype(np.uint8), cv2.DIST_L2, 3)  # each pixel's distance to the oval
    return bool(clear[ys, xs].min() >= LINE_MIN_GAP * hole_height)


def enclosed(mask: np.ndarray) -> np.ndarray:
    """(h, w) bool: the pixels not in `mask` (h, w) bool that no 4-connected path of such pixels links to the
    outside: the holes of a ring drawn in 8-connected ink."""
    free = np.pad(~mask, 1, constant_values=True).astype(np.uint8)
    cv2.floodFill(free, None, (0, 0), 0)  # the outside (padded all round, so one region) -> 0
    return free[1:-1, 1:-1].astype(bool)


def without_boxes(marks: np.ndarray) -> np.ndarray | None:
    """The ink mask `marks` (H, W) uint8 without the boxes drawn around the digit (frame_components) whose ink
    keeps to their outline, BOX_OUTLINE of their shorter side deep: a box, not a grid of squares across the page
    nor a box that the digit touches (both have ink inside). None if there is none."""
    labels, stats = connected_components(marks)
    frames = frame_components(labels, stats)
    out = None
    for k in np.flatnonzero(frames):
        x, y, w, h = (int(v) for v in stats[k, :4])
        band = max(1, int(BOX_OUTLINE * min(w, h)))
        if (labels[y + band : y + h - band, x + band : x + w - band] == k).any():
            continue
        if out is None:
            out = marks.copy()
        out[labels == k] = 0
    return out


def speck_side(shape: tuple[int, int]) -> float:
    """The longer box side, in pixels of a (H, W) picture, under which a mark is a speck rather than a digit there:
    MIN_DIGIT_SIDE, or SPECK_FRACTION of the picture's shorter side on a larger picture."""
    return max(MIN_DIGIT_SIDE, SPECK_FRACTION * min(shape))


def component_contrast(ink: np.ndarray, labels: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """(components,) float: the mean ink contrast of each component that could be kept (at least
    KEEP_AREA_FRACTION of the largest), 0 for specks; read within each candidate's box, so the cost is that of
    the few candidates, not of the whole map."""
    area = stats[:, cv2.CC_STAT_AREA]
    out = np.zeros(len(stats))
    if len(stats) < 2:
        return out
    for k in np.flatnonzero(area >= KEEP_AREA_FRACTION * area[1:].max()):
        if k == 0:
            continue
        x, y, w, h = stats[k, :4]
        box = labels[y : y + h, x : x + w] == k
        out[k] = float(ink[y : y + h, x : x + w][box].mean())
    return out


def touches_edge(stats: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(components,) bool: components whose box reaches the edge of a (H, W) picture."""
    height, width = shape
    x, y, w, h = (stats[:, i].astype(np.int64) for i in range(4))
    return (x == 0) | (y == 0) | (x + w == width) | (y + h == height)


def edge_line_pieces(stats: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(components,) bool: components that touch the picture's edge and are line-like (at least
    EDGE_LINE_ELONGATION times as long as their mean thickness)."""
    length = np.maximum(stats[:, 2], stats[:, 3]).astype(np.int64)
    return touches_edge(stats, shape) & (length * length >= EDGE_LINE_ELONGATION * np.maximum(stats[:, 4], 1))


def union_box(stats: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), exclusive ends, of the union of components' boxes (rows: x, y, w, h, area)."""
    x0, y0 = stats[:, 0].min(), stats[:, 1].min()
    x1, y1 = (stats[:, 0] + stats[:, 2]).max(), (stats[:, 1] + stats[:, 3]).max()
    return int(x0), int(y0), int(x1), int(y1)


def raise_blank(ink: np.ndarray, threshold: float, noise: float, found: str = "ink", what: str = "a digit") -> NoReturn:
    """ImageRejected: no strokes in `ink` at `threshold` (ink_threshold of `noise`). `found` and `what` name what
    the caller looked for ("ink", "a digit"; ReadNumber: "digit", "a number")."""
    if NOISE_MULTIPLE * noise >= threshold:  # the background's own texture set the bar, not the lack of ink
        raise ImageRejected(
            f"no {found} found: the picture is too noisy or textured to tell strokes from the background (the "
            f"background itself differs from a smooth paper by {int(noise)} of 255 or more over most of the "
            f"picture). Send {what} on a plain background, e.g. a dark pen on white paper, photographed in even light"
        )
    raise ImageRejected(
        f"no {found} found: the picture looks blank (the strongest contrast to the background is {int(ink.max())} of "
        f"255; ink needs at least {int(threshold)}). Send a picture of {what} written darker or lighter than its "
        "background, e.g. a dark pen on white paper"
    )


# ---------------------------------------------------------------------------------------------------------------
# 6. Stroke width


def normalize_stroke_width(crop: np.ndarray) -> tuple[np.ndarray, float]:
    """(h, w) float32 soft ink -> the same digit with MNIST-like stroke width, and the ratio measured before.

    The width is measured (and changed) on the crop resized to STROKE_WORK_MIN_SIDE..STROKE_WORK_MAX_SIDE pixels
    on its long side, the resolution the ratio was calibrated at on MNIST. Area averaging keeps a thin stroke as
    faint grey when shrinking; binarising shrunk ink at a lower level keeps it. A stroke already in MNIST's
    range is returned untouched, so a genuine MNIST digit passes through unchanged.
    """
    work, shrink_factor = resize_long_side_into(crop, STROKE_WORK_MIN_SIDE, STROKE_WORK_MAX_SIDE)
    binary = work >= stroke_mask_level(shrink_factor)
    ratio = stroke_ratio(binary)
    if STROKE_RATIO_THIN <= ratio <= STROKE_RATIO_THICK or not binary.any():
        return crop, ratio
    long_side = max(work.shape)
    width = ratio * long_side
    if ratio < STROKE_RATIO_THIN:
        target = STROKE_RATIO_TARGET
        grow = (target * long_side - width) / (2 * (1 - target))  # the box grows by 2*grow too
        return thicken(work, binary, grow), ratio
    target = STROKE_RATIO_THICK_TARGET
    shrink = min((width - target * long_side) / (2 * (1 - target)), MAX_THINNING_FRACTION * width)
    return thin(work, binary, shrink), ratio


def stroke_mask_level(shrink_factor: float) -> float:
    """The level of soft ink (0..1) at which a crop shrunk by `shrink_factor` to measure its strokes is ink: 0.5
    unshrunk, STROKE_MASK_PIXEL_LEVEL / shrink_factor shrunk. A 1-pixel stroke shrunk f times is 1 / f grey, at
    least half that on a pixel where it straddles two: a 1-pixel pencil line (a paint program's) on a canvas of
    300 to 1,000 pixels fell under the fixed levels of before (0.5 up to f = 2, 0.2 beyond), whole strokes left
    the mask (a 7's bar, a 4's stem), were never grown, and the digit read as a 1."""
    if shrink_factor <= 1:
        return 0.5
    return min(0.5, STROKE_MASK_PIXEL_LEVEL / shrink_factor)


def resize_long_side_into(image: np.ndarray, low: int, high: int) -> tuple[np.ndarray, float]:
    """Resize (h, w) float so its long side lies in [low, high]: area-average down, interpolate up.

    Returns (resized, shrink factor: original / new long side, < 1 when enlarged).
    """
    long_side = max(image.shape)
    if low <= long_side <= high:
        return image, 1.0
    target = high if long_side > high else low
    scale = target / long_side
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation), 1 / scale


def stroke_ratio(binary: np.ndarray) -> float:
    """Stroke width / longer side of the box, with width = 2 * area / perimeter (contours, holes included).

    For a stroke of length L and width w, area = wL and perimeter ~ 2L. Calibrated on MNIST with this same
    estimator, so its small biases (stroke ends, pixel staircases) cancel.
    """
    mask = binary.astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    perimeter = sum(cv2.arcLength(c, True) for c in contours)
    _x, _y, w, h = cv2.boundingRect(mask)
    if perimeter == 0 or max(w, h) == 0:
        return STROKE_RATIO_TARGET  # one pixel or nothing: leave it alone
    return float(2.0 * np.count_nonzero(mask) / perimeter / max(w, h))


def distance_to_zero(mask: np.ndarray) -> np.ndarray:
    """(H, W) uint8 mask -> float32 Euclidean distance of every pixel to the nearest 0, exact and the same on every
    call.

    OpenCV's precise transform (Intel IPP's, on this build) is off by a unit in the last place on a few percent of
    masks, and not always the same way from one call to the next with several threads (opencv/opencv#24082): a
    thinned stroke's edge then crossed a threshold, and one drawn negative in 12,000 came out differently in two
    runs of the trainer. The exact distances are square roots of whole numbers, so rounding the square to the
    nearest whole number and taking the root again gives them (errors are ~1e-6, the rounding's margin 0.5).
    """
    distance = cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.sqrt(np.rint(np.square(distance, dtype=np.float64))).astype(np.float32)


def thicken(soft: np.ndarray, binary: np.ndarray, radius: float) -> np.ndarray:
    """Grow the strokes by `radius` pixels on each side, with a one-pixel anti-aliased edge. (h', w') float32."""
    pad = int(np.ceil(radius)) + 2
    soft = cv2.copyMakeBorder(soft, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    outside = cv2.copyMakeBorder((~binary).astype(np.uint8), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=1)
    distance = distance_to_zero(outside)  # to the nearest stroke pixel
    grown = np.clip(radius + 1.0 - distance, 0, 1)  # neighbours are at distance 1
    return np.maximum(soft, grown)


def thin(soft: np.ndarray, binary: np.ndarray, radius: float) -> np.ndarray:
    """Erode the strokes by `radius` pixels on each side, with a one-pixel anti-aliased edge. (h, w) float32."""
    inside = cv2.copyMakeBorder(binary.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    distance = distance_to_zero(inside)[1:-1, 1:-1]  # to the paper
    return soft * np.clip(distance - radius, 0, 1)  # edge pixels are at distance 1


# ---------------------------------------------------------------------------------------------------------------
# 7. MNIST's box and centring


def fit_in_box(crop: np.ndarray) -> np.ndarray:
    """Crop to the ink and scale so the longer side is MNIST_BOX, keeping the aspect ratio. (<=20, <=20) float32.

    Shrinking averages areas, which is the anti-aliasing MNIST's own normalization produced. The result is
    stretched so its brightest pixel is 1.
    """
    x, y, w, h = cv2.boundingRect((crop > 0.02).astype(np.uint8))
    if w == 0 or h == 0:
        raise ImageRejected("no ink left after cleaning the picture; send a clearer picture of the digit")
    crop = np.ascontiguousarray(crop[y : y + h, x : x + w])
    scale = MNIST_BOX / max(w, h)
    size = (max(1, min(MNIST_BOX, round(w * scale))), max(1, min(MNIST_BOX, round(h * scale))))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    patch = cv2.resize(crop, size, interpolation=interpolation)
    np.clip(patch, 0, 1, out=patch)
    # Every MNIST digit's brightest pixel is 254 or 255; a thin or faint stroke averaged down must reach it too.
    return patch / max(float(patch.max()), 1e-6)


def centre_by_mass(patch: np.ndarray) -> np.ndarray:
    """Paste a (h, w) float patch into 28x28 so its centre of mass lands on pixel (14, 14). (28, 28) uint8.

    Whole-pixel shifts, as MNIST's own centres show (their fractional parts are uniform), so nothing is blurred.
    The shift is clamped so the box stays inside the frame rather than cutting off a lopsided digit's edge.
    """
    h, w = patch.shape
    # One C call for the mass and both first moments (float64 sums): half the time of NumPy's sums and products on a
    # 20x20 patch, which every Predict and every digit of ReadNumber pays. (OpenCV takes an array two columns wide
    # for a list of points: the thinnest patches are summed here.)
    if h > 2 and w > 2:
        moments = cv2.moments(np.ascontiguousarray(patch, dtype=np.float32))
        mass, row_moment, col_moment = moments["m00"], moments["m01"], moments["m10"]
    else:
        mass = float(patch.sum(dtype=np.float64))
        row_moment = float(patch.sum(axis=1, dtype=np.float64) @ np.arange(h))
        col_moment = float(patch.sum(axis=0, dtype=np.float64) @ np.arange(w))
    if not mass > 0:
        raise ImageRejected("no ink left after cleaning the picture; send a clearer picture of the digit")
    centre_y, centre_x = row_moment / mass, col_moment / mass
    # Python's min/max on ints, not np.clip: the same numbers, without NumPy's per-call cost on scalars.
    top = min(max(round(MNIST_CENTRE - centre_y), 0), MNIST_SIDE - h)
    left = min(max(round(MNIST_CENTRE - centre_x), 0), MNIST_SIDE - w)
    out = np.zeros((MNIST_SIDE, MNIST_SIDE), np.uint8)
    out[top : top + h, left : left + w] = patch * 255.0 + 0.5  # truncated to whole grey levels, as astype does
    return out
