"""shared/decode.py under huge pictures: reduced-size decoding, the working set of one picture, the budget.

A 40 MP picture is decoded at (about) working resolution where the format allows it (JPEG draft mode, libwebp's
scaler for still WebP) and otherwise brought there band by band, so the only full-resolution buffer is the
frame itself. These tests check that the digit survives the reduction, that one 40 MP picture's peak memory
stays within twice its decoded 8-bit size (bench/bench_memory.py prints the same figures), and that the memory
budget and out-of-memory conditions are the server's, not the picture's, fault.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from shared import decode
from shared.budget import BudgetExhausted, MemoryBudget
from shared.decode import ImageRejected, OutOfMemory, decode_image, pil_to_array, prepare_array
from shared.image_pipeline import to_mnist, to_mnist_array

from testkit.big_pictures import DEFAULT_SIDE, FORMATS, decoded_8bit_bytes, encode_big
from testkit.memory import costly_pictures, measure_single, pipeline_peak, run_fresh

SINGLE_RATIO_LIMIT = 2.0  # one 40 MP picture's peak extra memory, over its decoded 8-bit size


@pytest.fixture(scope="module")
def digit(mnist) -> np.ndarray:
    return mnist.test_images[0].numpy()  # a 7


def full_resolution_path(data: bytes) -> np.ndarray:
    """What decoding did before reduced decoding: the whole frame as an array, then prepare_array."""
    with Image.open(io.BytesIO(data)) as img:
        return prepare_array(pil_to_array(img))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_large_picture_reduced_while_decoding_gives_the_digit_of_the_full_resolution_path(digit, fmt):
    data = encode_big(digit, fmt, side=3000)  # reduced by 3, to 1000 px
    reduced = decode_image(data)
    assert max(reduced.shape[:2]) <= decode.WORK_MAX_SIDE
    ours, before = to_mnist(data), to_mnist_array(full_resolution_path(data))
    difference = np.abs(ours.astype(int) - before.astype(int))
    assert difference.mean() < 3 and np.corrcoef(ours.ravel(), before.ravel())[0, 1] > 0.98, difference.mean()


def test_still_webp_is_decoded_by_libwebp_at_working_resolution_like_pillow_at_full(digit):
    data = encode_big(digit, "WEBP", side=3000)
    assert decode.is_still_webp(data)
    ours, pillow = decode_image(data), full_resolution_path(data)
    assert ours.shape[:2] == (1000, 1000)
    assert np.corrcoef(to_mnist_array(ours).ravel(), to_mnist_array(pillow).ravel())[0, 1] > 0.98


def test_webp_with_alpha_and_exif_orientation(digit):
    """Ink only in alpha (a canvas export) survives libwebp's scaled decoding, and EXIF rotates it upright."""
    coverage = np.kron(digit, np.ones((100, 100), np.uint8))  # 2800 x 2800: reduced by 3
    rgba = np.zeros((*coverage.shape, 4), np.uint8)
    rgba[:, :, 3] = coverage
    upright = to_mnist(_webp(rgba))
    rotated = np.rot90(rgba)  # displayed upright again by orientation 6 (rotate 90 degrees clockwise)
    exif = Image.Exif()
    exif[decode.EXIF_ORIENTATION_TAG] = 6
    assert np.corrcoef(to_mnist(_webp(rotated, exif=exif.tobytes())).ravel(), upright.ravel())[0, 1] > 0.98
    assert np.corrcoef(upright.ravel(), digit.ravel())[0, 1] > 0.8


def _webp(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "WEBP", lossless=True, **options)
    return buffer.getvalue()


def test_an_animated_webp_goes_to_pillow_and_is_refused_when_it_could_never_fit_the_budget(digit):
    frames = [
        Image.fromarray(255 - np.kron(np.roll(digit, shift, axis=1), np.ones((40, 40), np.uint8))) for shift in (0, 3)
    ]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    data = buffer.getvalue()
    assert not decode.is_still_webp(data)
    assert to_mnist(data).shape == (28, 28)
    # 1120 x 1120 x 4 bytes x 4 frames is about 19 MiB: a 16 MiB budget can never hold it.
    with pytest.raises(ImageRejected, match="send a still picture"):
        to_mnist(data, budget=MemoryBudget(16 * 2**20, wait=0))


