"""shared.fast_path: MNIST-like pictures get exactly the full pipeline's answer; everything else is left to it.

The fast path's contract is equality, never approximation: for every picture it answers, the (28, 28) uint8 digit
is the one to_mnist gives, bit for bit; for every other picture it answers None.
"""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from shared.fast_path import decode_small_png, fast_to_mnist, to_mnist_fast
from shared.image_pipeline import DEFAULT_LIMITS, ImageRejected, Limits, to_mnist


def png(image: np.ndarray | Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def full_answer(data: bytes):
    """to_mnist's answer: the digit, or the rejection message."""
    try:
        return to_mnist(data)
    except ImageRejected as e:
        return str(e)


def assert_same_as_full_pipeline(items: list[bytes]) -> int:
    """Every answer of the fast path equals the full pipeline's, both as to_mnist_fast gives them and as the batched
    computation alone gives them (to_mnist_fast takes one or two pictures through the pipeline's own stages);
    returns how many the batched computation answered."""
    decoded = [decode_small_png(data, DEFAULT_LIMITS) for data in items]
    small = [(data, image) for data, image in zip(items, decoded) if image is not None]
    batched = fast_to_mnist(np.stack([image for _, image in small])) if small else []
    for data, fast in [*zip([d for d, _ in small], batched), *zip(items, to_mnist_fast(items, DEFAULT_LIMITS))]:
        if fast is None:
            continue
        full = full_answer(data)
        assert not isinstance(full, str), f"the fast path answered a picture the pipeline rejects: {full}"
        np.testing.assert_array_equal(fast, full)
    return sum(fast is not None for fast in batched)


@pytest.fixture(scope="module")
def mnist_pngs(mnist) -> list[bytes]:
    """The first 3,000 MNIST test digits as PNG files, as clients send them."""
    return [png(image) for image in mnist.test_images[:3000].numpy()]


def test_mnist_digits_get_exactly_the_full_pipelines_answer(mnist_pngs):
    answered = assert_same_as_full_pipeline(mnist_pngs)
    assert answered >= 0.98 * len(mnist_pngs), f"the fast path answered only {answered} of {len(mnist_pngs)}"


def test_the_decoder_gives_pillows_pixels(mnist, mnist_pngs):
    for image, data in zip(mnist.test_images[:200].numpy(), mnist_pngs):
        np.testing.assert_array_equal(decode_small_png(data, DEFAULT_LIMITS), image)
    # Every PNG row filter (Pillow picks per row; OpenCV's encoder and an unfiltered file too).
    image = mnist.test_images[7].numpy()
    for data in (cv2.imencode(".png", image)[1].tobytes(), png(image, optimize=True), png(image, compress_level=0)):
        np.testing.assert_array_equal(decode_small_png(data, DEFAULT_LIMITS), image)


def with_chunk(data: bytes, kind: bytes, body: bytes) -> bytes:
    """`data` with a chunk inserted after IHDR."""
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return data[:33] + chunk + data[33:]


@pytest.mark.parametrize(
    "change",
    [
        "rgb",
        "grey+alpha",
        "16-bit",
        "1-bit",
        "palette",
        "interlaced",
        "other size",
        "text chunk",
        "transparency chunk",
        "bad crc",
        "truncated",
        "trailing bytes",
        "not a png",
        "empty",
        "too many bytes",
        "too many pixels",
    ],
)
def test_pictures_outside_the_strict_subset_are_left_to_the_full_pipeline(mnist, change):
    digit = mnist.test_images[0].numpy()
    data, limits = png(digit), DEFAULT_LIMITS
    if change == "rgb":
        data = png(np.stack([digit] * 3, axis=-1))
    elif change == "grey+alpha":
        data = png(np.stack([digit, np.full_like(digit, 255)], axis=-1))
    elif change == "16-bit":
        data = png(digit.astype(np.uint16) * 257)
    elif change == "1-bit":
        data = png(digit > 127)
    elif change == "palette":
        data = png(Image.fromarray(digit).convert("P"))
    elif change == "interlaced":
        data = cv2.imencode(".png", digit)[1].tobytes()
        header = bytearray(data[16:29])
        header[12] = 1
        data = data[:16] + bytes(header) + struct.pack(">I", zlib.crc32(b"IHDR" + bytes(header))) + data[33:]
    elif change == "other size":
        data = png(np.pad(digit, 2))
    elif change == "text chunk":
        data = with_chunk(data, b"tEXt", b"Comment\x00hello")
    elif change == "transparency chunk":
        data = with_chunk(data, b"tRNS", b"\x00\x00")
    elif change == "bad crc":
        data = data[:40] + bytes([data[40] ^ 1]) + data[41:]
    elif change == "truncated":
        data = data[:-5]
    elif change == "trailing bytes":
        data = data + b"\x00"
    elif change == "not a png":
        data = b"GIF89a" + data[6:]
    elif change == "empty":
        data = b""
    elif change == "too many bytes":
        limits = Limits(max_bytes=len(data) - 1, max_pixels=DEFAULT_LIMITS.max_pixels)
    elif change == "too many pixels":
        limits = Limits(max_bytes=DEFAULT_LIMITS.max_bytes, max_pixels=28 * 28 - 1)
    assert decode_small_png(data, limits) is None
    assert to_mnist_fast([data], limits) == [None]


def test_an_idat_stream_of_the_wrong_length_is_left_to_the_full_pipeline(mnist):
    digit = mnist.test_images[0].numpy()
    for rows in (digit[:27], np.vstack([digit, digit[:1]])):  # a row short, a row over
        raw = b"".join(b"\x00" + row.tobytes() for row in rows)
        body = zlib.compress(raw)
        idat = struct.pack(">I", len(body)) + b"IDAT" + body + struct.pack(">I", zlib.crc32(b"IDAT" + body))
        good = png(digit)
        end = good.index(b"IEND") - 4
        start = good.index(b"IDAT") - 4
        assert decode_small_png(good[:start] + idat + good[end:], DEFAULT_LIMITS) is None


def test_blank_pictures_and_specks_are_left_to_the_full_pipeline_which_rejects_them():
    speck = np.zeros((28, 28), np.uint8)
    speck[10:12, 10:12] = 255
    for image in (np.zeros((28, 28), np.uint8), np.full((28, 28), 255, np.uint8), speck):
        data = png(image)
        assert to_mnist_fast([data], DEFAULT_LIMITS) == [None]
        assert isinstance(full_answer(data), str)


def test_two_strokes_of_the_same_size_are_left_to_the_full_pipeline():
    """The per-picture code keeps the first of two equal largest strokes in its labelling order; not decided here."""
    image = np.zeros((28, 28), np.uint8)
    image[4:24, 6:9] = 255
    image[4:24, 19:22] = 255
    assert fast_to_mnist(image[None]) == [None]


def test_two_strokes_where_the_larger_is_fainter_are_answered_as_the_full_pipeline_does():
    """The full pipeline keeps the stroke with the most ink, not the largest: a faint long stroke beside a short
    bright one. Review (stop 44): with that rule taken out of the fast path, no test failed, and 53 of 544 such
    pictures came out otherwise."""
    pictures = []
    for faint in (60, 100, 140, 180):
        for length in (12, 16, 18, 20):
            for gap in (3, 6, 9):
                image = np.zeros((28, 28), np.uint8)
                image[4 : 4 + length, 6:9] = faint  # the larger stroke, fainter
                image[6:18, 9 + gap : 12 + gap] = 255  # a shorter one, bright
                pictures.append(png(image))
    assert assert_same_as_full_pipeline(pictures) > 0  # the batched path answers some of them


@pytest.mark.parametrize(
    "mark",
    [
        "line on the left edge",
        "line on the bottom edge",
        "faint blob",
        "faint edge blob",
        "box around it",
        "ring around it",
        "narrow box around it",
    ],
)
def test_what_the_full_pipeline_leaves_out_by_contrast_or_at_the_edge_is_not_answered_otherwise(mnist, mark):
    """The full pipeline drops a thin line cut off by the picture's edge (a ruling, the sheet's edge), marks far
    fainter than the digit's strokes and a box drawn around the digit (shared.normalize.digit_components); the
    fast path must not keep them."""
    pictures = []
    for image in mnist.test_images[:100].numpy():
        image = image.copy()
        if mark == "line on the left edge":
            image[2:26, 0] = 255
        elif mark == "line on the bottom edge":
            image[27, 2:26] = 255
        elif mark == "box around it":
            image[1, 1:27] = image[26, 1:27] = image[1:27, 1] = image[1:27, 26] = 255
        elif mark == "ring around it":  # clear of most digits' ink, which keeps to the middle 20x20
            cv2.circle(image, (14, 14), 13, 255, 1)
        elif mark == "narrow box around it":  # under half the picture wide: closed, so still a frame
            image[:, :9] = image[:, 20:] = 0
            image[1, 8:21] = image[26, 8:21] = image[1:27, 8] = image[1:27, 20] = 255
        elif mark == "faint blob":
            image[1:4, 1:4] = np.maximum(image[1:4, 1:4], 70)
        else:
            image[12:16, 0:3] = np.maximum(image[12:16, 0:3], 90)
        pictures.append(png(image))
    assert_same_as_full_pipeline(pictures)


@pytest.mark.parametrize("width", [1, 2, 3])
def test_a_frame_along_the_edge_gets_the_full_pipelines_answer(mnist, width):
    """Dark digits on white with a black frame along the edge: the per-picture paper fit starts inside the frame
    and leaves it out (shared.normalize.edge_frame_depths); the batched fit must not answer otherwise."""
    items = []
    for digit in mnist.test_images[:60].numpy():
        framed = 255 - digit
        framed[:width] = framed[-width:] = framed[:, :width] = framed[:, -width:] = 0
        items.append(png(framed))
    assert_same_as_full_pipeline(items)


def test_pictures_on_grey_and_uneven_backgrounds_get_the_full_pipelines_answer(mnist):
    """Non-zero paper: the batched fit of the background must decide as the per-picture fit does."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:28, 0:28] / 27.0
    items = []
    for index, digit in enumerate(mnist.test_images[:300].numpy()):
        paper = 20 + 30 * rng.random() * xs + 25 * rng.random() * ys * ys + 10 * rng.random() * xs * ys
        noise = rng.normal(0, rng.choice([0.0, 2.0, 5.0]), (28, 28))
        picture = np.clip(paper + noise + digit.astype(np.float64) * 0.8, 0, 255).astype(np.uint8)
        items.append(png(picture if index % 3 else 255 - picture))  # some dark ink on light paper too
    answered = assert_same_as_full_pipeline(items)
    assert answered >= 0.5 * len(items), f"only {answered} of {len(items)} answered: the test exercised little"


def uneven_paper_digit(mnist, index: int) -> np.ndarray:
    """MNIST test digit `index` at 0.8 contrast on a smooth uneven paper (a quadratic of random strength)."""
    rng = np.random.default_rng(index)
    ys, xs = np.mgrid[0:28, 0:28] / 27.0
    paper = 20 + 30 * rng.random() * xs + 25 * rng.random() * ys * ys + 10 * rng.random() * xs * ys
    return np.clip(paper + mnist.test_images[index].numpy().astype(np.float64) * 0.8, 0, 255).astype(np.uint8)


# Of the first 3,000 pictures uneven_paper_digit makes, these have a fitted paper grey level within a millionth
# of a rounding boundary (x.5), where the per-picture fit's last bits could round the other way (found by search).
ROUNDING_TIES = (1769, 1866, 2016)


def test_a_paper_fit_within_the_margin_of_rounding_otherwise_is_left_to_the_full_pipeline(mnist, monkeypatch):
    import shared.fast_path as fast_path

    ties = np.stack([uneven_paper_digit(mnist, index) for index in ROUNDING_TIES])
    clear = np.stack([uneven_paper_digit(mnist, index) for index in range(20)])
    assert not fast_path.batched_background(ties)[1].any()
    assert fast_path.batched_background(clear)[1].sum() >= 15, "the ties test exercised little"
    assert all(answer is None for answer in fast_to_mnist(ties))
    assert_same_as_full_pipeline([png(picture) for picture in ties])  # to_mnist_fast: the pipeline's own answer
    # The margin is what leaves them out: without it the batched fit decides them (here as the pipeline does).
    monkeypatch.setattr(fast_path, "DECISION_MARGIN", 0.0)
    assert all(answer is not None for answer in fast_to_mnist(ties))


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    index=st.integers(0, 999),
    shift=st.tuples(st.integers(-4, 4), st.integers(-4, 4)),
    gain=st.floats(0.2, 1.0),
    offset=st.integers(0, 60),
    noise=st.floats(0, 8),
    seed=st.integers(0, 2**16),
)
def test_property_whatever_it_answers_equals_the_full_pipeline(mnist, index, shift, gain, offset, noise, seed):
    digit = np.roll(mnist.test_images[index].numpy(), shift, axis=(0, 1)).astype(np.float64)
    picture = offset + gain * digit + np.random.default_rng(seed).normal(0, noise, digit.shape)
    assert_same_as_full_pipeline([png(np.clip(picture, 0, 255).astype(np.uint8))])


def test_a_batch_mixes_fast_and_full_answers_in_order(mnist):
    digits = mnist.test_images[:4].numpy()
    photo = np.full((60, 80, 3), 230, np.uint8)
    photo[10:50, 35:42] = 20
    items = [png(digits[0]), png(photo), b"not a picture", png(digits[1]), png(digits[2][:, :20]), png(digits[3])]
    answers = to_mnist_fast(items, DEFAULT_LIMITS)
    assert [a is not None for a in answers] == [True, False, False, True, False, True]
    for index in (0, 3, 5):
        np.testing.assert_array_equal(answers[index], to_mnist(items[index]))


def test_one_or_two_pictures_take_the_pipelines_own_stages_which_cost_less_than_batching_them(mnist, monkeypatch):
    """A single Predict sends one picture: the batched arithmetic is not used for fewer than MIN_BATCH."""
    import shared.fast_path

    def not_for_so_few(images):
        raise AssertionError(f"{len(images)} picture(s) batched")

    monkeypatch.setattr(shared.fast_path, "fast_to_mnist", not_for_so_few)
    items = [png(image) for image in mnist.test_images[: shared.fast_path.MIN_BATCH - 1].numpy()]
    for count in range(1, len(items) + 1):
        answers = to_mnist_fast(items[:count], DEFAULT_LIMITS)
        for data, answer in zip(items, answers):
            np.testing.assert_array_equal(answer, to_mnist(data))


def test_a_failure_inside_the_fast_path_leaves_every_picture_to_the_full_pipeline(mnist, monkeypatch, caplog):
    import shared.fast_path

    def broken(images):
        raise FloatingPointError("a bug")

    monkeypatch.setattr(shared.fast_path, "fast_to_mnist", broken)
    items = [png(image) for image in mnist.test_images[:3].numpy()]
    assert to_mnist_fast(items, DEFAULT_LIMITS) == [None, None, None]
    assert any("fast path failed" in r.getMessage() and r.exc_info for r in caplog.records)
