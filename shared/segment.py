"""A decoded picture of a handwritten number (one line of 1 to MAX_DIGITS digits) -> its digits, each as MNIST sees it.

The paper and the ink are found exactly as for one digit (shared/normalize.py), and each digit found is passed
through the same stroke-width, box and centre-of-mass normalization, so a picture of a single digit gives the
28x28 image Predict gives. In between, the ink is cut into digits:

1. pieces      the connected components of the ink (Otsu threshold, as for one digit); specks, the dots of
               dot-grid paper and a box drawn round the number dropped. Writing in dots is first joined into
               strokes (each dot linked to its nearest).
2. slant       the writing's slant, pooled from the second moments of the tall pieces. Everything below is
               measured along the writing direction in deslanted coordinates x' = x + slant * y, so two slanted
               digits side by side do not overlap and a cut between them follows their strokes.
3. groups      pieces that overlap along the writing direction are one digit: a 5's detached flag, a 4 broken
               by a skipping pen. Pieces stacked higher than a digit are in different lines, unless their ink
               is a pen's skip apart.
4. one line    the line height is the median height of the tall groups; groups that do not overlap vertically
               (in a chain) are another line of writing, which is refused (a number written at a slant, its
               digits on one steep line, with the angle to turn the picture by).
5. small marks a small mark low in the line, with clear space beside and above it, is a decimal point or comma:
               left out of the digits, its position reported. Other small marks (the pieces of a digit broken
               into several) join the group they overlap along the line, or the nearest; far specks, and marks
               left alone above or below the line, are dropped.
6. touching    a group wider than most single digits may be digits that touch. Candidate cuts are the
               top-to-bottom paths through the deslanted group that cross the fewest strokes (dynamic
               programming); the strokes a path leaves whole go to one side. The classifier scores the halves
               of every cut (they must look like digits) against the group whole, and the best is kept if it
               is nearly as good or better; wide halves are tried again.
7. joining     the reverse: neighbours narrow enough together to be one digit, which the classifier is much
               surer of as one digit than as two (a 4 written in two strokes that do not meet), are joined.

Every group is classified whole in one batch, and all halves of the candidate cuts in one more: the caller passes
`classify`, which maps (N, 28, 28) uint8 images to their ten digits' probabilities and their digit scores (the
served model's not-digit class's own, shared.model.segment_scores, in the service; docs/not-a-digit.md). A
region's confidence is the top probability times the digit score: two digits squeezed into one box often get a
confident digit, but not the score of one digit.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace

import cv2
import numpy as np
from scipy.spatial import cKDTree

from shared.decode import WORK_MAX_SIDE, ImageRejected, prepare_array
from shared.normalize import (
    box_through,
    centre_by_mass,
    channel_contrast,
    connected_components,
    estimate_background,
    fit_in_box,
    frame_components,
    ink_threshold,
    noise_level,
    normalize_stroke_width,
    percentile_uint8,
    raise_blank,
    sheet_in,
    sheet_picture,
    soft_ink,
    strongest_and_weakest,
    without_boxes,
    without_ruling,
)


@dataclass(frozen=True)
class Classified:
    """What the classifier says of a batch of N digit images."""

    probabilities: np.ndarray  # (N, 10): the ten digits' softmax
    # (N,) in [0, 1]: how much each image looks like one digit at all (the not-digit class's digit score); all 1
    # from a model without that class.
    digit_scores: np.ndarray

    def confidence(self) -> np.ndarray:
        """(N,) log of the top probability times the digit score: how sure the classifier is of one digit here."""
        top = np.clip(np.asarray(self.probabilities, np.float64).max(axis=1), 1e-12, 1.0)
        return np.log(top) + np.log(np.clip(np.asarray(self.digit_scores, np.float64), 1e-12, 1.0))


Classifier = Callable[[np.ndarray], Classified]  # (N, 28, 28) uint8 -> their Classified


class Abandoned(Exception):
    """The caller of a reading went away (its deadline passed, or it cancelled): the reading stops (reading_for)."""


_still_wanted: ContextVar[Callable[[], bool] | None] = ContextVar("still_wanted", default=None)


@contextmanager
def reading_for(still_there: Callable[[], bool]) -> Iterator[None]:
    """Readings made inside stop with Abandoned once `still_there()` is False: it is asked before each region's cuts
    are looked for and each batch is classified, the steps a long reading spends its time in. A zigzag across a
    picture took 0.65 s, all of it after a caller that gave it 50 ms had gone, and 16 such calls abandoned at once
    held the server's threads for 10 s while a Predict waited behind them."""
    token = _still_wanted.set(still_there)
    try:
        yield
    finally:
        _still_wanted.reset(token)


def still_wanted() -> None:
    """Raise Abandoned where the reading's caller has gone (reading_for); else nothing."""
    if (still_there := _still_wanted.get()) is not None and not still_there():
        raise Abandoned()


# The most memory a reading holds at once, per pixel of the decoded picture it reads (its working copies, the
# pieces' labels, the cuts tried and their halves), which the service reserves in its decode budget while it reads
# (reading_bytes). Measured with tracemalloc (stop 62, `python -m bench.bench_memory --part reading`): a zigzag
# across the working size, 1024 px, 38-44 B/px (44-137 before the cut search kept its costs a block of rows at a
# time and copied its halves); dots, checkers, thin lines and spirals 21-33; a photo of a number 12. Strips under
# 150 px high hold more a pixel (95 across 1024 x 40, 3.7 MiB in all): READING_BASE_BYTES covers them.
READING_BYTES_PER_PIXEL = 64
# And what a reading holds whatever the picture's size: the cut search's block of arrival costs (CUT_ROWS_AT_ONCE,
# 768 KiB), its states (8 x a region's width x the line's height, more than the picture's own pixels in a short
# strip), and one batch of the classifier (CLASSIFY_AT_ONCE images: 5 MiB measured in torch). A zigzag across
# 1024 x 40 held 7.7 MiB with a 3 MiB block, against 2.5 MiB reserved by the pixels alone (a review, stop 62).
READING_BASE_BYTES = 8 * 2**20
# Digit images given to the classifier at once (classify_in_chunks).
CLASSIFY_AT_ONCE = 64


def reading_bytes_of(pixels: int) -> int:
    """The memory reading a number in a decoded picture of `pixels` pixels may hold at once, in bytes."""
    return READING_BASE_BYTES + READING_BYTES_PER_PIXEL * pixels


def reading_bytes(image: np.ndarray) -> int:
    """reading_bytes_of `image` (as decode_image returns it)."""
    return reading_bytes_of(int(image.shape[0]) * int(image.shape[1]))


def largest_reading_bytes(max_pixels: int) -> int:
    """reading_bytes of the largest picture decode_image returns within `max_pixels`: at most WORK_MAX_SIDE on its
    long side, so at most that side squared."""
    return reading_bytes_of(min(max_pixels, WORK_MAX_SIDE**2))


def classify_in_chunks(classify: Classifier, images: list[np.ndarray]) -> Classified:
    """`classify` of a non-empty list of (28, 28) digit images, CLASSIFY_AT_ONCE at a time, each batch asked for
    only while the reading is still wanted (still_wanted): the classifier's forward pass holds memory for its whole
    batch, which no budget counts, and a picture of many small marks sent 428 halves at once (+41 MiB)."""
    parts = []
    for start in range(0, len(images), CLASSIFY_AT_ONCE):
        still_wanted()
        parts.append(classify(np.stack(images[start : start + CLASSIFY_AT_ONCE])))
    if len(parts) == 1:
        return parts[0]
    return Classified(
        np.concatenate([np.asarray(p.probabilities) for p in parts]),
        np.concatenate([np.asarray(p.digit_scores) for p in parts]),
    )


MAX_DIGITS = 12  # one line of at most this many digits: postcodes, amounts, dates, meter readings
# Before the pieces of a digit are joined (a 4 or a 5 in two strokes, a pen that skipped), there may be more regions
# than digits; past this many, the work is bounded and the picture refused before any is classified.
MAX_REGIONS = 2 * MAX_DIGITS
MAX_PIECES = 2000  # ink components considered (the largest); beyond that the picture is noise, not writing
# Small marks (groups lower than FRAGMENT_HEIGHT of the line) a picture may hold: a number's broken strokes, flags
# and dots make a few dozen at most (the tests' broken and dotted pens); hundreds are a speckled background.
MAX_FRAGMENTS = 300