def test_one_40_megapixel_picture_peaks_at_most_twice_its_decoded_8_bit_size(digit):
    """Each format in turn, in a fresh process (testkit/memory.py's measurement, as bench/bench_memory.py)."""
    results = measure_single(digit, FORMATS)
    ratios = {
        fmt: (peak - baseline) / decoded_8bit_bytes(fmt, DEFAULT_SIDE) for fmt, (baseline, peak, _) in results.items()
    }
    assert set(ratios) == set(FORMATS)
    assert all(ratio <= SINGLE_RATIO_LIMIT for ratio in ratios.values()), ratios


def test_decoding_reserves_the_frame_in_the_budget_and_gives_it_back(digit):
    budget = MemoryBudget(256 * 2**20, wait=0)
    data = encode_big(digit, "PNG", side=3000)
    to_mnist(data, budget=budget)
    assert budget.peak == 3000 * 3000 * 4 and budget.in_use == 0


def test_a_full_budget_is_busy_not_a_bad_picture(digit):
    budget = MemoryBudget(40 * 2**20, wait=0.05)
    data = encode_big(digit, "PNG", side=3000)  # 36 MB decoded
    with budget.reserve(10 * 2**20), pytest.raises(BudgetExhausted, match="decoding or reading other large pictures"):
        to_mnist(data, budget=budget)
    assert to_mnist(data, budget=budget).shape == (28, 28)


def test_the_pipelines_working_memory_is_held_in_the_budget_while_it_works_and_given_back(digit, monkeypatch):
    """Making the 28x28 digit of a decoded picture held 4-19 MiB at the working size that no budget counted (the
    decoding's share is given back once the picture is at working size): it is held while the pipeline works."""
    from shared import image_pipeline

    budget = MemoryBudget(256 * 2**20, wait=0)
    held = []
    real = image_pipeline.trace_at
    monkeypatch.setattr(image_pipeline, "trace_at", lambda *a, **k: held.append(budget.in_use) or real(*a, **k))
    data = encode_big(digit, "PNG", side=3000)
    to_mnist(data, budget=budget)
    assert held and set(held) == {image_pipeline.pipeline_bytes(decode_image(data))}
    assert budget.in_use == 0
    held.clear()
    picture = decode_image(data)
    assert to_mnist_array(picture, budget) is not None and set(held) == {image_pipeline.pipeline_bytes(picture)}
    assert budget.in_use == 0


def test_a_jpeg_read_again_at_full_size_gives_back_its_halfs_share_before_decoding_it(monkeypatch):
    """A small digit in a large JPEG is read at half size, then decoded again at full size. A call that held the
    half's working memory while it waited for room to decode the full picture would queue behind calls waiting for
    the room it holds, so it holds nothing then."""
    picture = np.full((2000, 2000), 255, np.uint8)
    picture[900:960, 980:990] = 0  # too small to stand at half size
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "JPEG", quality=90)

    class Noting(MemoryBudget):
        def reserve(self, nbytes, **kwargs):
            asked.append((kwargs.get("to", "to decode"), self.in_use))
            return super().reserve(nbytes, **kwargs)

    asked: list[tuple[str, int]] = []
    budget = Noting(256 * 2**20, wait=0)
    to_mnist(buffer.getvalue(), budget=budget)
    assert asked == [("to decode", 0), ("to work on", 0), ("to decode", 0), ("to work on", 0)]
    assert budget.in_use == 0


