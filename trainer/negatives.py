"""Pictures that are not digits, made by the trainer for outlier exposure: every run draws its own.

Seven kinds, each drawn on a canvas of 64-128 pixels, dark ink on light paper, and then put through the very
pipeline users' pictures go through (shared.image_pipeline.to_mnist_array: ink found, cropped, stroke width
normalized, 20x20 box, centred by mass), so they look like what the server hands the model:

- glyphs: letters and symbols in the training fonts (matplotlib's DejaVu Sans/Serif/Mono, Computer Modern,
  STIX, and PIL's own font), leaving out the ones a person would read as a digit (O, l, I, S, Z, B, g, q, ...)
- words: two to six letters in the same fonts
- strokes: three to six random curves (quadratic Beziers) across the canvas
- shapes: squares, rectangles, triangles, polygons, stars, filled discs, crosses (never an empty ring: a zero;
  so polygons of seven or eight sides, rings at 28x28, are filled)
- doodles: hearts, spirals, zigzags, waves, grids (#), houses, suns
- sketches: blobs with marks inside (faces, fruit; marks the pipeline keeps, else the blob is a zero), lines
  with a head (arrows, pointers), long looping strokes, clouds and flowers
- crossed_out: a training digit scratched out by a zigzag or hatching

And the other side of the glyphs: typed digits (`make_typed_digits`), in the same fonts, drawn and passed
through the pipeline the same way, which train as the digits they are. Without them every typed picture the
model saw was a non-digit, and it learnt that a font's clean strokes mean "not a digit": it flagged 7 % of
users' typed digits.

The tests' negatives (testkit/not_digits.py) are made by other code, in other fonts, and of other kinds
(smileys, arrows, hand-drawn scribbles), so they measure what the model learnt, not what it memorised.
"""

from __future__ import annotations

import math
import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import cast

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from shared.image_pipeline import ImageRejected, to_mnist_array

KINDS = ("glyphs", "words", "strokes", "shapes", "doodles", "sketches", "crossed_out")

# Letters and symbols a person would not read as a digit. Left out: O o Q D (0), l I i j | ! / \\ ( ) [ ] (1),
# Z z (2), S s (5), b G (6), T (7), B ß (8), g q (9), thin marks (- _ ~ ' , .), and the digits themselves.
GLYPHS = "ACEFHJKLMNPRUVWXYacdefhkmnprtuvwxy@#$%&*?+=<>{}^§¶€£¥©®λπΣΩθψ∞≈≠√∫♪♥★"
LETTERS = "ACEFHJKLMNPRUVWXYacdefhkmnprtuvwxy"

# The training fonts, from matplotlib's font folder (present wherever the project is installed).
TRAIN_FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSansMono.ttf",
    "cmr10.ttf",
    "cmss10.ttf",
    "STIXGeneral.ttf",
)

CANVAS = (64, 128)  # side of the canvas, pixels


@lru_cache(maxsize=1)
def train_fonts() -> tuple[Path, ...]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return tuple(folder / name for name in TRAIN_FONTS if (folder / name).is_file())