# Specks: pieces smaller than this fraction of the largest piece's area, or than this many pixels, are noise.
SPECK_AREA_FRACTION = 0.003
SPECK_MIN_AREA = 3
# Slant: pooled over the pieces at least this fraction of the tallest piece's height; clamped (dx/dy).
SLANT_PIECE_HEIGHT = 0.4
MAX_SLANT = 0.7
# Grouping: pieces overlapping along the writing direction by GROUP_OVERLAP of the narrower one are one digit,
# unless they are more than GROUP_MAX_VERTICAL_GAP apart vertically or together more than GROUP_MAX_HEIGHT as
# high (x the taller one's height): then they are stacked, in different lines, unless their ink comes within
# GROUP_PEN_SKIP of their stroke width of each other (check_one_line).
GROUP_OVERLAP = 0.5
GROUP_MAX_VERTICAL_GAP = 0.25
GROUP_MAX_HEIGHT = 1.6
GROUP_PEN_SKIP = 2.5
# Grouping's work (groups visited and pairs weighed, over every pass) past which a picture is no line of writing:
# numbers of every style and layout take under 40; 480 stacked dashes, each merge making room for the next, took
# 1.9 s (a pass each, every dash within every other's reach). This bound takes about 20 ms.
GROUP_MAX_WORK = 20_000
# The line: groups at least this fraction of the tallest group's height are digits and define the line height
# (their median height); two of them are in one line when they overlap vertically by this fraction.
TALL_GROUP = 0.5
LINE_OVERLAP = 0.3
# Several "lines" whose digits' centres all lie within SLANTED_LINE_SPREAD of a digit's size of one straight line at
# least SLANTED_LINE_MIN_ANGLE degrees from level are one number written at an angle: said so (turn the picture)
# when there are SLANTED_LINE_MIN_MARKS of them at least (two marks are on a line whatever they are). Digits on one
# line lie within 0.15 of the height of it (baseline and size jitter); two lines of writing are a height apart.
SLANTED_LINE_SPREAD = 0.35
SLANTED_LINE_MIN_ANGLE = 10.0
SLANTED_LINE_MIN_MARKS = 3
# ... and the marks, the median one, reach at most SLANTED_LINE_MAX_ACROSS times their spacing along it across it.
SLANTED_LINE_MAX_ACROSS = 2.0
# A line this many degrees or more from level is upright: the refusal names no direction to turn it (turn_direction).
QUARTER_TURN_FROM = 80.0
# Writing in dots: at least DOTTED_MIN_PIECES pieces, the median one at most DOTTED_DOT_SIZE of the ink's height,
# neighbours at most DOTTED_MAX_GAP of their size apart (centre to centre); each dot is linked to its DOTTED_LINKS
# nearest no farther than DOTTED_JOIN x the typical spacing, by a line DOTTED_LINK_WIDTH of a dot wide.
DOTTED_MIN_PIECES = 5
DOTTED_DOT_SIZE = 0.2
DOTTED_FILL = 0.5
DOTTED_MAX_GAP = 4.0
DOTTED_JOIN = 2.0
DOTTED_LINKS = 2
DOTTED_LINK_WIDTH = 0.8
DOTTED_SPECK = 0.25  # of the median piece's longer side: pieces smaller than this are not counted as dots
# Dot-grid paper (paper_dots): at least PAPER_DOT_MIN_COUNT dots, each at most PAPER_DOT_SIZE of the largest piece,
# PAPER_DOT_LATTICE of them with three of their four nearest at the pitch, give or take PAPER_DOT_PITCH of it.
PAPER_DOT_MIN_COUNT = 30
PAPER_DOT_SIZE = 0.15
PAPER_DOT_LATTICE = 0.5
PAPER_DOT_PITCH = 0.25
PAPER_DOT_SAME_SIZE = 0.35  # of the grid dots' median size: the rescued beside a mark are of their size
# Small marks, as fractions of the line height. A separator is at most SEPARATOR_WIDTH wide and SEPARATOR_HEIGHT
# high (a comma's tail drawn with a broad brush), its centre in the bottom SEPARATOR_LOW of the line, with no other
# ink within SEPARATOR_CLEARANCE beside it or SEPARATOR_ABOVE above it; a comma is COMMA_ASPECT times as high as
# wide or more. A group lower than FRAGMENT_HEIGHT is a fragment: it joins the nearest group within
# FRAGMENT_REACH, or is dropped if it is smaller than FRAGMENT_SPECK of a digit group's area.
SEPARATOR_WIDTH = 0.45
SEPARATOR_HEIGHT = 0.6
SEPARATOR_LOW = 0.45
SEPARATOR_CLEARANCE = 0.06
SEPARATOR_ABOVE = 0.25
COMMA_ASPECT = 1.2
FRAGMENT_HEIGHT = 0.5
FRAGMENT_REACH = 0.4
FRAGMENT_SPECK = 0.05
# A mark whose larger side is under SPECK_SIDE of the line height is dust, not a separator (a point drawn with the
# digits' pen is a stroke wide, 0.1 of the height or more): specks on the paper were read as points, and a single
# digit with dust beside it lost Predict's answer (a reading with a separator is no single digit).
SPECK_SIDE = 0.04
# Touching digits, as fractions of the line height (widths along the writing direction). Regions at least
# SPLIT_MIN_WIDTH wide are tried with cuts (halves of a cut region: SPLIT_AGAIN_WIDTH), in at most
# MAX_SPLIT_ROUNDS rounds (three, before a review found "0000" in one stroke read "9": no piece of ink could become
# more than four digits). Cut paths start every CUT_STEP, at least SEGMENT_MIN_WIDTH inside the region, wander at
# most CUT_BAND sideways, and are searched on at most CUT_ROWS rows (taller writing is pooled). A path pays 1 per
# stroke it enters, CUT_INK_PIXEL_COST per stroke width it runs through ink and CUT_STEP_COST per stroke width it
# moves sideways; one costing more than MAX_CUT_INK is no cut. Each side keeps at least MIN_HALF_HEIGHT of the
# line's height and MIN_HALF_MASS of the ink; at most MAX_CUT_CANDIDATES cuts per region, the cheapest first.
SPLIT_MIN_WIDTH = 0.9
SPLIT_AGAIN_WIDTH = 0.9
MAX_SPLIT_ROUNDS = MAX_DIGITS  # enough to cut one piece of ink into MAX_DIGITS digits, one a round
SEGMENT_MIN_WIDTH = 0.15
CUT_STEP = 0.05
CUT_BAND = 0.2
CUT_ROWS = 160
# States of the cut search (rows x starts x band) whose arrival costs are gathered at once: 768 KiB of float32.
CUT_ROWS_AT_ONCE = 1 << 16
CUT_STEP_COST = 0.02
CUT_INK_PIXEL_COST = 0.1
MAX_CUT_INK = 2.0
MIN_HALF_HEIGHT = 0.6
MIN_HALF_MASS = 0.15
MAX_CUT_CANDIDATES = 12
# Cuts whose left sides differ by at most this share of the region's ink give halves the classifier scores alike:
# only the cheapest is tried. Chosen on 280 touching numbers of testkit/numbers.py drawn with seed 7 (not the tests'
# 0): 0.04 changed 3 readings (one had been right), 0.06 changed 7 (three had been right). On 20 photos of touching
# 8-digit numbers it made 39 % fewer digit images (777 against 1,275) and read every one as before.
CUT_SAME_INK = 0.04
# A cut is kept when its halves' log-confidences summed, less CUT_INK_COST per stroke crossed beyond the first, are
# at least SPLIT_MARGIN below the whole's log-confidence or better. Regions the classifier is SURE_CONFIDENCE of
# (log) and narrower than SURE_WIDTH are not tried. Chosen with the test model (the default network, label
# smoothing 0.1 keeps a confident digit near log 0.92 = -0.08) on numbers of testkit/numbers.py drawn with another
# seed than the tests': about 0.3 % of single digits at least SPLIT_MIN_WIDTH wide are cut, 10 % of touching
# pairs are not. A log-confidence includes the digit score (Classified.confidence), since stop 25: kept at these
# values, it read 17 more of 1,680 touching numbers of seeds 0, 1 and 7 right, and apart one more (docs/pipeline.md).
CUT_INK_COST = 1.0
SPLIT_MARGIN = -0.25
SURE_CONFIDENCE = -0.15
SURE_WIDTH = 1.1
# A cut with a half whose digit score is under this is no cut between two digits, however it scores: a filled dot,
# no digit whole, was cut into a sliver read as a sure 1 and a rest as unlike a digit as the whole (class digit
# score 0.06-0.09), so a row of dots read "101010101010". On 560 touching numbers of testkit/numbers.py, seed 7, the
# least digit score of a half of the 286 cuts in numbers read right was 0.12; a floor of 0.1 read as many numbers
# right as none, apart and touching, on seeds 0, 1 and 7 (0.2 read 2 fewer right on seed 7, 0.4 eleven fewer).
CUT_MIN_HALF_SCORE = 0.1
# A region narrower than NARROW_SPLIT_WIDTH line heights is as likely one wide digit as two: its cut must score at
# least as well as the whole (NARROW_SPLIT_MARGIN), not just within SPLIT_MARGIN of it. In 560 apart numbers of
# seed 7 (testkit/numbers.py, the tests' model) every cut kept was a wrong one, each through a single digit the
# classifier was unsure of (a wide 4 read "21", a 0 read "61"), three of four narrower than 1.05 line heights and
# scoring below the whole; of the 309 cuts in touching numbers read right, the narrow ones all beat their whole by
# a wide margin (two digits squeezed into one box score far below either). Widths 1.05, 1.15 and 1.3 and margins 0
# and 0.1 tried on seed 7, then checked on seeds 0 and 1 (560 numbers per layout and seed): 1.05 and 0 read 2 more
# apart and 1 more touching right on seed 7, 3 more apart and as many touching on seed 0, 1 more apart and 2 more
# touching on seed 1; no set fewer. 1.3 cost touching numbers (2 on seed 7), 0.1 one or two more. (Measured with
# the rule on the cut's two halves' extent; as written here, with this stop's other changes: docs/pipeline.md.)
NARROW_SPLIT_WIDTH = 1.05
NARROW_SPLIT_MARGIN = 0.0
# A half at least SEVERAL_DIGITS_WIDTH line heights wide is cut again in the next round: it is weighed as a
# digit of log-confidence SEVERAL_DIGITS_CONFIDENCE at worst, and the half-score floor is not asked of it. As one
# digit, two or three touching digits score like no digit at all (digit scores 0.07-0.10): every first cut of
# "0000" in one stroke left a half that failed the floor, and the four zeros were read as one "9". Widths 0.9-1.5
# and confidences -0.25 to -1 tried on 37 pictures of digits touching in long runs (a review's, seed-free): 1.1
# read 24 right against 16 (1.3: 20, 1.5: 19; the confidence changed nothing); on the tests' model and 560
# touching numbers of seeds 7, 0 and 1, 1, 4 and 6 more read right, apart ones as many (docs/pipeline.md).
SEVERAL_DIGITS_WIDTH = 1.1
SEVERAL_DIGITS_CONFIDENCE = -0.5
# ... where the region's strokes are at most SEVERAL_DIGITS_MAX_STROKE of the line's height wide: writing, where a
# bar is as thick as it is high (a rule drawn across a picture was cut into 29 "digits", a 1 x 20,000 strip too).
SEVERAL_DIGITS_MAX_STROKE = 0.35
# Neighbours at most JOIN_MAX_WIDTH line heights wide together are joined into one digit when that is JOIN_MARGIN
# (log) more sure than the two apart (join_fragments). Chosen on the numbers of seed 7 as above (560 per layout):
# widths 1.0, 1.2, 1.4 and 1.6 and margins 0, 0.1, 0.25 and 0.5 tried; 1.2 and 0.25 read 3 more numbers apart and
# 3 more touching right than no joining.
JOIN_MAX_WIDTH = 1.2
JOIN_MARGIN = 0.25