def test_a_full_budget_keeps_a_decoded_picture_from_being_worked_on(digit):
    """Room to decode is not room to work: with the budget all but full, a 1,000 px picture (1 MB) decodes but its
    working memory (25 MiB) does not fit: busy, not a bad picture."""
    from shared.image_pipeline import pipeline_bytes

    data = encode_big(digit, "PNG", side=1000)
    budget = MemoryBudget(64 * 2**20, wait=0.05)
    needed = pipeline_bytes(decode_image(data))
    with budget.reserve(budget.capacity - needed + 1):
        with pytest.raises(BudgetExhausted, match=f"this picture needs {needed / 2**20:,.0f} MiB to work on"):
            to_mnist(data, budget=budget)
    assert to_mnist(data, budget=budget).shape == (28, 28) and budget.in_use == 0


COSTLY = costly_pictures()


@pytest.mark.parametrize("name", list(COSTLY))
def test_the_pipeline_holds_no_more_memory_than_the_service_reserves_for_it(name):
    """What shared.image_pipeline.pipeline_bytes reserves covers what the costliest pictures at the working size
    hold (tracemalloc), the picture included: a spiral 18.9 bytes a pixel, noise in colour 18.5, a strip 16.5."""
    from shared.image_pipeline import pipeline_bytes

    picture = COSTLY[name]
    peak = pipeline_peak(picture)
    assert peak + picture.nbytes <= pipeline_bytes(picture), f"{peak / (picture.shape[0] * picture.shape[1]):.1f} B/px"


def test_running_out_of_memory_while_decoding_is_out_of_memory_not_a_damaged_picture(digit, monkeypatch):
    def no_memory(img):
        raise MemoryError

    monkeypatch.setattr(decode, "reduced_array", no_memory)
    with pytest.raises(OutOfMemory, match=r"ran out of memory.*try again"):
        to_mnist(encode_big(digit, "PNG", side=600))


