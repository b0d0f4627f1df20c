"""The structure of a picture file, checked before Pillow parses it: parts of Pillow's parsers work in Python, one
step per block or per byte, so a file within the byte limit that is made of millions of tiny blocks costs seconds
of CPU (and, for TIFF, hundreds of MiB of memory the decode budget does not see) before a single pixel is decoded.

Each check walks the file's blocks itself, stops at a count no honest file comes near, and raises TooManyBlocks
with what to send instead (shared.decode makes it ImageRejected). Counts, not sizes: a picture with a large
comment, XMP packet or ICC profile in a few blocks passes. The one size checked is a TIFF's tiles, which libtiff
decodes whole however little of them the picture uses. Formats and layouts not named here pass untouched;
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
# Tiles, which libtiff decodes whole, padding included, outside the decode budget: a 16 x 16 picture in one tile of
# 32,768 x 32,768 (a 1 MB file, every TileOffsets entry at one compressed tile of zeros) took 1 GiB and 1.7 s a call
# (found in review). Writers tile at 16 to 512 pixels (libtiff's tiffcp 256, GDAL's COGs 512) or give a picture
# one tile of its own size, rounded up to 16 as TIFF requires; so a tile side may be the picture's, rounded up, or
# at most MAX_TIFF_TILE_SIDE. Across a picture, tiles no larger than it come to less than twice each side, four
# times its pixels; on a thin picture, tiles of a writer's size do not, and MAX_TIFF_TILED_PIXELS bounds them
# (40,000,000 x 1 in tiles of 1,024: 41 G pixels to decode, for a 40 M picture).
MAX_TIFF_TILE_SIDE = 1_024
MAX_TIFF_TILE_PADDING = 4  # the tiles' pixels, over the picture's
MAX_TIFF_TILED_PIXELS = 16 * MAX_TIFF_TILE_SIDE**2  # and whatever the picture, this many (0.1 s of inflating)

_FILL = re.compile(rb"\xff+")
# A marker after entropy-coded data: 0xFF followed by neither a stuffed zero, a restart marker nor a fill byte.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


class TooManyBlocks(ValueError):
    """The file is made of far more (or far larger) blocks than a picture needs; the message says what to send
    instead."""


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
        start, size, layout, field = first + 8, 20, order + "HHQ", 12
    else:
        (first,) = struct.unpack_from(order + "I", data, 4)
        (entries,) = struct.unpack_from(order + "H", data, first)
        start, size, layout, field = first + 2, 12, order + "HHI", 8
    if entries > MAX_TIFF_ENTRIES:
        raise _too_many("tags in its first directory", MAX_TIFF_ENTRIES)
    sizes: dict[int, int] = {}  # ImageWidth, ImageLength, TileWidth, TileLength, where the file gives them
    # The entries the file holds: Pillow reads those of a directory cut short, and opens the picture.
    for k in range(min(entries, (len(data) - start) // size)):
        tag, kind, count = struct.unpack_from(layout, data, start + k * size)
        # StripOffsets, StripByteCounts, TileOffsets, TileByteCounts: Pillow makes a Python tile of each.
        if tag in (273, 279, 324, 325) and count > MAX_TIFF_STRIPS:
            raise _too_many("strips or tiles in its first picture", MAX_TIFF_STRIPS)
        if tag in (256, 257, 322, 323) and count == 1 and kind in _TIFF_INTEGERS:  # one value, in the entry itself
            (sizes[tag],) = struct.unpack_from(order + _TIFF_INTEGERS[kind], data, start + k * size + field)
    _check_tiff_tiles(sizes.get(256, 0), sizes.get(257, 0), sizes.get(322, 0), sizes.get(323, 0))


_TIFF_INTEGERS = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8 (BigTIFF)


def _check_tiff_tiles(width: int, height: int, tile_width: int, tile_length: int) -> None:
    """TooManyBlocks for tiles far larger than the picture needs (MAX_TIFF_TILE_SIDE, MAX_TIFF_TILED_PIXELS)."""
    if min(width, height, tile_width, tile_length) <= 0:
        return  # a picture in strips, or sizes for Pillow to refuse
    advice = f"save it as PNG or JPEG, or as a TIFF in strips or in tiles of at most {MAX_TIFF_TILE_SIDE:,} pixels"
    for side, tile in ((width, tile_width), (height, tile_length)):
        if tile > max(-(-side // 16) * 16, MAX_TIFF_TILE_SIDE):
            raise TooManyBlocks(
                f"a TIFF of {width:,} x {height:,} pixels in tiles of {tile_width:,} x {tile_length:,}: tiles far "
                f"larger than the picture, each decoded whole; {advice}"
            )
    tiled = -(-width // tile_width) * tile_width * -(-height // tile_length) * tile_length
    if tiled > max(MAX_TIFF_TILE_PADDING * width * height, MAX_TIFF_TILED_PIXELS):
        raise TooManyBlocks(
            f"a TIFF of {width:,} x {height:,} pixels in tiles of {tile_width:,} x {tile_length:,}: {tiled:,} "
            f"pixels of tiles, each decoded whole, far more than the picture's; {advice}"
        )


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