@dataclass(frozen=True)
class Digit:
    box: tuple[int, int, int, int]  # x, y, width, height of its ink at working resolution
    image: np.ndarray  # (28, 28) uint8: what the classifier saw
    probabilities: np.ndarray  # (10,) float

    @property
    def digit(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def confidence(self) -> float:
        return float(self.probabilities.max())


@dataclass(frozen=True)
class Separator:
    position: int  # digits before it: "3.14" -> 1
    mark: str  # "." or ","
    box: tuple[int, int, int, int]  # at working resolution


@dataclass(frozen=True)
class NumberReading:
    digits: tuple[Digit, ...]  # left to right
    separators: tuple[Separator, ...]
    work_size: tuple[int, int]  # (width, height) of the working-resolution picture the boxes refer to
    slant: float  # dx/dy of the writing, > 0 leaning right
    line_height: float  # pixels at working resolution

    @property
    def text(self) -> str:
        return "".join(str(d.digit) for d in self.digits)

    @property
    def confidence(self) -> float:
        """The probability that every digit is right: the product of the digits' confidences."""
        return float(np.prod([d.confidence for d in self.digits]))


# ---------------------------------------------------------------------------------------------------------------
# Entry point


def read_number(image: np.ndarray, classify: Classifier) -> NumberReading:
    """A decoded picture (as decode_image returns it) -> the number written in it. ImageRejected when there is
    no digit, more than one line, or more than MAX_DIGITS digits, with what to send instead."""
    work = prepare_array(image)
    pieces = pieces_in(work)
    on_sheet = read_sheet(pieces, work, classify)
    return on_sheet if on_sheet is not None else read_pieces(pieces, classify)


def read_sheet(pieces: Pieces, work: np.ndarray, classify: Classifier) -> NumberReading | None:
    """Where the largest piece is a sheet lying on a desk with the number written on it (shared.normalize.sheet_in:
    a sticky note photographed from above or at an angle, the desk taken for the paper), the number read on the
    sheet cut out of the prepared picture `work`, upright and square (shared.normalize.sheet_picture), its boxes in
    `work`'s pixels (the box holding each, on a turned or squared sheet); None where it is no sheet, where writing
    lies outside it (a number ending in a bold square 0: the block is a digit of it, found by a review), or where
    no number is read on it (a filled rectangle drawn on a canvas)."""
    label = int(pieces.kept[0])
    x, y, w, h = (int(v) for v in pieces.stats[label, :4])
    others = pieces.stats[pieces.kept[1:], :4]
    if (
        (others[:, 0] < x)
        | (others[:, 1] < y)
        | (others[:, 0] + others[:, 2] > x + w)
        | (others[:, 1] + others[:, 3] > y + h)
    ).any():
        return None  # writing beside the block: the number is on the page, and the block is part of it (a bold 0)
    sheet = sheet_in(pieces.labels[y : y + h, x : x + w] == label, pieces.ink.shape)
    if sheet is None:
        return None
    on_sheet = sheet_picture(work, sheet, x, y)
    if on_sheet is None:
        return None
    cut, to_work = on_sheet
    try:
        inner = read_pieces(pieces_in(cut), classify)
    except ImageRejected:
        return None
    size = (pieces.ink.shape[1], pieces.ink.shape[0])
    return replace(
        inner,
        digits=tuple(replace(d, box=box_through(to_work, d.box, size)) for d in inner.digits),
        separators=tuple(replace(s, box=box_through(to_work, s.box, size)) for s in inner.separators),
        work_size=size,
    )


def read_pieces(pieces: Pieces, classify: Classifier) -> NumberReading:
    """The number written in a picture's pieces of ink (find_pieces): read_number's steps 2-7."""
    ink = pieces.ink
    slant = estimate_slant(pieces)
    groups = group_pieces(pieces, slant)
    # Far too many groups of a digit's height: refused before the steps that weigh every pair of them (512 bars
    # took 1.4 s to refuse). Joining small marks never makes fewer of them, so no number that could be read is.
    height = line_height(groups)
    if (tall := sum(g.height >= FRAGMENT_HEIGHT * height for g in groups)) > 4 * MAX_REGIONS:
        raise too_many_digits(tall)
    check_one_line(pieces, groups, height)  # before small marks are joined to digits (across lines, maybe)
    # Never empty: the tallest group is no small mark (line_height is at most its height).
    groups, separators = sort_out_small_marks(pieces, groups, height)
    # The line height again, now that the pieces of each digit are together (a dotted digit was dots before).
    height = line_height(groups)
    check_one_line(pieces, groups, height)
    if len(groups) > MAX_REGIONS:
        raise too_many_digits(len(groups))
    digits = segment_and_classify(pieces, groups, height, slant, classify)
    if len(digits) > MAX_DIGITS:  # counted after the joins: 12 digits, one in two strokes, are 12
        raise too_many_digits(len(digits))
    # A separator's position: the digits before it along the writing direction.
    along = [along_line(d.box, slant) for d in digits]
    positioned = tuple(Separator(sum(a < along_line(s.box, slant) for a in along), s.mark, s.box) for s in separators)
    return NumberReading(tuple(digits), positioned, (ink.shape[1], ink.shape[0]), slant, height)


def along_line(box: tuple[int, int, int, int], slant: float) -> float:
    """Where a box's centre lies along the writing direction (its deslanted x)."""
    x, y, w, h = box
    return x + w / 2 + slant * (y + h / 2)


def too_many_digits(count: int) -> ImageRejected:
    return ImageRejected(
        f"found {count} digits, more than the {MAX_DIGITS} one number may have here. Send a picture "
        f"of one number of 1 to {MAX_DIGITS} digits on one line (crop away other writing)"
    )


# ---------------------------------------------------------------------------------------------------------------
# 1. Pieces of ink


@dataclass
class Pieces:
    """The ink's connected components, with what the later steps need of each (index = OpenCV label)."""

    ink: np.ndarray  # (H, W) uint8 contrast to the paper
    labels: np.ndarray  # (H, W) component label per pixel, 0 = paper
    stats: np.ndarray  # (n, 5) x, y, w, h, area per label (label 0 = paper)
    kept: np.ndarray  # labels of the pieces kept (not specks), largest first
    noise: float
    threshold: float
    ruling: np.ndarray | None = None  # (H, W) bool: the paper's lines taken out of the ink, if any


def pieces_in(work: np.ndarray) -> Pieces:
    """The pieces of ink (find_pieces) of a prepared picture (H, W[, 3]) uint8: its paper, then the ink's contrast."""
    return find_pieces(*strongest_and_weakest(channel_contrast(work, estimate_background(work))))


def find_pieces(ink: np.ndarray, weakest: np.ndarray | None = None) -> Pieces:
    """Threshold the ink as for one digit, take out the lines of ruled or squared paper as for one digit
    (`weakest` as for shared.normalize.find_ink), and keep the components that are not specks; ImageRejected if
    none. Writing in dots is joined into strokes first (join_dots)."""
    noise = noise_level(ink)
    threshold = ink_threshold(ink, noise)
    # A number's digits are smaller in the picture than a digit sent alone: any piece more than a speck is enough.
    marks = (ink >= threshold).astype(np.uint8)
    strong, ruling = without_ruling(ink, marks, weakest, "the number", 0.0)
    if ruling is not None:  # a box drawn round the number, taken for rules, is taken out whole first (as find_ink)
        unboxed = without_boxes(marks)
        if unboxed is not None:
            strong, ruling = without_ruling(ink, unboxed, weakest, "the number", 0.0)
    labels, stats = connected_components(strong)
    # A box or ring drawn round the number (a form's field, an amount circled) is no digit, as round one digit.
    kept = not_specks(stats)
    kept = kept[~frame_components(labels, stats)[kept]]
    if len(kept) == 0:
        if len(stats) > 1:  # ink there is, in marks of a pixel or two: not a blank page
            raise only_specks(int(stats[1:, 2:4].max()))
        raise_blank(ink, threshold, noise, found="digit", what="a number")
    # Dot-grid paper: its dots are the paper, as a ruled sheet's lines are (linked as writing in dots, they made one
    # mesh of the page and the number in it).
    grid = paper_dots(stats[kept]) if ruling is None else None
    if grid is not None:
        kept = kept[~grid]
    # Not on ruled or squared paper: the bits its lines leave where they are too faint to be found (their crossings,
    # rows of dashes) look like writing in dots, and joined into blobs every digit near them.
    dots = writing_in_dots(stats[kept]) if ruling is None and grid is None else None
    if dots is not None:
        ink, strong = join_dots(ink, strong, dots)
        labels, stats = connected_components(strong)
        kept = not_specks(stats)
    longest = int(stats[kept, 2:4].max())
    if longest < 5:
        raise only_specks(longest)
    return Pieces(ink, labels, stats, kept, noise, threshold, ruling)


def only_specks(longest: int) -> ImageRejected:
    return ImageRejected(
        f"no digit found: the only marks are specks of at most {longest} pixels. Send a "
        "picture in which the number is clearly visible and fills a good part of the frame"
    )


def not_specks(stats: np.ndarray) -> np.ndarray:
    """Labels of the components that are not specks, largest first (at most MAX_PIECES)."""
    area = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
    area[0] = 0  # the paper
    if area.max() == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-area, kind="stable")[:MAX_PIECES]
    kept = order[area[order] >= max(SPECK_MIN_AREA, SPECK_AREA_FRACTION * area.max())]
    return kept[kept != 0]


def writing_in_dots(stats: np.ndarray) -> Dots | None:
    """If the pieces (rows x, y, w, h, area) are the dots of writing in dots, those dots (Dots: their spacing is
    the typical distance between neighbouring dots' centres); None for ordinary writing.

    Dots: at least DOTTED_MIN_PIECES pieces, most of them round and small (the median piece's longer side at
    most DOTTED_DOT_SIZE of the ink's height), each with a neighbour within a few of its own sizes.
    """
    if len(stats) < DOTTED_MIN_PIECES:
        return None
    # Specks far smaller than the typical piece are dust, not dots (dots of writing are of a size): six specks
    # beside seven digits made thirteen "dots" of a digit's size, and the closing joined the digits into one blob.
    stats = stats[dots_of_a_size(stats)]
    if len(stats) < DOTTED_MIN_PIECES:
        return None
    sides = stats[:, 2:4].max(axis=1).astype(np.float64)
    extent = float((stats[:, 1] + stats[:, 3]).max() - stats[:, 1].min())
    # Dots are solid: digits down a steep line (a number photographed turned) are as small beside its height, but
    # strokes, filling a third of their boxes or less.
    fill = stats[:, 4] / (stats[:, 2] * stats[:, 3])
    if np.median(sides) > DOTTED_DOT_SIZE * extent or np.median(fill) < DOTTED_FILL:
        return None
    dots = Dots.of(stats)
    return None if dots.spacing > DOTTED_MAX_GAP * np.median(sides) else dots