def _jpeg(digit: np.ndarray, side: int, **options) -> bytes:
    grey = 255 - np.kron(digit, np.ones((side // 28 + 1, side // 28 + 1), np.uint8))[:side, :side]
    buffer = io.BytesIO()
    Image.fromarray(grey).convert("RGB").save(buffer, "JPEG", quality=85, **options)
    return buffer.getvalue()


def test_a_progressive_jpeg_reserves_its_whole_resolution_coefficients_however_small_it_is_read(digit):
    """libjpeg keeps a multi-scan JPEG's every coefficient at the declared size (2 bytes each, 3 components here),
    even when it is read at a third of it: the budget must count them, or small files flood the memory."""
    reserved = {}
    for name, options in (("baseline", {}), ("progressive", {"progressive": True})):
        data, budget = _jpeg(digit, 3000, **options), MemoryBudget(256 * 2**20, wait=0)
        assert to_mnist(data, budget=budget).shape == (28, 28) and budget.in_use == 0
        budget = MemoryBudget(256 * 2**20, wait=0)
        decode_image(data, budget=budget, shrink=2)  # as to_mnist decodes it first (the pipeline reserves apart)
        reserved[name] = budget.peak
    assert reserved["progressive"] - reserved["baseline"] == 3008 * 3008 * 3 * 2
    # One that could never fit is refused as input, with advice; baseline, it fits.
    with pytest.raises(ImageRejected, match=r"progressive JPEG.*baseline"):
        to_mnist(_jpeg(digit, 3000, progressive=True), budget=MemoryBudget(40 * 2**20, wait=0))
    assert to_mnist(_jpeg(digit, 3000), budget=MemoryBudget(40 * 2**20, wait=0)).shape == (28, 28)


def test_the_scans_are_counted_by_walking_segments_so_a_thumbnail_inside_one_is_not_a_scan(digit):
    baseline, progressive = _jpeg(digit, 300), _jpeg(digit, 300, progressive=True)
    assert decode.jpeg_scan_count(baseline) == 1 and decode.jpeg_scan_count(progressive) == 2
    # An APP15 segment whose payload holds SOS markers (as an embedded JPEG thumbnail in APP1 does) is skipped.
    payload = b"\xff\xda\x00\x08" * 8 + b"\xff\xd9"
    with_segment = baseline[:2] + b"\xff\xef" + (len(payload) + 2).to_bytes(2, "big") + payload + baseline[2:]
    assert decode.jpeg_scan_count(with_segment) == 1
    assert np.array_equal(decode_image(with_segment), decode_image(baseline))
    # Damaged files never raise here: the scans before the damage count.
    for cut in (3, 40, len(progressive) // 2):
        assert decode.jpeg_scan_count(progressive[:cut]) <= 2
    assert decode.jpeg_scan_count(b"\xff\xd8\xff\xda") == 0 and decode.jpeg_scan_count(b"") == 0


PROGRESSIVE_SCRIPT = """
import io, sys, numpy as np
from PIL import Image
from shared.budget import MemoryBudget
from shared.decode import decode_image
from shared.image_pipeline import to_mnist
from testkit.big_pictures import DEFAULT_SIDE, digit_ink
from testkit.memory import reset_peak, status_kib
digit = np.frombuffer(bytes.fromhex(sys.argv[1]), np.uint8).reshape(28, 28)
buffer = io.BytesIO()
Image.fromarray(255 - digit_ink(digit, DEFAULT_SIDE)).convert("RGB").save(buffer, "JPEG", quality=85, progressive=True)
data = buffer.getvalue()
del buffer
small = io.BytesIO()  # warm up: the codec loaded, its tables made
Image.fromarray(np.full((600, 600, 3), 255, np.uint8)).save(small, "JPEG", progressive=True)
decode_image(small.getvalue())
budget = MemoryBudget(2**30, wait=0)
reset_peak("self")
baseline = status_kib("self", "VmRSS")
assert to_mnist(data, budget=budget).shape == (28, 28)
print(baseline, status_kib("self", "VmHWM"), budget.peak, len(data), flush=True)
"""


def test_a_40_megapixel_progressive_jpeg_holds_no_more_than_the_budget_reserved_for_it(digit):
    """In a fresh process (as testkit/memory.py measures): the peak extra memory is what the budget reserved,
    give or take the decoder's working buffers (34 MiB of peak against 9.5 MiB reserved for the baseline file)."""
    baseline_kib, peak_kib, reserved, size = (int(v) for v in run_fresh(PROGRESSIVE_SCRIPT, digit).split())
    grown = (peak_kib - baseline_kib) * 1024
    assert size < 2 * 2**20  # a small file...
    assert reserved > 200 * 2**20  # ...that holds a lot: about 230 MiB of coefficients
    assert grown <= reserved + 48 * 2**20, (grown / 2**20, reserved / 2**20)


def test_a_turned_tiff_reserves_the_second_frame_pillow_makes_to_turn_it():
    """Pillow turns a TIFF with an EXIF orientation as it loads it, into a second full frame."""

    def opened(orientation: int) -> Image.Image:
        exif = Image.Exif()
        exif[decode.EXIF_ORIENTATION_TAG] = orientation
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((300, 500), np.uint8)).save(buffer, "TIFF", exif=exif.tobytes())
        return Image.open(io.BytesIO(buffer.getvalue()))

    assert decode.decode_cost(opened(1)) == 300 * 500
    assert decode.decode_cost(opened(6)) == 2 * 300 * 500


# --------------------------------------------------------------------------------------------------------------
# What a decoder holds besides the frame, and what is read before the reservation


def _one_tile_tiff(picture: np.ndarray) -> bytes:
    """A grey deflate TIFF of one tile the size of the picture (sides rounded up to 16), as some writers make it."""
    from tests.shared.test_file_structure import tiled_tiff

    height, width = picture.shape
    return tiled_tiff(width, height, -(-width // 16) * 16, -(-height // 16) * 16, picture)


def _grey_tiff(picture: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "TIFF", compression="tiff_deflate", **options)
    return buffer.getvalue()


def test_a_tiff_decoded_a_tile_or_a_strip_at_a_time_reserves_that_buffer_beside_its_frame(digit):
    """libtiff decodes a whole tile or strip into a buffer of its own before Pillow copies it into the frame: a
    picture in one tile or one strip holds its frame twice. What is past one band of the reduction is reserved."""
    side = 4096
    picture = 255 - np.kron(digit, np.ones((side // 28 + 1, side // 28 + 1), np.uint8))[:side, :side]
    frame = side * side
    beyond_a_band = frame - decode.REDUCE_BAND_PIXELS * 4
    for data, reserved in (
        (_grey_tiff(picture), frame),  # Pillow's strips of 64 KB: within the band's allowance
        (_grey_tiff(picture, strip_size=frame), frame + beyond_a_band),  # one strip
        (_one_tile_tiff(picture), frame + beyond_a_band),  # one tile
    ):
        budget = MemoryBudget(256 * 2**20, wait=0)
        assert decode_image(data, budget=budget).shape == (1024, 1024)  # the decoding's share (the pipeline's apart)
        assert budget.peak == reserved and budget.in_use == 0


def _wide_png(width: int, height: int = 1) -> bytes:
    """A canvas export far wider than tall: RGBA, transparent, a dark mark in the middle."""
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[:, width // 2 : width // 2 + width // 100, 3] = 255
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def test_a_png_reserves_the_two_rows_its_decoder_holds_beside_its_frame():
    """Pillow's PNG decoder holds the row it decodes and the one before, at the file's depth: for a 40,000,000 x 1
    picture, two frames more than the one reserved (+457 MiB while 153 MiB was reserved, found in review)."""
    width = 3_000_000
    frame, rows = width * 4, 2 * (width * 4 + 1)
    budget = MemoryBudget(256 * 2**20, wait=0)
    decode_image(_wide_png(width), budget=budget)
    assert budget.peak == frame + rows - decode.REDUCE_BAND_PIXELS * 4 and budget.in_use == 0
    # One the budget could never hold is refused as input, though its frame alone would fit.
    with pytest.raises(ImageRejected, match="more than the server allows"):
        decode_image(_wide_png(width), budget=MemoryBudget(24 * 2**20, wait=0))


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_a_picture_far_wider_than_tall_is_reduced_in_pieces_of_at_most_a_band_as_if_whole(mode, monkeypatch):
    """`factor` whole rows of a 40,000,000 x 1 picture are the whole frame: cut into bands of rows alone, its crop
    and conversions copied the frame twice over (found in review). The pieces end at multiples of the factor, so
    the reduction is the same as the whole frame's."""
    rng = np.random.default_rng(1)
    channels = {"RGBA": (4,), "L": ()}[mode]
    picture = Image.fromarray(rng.integers(0, 256, (5, 600_000, *channels), dtype=np.uint8), mode)
    factor, _, _ = decode.working_size(picture.width, picture.height)
    pieces = []
    crop = Image.Image.crop
    monkeypatch.setattr(Image.Image, "crop", lambda img, box=None: pieces.append(box) or crop(img, box))

    reduced = decode.reduced_array(picture)

    assert max((right - left) * (bottom - top) for left, top, right, bottom in pieces) <= decode.REDUCE_BAND_PIXELS
    assert np.array_equal(reduced, np.asarray(picture.reduce(factor)))


WIDE_SCRIPT = """
import sys
from shared.budget import MemoryBudget
from shared.decode import decode_image
from testkit.memory import reset_peak, status_kib
from tests.shared.test_decode_memory import _wide_png
data = _wide_png(int(sys.argv[2]))
decode_image(_wide_png(100_000))  # warm up: the codec loaded
budget = MemoryBudget(2**30, wait=0)
reset_peak("self")
baseline = status_kib("self", "VmRSS")
decode_image(data, budget=budget)
print(baseline, status_kib("self", "VmHWM"), budget.peak, flush=True)
"""


def test_a_picture_far_wider_than_tall_holds_no_more_than_the_budget_reserved_for_it(digit):
    """In a fresh process (as testkit/memory.py measures): a 10,000,000 x 1 RGBA PNG, its two decoder rows and its
    reduction included."""
    baseline_kib, peak_kib, reserved = (int(v) for v in run_fresh(WIDE_SCRIPT, digit, "10000000").split())
    grown = (peak_kib - baseline_kib) * 1024
    assert grown <= reserved + 16 * 2**20, (grown / 2**20, reserved / 2**20)


def _png_with_text(chunks: int, *, after_pixels: bool = False) -> bytes:
    """A small PNG with `chunks` zTXt chunks, each inflating to 1 MiB - 1 (Pillow's largest), before its pixels
    or after them."""
    from tests.shared.test_file_structure import png_chunk

    buffer = io.BytesIO()
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(buffer, format="PNG")
    png = buffer.getvalue()
    text = zlib.compress(b"a" * (2**20 - 1), 9)
    chunk = b"".join(png_chunk(b"zTXt", b"k%d\0\0" % k + text) for k in range(chunks))
    at = png.find(b"IEND" if after_pixels else b"IDAT") - 4
    return png[:at] + chunk + png[at:]


@pytest.mark.parametrize("after_pixels", [False, True])
def test_a_png_of_more_text_than_a_picture_carries_is_refused_with_advice(after_pixels):
    """Pillow inflates a PNG's text chunks as it opens it, before the reservation: 63 zTXt chunks of 1 MiB each, a
    67 KB file, held 64 MiB a call outside the budget (Pillow's own ceiling; found in review)."""
    data = _png_with_text(63, after_pixels=after_pixels)
    assert len(data) < 100_000
    with pytest.raises(
        ImageRejected,
        match=r"text .* is too large, far more than a picture carries: the limit is 2 MiB .* without its metadata",
    ):
        decode_image(data)


def test_a_png_whose_icc_profile_is_too_large_is_refused_naming_the_profile_too():
    """An iCCP chunk inflates against Pillow's text limit as well: a 1.2 MB profile and no text at all was refused
    as "the PNG's text ... is too large" (a review's)."""
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 255).save(buffer, format="PNG", icc_profile=bytes(1_200_000))
    with pytest.raises(ImageRejected, match=r"metadata \(text chunks or its ICC profile\) is too large"):
        decode_image(buffer.getvalue())


def test_a_tiff_giving_bits_per_sample_once_reserves_every_samples_bits():
    """BitsPerSample given once for an RGB TIFF (8, not 8, 8, 8) was counted as 8 bits a pixel, not 24: a third of
    its strip's buffer reserved (a review's)."""
    from types import SimpleNamespace

    from shared.decode import decoder_buffer_cost

    def tiff(bits):
        tags = {259: 8, 258: bits, 277: 3, 278: 3000}  # deflate, RGB in one strip of 3,000 rows
        return SimpleNamespace(format="TIFF", size=(4000, 3000), tag_v2=tags)

    assert decoder_buffer_cost(b"", tiff((8,))) == decoder_buffer_cost(b"", tiff((8, 8, 8))) > 0


def test_a_png_with_a_text_chunk_as_large_as_pillow_reads_passes():
    """One chunk of 1 MiB (an XMP packet with an editor's history) and a few small ones are a picture's metadata."""
    decode_image(_png_with_text(1))


def test_the_largest_working_memory_the_server_checks_at_start_is_that_of_the_largest_working_picture():
    from shared.image_pipeline import WORK_MAX_SIDE, largest_pipeline_bytes, pipeline_bytes

    largest = np.zeros((WORK_MAX_SIDE, WORK_MAX_SIDE, 3), np.uint8)  # any picture over the working size shrinks to it
    assert largest_pipeline_bytes(40_000_000) == pipeline_bytes(largest)
    assert largest_pipeline_bytes(100 * 200) == pipeline_bytes(np.zeros((100, 200, 3), np.uint8))