@lru_cache(maxsize=64)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _text(text: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """`text` in a random training font (or PIL's own), ink 1.0 on 0.0, on a canvas about `side` wide."""
    fonts = train_fonts()
    size = int(side * rng.uniform(0.45, 0.8) / max(1, len(text)) ** 0.5)
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont
    if fonts and rng.uniform() < 0.9:
        font = _font(str(fonts[rng.integers(len(fonts))]), max(10, size))
    else:
        font = ImageFont.load_default(size=max(10, size))
    left, top, right, bottom = font.getbbox(text)
    w, h = max(1, right - left), max(1, bottom - top)
    canvas = Image.new("L", (int(w) + 16, int(h) + 16), 0)
    ImageDraw.Draw(canvas).text((8 - left, 8 - top), text, font=font, fill=255)
    return np.asarray(canvas, np.float32) / 255


def glyph(rng: np.random.Generator, side: int) -> np.ndarray:
    return _text(GLYPHS[rng.integers(len(GLYPHS))], side, rng)


def word(rng: np.random.Generator, side: int) -> np.ndarray:
    return _text("".join(rng.choice(list(LETTERS), int(rng.integers(2, 7)))), side * 2, rng)


def _pen(side: int, rng: np.random.Generator) -> int:
    return max(1, int(side * rng.uniform(0.03, 0.1)))


def _polyline(canvas: np.ndarray, points: np.ndarray, width: int, closed: bool = False) -> None:
    pts = np.round(points * 16).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(canvas, [pts], closed, 1.0, width, cv2.LINE_AA, shift=4)


def strokes(rng: np.random.Generator, side: int) -> np.ndarray:
    canvas = np.zeros((side, side), np.float32)
    width = _pen(side, rng)
    for _ in range(int(rng.integers(3, 7))):
        p0, p1, p2 = rng.uniform(0.1, 0.9, (3, 2)) * side
        t = np.linspace(0, 1, 24)[:, None]
        _polyline(canvas, (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2, width)
    return canvas


def _regular(n: int, centre: np.ndarray, radius: float, phase: float, inner: float = 1.0) -> np.ndarray:
    k = np.arange(n * (2 if inner != 1.0 else 1))
    angles = phase + k * math.pi * (1 if inner != 1.0 else 2) / n
    radii = np.where(k % 2 == 1, radius * inner, radius) if inner != 1.0 else np.full(len(k), radius)
    return centre + np.stack([np.cos(angles) * radii, np.sin(angles) * radii], axis=1)


def shape(rng: np.random.Generator, side: int) -> np.ndarray:
    canvas = np.zeros((side, side), np.float32)
    width = _pen(side, rng)
    c = np.array([side / 2, side / 2]) + rng.uniform(-0.05, 0.05, 2) * side
    r = side * rng.uniform(0.3, 0.42)
    kind = rng.integers(7)
    fill = rng.uniform() < 0.3
    sides = int(rng.integers(5, 9))
    if kind == 0:  # rectangle or square
        w, h = r * rng.uniform(0.6, 1.0), r * rng.uniform(0.6, 1.0)
        pts = c + np.array([[-w, -h], [w, -h], [w, h], [-w, h]])
    elif kind in (1, 2):  # triangle, or polygon of 5-8 sides
        pts = _regular(3 if kind == 1 else sides, c, r, rng.uniform(0, 2 * math.pi))
        # A polygon of seven or eight sides in outline is a ring at 28x28, a zero: those are filled. (A hexagon's
        # corners still show.)
        fill = fill or (kind == 2 and sides >= 7)
    elif kind == 3:  # star
        pts = _regular(int(rng.integers(5, 8)), c, r, rng.uniform(0, 2 * math.pi), inner=rng.uniform(0.35, 0.55))
    elif kind == 4:  # filled disc or ellipse (an empty ring would be a zero)
        cv2.ellipse(
            canvas,
            (int(c[0]), int(c[1])),
            (int(r), int(r * rng.uniform(0.5, 1))),
            rng.uniform(0, 180),
            0,
            360,
            1.0,
            -1,
            cv2.LINE_AA,
        )
        return canvas
    elif kind == 5:  # plus or x
        a = rng.uniform(0, math.pi / 2) if rng.uniform() < 0.5 else math.pi / 4
        for angle in (a, a + math.pi / 2):
            d = np.array([math.cos(angle), math.sin(angle)]) * r
            _polyline(canvas, np.stack([c - d, c + d]), width * 2)
        return canvas
    else:  # rectangle with its diagonals (an envelope, a crossed box)
        w, h = r, r * rng.uniform(0.6, 1.0)
        pts = c + np.array([[-w, -h], [w, -h], [w, h], [-w, h]])
        _polyline(canvas, pts[[0, 2]], width)
        _polyline(canvas, pts[[1, 3]], width)
    if fill:
        cv2.fillPoly(canvas, [np.round(pts * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
    else:
        _polyline(canvas, pts, width, closed=True)
    return canvas


def doodle(rng: np.random.Generator, side: int, sketch: bool = False) -> np.ndarray:
    """A doodle (kinds 0-6), or with `sketch` a sketch (kinds 7-10)."""
    canvas = np.zeros((side, side), np.float32)
    width = _pen(side, rng)
    c = np.array([side / 2, side / 2])
    r = side * 0.38
    kind = rng.integers(7, 11) if sketch else rng.integers(7)
    t = np.linspace(0, 1, 200)
    if kind == 0:  # heart
        a = t * 2 * math.pi
        x, y = 16 * np.sin(a) ** 3, -(13 * np.cos(a) - 5 * np.cos(2 * a) - 2 * np.cos(3 * a) - np.cos(4 * a))
        _polyline(canvas, c + np.stack([x, y], 1) * r / 17, width, closed=True)
    elif kind == 1:  # spiral
        turns = rng.uniform(2, 4)
        a = t * turns * 2 * math.pi
        _polyline(canvas, c + np.stack([np.cos(a), np.sin(a)], 1) * (t * r)[:, None], width)
    elif kind == 2:  # zigzag
        n = int(rng.integers(4, 9))
        xs = np.linspace(-r, r, n + 1)
        ys = np.where(np.arange(n + 1) % 2 == 0, -1, 1) * r * rng.uniform(0.2, 0.6)
        _polyline(canvas, c + np.stack([xs, ys], 1), width)
    elif kind == 3:  # wave
        x = (t * 2 - 1) * r
        _polyline(canvas, c + np.stack([x, np.sin(t * rng.uniform(2, 5) * 2 * math.pi) * r * 0.3], 1), width)
    elif kind == 4:  # grid: two to four lines each way
        n = int(rng.integers(2, 5))
        for v in np.linspace(-r * 0.6, r * 0.6, n):
            _polyline(canvas, c + np.array([[v, -r], [v, r]]), width)
            _polyline(canvas, c + np.array([[-r, v], [r, v]]), width)
    elif kind == 5:  # house
        pts = c + np.array([[-r, 0], [-r, r], [r, r], [r, 0], [0, -r], [-r, 0], [r, 0]]) * 0.9
        _polyline(canvas, pts, width)
    elif kind == 7:  # a closed blob (a ring, wobbly or not) with two to four marks inside: a face, a fruit, a pie
        a = t * 2 * math.pi
        wobble = 1 + sum(rng.uniform(-0.12, 0.12) * np.sin(k * a + rng.uniform(0, 6)) for k in (2, 3))
        squash = rng.uniform(0.75, 1.0)
        _polyline(canvas, c + np.stack([np.cos(a) * wobble, np.sin(a) * wobble * squash], 1) * r, width, closed=True)
        for _ in range(int(rng.integers(2, 5))):
            # Inside the ring, clear of it (its radius is at least 0.57 r: wobble and squash at their least).
            where = rng.uniform(0, 2 * math.pi)
            m = c + np.array([math.cos(where), math.sin(where) * squash]) * r * 0.35 * math.sqrt(rng.uniform())
            # Marks large enough to outlive the pipeline's speck rule (shared.normalize.KEEP_AREA_FRACTION of the
            # ring's ink): a ring whose marks were dropped as specks is a zero, not a face.
            if rng.uniform() < 0.5:  # a dot
                cv2.circle(
                    canvas, (int(m[0]), int(m[1])), max(2, int(width * rng.uniform(1.6, 2.6))), 1.0, -1, cv2.LINE_AA
                )
            else:  # a short stroke or arc
                b = rng.uniform(0, 2 * math.pi) + np.linspace(0, rng.uniform(-2, 2), 12)
                _polyline(canvas, m + np.stack([np.cos(b), np.sin(b)], 1) * r * rng.uniform(0.2, 0.4), width)
    elif kind == 8:  # a line or a bent line with a head: an arrow, a pointer
        angle = rng.uniform(0, 2 * math.pi)
        d = np.array([math.cos(angle), math.sin(angle)]) * r
        arrow = [c - d, c + d]
        if rng.uniform() < 0.4:
            arrow.insert(1, c + np.array([-d[1], d[0]]) * rng.uniform(-0.6, 0.6))
        _polyline(canvas, np.array(arrow), width)
        back = math.atan2(arrow[-2][1] - arrow[-1][1], arrow[-2][0] - arrow[-1][0])
        for side in (-1, 1):
            h = back + side * rng.uniform(0.4, 0.8)
            _polyline(canvas, np.stack([arrow[-1], arrow[-1] + np.array([math.cos(h), math.sin(h)]) * r * 0.45]), width)
    elif kind == 9:  # one long smooth stroke: a sum of sinusoids (a loop-the-loop, a signature)
        x = cast(
            np.ndarray, sum(rng.uniform(-1, 1) * np.sin(2 * math.pi * (k * t + rng.uniform())) for k in range(1, 5))
        )
        y = cast(
            np.ndarray, sum(rng.uniform(-1, 1) * np.sin(2 * math.pi * (k * t + rng.uniform())) for k in range(1, 5))
        )
        _polyline(canvas, c + np.stack([x, y], 1) / max(1e-6, np.abs(np.stack([x, y])).max()) * r, width)
    elif kind == 10:  # a cloud, a flower: bumps round a centre
        a = t * 2 * math.pi
        bumps = int(rng.integers(4, 9))
        radius = r * (0.75 + 0.25 * np.abs(np.sin(a * bumps / 2)))
        _polyline(canvas, c + np.stack([np.cos(a), np.sin(a)], 1) * radius[:, None], width, closed=True)
    else:  # sun: a disc and rays
        cv2.circle(canvas, (int(c[0]), int(c[1])), int(r * 0.4), 1.0, -1, cv2.LINE_AA)
        for a in np.linspace(0, 2 * math.pi, int(rng.integers(6, 12)), endpoint=False):
            d = np.array([math.cos(a), math.sin(a)])
            _polyline(canvas, np.stack([c + d * r * 0.6, c + d * r]), width)
    return canvas


def crossed_out(rng: np.random.Generator, side: int, digit: np.ndarray | None) -> np.ndarray:
    canvas: np.ndarray = np.zeros((side, side), np.float32)
    if digit is not None:
        canvas = cv2.resize(digit.astype(np.float32) / 255, (side, side), interpolation=cv2.INTER_CUBIC)
    width = max(_pen(side, rng), int(side * 0.06))
    lo, hi = side * 0.15, side * 0.85
    if rng.uniform() < 0.5:  # a dense zigzag across the digit
        n = int(rng.integers(5, 10))
        ys = np.linspace(lo, hi, n)
        xs = np.where(np.arange(n) % 2 == 0, lo, hi)
        _polyline(canvas, np.stack([xs, ys], 1) + rng.normal(0, side * 0.02, (n, 2)), width)
    else:  # hatching, one or two directions
        for angle in rng.uniform(0, math.pi, int(rng.integers(1, 3))):
            d = np.array([math.cos(angle), math.sin(angle)]) * side
            normal = np.array([-d[1], d[0]]) / side
            for offset in np.linspace(-0.3, 0.3, int(rng.integers(4, 8))) * side:
                mid = np.array([side / 2, side / 2]) + normal * offset
                _polyline(canvas, np.stack([mid - d * 0.35, mid + d * 0.35]), width)
    return np.clip(canvas, 0, 1)


def on_paper(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ink coverage (H, W) in [0, 1] -> a picture as the user would send it: (H, W) uint8, dark ink on light paper."""
    paper = rng.uniform(200, 255)
    pen = rng.uniform(0, 60)
    return np.clip(paper + ink * (pen - paper), 0, 255).astype(np.uint8)


def draw(kind: str, rng: np.random.Generator, digit: np.ndarray | None = None) -> np.ndarray:
    """One picture of `kind` as the user would send it: (H, W) uint8, dark ink on light paper."""
    side = int(rng.integers(*CANVAS))
    ink = {
        "glyphs": lambda: glyph(rng, side),
        "words": lambda: word(rng, side),
        "strokes": lambda: strokes(rng, side),
        "shapes": lambda: shape(rng, side),
        "doodles": lambda: doodle(rng, side),
        "sketches": lambda: doodle(rng, side, sketch=True),
        "crossed_out": lambda: crossed_out(rng, side, digit),
    }[kind]()
    return on_paper(ink, rng)


@dataclass(frozen=True)
class Negatives:
    """Pictures that are not digits, as the model sees them: images (N, 28, 28) uint8, kinds (N,) int64 (an index
    into KINDS)."""

    images: np.ndarray
    kinds: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


# Drawing is cheap (~0.4 ms a picture) and stays in this process, in turn order, so the random draws are the
# seed's; the pipeline (~2 ms, no randomness) can run in other processes (`pipeline_pool`), CHUNK pictures a
# task, while the next ones are drawn. At most IN_FLIGHT pictures wait for the pipeline, so a large pool never
# holds all its canvases (up to 16 KB each) at once. PARALLEL_MIN: for fewer pictures than this, starting
# processes (a second or more each: they import the main module) costs more than it saves.
CHUNK = 64
IN_FLIGHT = 1024
PARALLEL_MIN = 2000


def pipeline_pool(workers: int, pictures: int) -> AbstractContextManager[Executor | None]:
    """Processes for draw_until's pipeline work: `workers` of them when there are `pictures` enough to gain from
    them, else none (the work runs in this process). Use it as a context manager around the draws."""
    if workers <= 1 or pictures < PARALLEL_MIN:
        return nullcontext(None)
    return _ended_on_interrupt(workers)


@contextmanager
def _ended_on_interrupt(workers: int) -> Iterator[Executor]:
    """A pool of `workers` processes, waited for when the draws are done, ended at once when they are not: on
    Ctrl-C or an error its workers are killed and their work dropped. Waiting for them then (the executor's own
    exit) was itself cut short by a second Ctrl-C, and the workers, which ignore SIGINT, lived on: the trainer hung
    in multiprocessing's exit hook, joining them, for good (a review: three of three double Ctrl-Cs)."""
    # spawn, not fork: the trainer has torch's thread pools running, which a forked child must not inherit.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=ignore_interrupts)
    try:
        yield pool
        pool.shutdown(wait=True)
    except BaseException:
        # The executor has no public way to end its workers before Python 3.14 (kill_workers). SIGKILL: their work is
        # thrown away, and a SIGTERM left a worker running in the test suite (one of two, seen once).
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        raise


def ignore_interrupts() -> None:
    """In a pool's worker: Ctrl-C reaches the whole process group, and the trainer (which says how to continue)
    ends the pool; the workers' own KeyboardInterrupt tracebacks (two screens of them) would bury its message."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class InThisProcess(Executor):
    """draw_until's executor when there is no pool: each task runs at once, in the caller's thread."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def _pipeline_or_none(pictures: list[np.ndarray]) -> list[np.ndarray | None]:
    """The users' pipeline on each picture: (28, 28) uint8, or None where it rejects the picture."""
    out: list[np.ndarray | None] = []
    for picture in pictures:
        try:
            out.append(to_mnist_array(picture))
        except ImageRejected:
            out.append(None)
    return out


def draw_until(
    count: int, picture: Callable[[int], np.ndarray], pool: Executor | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`count` pictures as the model sees them: `picture(turn)` draws one for turn 0, 1, 2, ... (as the user would
    send it), and the users' pipeline brings it to 28x28 (in `pool`'s processes, if given); a turn whose picture
    the pipeline rejects (too faint or too small to be anything: the server would reject it too) is skipped.
    Returns (images (count, 28, 28) uint8, the turn of each (count,) int64), the same with or without a pool.

    A picture is drawn only while the accepted ones and those still in the pipeline are fewer than `count` (as
    if every one in the pipeline were accepted), so no turn is drawn after the count-th accepted one, exactly as
    in one loop that stops there: the random draws, and so the pictures, do not depend on the pool.
    """
    pool = pool if pool is not None else InThisProcess()
    images: list[np.ndarray] = []
    turns: list[int] = []
    pending: deque[tuple[int, Future]] = deque()  # (first turn, its chunk's results), in turn order
    in_flight = next_turn = 0
    while len(images) < count:
        while in_flight < IN_FLIGHT and (room := count - len(images) - in_flight) > 0:
            chunk = [picture(next_turn + i) for i in range(min(CHUNK, room))]
            pending.append((next_turn, pool.submit(_pipeline_or_none, chunk)))
            next_turn += len(chunk)
            in_flight += len(chunk)
        first, future = pending.popleft()
        done = future.result()
        in_flight -= len(done)
        for i, image in enumerate(done):
            if image is not None:
                images.append(image)
                turns.append(first + i)
    return (np.stack(images) if images else np.zeros((0, 28, 28), np.uint8)), np.array(turns, np.int64)


def make_negatives(count: int, seed: int, digits: np.ndarray | None = None, pool: Executor | None = None) -> Negatives:
    """`count` negatives, the kinds in turn, deterministic for `seed` (with or without a `pipeline_pool`).
    `digits` (N, 28, 28) uint8: the digits the crossed-out kind scratches out (the training split's; without them
    it scratches blank paper)."""
    rng = np.random.default_rng([seed, 17])

    def picture(turn: int) -> np.ndarray:
        digit = digits[rng.integers(len(digits))] if digits is not None and len(digits) else None
        return draw(KINDS[turn % len(KINDS)], rng, digit)

    images, turns = draw_until(count, picture, pool)
    return Negatives(images, turns % len(KINDS))


@dataclass(frozen=True)
class TypedDigits:
    """Digits typed in the training fonts, as the model sees them: images (N, 28, 28) uint8, labels (N,) int64."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def make_typed_digits(count: int, seed: int, pool: Executor | None = None) -> TypedDigits:
    """`count` typed digits, 0..9 in turn, each in a random training font and size, deterministic for `seed`
    (with or without a `pipeline_pool`)."""
    rng = np.random.default_rng([seed, 23])
    images, turns = draw_until(
        count, lambda turn: on_paper(_text(str(turn % 10), int(rng.integers(*CANVAS)), rng), rng), pool
    )
    return TypedDigits(images, turns % 10)