def paper_dots(stats: np.ndarray) -> np.ndarray | None:
    """If some of the pieces (rows x, y, w, h, area) are the dots of dot-grid paper, which of them: (n,) bool;
    None otherwise.

    A grid's dots are pieces of one size (within a factor of two of their median), each at most PAPER_DOT_SIZE of
    the largest piece's longer side (there is writing beside them: writing in dots alone is all dots), that lie
    on a lattice: PAPER_DOT_LATTICE of them or more have at least three of their four nearest such pieces at the
    grid's pitch (PAPER_DOT_PITCH of the median nearest distance). Dots along a stroke have two at most, so a
    number written in dots, even beside a solid mark, is no grid. Of a grid, the pieces dropped are those on the
    lattice, so a decimal point or a stroke's fragment off it stays.
    """
    sides = stats[:, 2:4].max(axis=1).astype(np.float64)
    small = sides <= PAPER_DOT_SIZE * sides.max()
    if small.sum() < PAPER_DOT_MIN_COUNT or small.all():
        return None
    median = float(np.median(sides[small]))
    dots = np.flatnonzero(small & (sides >= median / 2) & (sides <= 2 * median))
    if len(dots) < PAPER_DOT_MIN_COUNT:
        return None
    centres = stats[dots, :2] + stats[dots, 2:4] / 2.0  # (n, 2) x, y
    index, nearest = nearest_neighbours(centres, 4)  # (n, 4) each, nearest first
    pitch = float(np.median(nearest[:, 0]))
    tolerance = PAPER_DOT_PITCH * pitch
    at_pitch = np.abs(nearest - pitch) <= tolerance  # (n, 4)
    if np.mean(at_pitch.sum(axis=1) >= 3) < PAPER_DOT_LATTICE:
        return None
    # On the lattice: two neighbours or more at the pitch and none nearer. A mark off it (a decimal point in a
    # cell) has a grid dot nearer than the pitch (within half a cell's diagonal, 0.71 of it).
    on = (at_pitch.sum(axis=1) >= 2) & at_pitch[:, 0]
    # The grid dots beside such a mark (their nearest is the mark) are where a lattice dot's step puts them, and of
    # the grid's own size (a decimal point a pen's width across is larger than the grid's dots).
    lattice = np.flatnonzero(on)
    for i in np.flatnonzero(~on & (np.abs(sides[dots] - median) <= PAPER_DOT_SAME_SIZE * median)):
        if len(lattice) == 0:
            break
        j = lattice[np.argmin(np.hypot(*(centres[lattice] - centres[i]).T))]
        steps = centres[index[j][at_pitch[j]]] - centres[j]  # (m, 2): j's own steps to its lattice neighbours
        offset = centres[i] - centres[j]
        on[i] = bool((np.hypot(*(np.concatenate([steps, -steps]) - offset).T) <= tolerance).any())
    grid = np.zeros(len(stats), bool)
    grid[dots[on]] = True
    return grid


def dots_of_a_size(stats: np.ndarray) -> np.ndarray:
    """Which pieces (rows x, y, w, h, area) are not dust beside the typical one: (n,) bool."""
    sides = stats[:, 2:4].max(axis=1).astype(np.float64)
    return sides >= DOTTED_SPECK * np.median(sides)


