"""shared/decode.py and a JPEG cut short: libjpeg fills the blocks its scan lacks with grey and Pillow says nothing
when the file still ends in a marker (EOI), so an interrupted upload decoded to a picture with a grey band that the
pipeline read as paper or ink. Such a file is refused; every whole JPEG (baseline and progressive, with and without
restart markers, from Pillow and from OpenCV) decodes as before.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from shared import decode
from shared.decode import ImageRejected, decode_image

EOI = b"\xff\xd9"


def photo(height: int = 480, width: int = 360, paper: int = 235) -> np.ndarray:
    """A grey photo of a dark stroke on paper with sensor noise: entropy-coded data of a photo's density."""
    rng = np.random.default_rng(3)
    picture = np.clip(rng.normal(paper, 6, (height, width)), 0, 255).astype(np.uint8)
    picture[height // 4 : 3 * height // 4, width // 2 - 12 : width // 2 + 12] = 30
    return picture


def pillow_jpeg(picture: np.ndarray, mode: str = "RGB", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).convert(mode).save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


def cv2_jpeg(picture: np.ndarray, *params: int) -> bytes:
    colour = cv2.cvtColor(picture, cv2.COLOR_GRAY2BGR)
    ok, encoded = cv2.imencode(".jpg", colour, [cv2.IMWRITE_JPEG_QUALITY, 90, *params])
    assert ok
    return encoded.tobytes()


WHOLE_JPEGS = {
    "Pillow baseline": lambda: pillow_jpeg(photo()),
    "Pillow baseline, grey": lambda: pillow_jpeg(photo(), "L"),
    "Pillow baseline, CMYK (Adobe's inverted samples: its grey is 127)": lambda: pillow_jpeg(photo(), "CMYK"),
    "Pillow progressive": lambda: pillow_jpeg(photo(), progressive=True),
    "Pillow restart markers every 4 blocks": lambda: pillow_jpeg(photo(), restart_marker_blocks=4),
    "Pillow progressive, restart markers every row": lambda: pillow_jpeg(
        photo(), progressive=True, restart_marker_rows=1
    ),
    "OpenCV baseline": lambda: cv2_jpeg(photo()),
    "OpenCV progressive": lambda: cv2_jpeg(photo(), cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
    "OpenCV restart markers": lambda: cv2_jpeg(photo(), cv2.IMWRITE_JPEG_RST_INTERVAL, 3),
    "Pillow, a large photo read in draft mode": lambda: pillow_jpeg(photo(3000, 2250)),
}


def scan_data_end(data: bytes) -> int:
    """Where the last scan's entropy-coded data ends: the EOI these encoders end their files with."""
    assert data.endswith(EOI)
    return len(data) - len(EOI)


@pytest.mark.parametrize("kind", WHOLE_JPEGS)
def test_a_jpeg_cut_short_and_closed_with_eoi_is_refused_as_cut_short_not_read_with_a_grey_band(kind):
    data = WHOLE_JPEGS[kind]()
    end = scan_data_end(data)
    first_scan = data.index(b"\xff\xda")
    # Cut within the (first) scan's data at several depths; progressive files also within their first scan, where
    # the blocks not reached are grey (cut in a later scan, a progressive picture is whole but coarser at its foot).
    stop = end if "progressive" not in kind else data.index(b"\xff\xda", first_scan + 2)
    for fraction in (0.2, 0.5, 0.8, 0.95):
        cut = first_scan + int((stop - first_scan) * fraction)
        for shrink in (1, 2):
            with pytest.raises(ImageRejected, match=r"cut short.*send the whole file"):
                decode_image(data[:cut] + EOI, shrink=shrink)


def second_decodings(monkeypatch) -> list[bytes]:
    """The files decode_image decodes a second time from now on (check_jpeg_scan_complete), which it still does."""
    checked: list[bytes] = []
    real = decode.check_jpeg_scan_complete

    def recording(data: bytes, *args, **kwargs) -> None:
        checked.append(data)
        real(data, *args, **kwargs)

    monkeypatch.setattr(decode, "check_jpeg_scan_complete", recording)
    return checked


@pytest.mark.parametrize("kind", WHOLE_JPEGS)
def test_every_whole_jpeg_decodes_as_it_did_and_once(kind, monkeypatch):
    data = WHOLE_JPEGS[kind]()
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        assert not decode.may_be_cut_short(data, img)  # no second decoding for a photo
    checked = second_decodings(monkeypatch)
    for shrink in (1, 2):
        picture = decode_image(data, shrink=shrink)
        assert picture.shape[0] > 0 and abs(float(picture.mean()) - 220) < 20
    assert checked == [], "a whole photo was decoded a second time"


def test_a_whole_jpeg_whose_last_block_is_the_padding_grey_is_decoded_not_refused(monkeypatch):
    """The one case that decodes the file twice (the corner alone cannot tell): a drawing on grey 128 paper."""
    picture = np.full((240, 180), 128, np.uint8)
    picture[60:180, 80:100] = 0
    checked = second_decodings(monkeypatch)
    for data in (pillow_jpeg(picture), pillow_jpeg(picture, progressive=True), cv2_jpeg(picture)):
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            assert decode.may_be_cut_short(data, img)
        assert decode_image(data).shape[:2] == (240, 180)
        assert checked[-1:] == [data], "the confirmation runs"


def test_a_cut_at_the_end_of_a_restart_interval_is_refused_too():
    """The scan then waits for a restart marker: the filler brings the one it expects, and the blocks after it."""
    data = pillow_jpeg(photo(), restart_marker_blocks=4)
    end = scan_data_end(data)
    restarts = [position for position, _ in _restart_markers(data, end)]
    for at in restarts[len(restarts) // 2 : len(restarts) // 2 + 3]:
        for cut in (at, at + 1):  # before the marker, or after its 0xFF
            with pytest.raises(ImageRejected, match="cut short"):
                decode_image(data[:cut] + EOI)


def _restart_markers(data: bytes, end: int):
    start = data.index(b"\xff\xda")
    return [(k, data[k + 1]) for k in range(start, end - 1) if data[k] == 0xFF and 0xD0 <= data[k + 1] <= 0xD7]


def test_a_jpeg_cut_short_without_eoi_is_still_refused_by_pillow():
    data = pillow_jpeg(photo())
    with pytest.raises(ImageRejected, match="truncated"):
        decode_image(data[: len(data) // 2])
