"""The structure of a picture file, checked before Pillow parses it: parts of Pillow's parsers work in Python, one
step per block or per byte, so a file within the byte limit that is made of millions of tiny blocks costs seconds
of CPU (and, for TIFF, hundreds of MiB of memory the decode budget does not see) before a single pixel is decoded.

Each check walks the file's blocks itself, stops at a count no honest file comes near, and raises TooManyBlocks
with what to send instead (shared.decode makes it ImageRejected). Counts, not sizes: a picture with a large
comment, XMP packet or ICC profile in a few blocks passes. Formats and layouts not named here pass untouched;
anything damaged is left to Pillow to report.

Measured before these checks (2-core AMD EPYC, review of stop 36): a 2 MB GIF whose comment comes in 1-byte
blocks took 7.5 s to open (Pillow joins them one at a time); a 1 KB run-length-encoded BMP declaring 40,000,000 x 1
pixels 9.7 s to decode; a 4 MB TIFF of 1,000,000 strips 1.7 s and 250 MiB to open; JPEGs and PNGs padded to 9 MB
with empty segments, fill bytes or unknown chunks 3.6-11.8 s.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator

# Blocks before the first frame's pixels that any honest file stays far below (a camera JPEG has about 20
# segments; an animated GIF a handful of extensions; PNG writers a few dozen chunks at most).
MAX_GIF_EXTENSION_BLOCKS = 65_536  # sub-blocks of the extensions before the first frame (XMP: one per ~255 bytes)
MAX_JPEG_SEGMENTS = 4_096  # segments before the first scan
# Scans in the whole file: libjpeg walks every block of the picture once per scan (a 16 MP picture of 12,000 tiny
# repeated scans took 20 s to decode); a progressive JPEG has about ten, optimised ones a few dozen.
MAX_JPEG_SCANS = 128
MAX_TIFF_ENTRIES = 4_096  # tags in the first directory (a camera's TIFF has a few dozen; Pillow reads each in Python)
MAX_JPEG_FILL_BYTES = 1_024  # 0xFF fill bytes before one marker
MAX_PNG_CHUNKS = 4_096  # chunks in the whole file
MAX_TIFF_STRIPS = 65_536  # strips or tiles of the first image (a 40 MP picture of one row per strip has ~6,000)
MAX_RLE_BMP_PIXELS = 4_000_000  # Pillow decodes run-length BMPs in Python: about a second per 4 MP

_FILL = re.compile(rb"\xff+")
# A marker after entropy-coded data: 0xFF followed by neither a stuffed zero, a restart marker nor a fill byte.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


class TooManyBlocks(ValueError):
    """The file is made of far more blocks than a picture needs; the message says what to send instead."""


def check_file_structure(data: bytes) -> None:
    """TooManyBlocks if `data` is a GIF, JPEG, PNG, TIFF or BMP file of more blocks than a picture needs."""
    head = bytes(data[:8])
    try:
        if head[:6] in (b"GIF87a", b"GIF89a"):
            _check_gif(data)
        elif head[:2] == b"\xff\xd8":
            _check_jpeg(data)
        elif head == b"\x89PNG\r\n\x1a\n":
            _check_png(data)
        elif head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            _check_tiff(data)
        elif head[:2] == b"BM":
            _check_bmp(data)
    except TooManyBlocks:
        raise
    except Exception:  # damaged past what these walks follow (an offset beyond any size): Pillow reports it
        return


def _too_many(what: str, limit: int, advice: str = "save it again as a plain PNG or JPEG") -> TooManyBlocks:
    return TooManyBlocks(f"the file holds more than {limit:,} {what}, far more than a picture needs; {advice}")


def _one_more(count: int, limit: int, what: str) -> int:
    """`count` + 1, or TooManyBlocks when that passes `limit`."""
    if count + 1 > limit:
        raise _too_many(what, limit)
    return count + 1


def _check_gif(data: bytes) -> None:
    if len(data) < 13:
        return
    position = 13
    flags = data[10]
    if flags & 0x80:  # a global colour table follows the screen descriptor
        position += 3 << ((flags & 0x07) + 1)
    blocks = 0
    while position < len(data) and data[position] == 0x21:  # extensions, up to the first image (0x2C)
        position += 2  # introducer and label
        while position < len(data):
            size = data[position]
            position += 1 + size
            if size == 0:  # the terminator
                break
            blocks = _one_more(blocks, MAX_GIF_EXTENSION_BLOCKS, "blocks of comments or extensions before its picture")


def _check_jpeg(data: bytes) -> None:
    segments = scans = 0
    for marker in jpeg_markers(data):
        if marker == 0xDA:
            scans = _one_more(scans, MAX_JPEG_SCANS, "scans (a progressive JPEG has about ten)")
        elif scans == 0:  # Pillow reads the segments before the first scan, one at a time; libjpeg the rest
            segments = _one_more(segments, MAX_JPEG_SEGMENTS, "segments before its picture")


def jpeg_markers(data: bytes) -> Iterator[int]:
    """The code of each marker of a JPEG file after its SOI, walked by the segments' lengths: a thumbnail inside an
    APP segment is skipped whole, and so is a scan's entropy-coded data, up to the marker after it. Stops after EOI,
    and where the walk finds no marker (a damaged file: for Pillow to report). TooManyBlocks for more than
    MAX_JPEG_FILL_BYTES fill bytes before one marker (Pillow reads them one at a time)."""
    for _, marker in jpeg_marker_positions(data):
        yield marker


def jpeg_marker_positions(data: bytes) -> Iterator[tuple[int, int]]:
    """(where its 0xFF is, its code) of each marker jpeg_markers walks."""
    position = 2
    while position + 2 <= len(data):
        fill = _FILL.match(data, position)
        if fill is None:
            return
        if fill.end() - position - 1 > MAX_JPEG_FILL_BYTES:
            raise _too_many("fill bytes before one marker", MAX_JPEG_FILL_BYTES)
        position = fill.end() - 1  # the last 0xFF, before the marker's code
        if position + 2 > len(data):
            return
        marker = data[position + 1]
        standalone = marker in (0x01, 0xD8, 0xD9) or 0xD0 <= marker <= 0xD7  # markers without a length
        if not standalone and position + 4 > len(data):
            return  # its length is cut off
        yield position, marker
        if marker == 0xD9:  # EOI: the first image ends (an MPO's other pictures follow)
            return
        if standalone:
            position += 2
            continue
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")  # the length counts itself
        if marker == 0xDA:  # SOS: a scan header, then its entropy-coded data up to the next marker
            found = _NEXT_MARKER.search(data, position)
            if found is None:
                return
            position = found.start()


def _check_png(data: bytes) -> None:
    chunks, pixels_seen, animated = 0, False, False
    for kind, body, length in png_chunks(data):
        if kind == b"IEND" or (animated and pixels_seen and kind in (b"fcTL", b"fdAT")):
            return  # the end, or an animation's second frame: Pillow reads the first frame only
        pixels_seen |= kind == b"IDAT"
        # An animation as Pillow sees one: an acTL of more than one frame. Without it, Pillow reads every chunk
        # after the pixels too, a stray fcTL's followers included.
        if kind == b"acTL" and length >= 4:
            animated = int.from_bytes(data[body : body + 4], "big") > 1
        chunks = _one_more(chunks, MAX_PNG_CHUNKS, "chunks")


def png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(kind, where its body starts, its length) of each chunk of a PNG file, by their lengths; CRCs unchecked."""
    position = 8
    while position + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, position)
        yield bytes(data[position + 4 : position + 8]), position + 8, length
        position += 12 + length