def nearest_neighbours(centres: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each point's k nearest others among centres (n, 2): their indices and distances, (n, k) each, nearest
    first (of equally near ones, those the tree meets first; a missing neighbour, with fewer than k + 1 points:
    index -1 at distance inf). A k-d tree: every pair's distance, as before stop 60, took 90 ms for the 1,200 dots
    of a dot-grid page and 230 ms at MAX_PIECES, against 1-2 ms."""
    n = len(centres)
    index = np.full((n, k), -1, np.int64)
    distance = np.full((n, k), np.inf)
    take = min(k, n - 1)
    if take <= 0:
        return index, distance
    near, which = cKDTree(centres).query(centres, k=take + 1)  # (n, take + 1): each point itself among them
    # Drop the point itself (or, where another lies on the very same spot and came first, the farthest).
    own = which == np.arange(n)[:, None]
    drop = np.where(own.any(axis=1), own.argmax(axis=1), take)
    others = np.ones(which.shape, bool)
    others[np.arange(n), drop] = False
    index[:, :take] = which[others].reshape(n, take)  # the tree's order: nearest first
    distance[:, :take] = near[others].reshape(n, take)
    return index, distance


@dataclass(frozen=True)
class Dots:
    """Dots of writing (the pieces of a size: dots_of_a_size), each with its DOTTED_LINKS nearest."""

    centres: np.ndarray  # (n, 2) x, y of each dot's box
    index: np.ndarray  # (n, DOTTED_LINKS) its nearest dots, nearest first (nearest_neighbours)
    distance: np.ndarray  # (n, DOTTED_LINKS) how far they are, centre to centre
    spacing: float  # the typical distance to the nearest dot (given, or their median)
    size: float  # the typical dot's narrower side, in pixels

    @classmethod
    def of(cls, stats: np.ndarray, spacing: float | None = None) -> Dots:
        """The dots among pieces (rows x, y, w, h, area), dust left out."""
        dots = stats[dots_of_a_size(stats)]
        centres = dots[:, :2] + dots[:, 2:4] / 2.0
        index, distance = nearest_neighbours(centres, DOTTED_LINKS)
        typical = float(np.median(distance[:, 0])) if spacing is None else spacing
        return cls(centres, index, distance, typical, float(np.median(dots[:, 2:4].min(axis=1))))


def join_dots(ink: np.ndarray, strong: np.ndarray, dots: Dots) -> tuple[np.ndarray, np.ndarray]:
    """Link every dot to its DOTTED_LINKS nearest dots no farther than DOTTED_JOIN x their spacing (centre to
    centre) with a line about a dot wide, so each dotted stroke becomes one piece; the links count as ink of the
    dots' typical contrast, so every later step (threshold, soft ink, stroke width) sees a solid stroke.

    Lines, not a closing: a closing wide enough to bridge the gaps filled every loop narrower than itself, and
    dotted 6s, 8s and 9s were read as blots (one dotted number in four read right)."""
    width = max(1, round(DOTTED_LINK_WIDTH * dots.size))
    linked = strong.copy()
    for i, j in zip(*np.nonzero(dots.distance <= DOTTED_JOIN * dots.spacing)):
        a, b = dots.centres[i], dots.centres[dots.index[i, j]]
        cv2.line(linked, (round(a[0]), round(a[1])), (round(b[0]), round(b[1])), 1, width, cv2.LINE_8)
    contrast = int(percentile_uint8(ink[strong > 0], 75))
    return np.maximum(ink, linked * np.uint8(contrast)), linked


# ---------------------------------------------------------------------------------------------------------------
# 2. Slant


def estimate_slant(pieces: Pieces) -> float:
    """The writing's slant dx/dy (> 0: leaning right), from the pooled second moments of the tall pieces.

    For one piece, mu11 / mu02 is the shear that makes its principal axis vertical (MNIST's own deskewing
    measure), with the sign flipped because image rows grow downwards. Pooling the moments weights each piece by
    its mass and height, so a long upright stroke counts more than a round loop.
    """
    stats = pieces.stats[pieces.kept]
    tall = pieces.kept[stats[:, 3] >= SLANT_PIECE_HEIGHT * stats[:, 3].max()][:32]
    mu11 = mu02 = 0.0
    for label in tall:
        x, y, w, h, _ = pieces.stats[label]
        m = cv2.moments((pieces.labels[y : y + h, x : x + w] == label).astype(np.uint8), binaryImage=True)
        mu11 += m["mu11"]
        mu02 += m["mu02"]
    if mu02 <= 0:
        return 0.0
    return float(np.clip(-mu11 / mu02, -MAX_SLANT, MAX_SLANT))


def deslanted_extent(pieces: Pieces, label: int, slant: float) -> tuple[float, float]:
    """[min, max + 1) of the deslanted x' = x + slant * y over a piece's pixels (from each row's first and last
    pixel). The shear x' straightens writing that leans by `slant`: along a stroke leaning that way, x' is
    constant."""
    x, y, w, h, _ = pieces.stats[label]
    mask = pieces.labels[y : y + h, x : x + w] == label
    rows = np.nonzero(mask.any(axis=1))[0]
    first = np.argmax(mask[rows], axis=1)
    last = w - 1 - np.argmax(mask[rows, ::-1], axis=1)
    shift = slant * (y + rows)
    return float(np.min(x + first + shift)), float(np.max(x + last + shift) + 1)


# ---------------------------------------------------------------------------------------------------------------
# 3. Groups: the pieces of one digit


@dataclass
class Group:
    labels: list[int]  # component labels
    x0: float  # deslanted extent [x0, x1)
    x1: float
    top: int  # vertical extent [top, bottom) in pixels
    bottom: int
    area: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    def absorb(self, other: Group) -> None:
        self.labels += other.labels
        self.x0, self.x1 = min(self.x0, other.x0), max(self.x1, other.x1)
        self.top, self.bottom = min(self.top, other.top), max(self.bottom, other.bottom)
        self.area += other.area


def group_pieces(pieces: Pieces, slant: float) -> list[Group]:
    """Union the pieces that overlap along the writing direction (and are not a line apart), left to right."""
    groups = []
    for label in pieces.kept:
        _x, y, _w, h, area = (int(v) for v in pieces.stats[label])
        x0, x1 = deslanted_extent(pieces, int(label), slant)
        groups.append(Group([int(label)], x0, x1, y, y + h, area))
    changed = True
    work = 0  # groups visited and pairs weighed, over every pass
    while changed:  # until no two groups overlap: merging can create new overlaps
        changed = False
        groups.sort(key=lambda g: g.x0)
        merged: list[Group] = []
        # The merged groups that may still overlap one to come, in merged order. One that ends where this group
        # starts never will: those to come start further right, and it grows only by absorbing one it overlaps.
        # Without this, a picture of a thousand dots took seconds (every group against every other).
        reach: list[Group] = []
        for group in groups:
            reach = [other for other in reach if other.x1 > group.x0]
            work += 1 + len(reach)
            if work > GROUP_MAX_WORK:
                raise ImageRejected(
                    f"no number found: {len(pieces.kept)} marks lie over and beside one another as no line of writing "
                    "does (hatching, a grid, stacked lines). Send a picture of one line of digits on plain paper"
                )
            for other in reach:
                overlap = min(group.x1, other.x1) - max(group.x0, other.x0)
                vertical_gap = max(group.top, other.top) - min(group.bottom, other.bottom)
                taller = max(group.height, other.height)
                stacked = max(group.bottom, other.bottom) - min(group.top, other.top) > GROUP_MAX_HEIGHT * taller
                if (
                    overlap >= GROUP_OVERLAP * min(group.width, other.width)
                    and vertical_gap <= GROUP_MAX_VERTICAL_GAP * taller
                    and (not stacked or pen_skip_apart(pieces, group, other))
                ):
                    other.absorb(group)
                    changed = True
                    break
            else:
                merged.append(group)
                reach.append(group)
        groups = merged
    return sorted(groups, key=lambda g: g.x0)


def pen_skip_apart(pieces: Pieces, a: Group, b: Group) -> bool:
    """Whether two groups' ink comes within GROUP_PEN_SKIP of their stroke width of each other: the gap a skipping
    pen leaves in one digit, not the space between two lines of writing."""
    boxes = pieces.stats[a.labels + b.labels, :4]
    x0, y0 = boxes[:, :2].min(axis=0)
    x1, y1 = (boxes[:, :2] + boxes[:, 2:4]).max(axis=0)
    window = pieces.labels[y0:y1, x0:x1]
    ink_a, ink_b = np.isin(window, a.labels), np.isin(window, b.labels)
    reach = GROUP_PEN_SKIP * max(stroke_width(ink_a), stroke_width(ink_b))
    # Every pixel's distance to a's ink (a's own pixels at 0), read where b's ink is.
    to_a = cv2.distanceTransform((~ink_a).astype(np.uint8), cv2.DIST_L2, 3)
    return float(to_a[ink_b].min()) <= reach


# ---------------------------------------------------------------------------------------------------------------
# 4. One line


def line_height(groups: list[Group]) -> float:
    tallest = max(g.height for g in groups)
    return float(np.median([g.height for g in groups if g.height >= TALL_GROUP * tallest]))


def check_one_line(pieces: Pieces, groups: list[Group], height: float) -> None:
    """Tall groups must form one chain of vertical overlaps; otherwise the picture holds several lines. Where
    their centres lie on one straight line at a slant (slanted_line), the picture is of one number written (or
    photographed) at an angle, and the refusal says to turn it."""
    tall = [g for g in groups if g.height >= TALL_GROUP * height]
    parent = list(range(len(tall)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def chains() -> list[list[Group]]:
        found: dict[int, list[Group]] = {}
        for i, group in enumerate(tall):
            found.setdefault(root(i), []).append(group)
        return list(found.values())

    tall.sort(key=lambda g: g.top)  # the chains do not depend on the order; sorted, a group meets only the
    for i, a in enumerate(tall):  # groups that start above its bottom (a thousand dots took a second before)
        for j in range(i + 1, len(tall)):
            b = tall[j]
            if b.top >= a.bottom:
                break
            overlap = min(a.bottom, b.bottom) - max(a.top, b.top)
            if overlap >= LINE_OVERLAP * min(a.height, b.height):
                parent[root(i)] = root(j)
    level = chains()
    lines = len(level)
    if lines == 1 or in_steps(level):
        return
    slanted = slanted_line(pieces, tall)
    if slanted is not None and slanted[1] >= SLANTED_LINE_MIN_MARKS:
        angle = slanted[0]
        raise ImageRejected(
            f"the number is written at about {abs(angle):.0f} degrees from level: its digits lie on one slanted "
            "line across the picture, and only a number written level (left to right) is read. Turn the picture by "
            f"about {abs(angle):.0f} degrees {turn_direction(angle)} so that the number is horizontal, and send it "
            "again"
        )
    # No number on a slant: "lines" whose ink comes within a pen's skip of each other are one digit a skipping pen
    # broke (a 7's stem under its bar, a 0 in two arcs), which lines of writing, further apart, never are. Asked
    # only here: digits of a steep number come as near each other, and are told to turn the picture above.
    reach = GROUP_MAX_VERTICAL_GAP * height
    for i, a in enumerate(tall):
        for j in range(i + 1, len(tall)):
            b = tall[j]
            if b.top >= a.bottom + reach:
                break
            if root(i) != root(j) and max(a.x0, b.x0) - min(a.x1, b.x1) <= reach and pen_skip_apart(pieces, a, b):
                parent[root(i)] = root(j)
    if len(chains()) == 1:
        return
    raise ImageRejected(
        f"the picture holds {lines} lines of writing; one number on one line is read. Send a "
        "picture of one number (crop to it)"
        + (
            "; if it is one number written sideways or at a steep angle, turn the picture so that it reads level"
            if slanted is not None
            else ""
        )
    )


def in_steps(chains: list[list[Group]]) -> bool:
    """Whether chains of tall groups (check_one_line's, each level within itself) are one line written in steps:
    side by side along the line, each beside the next at a height that overlaps it, and a chain of two digits or
    more level (within SLANTED_LINE_MIN_ANGLE). Cents raised above a price ("12" then a small "50" at its top) were
    refused as a number "written at about 21 degrees" to turn; lines one above another overlap along the line, and
    a steep number's digits stand alone, each its own chain, or chain along its slope, not level."""
    chains = sorted(chains, key=lambda chain: min(g.x0 for g in chain))
    for a, b in itertools.pairwise(chains):
        if max(g.x1 for g in a) > min(g.x0 for g in b):
            return False
        top, bottom = max(min(g.top for g in c) for c in (a, b)), min(max(g.bottom for g in c) for c in (a, b))
        if top >= bottom:
            return False
    level = False
    for chain in chains:
        if len(chain) < 2:
            continue
        x = np.array([(g.x0 + g.x1) / 2 for g in chain])
        y = np.array([(g.top + g.bottom) / 2 for g in chain])
        rise = float(np.polyfit(x, y, 1)[0]) if np.ptp(x) > 0 else np.inf
        if abs(rise) > np.tan(np.radians(SLANTED_LINE_MIN_ANGLE)):
            return False
        level = True
    return level


def turn_direction(angle: float) -> str:
    """Which way to turn a picture whose number lies on a line `angle` degrees from level (slanted_line: > 0 rising
    to the right) to make it level: against its rise. Upright, either quarter turn makes the line level, and only
    the digits can say which stands them upright."""
    if abs(angle) >= QUARTER_TURN_FROM:
        return "(a quarter turn: clockwise or counter-clockwise, whichever stands the digits upright)"
    return "clockwise" if angle > 0 else "counter-clockwise"


def slanted_line(pieces: Pieces, tall: list[Group]) -> tuple[float, int] | None:
    """(angle, marks): the angle in degrees (> 0 rising to the right, in (-90, 90]) of the one straight line that the
    large pieces of the `tall` groups lie on, and how many they are; None where they lie on no line at least
    SLANTED_LINE_MIN_ANGLE from level. Large: at least TALL_GROUP of the largest on their longer side (a digit, not
    a 5's flag). On one line: their centres within SLANTED_LINE_SPREAD of their median longer side of it. Pieces,
    not groups, and in the picture's own pixels: digits side by side on a steep line overlap along the (level)
    writing direction and are grouped in twos and threes, and a deslanted extent assumes the line is level."""
    labels = [label for group in tall for label in group.labels]
    boxes = pieces.stats[labels, :4].astype(np.float64)
    sides = boxes[:, 2:4].max(axis=1)
    large = sides >= TALL_GROUP * sides.max()
    boxes, sides = boxes[large], sides[large]
    if len(boxes) < 2:
        return None
    centres = boxes[:, :2] + boxes[:, 2:4] / 2
    centres -= centres.mean(axis=0)
    _, _, axes = np.linalg.svd(centres, full_matrices=False)  # axes[0]: the direction the centres spread most
    if np.abs(centres @ axes[1]).max() > SLANTED_LINE_SPREAD * float(np.median(sides)):
        return None
    # Digits on a line are about as wide across it as they are apart along it (numbers of testkit/numbers.py turned
    # a quarter: 0.7-1.5 times); lines stacked one above the other, each one long mark (rules, a long scribble),
    # have their centres on an upright line too, but reach far across it: several lines, not one number turned.
    across = np.abs(boxes[:, 2] * axes[1][0]) + np.abs(boxes[:, 3] * axes[1][1])
    spacing = float(np.median(np.diff(np.sort(centres @ axes[0]))))
    if float(np.median(across)) > SLANTED_LINE_MAX_ACROSS * spacing:
        return None
    dx, dy = axes[0]
    angle = float(np.degrees(np.arctan2(-dy, dx)))  # rows grow downwards: rising to the right is dy < 0
    angle = angle - 180.0 if angle > 90.0 else angle + 180.0 if angle <= -90.0 else angle
    return (angle, len(boxes)) if abs(angle) >= SLANTED_LINE_MIN_ANGLE else None


# ---------------------------------------------------------------------------------------------------------------
# 5. Small marks: separators, fragments, specks


def sort_out_small_marks(pieces: Pieces, groups: list[Group], height: float) -> tuple[list[Group], list[Separator]]:
    """Split the groups into digit groups and separators. Fragments (groups lower than FRAGMENT_HEIGHT x the
    line) join a neighbour within FRAGMENT_REACH, the one they overlap along the line or else the nearest, pair
    by pair, so a 5's flag finds its 5 and the pieces of a digit broken into several small ones find each other;
    what stays alone is a digit if it has some mass (a small digit written on its own), else a speck."""
    separators = []
    rest = []
    # Once, not per mark: a field of 2,000 dots rebuilt this list for each (0.3 s of 0.4 s before its refusal).
    tall = [g for g in groups if g.height >= FRAGMENT_HEIGHT * height]
    marks = [g for g in groups if g.height < FRAGMENT_HEIGHT * height and is_separator(pieces, g, tall, height)]
    # Two points or commas with no digit between them are none: small digits beside a big one ("2026" with its 2
    # twice the others' size was read "2,,,": the line's height is the big one's, and the small ones looked like
    # marks beside it). Left with the other small groups, they are read as the small digits they are.
    between = [sum((g.x0 + g.x1) / 2 < (m.x0 + m.x1) / 2 for g in tall) for m in marks]
    alone = {id(m) for m, k in zip(marks, between) if between.count(k) == 1}
    for group in groups:
        if id(group) in alone:
            box = picture_box(pieces, group)
            separators.append(Separator(0, separator_mark(box), box))
        else:
            rest.append(group)
    fragments = sum(g.height < FRAGMENT_HEIGHT * height for g in rest)
    if fragments > MAX_FRAGMENTS:
        raise ImageRejected(
            f"no number found: {fragments} small marks (dots, specks, pieces of strokes) around the writing, more "
            f"than the {MAX_FRAGMENTS} a number's broken strokes make. Send a picture of one line of digits on "
            "plain paper, without a dotted or speckled background"
        )
    while (pair := nearest_fragment_pair(rest, height)) is not None:
        i, j = pair
        rest[j].absorb(rest[i])
        del rest[i]
    tall = [g for g in rest if g.height >= FRAGMENT_HEIGHT * height]
    typical_area = float(np.median([g.area for g in tall])) if tall else 0.0
    # A small mark left alone is a digit (a small one written on its own) only if it has some mass and lies in the
    # line, beside its digits: a mark above or below them all (a speck, a tick, a stray dot) was read as a digit, or
    # joined to the digit under it by join_fragments, its box then twice the line's height.
    digits = [
        g
        for g in rest
        if g.height >= FRAGMENT_HEIGHT * height or (g.area >= FRAGMENT_SPECK * typical_area and in_line(g, tall))
    ]
    return sorted(digits, key=lambda g: g.x0), separators


def nearest_fragment_pair(groups: list[Group], height: float) -> tuple[int, int] | None:
    """(i, j): the fragment groups[i] (lower than FRAGMENT_HEIGHT x the line) and the group within FRAGMENT_REACH it
    joins next, or None. Nearest first, but what overlaps a fragment along the line comes before what is merely
    near: a 5's flag reaching over towards the next digit still belongs to the 5 below it. Ties go to the lowest i,
    then the lowest j. All pairs at once in arrays: one join at a time over pairs in Python took minutes on a
    picture of a few hundred marks."""
    fragments = np.array([i for i, g in enumerate(groups) if g.height < FRAGMENT_HEIGHT * height], np.int64)
    if len(fragments) == 0:
        return None
    x0, x1 = np.array([g.x0 for g in groups], np.float64), np.array([g.x1 for g in groups], np.float64)
    top, bottom = np.array([g.top for g in groups], np.int64), np.array([g.bottom for g in groups], np.int64)
    f = fragments[:, None]  # (fragments, 1) against every group (groups,)
    dx = np.maximum(0.0, np.maximum(x0[f], x0) - np.minimum(x1[f], x1))
    dy = np.maximum(0.0, np.maximum(top[f], top) - np.minimum(bottom[f], bottom))
    distance = np.hypot(dx, dy)
    overlap = np.maximum(0.0, np.minimum(x1[f], x1) - np.maximum(x0[f], x0))
    reachable = (distance <= FRAGMENT_REACH * height) & (f != np.arange(len(groups)))
    key = np.where(reachable, distance - overlap, np.inf)  # (fragments, groups)
    best = int(np.argmin(key))  # row-major: the first of equal keys is the lowest i, then the lowest j
    row, j = divmod(best, len(groups))
    return (int(fragments[row]), j) if np.isfinite(key[row, j]) else None


def is_separator(pieces: Pieces, mark: Group, tall: list[Group], height: float) -> bool:
    """Small, low in the line (of the digit groups `tall`, at least FRAGMENT_HEIGHT of it), with no other ink
    beside it (within SEPARATOR_CLEARANCE) or above it (within SEPARATOR_ABOVE): a point or comma stands apart,
    where a piece of a digit is near the rest of it."""
    if mark.width > SEPARATOR_WIDTH * height or mark.height > SEPARATOR_HEIGHT * height:
        return False
    if max(mark.width, mark.height) < SPECK_SIDE * height:
        return False
    if not tall:
        return False
    top, bottom = line_band(mark, tall)
    if (mark.top + mark.bottom) / 2 < bottom - SEPARATOR_LOW * (bottom - top):
        return False
    x, y, w, h = picture_box(pieces, mark)
    side, above = int(np.ceil(SEPARATOR_CLEARANCE * height)), int(np.ceil(SEPARATOR_ABOVE * height))
    window = pieces.labels[max(0, y - above) : y + h + side, max(0, x - side) : x + w + side]
    others = np.zeros(len(pieces.stats), bool)
    others[pieces.kept] = True
    others[mark.labels] = False
    return not others[window].any()


def line_band(mark: Group, tall: list[Group]) -> tuple[float, float]:
    """(top, bottom): the line's band where a small mark is, from the two digits (`tall`, not empty) nearest to it
    along the line; rows, as Group.top and bottom."""
    nearest = sorted(tall, key=lambda g: abs((g.x0 + g.x1) / 2 - (mark.x0 + mark.x1) / 2))[:2]
    return float(np.mean([g.top for g in nearest])), float(np.mean([g.bottom for g in nearest]))


def in_line(mark: Group, tall: list[Group]) -> bool:
    """Whether a small mark overlaps the line's band (line_band) vertically; not, with no digit (`tall`)."""
    if not tall:
        return False
    top, bottom = line_band(mark, tall)
    return mark.bottom > top and mark.top < bottom


def separator_mark(box: tuple[int, int, int, int]) -> str:
    """A comma is taller than wide (its tail); a point is round. By its box in the picture (x, y, w, h), not its
    deslanted width: a comma's tail runs down to the left, and the slant of writing that leans left taken out, it
    was as wide as tall (a point)."""
    return "," if box[3] > COMMA_ASPECT * box[2] else "."


def picture_box(pieces: Pieces, group: Group) -> tuple[int, int, int, int]:
    """A group's box (x, y, w, h) in the picture."""
    stats = pieces.stats[group.labels]
    x0, y0 = int(stats[:, 0].min()), int(stats[:, 1].min())
    return x0, y0, int((stats[:, 0] + stats[:, 2]).max()) - x0, int((stats[:, 1] + stats[:, 3]).max()) - y0


# ---------------------------------------------------------------------------------------------------------------
# 6. Digits: each group whole, or cut where neighbours touch


@dataclass
class Region:
    """Some of the ink: a mask over a window of the picture, and what the classifier sees of it."""

    x: int  # window origin in the picture (working resolution)
    y: int
    mask: np.ndarray  # (h, w) bool, cropped to the ink
    image: np.ndarray  # (28, 28) uint8
    width: float  # along the writing direction (deslanted)
    start: float  # where its ink begins along the writing direction (deslanted x in the picture)

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.mask.shape[1], self.mask.shape[0]


@dataclass
class Cut:
    left: Region
    right: Region
    ink: float  # stroke widths of ink the cut goes through


def segment_and_classify(
    pieces: Pieces, groups: list[Group], height: float, slant: float, classify: Classifier
) -> list[Digit]:
    """Classify every group whole (one batch); then cut the wide ones at their candidate cuts, all halves in one
    more batch, and keep a cut where its halves look like digits (choose_cut). A half still wide enough for two
    digits is tried again, in a further round. A region the classifier is sure of (SURE_CONFIDENCE) and that is
    not wider than one digit can be (SURE_WIDTH) is not tried: that saves the cuts' cost on most digits. Last,
    neighbours that are pieces of one digit are joined (join_fragments)."""
    regions = [region_of(pieces, group_mask(pieces, group), slant) for group in groups]
    classified = classify_in_chunks(classify, [r.image for r in regions])
    probabilities = np.asarray(classified.probabilities, np.float64)  # (N, 10)
    confidence = classified.confidence()  # (N,)
    done: list[tuple[Region, np.ndarray, float]] = []  # final digits, any order: probabilities, log-confidence
    for rounds in range(1, MAX_SPLIT_ROUNDS + 1):
        wide = (SPLIT_MIN_WIDTH if rounds == 1 else SPLIT_AGAIN_WIDTH) * height
        last = rounds == MAX_SPLIT_ROUNDS  # the regions are digits as they are: no cut is looked for
        cuts: list[list[Cut]] = []
        for r, c in zip(regions, confidence):
            if not last and r.width >= wide and (c < SURE_CONFIDENCE or r.width >= SURE_WIDTH * height):
                still_wanted()  # before each region's cuts: the costliest step of a long reading
                cuts.append(cut_candidates(pieces, r, slant, height, keepable_ink(c)))
            else:
                cuts.append([])
        halves = [h.image for candidates in cuts for c in candidates for h in (c.left, c.right)]
        if not halves:
            done += zip(regions, probabilities, confidence)
            break
        classified_halves = classify_in_chunks(classify, halves)
        half_probabilities = np.asarray(classified_halves.probabilities, np.float64)
        half_confidence = classified_halves.confidence().reshape(-1, 2)
        half_scores = np.asarray(classified_halves.digit_scores, np.float64).reshape(-1, 2)
        next_regions, next_probabilities, next_confidence = [], [], []
        index = 0
        for region, p, c, candidates in zip(regions, probabilities, confidence, cuts):
            span = slice(index, index + len(candidates))
            margin = NARROW_SPLIT_MARGIN if region.width < NARROW_SPLIT_WIDTH * height else SPLIT_MARGIN
            several = np.array(
                [[h.width >= SEVERAL_DIGITS_WIDTH * height for h in (k.left, k.right)] for k in candidates]
            )
            if several.any() and stroke_width(region.mask) > SEVERAL_DIGITS_MAX_STROKE * height:
                several[:] = False  # a bar, not a run of digits: each half is judged as one digit
            chosen = choose_cut(candidates, half_confidence[span], c, half_scores[span], margin, several)
            if chosen is None:
                done.append((region, p, c))
            else:
                j = index + chosen
                next_regions += [candidates[chosen].left, candidates[chosen].right]
                next_probabilities += [half_probabilities[2 * j], half_probabilities[2 * j + 1]]
                next_confidence += list(half_confidence[j])
            index += len(candidates)
        if len(done) + len(next_regions) > MAX_REGIONS:
            raise too_many_digits(len(done) + len(next_regions))
        if not next_regions:
            break
        regions, probabilities, confidence = next_regions, np.stack(next_probabilities), np.array(next_confidence)
    done.sort(key=lambda item: along_line(item[0].box, slant))
    joined = join_fragments(pieces, done, height, slant, classify)
    return [Digit(region.box, region.image, p) for region, p, _ in joined]


def join_fragments(
    pieces: Pieces,
    digits: list[tuple[Region, np.ndarray, float]],
    height: float,
    slant: float,
    classify: Classifier,
) -> list[tuple[Region, np.ndarray, float]]:
    """Join neighbours that are pieces of one digit: cutting in reverse. `digits` (region, probabilities,
    log-confidence) in writing order; the same, with joined pairs as one.

    Pieces side by side are separate groups (a 4 written in two strokes that do not meet, a 5's flag beside its
    body, a cut through a wide digit): each looks like a digit poorly, the two together like one digit well.
    Neighbours at most JOIN_MAX_WIDTH line heights wide together are classified as one (one batch), and joined
    where that is at least JOIN_MARGIN more sure than the two apart (choose_cut's test the other way round, so a
    join is never a cut undone), the surest joins first, each digit in one join at most. Two digits that touch
    the ink of neither score low as one digit, so they stay two.
    """
    pairs = [
        i
        for i in range(len(digits) - 1)
        # Two digits the classifier is sure of are left apart untried: one digit would have to score near certainty
        # to gain JOIN_MARGIN on them (label smoothing keeps a confident digit near -0.08), and trying every pair
        # cost about 2 ms of a reading.
        if min(digits[i][2], digits[i + 1][2]) < SURE_CONFIDENCE
        and digits[i][2] + digits[i + 1][2] <= -JOIN_MARGIN
        and joined_width(digits[i][0], digits[i + 1][0]) <= JOIN_MAX_WIDTH * height
    ]
    if not pairs:
        return digits
    unions = [union_region(pieces, digits[i][0], digits[i + 1][0], slant) for i in pairs]
    classified = classify_in_chunks(classify, [u.image for u in unions])
    confidence = classified.confidence()
    gains = confidence - np.array([digits[i][2] + digits[i + 1][2] for i in pairs])
    joined: dict[int, tuple[Region, np.ndarray, float]] = {}  # first index of a joined pair -> the union
    taken: set[int] = set()
    for k in np.argsort(-gains, kind="stable"):
        i = pairs[k]
        if gains[k] >= JOIN_MARGIN and i not in taken and i + 1 not in taken:
            taken |= {i, i + 1}
            joined[i] = (unions[k], np.asarray(classified.probabilities[k], np.float64), float(confidence[k]))
    out, i = [], 0
    while i < len(digits):
        out.append(joined.get(i, digits[i]))
        i += 2 if i in joined else 1
    return out


def joined_width(a: Region, b: Region) -> float:
    """The width of two regions' ink together, along the writing direction."""
    return max(a.start + a.width, b.start + b.width) - min(a.start, b.start)


def union_region(pieces: Pieces, a: Region, b: Region, slant: float) -> Region:
    """One Region holding the ink of both."""
    x0, y0 = min(a.x, b.x), min(a.y, b.y)
    x1 = max(a.x + a.mask.shape[1], b.x + b.mask.shape[1])
    y1 = max(a.y + a.mask.shape[0], b.y + b.mask.shape[0])
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    for r in (a, b):
        h, w = r.mask.shape
        mask[r.y - y0 : r.y - y0 + h, r.x - x0 : r.x - x0 + w] |= r.mask
    return region_of(pieces, (x0, y0, mask), slant)


def choose_cut(
    candidates: list[Cut],
    scores: np.ndarray,
    whole: float,
    digit_scores: np.ndarray,
    margin: float = SPLIT_MARGIN,
    several: np.ndarray | None = None,
) -> int | None:
    """The index of the best cut, if it beats leaving the region whole. A cut scores the log-confidences of its two
    halves less CUT_INK_COST per stroke it crosses beyond the first; it is kept when that is at least `margin`
    above the whole's log-confidence (SPLIT_MARGIN; NARROW_SPLIT_MARGIN for a region narrower than two digits
    usually are), and both halves look like digits (digit scores CUT_MIN_HALF_SCORE or more), but for a half that
    holds several digits, to be cut again (`several`: SEVERAL_DIGITS_WIDTH).
    scores: (cuts, 2) log-confidences of the halves; digit_scores: (cuts, 2) theirs (Classified.digit_scores);
    several: (cuts, 2) bool, or None.
    """
    if not candidates:
        return None
    if several is not None:
        scores = np.where(several, np.maximum(scores, SEVERAL_DIGITS_CONFIDENCE), scores)
        digit_scores = np.where(several, 1.0, digit_scores)
    value = scores.sum(axis=1) - CUT_INK_COST * np.maximum(0.0, np.array([c.ink for c in candidates]) - 1.0)
    value = np.where(digit_scores.min(axis=1) >= CUT_MIN_HALF_SCORE, value, -np.inf)
    best = int(np.argmax(value))
    return best if value[best] - whole >= margin else None


def keepable_ink(whole: float) -> float:
    """The most ink (stroke widths) a cut may cross and still be kept by choose_cut against a region whole of
    log-confidence `whole`: its halves' log-confidences are at most 0, so its value is at most -CUT_INK_COST x
    (ink - 1), and it must reach whole + SPLIT_MARGIN. Dearer cuts cannot win, and their halves are neither made
    nor classified (a confident region is tried with the cheap cuts only); a hair of slack for rounding."""
    return min(MAX_CUT_INK, 1.0 + max(0.0, -(whole + SPLIT_MARGIN)) / CUT_INK_COST + 1e-6)


def group_mask(pieces: Pieces, group: Group) -> tuple[int, int, np.ndarray]:
    """(x, y, mask): the group's pixels in its box of the picture."""
    stats = pieces.stats[group.labels]
    x0, y0 = int(stats[:, 0].min()), int(stats[:, 1].min())
    x1, y1 = int((stats[:, 0] + stats[:, 2]).max()), int((stats[:, 1] + stats[:, 3]).max())
    lookup = np.zeros(len(pieces.stats), bool)
    lookup[group.labels] = True
    return x0, y0, lookup[pieces.labels[y0:y1, x0:x1]]


def region_of(pieces: Pieces, where: tuple[int, int, np.ndarray], slant: float) -> Region:
    """A Region for a mask at (x, y): cropped to its ink, with its digit image and deslanted width."""
    x, y, mask = where
    bx, by, w, h = cv2.boundingRect(mask.astype(np.uint8))
    # A copy, not a view: a cut's halves are kept as regions while every candidate is weighed, and a view held each
    # half's whole window alive (a zigzag across 1024 x 762: 28 of a reading's 39 MiB).
    mask = mask[by : by + h, bx : bx + w].copy()
    x, y = x + bx, y + by
    rows = np.nonzero(mask.any(axis=1))[0]
    first = np.argmax(mask[rows], axis=1)
    last = w - 1 - np.argmax(mask[rows, ::-1], axis=1)
    shift = x + slant * (y + rows)
    start = float(np.min(first + shift))
    width = float(np.max(last + shift) - start + 1)
    return Region(x, y, mask, digit_image(pieces, mask, x, y), width, start)


def cut_candidates(
    pieces: Pieces, region: Region, slant: float, height: float, max_ink: float = MAX_CUT_INK
) -> list[Cut]:
    """Ways to cut a region in two where neighbours touch: the least-ink paths from top to bottom.

    In the deslanted picture of the region, a path starts at every CUT_STEP of the line height (away from the
    ends) and runs down row by row, one column left or right at most per row and at most CUT_BAND from its
    start, through as little ink as possible (dynamic programming). A path through the point where two digits
    touch crosses only that point; one through a single digit crosses two strokes or more, or leaves a sliver
    on one side. Paths crossing more than max_ink (at most MAX_CUT_INK) stroke widths of ink, or leaving a side
    lower than MIN_HALF_HEIGHT x the line or lighter than MIN_HALF_MASS of the ink, are dropped.
    """
    sheared, origin = deslant(region, slant)  # (h, bins) bool; column c <-> x' = origin + c
    h, _bins = sheared.shape
    columns = np.nonzero(sheared.any(axis=0))[0]
    margin = int(SEGMENT_MIN_WIDTH * height)
    starts = np.arange(columns[0] + margin, columns[-1] - margin + 1, max(1, int(CUT_STEP * height)))
    if len(starts) == 0:
        return []
    stroke = stroke_width(region.mask)
    # The search runs on at most CUT_ROWS rows: big writing is pooled (any ink in a block is ink), so a cut costs
    # the same few milliseconds at any size; the path is then drawn at full size through its blocks' centres.
    factor = max(1, int(np.ceil(h / CUT_ROWS)))
    coarse = block_any(sheared, factor)
    # A path stepping diagonally could slip between two diagonal pixels of a thin stroke without touching ink:
    # each ink pixel also blocks its right neighbour.
    blocked = coarse.copy()
    blocked[:, 1:] |= coarse[:, :-1]
    coarse_paths, costs = least_ink_paths(
        blocked, np.unique(starts // factor), max(2, int(CUT_BAND * height / factor)), stroke / factor
    )
    paths = np.repeat(coarse_paths * factor + factor // 2, factor, axis=1)[:, :h]  # (n, h) full-size columns
    # Each pixel's deslanted column, to tell which side of a path (given per row) it is on.
    rows = np.arange(h)[:, None]
    # int32, not float64: the whole numbers floor gives, at half the bytes of each full-size array made from it.
    own = np.floor(np.arange(region.mask.shape[1])[None, :] + region.x + slant * (rows + region.y) - origin).astype(
        np.int32
    )
    total = int(region.mask.sum())
    out: list[Cut] = []
    # The ink left of each path tried, a bit a pixel: kept as bool masks, one a path, they were most of a reading's
    # memory (54 of 58 MiB for a zigzag across a 1024x1024 picture, 16 calls at once +0.9 GB).
    seen: list[np.ndarray] = []
    same = CUT_SAME_INK * total
    for path, cost in sorted(zip(paths, costs), key=lambda pc: pc[1]):
        if cost > max_ink:
            break
        # Paths that differ only where there is no ink cut the same way, and paths that move only a sliver of the
        # ink (at most CUT_SAME_INK of it) to the other side cut nearly the same way: the cheapest is tried.
        ink_left = np.packbits(region.mask & (own < path[:, None]))
        if any(int(np.bitwise_count(ink_left ^ other).sum()) <= same for other in seen):
            continue
        seen.append(ink_left)
        left = cut_sides(region.mask, own, path, factor // 2 + 1)
        sides = (left, region.mask & ~left)
        # Both sides are checked before either is made into a digit image (the dear part).
        if all(substantial_side(side, total, height) for side in sides):
            left_region, right_region = (region_of(pieces, (region.x, region.y, side), slant) for side in sides)
            out.append(Cut(left_region, right_region, float(cost)))
        if len(out) == MAX_CUT_CANDIDATES:
            break
    return out


def substantial_side(side: np.ndarray, total: int, height: float) -> bool:
    """Whether one side of a cut, (h, w) bool, could be a digit: at least MIN_HALF_MASS of the region's `total`
    ink, and MIN_HALF_HEIGHT of the line `height` high."""
    if side.sum() < MIN_HALF_MASS * total:
        return False
    rows = np.nonzero(side.any(axis=1))[0]
    return len(rows) > 0 and rows[-1] - rows[0] + 1 >= MIN_HALF_HEIGHT * height


def cut_sides(mask: np.ndarray, own: np.ndarray, path: np.ndarray, reach: int) -> np.ndarray:
    """The left side of a cut: (h, w) bool. The ink the path goes through is taken out, and every stroke that
    remains goes whole to the side that holds most of it, so a path that clips the end of a neighbour's stroke
    does not leave that end on the wrong side. The path's own ink goes to the side it lies on.

    mask: (h, w) bool; own: (h, w) each pixel's deslanted column; path: (h,) the path's column per row; reach:
    how many columns either side of the path are its ink (more when the path was found on pooled blocks).
    """
    left = own < path[:, None]
    on_path = mask & (np.abs(own - path[:, None]) <= reach)
    rest = mask & ~on_path
    count, labels = cv2.connectedComponents(rest.astype(np.uint8), connectivity=8)
    if count <= 2:
        return mask & left
    # Per label, over the whole window: label 0 is everything off the strokes, which `rest` leaves out below.
    votes = np.bincount(labels.ravel(), weights=(rest & left).ravel(), minlength=count)
    sizes = np.bincount(labels.ravel(), minlength=count)
    goes_left = votes * 2 > sizes  # (count,) per stroke: most of it left of the path
    return (rest & goes_left[labels]) | (on_path & left)


def deslant(region: Region, slant: float) -> tuple[np.ndarray, float]:
    """The region's mask sheared upright (nearest pixel): (h, bins) bool, and the x' of its column 0."""
    h, w = region.mask.shape
    rows = np.arange(h)[:, None]
    x_first = region.x + slant * region.y
    origin = float(np.floor(x_first + min(0.0, slant * (h - 1))))
    bins = int(np.ceil(w + abs(slant) * h)) + 2
    source = np.floor(origin + np.arange(bins)[None, :] + 0.5 - slant * (rows + region.y) - region.x).astype(int)
    inside = (source >= 0) & (source < w)
    out = np.zeros((h, bins), bool)
    out[inside] = region.mask[np.broadcast_to(rows, source.shape)[inside], source[inside]]
    return out, origin


def block_any(mask: np.ndarray, factor: int) -> np.ndarray:
    """(h, w) bool -> (ceil(h / factor), ceil(w / factor)) bool: whether each factor x factor block has ink."""
    if factor == 1:
        return mask
    h, w = mask.shape
    padded = np.pad(mask, ((0, -h % factor), (0, -w % factor)))
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor)
    return np.asarray(blocks.any(axis=(1, 3)))


def least_ink_paths(blocked: np.ndarray, starts: np.ndarray, band: int, stroke: float) -> tuple[np.ndarray, np.ndarray]:
    """For each start column, the top-to-bottom path through blocked (h, bins) bool that crosses the fewest
    strokes, moving at most one column per row and staying within `band` columns of the start.

    Entering ink costs 1 (a stroke crossed); each ink pixel along the path costs CUT_INK_PIXEL_COST / stroke, so
    a path may run down the seam where two digits touch along their sides (one entry, many pixels) but prefers a
    short crossing; a sideways step costs CUT_STEP_COST / stroke, keeping paths straight where nothing is in
    the way. Returns (paths (n, h) columns, costs (n,) in strokes crossed).
    """
    h, bins = blocked.shape
    n = len(starts)
    width = 2 * band + 1
    offsets = np.arange(-band, band + 1)
    columns = starts[:, None] + offsets[None, :]  # (n, width)
    outside = (columns < 0) | (columns >= bins)
    columns = np.clip(columns, 0, bins - 1)
    ink = blocked.astype(np.float32)  # (h, bins)
    pixel, step = CUT_INK_PIXEL_COST / stroke, CUT_STEP_COST / stroke
    # What arriving at each state costs besides the path so far, by where it came from (all rows at once):
    # entering ink from paper is a stroke crossed; a sideways step costs `step`; an outside state is a wall.
    # Computed per column of the picture, then gathered into every start's band (the bands overlap: computing
    # them band by band did the same arithmetic several times over, a third of this function's time).
    # (Padding beyond the picture's sides never counts: a state there is outside the picture, a wall.)
    padded = np.pad(ink, ((0, 0), (1, 1)))  # (h, bins + 2): ink of the previous row's neighbours
    # One column more, past the picture's right side: every state outside the picture arrives from it, a wall.
    by_column = np.empty((3, h, bins + 1), np.float32)  # from the left, from above, from the right
    by_column[:, 1:, :bins] = ink[None, 1:] * (1 + pixel)
    by_column[0, 1:, :bins] -= ink[1:] * padded[:-1, :-2]
    by_column[1, 1:, :bins] -= ink[1:] * ink[:-1]
    by_column[2, 1:, :bins] -= ink[1:] * padded[:-1, 2:]
    by_column[0, 1:, :bins] += step
    by_column[2, 1:, :bins] += step
    by_column[:, :, bins] = np.inf
    from_column = np.where(outside, bins, columns)  # (n, width)
    cost = ink[0, columns] * (1.0 + pixel) + step * np.abs(offsets)[None, :]
    cost[outside] = np.inf
    # What arriving costs is gathered into the bands a block of rows at a time, and each state keeps only the way
    # it was reached (int8): every row's costs at once, (3, h, n, width) float32 twice over, were most of a
    # reading's memory (a zigzag across a 1024 x 256 picture: 27 of its 31 MiB).
    came = np.empty((h, n, width), np.int8)  # per row and state: from the left (0), above (1) or the right (2)
    ways = np.empty((3, n, width), np.float32)
    block = max(1, CUT_ROWS_AT_ONCE // (n * width))
    for first in range(1, h, block):
        arrive = by_column[:, first : first + block][:, :, from_column]  # (3, rows, n, width)
        for r in range(first, min(first + block, h)):
            ways[0, :, 1:] = cost[:, :-1]
            ways[0, :, 0] = np.inf  # nothing left of the band
            ways[1] = cost
            ways[2, :, :-1] = cost[:, 1:]
            ways[2, :, -1] = np.inf  # nothing right of it
            ways += arrive[:, r - first]
            cost = np.minimum(np.minimum(ways[0], ways[1]), ways[2])
            # The first of equal ways, as argmin takes it: left, then above, then right.
            not_left = ways[0] != cost
            came[r] = not_left
            came[r] += not_left & (ways[1] != cost)
    end = np.argmin(cost, axis=1)
    paths = np.empty((n, h), np.int64)
    at = end
    every = np.arange(n)
    for r in range(h - 1, -1, -1):
        paths[:, r] = at
        if r:
            at = at + came[r][every, at] - 1  # came from -1, 0 or +1
    path_columns = np.take_along_axis(columns, paths, 1)  # (n, h)
    along = ink[np.arange(h)[None, :], path_columns]  # (n, h) ink on the path
    crossings = along[:, 0] + np.sum(along[:, 1:] * (1 - along[:, :-1]), axis=1)
    return path_columns, crossings + pixel * along.sum(axis=1)


def stroke_width(mask: np.ndarray) -> float:
    """2 x area / perimeter of a (h, w) bool mask, in pixels: the width of its strokes."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    perimeter = sum(cv2.arcLength(c, True) for c in contours)
    return max(1.0, 2.0 * float(mask.sum()) / max(perimeter, 1.0))


def digit_image(pieces: Pieces, strokes: np.ndarray, x: int, y: int) -> np.ndarray:
    """A digit's stroke pixels (h, w) bool at (x, y) of the ink map -> (28, 28) uint8, as to_mnist does it."""
    ink = pieces.ink
    height, width = ink.shape
    h, w = strokes.shape
    # Grow the window by one pixel for the anti-aliased fringe, as find_ink does.
    x0, y0, x1, y1 = max(x - 1, 0), max(y - 1, 0), min(x + w + 1, width), min(y + h + 1, height)
    grown = np.zeros((y1 - y0, x1 - x0), bool)
    grown[y - y0 : y - y0 + h, x - x0 : x - x0 + w] = strokes
    ruling = None if pieces.ruling is None else pieces.ruling[y0:y1, x0:x1]
    soft = soft_ink(ink[y0:y1, x0:x1], grown, pieces.noise, pieces.threshold, ruling)
    crop, _ = normalize_stroke_width(soft)
    return centre_by_mass(fit_in_box(crop))
