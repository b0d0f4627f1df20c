"""Bad and unusual pictures, table-driven: each kind, how to build it from a digit, and the outcome the service
must give it. The tables of tests/reliability/test_bad_input.py and test_read_number_inputs.py, and the error
counts of tests/inference/test_metrics.py."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from tests.reliability import bad_inputs as b
from tests.reliability.helpers import SMALL_LIMITS

OK = "ok"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@dataclass(frozen=True)
class Kind:
    build: Callable[[np.ndarray], bytes]
    expect: object  # OK or a status code
    says: str = ""  # what the error message must mention (case-insensitive)
    same_as_digit: bool = True  # OK kinds: the model's input must be the digit drawn (not for non-digit ink)


IMAGE_KINDS: dict[str, Kind] = {
    # Not pictures at all.
    "empty bytes": Kind(b.empty, INVALID, "empty image"),
    "random bytes": Kind(b.random_bytes, INVALID, "not a picture"),
    "plain text": Kind(b.plain_text, INVALID, "not a picture"),
    "SVG": Kind(b.svg, INVALID, "SVG"),
    "PDF": Kind(b.pdf, INVALID, "PDF"),
    "HEIC": Kind(b.heic, INVALID, "HEIC"),
    "EPS (Pillow would run Ghostscript)": Kind(b.eps, INVALID, "not a picture"),
    "TGA (no signature: not accepted)": Kind(b.tga, INVALID, "not a picture"),
    "ICO": Kind(b.ico, INVALID, "not a picture"),
    # Damaged.
    "truncated PNG": Kind(b.truncated_png, INVALID, "truncated"),
    "truncated JPEG": Kind(b.truncated_jpeg, INVALID, "truncated"),
    "truncated JPEG closed with EOI": Kind(b.truncated_jpeg_closed, INVALID, "cut short"),
    "truncated GIF": Kind(b.truncated_gif, INVALID, "truncated"),
    "truncated WebP": Kind(b.truncated_webp, INVALID, "damaged"),
    "PNG header only": Kind(b.header_only_png, INVALID, "damaged or truncated"),
    "PNG with a bad CRC": Kind(b.png_bad_crc, INVALID, "damaged"),
    # Too big.
    "over the byte limit": Kind(
        functools.partial(b.oversized_bytes, limit=SMALL_LIMITS["max_image_bytes"]), INVALID, "the limit is 200,000"
    ),
    "PNG claiming 100,000 x 100,000": Kind(b.huge_dimensions_png, INVALID, "pixels"),
    "JPEG claiming 65,000 x 65,000": Kind(b.huge_dimensions_jpeg, INVALID, "pixels"),
    "GIF with a 65,535 x 65,535 screen": Kind(b.gif_huge_screen, INVALID, "pixels"),
    "decompression bomb, 64 MP in 8 kB": Kind(b.decompression_bomb_png, INVALID, "decompression bomb"),
    "PNG text chunk bomb, 100 MB in 100 kB": Kind(b.png_text_bomb, INVALID, "too large"),
    # Nothing drawn.
    "1x1 pixel": Kind(b.one_by_one, INVALID, "blank"),
    "all white": Kind(b.all_white, INVALID, "blank"),
    "all black JPEG": Kind(b.all_black, INVALID, "blank"),
    "paper with sensor noise only": Kind(b.noise_only, INVALID, "blank"),
    "fully transparent": Kind(b.fully_transparent, INVALID, "transparent"),
    # Valid, unusual: predicted, and the model sees the digit.
    "16-bit grey PNG": Kind(b.grey_16_bit, OK),
    "CMYK JPEG": Kind(b.cmyk_jpeg, OK),
    "palette PNG with transparency": Kind(b.palette_with_transparency, OK),
    "animated GIF (2nd frame blank)": Kind(b.animated_gif, OK),
    "multi-page TIFF (2nd page blank)": Kind(b.multi_page_tiff, OK),
    "EXIF-rotated (orientation 6)": Kind(b.exif_rotated, OK),
    "1-bit BMP": Kind(b.one_bit_bmp, OK),
    "float TIFF with NaN pixels": Kind(b.float_tiff_with_nan, OK),
    # Once an IndexError (INTERNAL): the background sampler started past the end of a side this short. A dash is
    # ink but no digit: like any non-digit drawing it gets a prediction, and the service must not fail on it.
    "1 x 20,000 strip": Kind(b.extreme_aspect_ratio, OK, same_as_digit=False),
}


def image_kind_params():
    for name in IMAGE_KINDS:
        yield pytest.param(name, id=name)