def _check_tiff(data: bytes) -> None:
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")  # BigTIFF: 8-byte offsets and counts, 20-byte entries
    if big:
        (first,) = struct.unpack_from(order + "Q", data, 8)
        (entries,) = struct.unpack_from(order + "Q", data, first)
        start, size, layout = first + 8, 20, order + "HHQ"
    else:
        (first,) = struct.unpack_from(order + "I", data, 4)
        (entries,) = struct.unpack_from(order + "H", data, first)
        start, size, layout = first + 2, 12, order + "HHI"
    if entries > MAX_TIFF_ENTRIES:
        raise _too_many("tags in its first directory", MAX_TIFF_ENTRIES)
    for k in range(entries):
        tag, _kind, count = struct.unpack_from(layout, data, start + k * size)
        # StripOffsets, StripByteCounts, TileOffsets, TileByteCounts: Pillow makes a Python tile of each.
        if tag in (273, 279, 324, 325) and count > MAX_TIFF_STRIPS:
            raise _too_many("strips or tiles in its first picture", MAX_TIFF_STRIPS)


def _check_bmp(data: bytes) -> None:
    if len(data) < 34:
        return
    (header,) = struct.unpack_from("<I", data, 14)
    if header < 40:  # the old OS/2 header has no compression field
        return
    width, height, _planes, _bits, compression = struct.unpack_from("<iiHHI", data, 18)
    if compression in (1, 2) and abs(width) * abs(height) > MAX_RLE_BMP_PIXELS:  # RLE8, RLE4
        raise TooManyBlocks(
            f"a run-length encoded BMP of {abs(width):,} x {abs(height):,} pixels: more than the "
            f"{MAX_RLE_BMP_PIXELS:,} pixels such a file is read at; save it as PNG"
        )
