"""Untrusted bytes -> a picture at working resolution: the image pipeline's security boundary, in one file to audit.

Everything a user sends is read here and nowhere else. In order, and before any pixel is decoded where that is
possible:
- the byte count (Limits.max_bytes);
- the format, from its signature: only PNG, JPEG, GIF, BMP, TIFF and WebP (nothing headerless that random bytes
  could pass for, nothing that runs an external program);
- the *declared* pixel count (Limits.max_pixels; a few kB of PNG can declare gigapixels);
then the first frame only; JPEG decoded at reduced size when large; 16-bit, CMYK and palette images brought to
8 bits; transparency composited so that ink held only in the alpha channel stays visible; EXIF orientation
applied; the result shrunk to at most WORK_MAX_SIDE pixels on its long side. Any failure is ImageRejected with a
message that says what to send instead; nothing else escapes for bad input.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import re
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, PngImagePlugin

from shared.budget import BudgetExhausted, MemoryBudget
from shared.file_structure import (
    MAX_JPEG_SEGMENTS,
    TooManyBlocks,
    check_file_structure,
    jpeg_marker_positions,
    jpeg_markers,
    png_chunks,
)

# Working resolution: the ink is found on the picture shrunk to this long side. A digit that fills a tenth of the
# picture is still ~100 px tall, five times MNIST's box; the cost stays bounded for 12-megapixel photos.
WORK_MAX_SIDE = 1024


# What users may send, as Pillow names the formats ("JPEG" also opens phones' multi-picture MPO files). Only formats
# with a clear signature, so random bytes never decode as a headerless format (TGA), and nothing that runs an
# external program (EPS runs Ghostscript).
PIL_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WebP")  # for messages and the service's input contract

EXIF_ORIENTATION_TAG = 0x0112

# A PNG's text chunks are read, and zTXt and iTXt inflated, by Image.open: before the reservation, outside the
# decode budget. Pillow's own ceiling is 64 MiB of text a file: 63 zTXt chunks of 1 MiB each, a 67 KB file, held
# 64 MiB a call (found in review). A picture's text is a few kB of metadata and at most one XMP packet, which Pillow
# reads up to 1 MiB a chunk: twice that in all. Past either, Pillow raises, and the picture is refused with advice.
PNG_TEXT_CHUNK = 2**20
PNG_TEXT_MEMORY = 2 * PNG_TEXT_CHUNK
PngImagePlugin.MAX_TEXT_CHUNK = PNG_TEXT_CHUNK
PngImagePlugin.MAX_TEXT_MEMORY = PNG_TEXT_MEMORY


class ImageRejected(ValueError):
    """The picture cannot be turned into a digit; the message says what is wrong and what to do about it."""


class OutOfMemory(RuntimeError):
    """Decoding a picture ran out of memory: the server's state, not the picture's fault; try again later."""


@dataclass(frozen=True)
class Limits:
    """Per-image limits, checked before anything is decoded.

    max_bytes: a 12-megapixel phone JPEG is 2-6 MB and a canvas or paint-program PNG well under 1 MB, so 10 MiB
        accepts every honest upload while bounding what one request makes the server read.
    max_pixels: width x height as the file's header declares it. 40 MP accepts 12- and 24-MP phone photos (a
        48-MP one is over max_bytes anyway); beyond that a digit picture is implausible and the file is treated
        as a decompression bomb (a few kB of PNG can declare gigapixels). Large JPEGs are decoded at 1/2..1/8
        scale, so only other formats can cost the full 4 bytes per pixel (160 MB at 40 MP) of memory.
    """

    max_bytes: int
    max_pixels: int

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_pixels <= 0:
            raise ValueError(f"limits must be positive, got {self}")


DEFAULT_LIMITS = Limits(max_bytes=10 * 1024 * 1024, max_pixels=40_000_000)


def decode_image(
    data: bytes, *, limits: Limits = DEFAULT_LIMITS, budget: MemoryBudget | None = None, shrink: int = 1
) -> np.ndarray:
    """Bytes -> (H, W) or (H, W, 3) uint8 at working resolution, transparency composited, EXIF applied.

    `shrink` 2: at half the working resolution (the image pipeline's coarse pass reads that first); a JPEG is
    then decoded at about that size by DCT scaling, in a third of the time.

    With a `budget`, the bytes the decoding will hold are reserved in it before decoding and given back when the
    picture is at working resolution: BudgetExhausted if they do not fit in time. A MemoryError while decoding
    is OutOfMemory. Neither is the picture's fault, so neither is ImageRejected.
    """
    check_byte_count(data, limits)
    try:
        check_file_structure(data)  # before Pillow's parsers, some of which work one block at a time in Python
    except TooManyBlocks as e:
        raise ImageRejected(str(e)) from None
    try:
        if is_still_webp(data):
            picture = decode_still_webp(data, limits, budget)
            return shrink_to(picture, max(picture.shape[:2]) // shrink) if shrink > 1 else picture
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as img:
            check_pixel_count(img.size, limits)  # declared size, before a single pixel is decoded
            coefficients = jpeg_coefficient_cost(data, img)  # at the declared size: before the reduction
            max_side = max(1, min(max(img.size), WORK_MAX_SIDE) // shrink)
            request_reduced_decode(img, max_side)
            with reservation(budget, decode_cost(img) + coefficients + decoder_buffer_cost(data, img)):
                img.load()  # the first frame only: animated GIFs, multi-page TIFFs
                check_pixel_count(img.size, limits)
                orientation = exif_orientation(img)
                digest = frame_digest(img) if may_be_cut_short(data, img) else None
                array = reduced_array(img)
                img.close()  # the full-resolution frame goes now, not when the `with` ends
                if digest is not None:  # after the close: the second decoding fits in the same reservation
                    check_jpeg_scan_complete(data, digest, max_side)
                return shrink_to(prepare_array(apply_exif_orientation(array, orientation)), max_side)
    except (ImageRejected, BudgetExhausted):
        raise
    except MemoryError:
        raise OutOfMemory(
            "the server ran out of memory decoding this picture; try again in a moment, or send a "
            "smaller picture (crop to the digit)"
        ) from None
    except Image.DecompressionBombError as e:  # Pillow's own, far higher, ceiling: its sentence, in ours
        declared = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(declared.group(1)):,} pixels" if declared else "more pixels than Pillow decodes"
        raise ImageRejected(
            f"the picture's header declares {size}; the limit is {limits.max_pixels:,} (larger files are treated as "
            "decompression bombs). Send a smaller picture, cropped to the digit, or a complete file if it is damaged"
        ) from None
    except Image.UnidentifiedImageError:
        raise ImageRejected(unidentified_message(data)) from None
    except Exception as e:
        if isinstance(e, ValueError) and "MAX_TEXT_" in str(e):  # PngImagePlugin's MAX_TEXT_CHUNK, MAX_TEXT_MEMORY
            raise ImageRejected(  # an ICC profile (iCCP) inflates against MAX_TEXT_CHUNK too
                "the PNG's metadata (text chunks or its ICC profile) is too large, far more than a picture carries: "
                f"the limit is {PNG_TEXT_MEMORY / 2**20:g} MiB in all and {PNG_TEXT_CHUNK / 2**20:g} MiB in one chunk. "
                "Save the picture again without its metadata, or as JPEG"
            ) from None
        raise ImageRejected(
            f"the picture could not be decoded ({type(e).__name__}: {e}); the file is damaged or truncated, or of a "
            f"kind we do not read. Save it as an 8-bit PNG or JPEG, or send a complete {', '.join(ACCEPTED_FORMATS)} "
            "file"
        ) from None


def displayed_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a picture as it is displayed, EXIF orientation applied, from its header alone: the frame
    in which positions found at working resolution are reported back (ReadNumber's boxes). For bytes that
    decode_image accepted; anything else is ImageRejected."""
    if is_still_webp(data) and _webp() is not None:  # read as decode_image reads it: by libwebp, not Pillow
        config, _ = webp_features(data)
        width, height = config.input.width, config.input.height
        return (height, width) if webp_exif_orientation(data) in (5, 6, 7, 8) else (width, height)
    try:
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as img:
            width, height = img.size
            if is_still_webp(data):
                orientation = webp_exif_orientation(data)
            elif img.format == "PNG":  # Pillow's getexif() decodes a PNG's pixels to find an eXIf chunk after them
                orientation = png_exif_orientation(data) or exif_orientation(img, load=False)
            elif img.format == "TIFF":  # Pillow gives a TIFF's size turned already, as it turns the pixels it loads
                orientation = 1
            else:
                orientation = exif_orientation(img)
    except MemoryError:
        raise OutOfMemory("the server ran out of memory reading this picture's header; try again in a moment") from None
    except Exception as e:
        raise ImageRejected(f"the picture's header could not be read ({type(e).__name__}: {e})") from None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)  # 5-8 turn it a quarter


def reservation(budget: MemoryBudget | None, nbytes: int) -> contextlib.AbstractContextManager:
    """Hold `nbytes` of `budget` (if any) while decoding. A picture that could never fit is refused as input."""
    if budget is None:
        return contextlib.nullcontext()
    if nbytes > budget.capacity:
        raise ImageRejected(
            f"this picture needs {nbytes / 2**20:,.0f} MiB to decode, more than the server allows "
            f"for decoding at once (the limit is {budget.capacity / 2**20:,.0f} MiB); send a smaller picture "
            "(a PNG far wider than tall holds its frame three times over: crop it to the digit; animated WebP "
            "takes four times its frame size: send a still picture; a progressive JPEG holds its "
            "whole resolution however small it is read: save it as a baseline JPEG)"
        )
    return budget.reserve(nbytes)


# Bytes per pixel of a decoded frame as Pillow stores it: one byte for 1, L and P; two for 16-bit grey; four for
# everything else (RGB is stored as RGBX, LA as four bytes too).
_ONE_BYTE_MODES = ("1", "L", "P")
_TWO_BYTE_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# Pillow decodes (animated) WebP through libwebp's animation decoder, which keeps two canvases of its own, and
# copies the frame out of it: four frames in all, measured (bench/bench_memory.py). Still WebP pictures do not
# come here: decode_still_webp decodes them straight to working resolution.
_FRAMES_WHILE_DECODING = {"WEBP": 4}


def decode_cost(img: Image.Image) -> int:
    """Bytes the decoding of an opened (not yet loaded) image will hold: what the memory budget reserves.

    After request_reduced_decode, `img.size` is the reduced size a JPEG will be decoded at. The reduction to
    working resolution afterwards works band by band (reduced_array), so the frame is the dominant cost.
    """
    width, height = img.size
    per_pixel = 1 if img.mode in _ONE_BYTE_MODES else 2 if img.mode in _TWO_BYTE_MODES else 4
    frames = _FRAMES_WHILE_DECODING.get(img.format or "", 1)
    if img.format == "TIFF" and getattr(img, "tag_v2", {}).get(EXIF_ORIENTATION_TAG, 1) not in (None, 1):
        frames += 1  # Pillow turns the loaded frame into a second one (ImageOps.exif_transpose in load_end)
    return width * height * per_pixel * frames


def decoder_buffer_cost(data: bytes, img: Image.Image) -> int:
    """Bytes a decoder holds besides the frame while it decodes, beyond what one band of the reduction holds
    (REDUCE_BAND_PIXELS at four bytes: left unreserved, as the bands are): 0 for almost every picture.

    Pillow's PNG decoder keeps the row it decodes and the one before, at the file's depth: a 40,000,000 x 1 RGBA
    PNG held 305 MiB so, besides its 153 MiB frame (found in review). libtiff decodes a whole strip or tile into a
    buffer of its own before Pillow copies it into the frame: a picture in one strip or one tile holds its frame
    twice (shared/file_structure.py refuses tiles far larger than the picture). `img` opened, not loaded.
    """
    width, height = img.size
    tags = getattr(img, "tag_v2", None) if img.format == "TIFF" else None
    buffers = 0
    if img.format == "PNG" and len(data) >= 26:
        depth, colour = data[24], data[25]  # IHDR's bit depth and colour type
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(colour, 4)
        buffers = 2 * (-(-width * channels * depth // 8) + 1)  # and a byte a row for its filter type
    elif tags is not None and tags.get(259, 1) != 1:  # compressed: libtiff's (Pillow reads uncompressed rows itself)
        bits = tags.get(258, (8,))
        bits = tuple(bits) if isinstance(bits, tuple) else (int(bits),)
        # BitsPerSample given once for all samples (Pillow repeats it for each): 8 bits of RGB are 24 a pixel.
        bits_per_pixel = bits[0] * int(tags.get(277, 1)) if len(bits) == 1 else sum(bits)
        if 322 in tags and 323 in tags:
            columns, rows = int(tags[322]), int(tags[323])
        else:  # RowsPerStrip: libtiff holds no more rows than the picture has
            columns, rows = width, min(int(tags.get(278, height)), height)
        buffers = rows * -(-columns * bits_per_pixel // 8)
        if tags.get(262) == 6 and not (tags.get(259) == 7 and tags.get(284, 1) == 1):
            buffers += width * min(rows, height) * 4  # YCbCr, not as JPEG: Pillow has libtiff give RGBA rows too
    return max(0, buffers - REDUCE_BAND_PIXELS * 4)


def jpeg_coefficient_cost(data: bytes, img: Image.Image) -> int:
    """Bytes libjpeg holds besides the frame for a JPEG whose pixels come in several scans: 0 for any other.

    A baseline JPEG is decoded one row of blocks at a time. A progressive one (and a sequential one whose colour
    components come in separate scans) is not: libjpeg keeps every DCT coefficient of the whole image, two bytes
    each, 64 a block of 8x8 pixels, for each component, until the last scan is in, and it does so at the declared
    size even when request_reduced_decode has it read at an eighth of it. So a 40 MP progressive photo holds
    about 230 MiB besides its reduced frame's 9.5 MiB (measured: 239 MiB of peak memory, against 34 MiB for the
    same picture as a baseline JPEG).
    Counted at the declared size, padded to whole 16-pixel blocks, as if no component were subsampled (an upper
    bound: 4:2:0 holds half of it). `img` opened, before request_reduced_decode.
    """
    if img.format not in ("JPEG", "MPO"):
        return 0
    if not img.info.get("progressive") and jpeg_scan_count(data) <= 1:
        return 0
    width, height = (-(-side // 16) * 16 for side in img.size)
    return width * height * len(img.getbands()) * 2


def jpeg_scan_count(data: bytes) -> int:
    """The number of scans (SOS markers) of a JPEG's first image, 2 meaning "2 or more", found by walking its
    segments (shared.file_structure.jpeg_markers). A damaged file counts the scans seen before the damage; one
    padded past the structure check's limits counts as the costlier kind."""
    scans = 0
    try:
        for segments, marker in enumerate(jpeg_markers(data), 1):
            if segments > MAX_JPEG_SEGMENTS:
                return 2
            scans += marker == 0xDA
            if scans == 2:
                return 2
    except TooManyBlocks:
        return 2
    return scans


# ---------------------------------------------------------------------------------------------------------------
# A JPEG cut short: libjpeg fills what its scan lacks with grey, and Pillow does not say so

# The value of every sample of a block libjpeg fills in for missing data in a single-scan JPEG (all coefficients
# zero: mid-grey, 128; as inverted CMYK, 127); and bytes that hold no marker (no 0xFF), pseudo-random, so that
# a scan decodes them to blocks that are not all grey.
_PADDING_VALUES = (127, 128)
_SCAN_FILLER = bytes((k * 167 + 13) % 255 for k in range(256))
_RESTART_MARKER = re.compile(rb"\xff[\xd0-\xd7]")


def may_be_cut_short(data: bytes, img: Image.Image) -> bool:
    """Whether a loaded JPEG frame may come from a file cut short, and check_jpeg_scan_complete must tell.

    A JPEG cut short but still ending in a marker (an interrupted upload closed with EOI) decodes without a word
    from Pillow: libjpeg only warns, and fills the blocks its scan lacks with grey, which the pipeline would read as
    paper or ink. In a single-scan JPEG the last block is then exactly that grey (_PADDING_VALUES): one pixel read,
    so a whole JPEG costs nothing more, and the rare whole one whose corner is this grey is decoded twice. A
    progressive JPEG smooths its grey blocks with their neighbours (libjpeg's block smoothing), so its sign is its
    last scan instead: one of DC coefficients, where a whole file ends with AC detail. A progressive file cut in a
    later scan has every block, coarser at its foot, and is read (as is a cut in the very last block: no band)."""
    if img.format not in ("JPEG", "MPO"):
        return False
    pixel = img.getpixel((img.width - 1, img.height - 1))
    if all(value in _PADDING_VALUES for value in (pixel if isinstance(pixel, tuple) else (pixel,))):
        return True
    return bool(img.info.get("progressive")) and last_scan_is_dc(data)


def last_scan_is_dc(data: bytes) -> bool:
    """Whether a JPEG's last scan is of DC coefficients (its spectral selection starts at 0)."""
    scans = [position for position, marker in jpeg_marker_positions(data) if marker == 0xDA]
    if not scans:
        return False
    components = data[scans[-1] + 4] if scans[-1] + 4 < len(data) else 0
    start = scans[-1] + 5 + 2 * components  # after the length, the count and two bytes a component
    return start < len(data) and data[start] == 0


def check_jpeg_scan_complete(data: bytes, digest: bytes, max_side: int) -> None:
    """ImageRejected if the JPEG's last scan ends before its last block: it is decoded again with bytes put between
    its scan data and the marker after it (jpeg_with_filler). libjpeg stops reading a whole scan at its last
    block and skips what follows up to the marker, so a whole file decodes to the same frame (`digest`, at the
    same reduced size, `max_side`); a scan cut short reads the new bytes as its missing blocks, no longer grey."""
    filled = jpeg_with_filler(data)
    if filled is None:
        return
    try:
        with Image.open(io.BytesIO(filled), formats=PIL_FORMATS) as img:
            request_reduced_decode(img, max_side)
            img.load()
            same = frame_digest(img) == digest
    except MemoryError:
        raise
    except Exception:  # the file decoded whole once: what the filler does to it is no reason to refuse it
        return
    if not same:
        raise ImageRejected(
            "the JPEG file is cut short (truncated): its picture data ends before the last of the rows its header "
            "declares, and a decoder fills those with grey. The upload was probably interrupted; send the whole file"
        )


def jpeg_with_filler(data: bytes) -> bytes | None:
    """The JPEG with _SCAN_FILLER, the restart marker its last scan expects next, and _SCAN_FILLER again put where
    its last scan's data ends (before the marker after it, and any fill bytes 0xFF): a scan cut at the end of a
    restart interval resumes at that marker and reads the filler too. None when the walk finds no such scan."""
    scan = end = None
    for position, marker in jpeg_marker_positions(data):
        if marker == 0xDA:
            scan, end = position, None
        elif scan is not None and end is None:
            end = position
    if scan is None or end is None:
        return None
    while end > scan and data[end - 1] == 0xFF:
        end -= 1
    restarts = len(_RESTART_MARKER.findall(data, scan + 2 + int.from_bytes(data[scan + 2 : scan + 4], "big"), end))
    restart = bytes((0xFF, 0xD0 + restarts % 8))
    return bytes(data[:end]) + _SCAN_FILLER + restart + _SCAN_FILLER + bytes(data[end:])


def frame_digest(img: Image.Image) -> bytes:
    """A digest of a loaded frame's pixels, taken band by band (REDUCE_BAND_PIXELS): no whole copy of the frame."""
    digest = hashlib.blake2b(digest_size=16)
    rows = max(1, REDUCE_BAND_PIXELS // max(1, img.width))
    for top in range(0, img.height, rows):
        digest.update(img.crop((0, top, img.width, min(img.height, top + rows))).tobytes())
    return digest.digest()


def largest_decode_cost(max_pixels: int) -> int:
    """The most a still picture within `max_pixels` can cost (decode_cost): four bytes a pixel. (An animated WebP
    or a progressive JPEG that costs more than the budget is refused as input, with advice.)"""
    return max_pixels * 4


# The reduction to working resolution converts this many source pixels at a time, so no full-resolution copy in
# another mode (palette to RGB, RGBA to premultiplied) or as a NumPy array is ever made.
REDUCE_BAND_PIXELS = 2_000_000


def reduced_array(img: Image.Image) -> np.ndarray:
    """A loaded frame -> the array pil_to_array would give (without an alpha left unset: alpha_left_unset), brought
    down to about WORK_MAX_SIDE on its long side first when the frame is more than twice that.

    Pillow's `reduce` (a box filter by an integer factor; premultiplied for alpha, as compositing needs) runs on
    horizontal bands of the frame, each converted to the array's mode on its own: the extra memory is a few
    bands, not a second full-resolution frame. Smaller pictures go straight through (at most 2 x WORK_MAX_SIDE a
    side), and prepare_array shrinks them the rest of the way.
    """
    width, height = img.size
    factor, _, _ = working_size(width, height)
    opaque = alpha_left_unset(img)
    if factor == 1:
        return pil_to_array(img, opaque=opaque)
    band_height = factor * max(1, REDUCE_BAND_PIXELS // (width * factor))
    # `factor` rows of a picture far wider than tall are more than a band (of 40,000,000 x 1, the whole frame, which
    # the crop and the conversions copied twice over: found in review), so a band is cut across too, at multiples
    # of `factor`: `reduce` averages the same boxes of pixels as on the whole band.
    rows = min(band_height, height)
    band_width = width if rows * width <= REDUCE_BAND_PIXELS else factor * max(1, REDUCE_BAND_PIXELS // (rows * factor))
    bands = [
        [
            (left, top, min(width, left + band_width), min(height, top + band_height))
            for left in range(0, width, band_width)
        ]
        for top in range(0, height, band_height)
    ]
    high_bit_depth = img.mode in _HIGH_BIT_DEPTH_MODES
    # Float grey's scale depends on the whole frame's maximum: one pass over the pieces to find it.
    scale = (
        float_scale(max(finite_max(np.asarray(img.crop(box))) for band in bands for box in band))
        if img.mode == "F"
        else None
    )
    reduced = []
    for band in bands:
        pieces = []
        for box in band:
            piece = img.crop(box)  # a copy of these pixels only
            if high_bit_depth:  # 16-bit or float grey: to uint8, then box-averaged like Pillow's reduce
                size = (math.ceil(piece.width / factor), math.ceil(piece.height / factor))
                pieces.append(
                    cv2.resize(high_bit_depth_to_uint8(np.asarray(piece), scale), size, interpolation=cv2.INTER_AREA)
                )
            else:
                pieces.append(np.asarray(piece.convert(array_mode(piece, opaque=opaque)).reduce(factor)))
        reduced.append(np.concatenate(pieces, axis=1) if len(pieces) > 1 else pieces[0])
    return np.concatenate(reduced)


# ---------------------------------------------------------------------------------------------------------------
# Still WebP, decoded by libwebp straight to working resolution


def is_jpeg(data: bytes) -> bool:
    """JPEG's signature (SOI and the first marker), which phone photos and MPO files start with."""
    return bytes(data[:3]) == b"\xff\xd8\xff"


def is_still_webp(data: bytes) -> bool:
    """A RIFF/WEBP file without animation (VP8X's animation flag, 0x02, unset; plain VP8/VP8L have none)."""
    head = bytes(data[:21])
    if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return False
    return not (head[12:16] == b"VP8X" and len(head) > 20 and head[20] & 0x02)


# libwebp's public WebPDecoderOptions (decode.h, stable across 1.x): ints, in this order. The `webp` package's
# cffi declarations name only `use_threads`, so the scaling fields are set by their documented position; the
# layout is checked once against the library's own offset of `use_threads`, and a mismatch falls back to Pillow.
_OPTIONS_FIELDS = (
    "bypass_filtering",
    "no_fancy_upsampling",
    "use_cropping",
    "crop_left",
    "crop_top",
    "crop_width",
    "crop_height",
    "use_scaling",
    "scaled_width",
    "scaled_height",
    "use_threads",
)


def _webp():
    try:
        import webp
    except ImportError:  # pragma: no cover - a dependency of the project
        return None
    int_size = webp.ffi.sizeof("int")
    if webp.ffi.offsetof("WebPDecoderOptions", "use_threads") != _OPTIONS_FIELDS.index("use_threads") * int_size:
        return None  # pragma: no cover - an ABI we do not know: let Pillow decode
    return webp


def working_size(width: int, height: int) -> tuple[int, int, int]:
    """(reduction factor, width, height) that reduced_array and decode_still_webp bring a picture to."""
    if max(width, height) <= 2 * WORK_MAX_SIDE:
        return 1, width, height
    factor = math.ceil(max(width, height) / WORK_MAX_SIDE)
    return factor, math.ceil(width / factor), math.ceil(height / factor)


def webp_features(data: bytes):
    """(libwebp's decoder config with the header's features read into `input`, the data it reads): ImageRejected
    for bytes libwebp cannot read. Needs _webp()."""
    webp = _webp()
    config = webp.WebPDecoderConfig.new()
    source = webp.WebPData.from_buffer(data)
    if webp.lib.WebPGetFeatures(source.ptr.bytes, source.size, webp.ffi.addressof(config.ptr, "input")) != 0:
        raise ImageRejected(unidentified_message(data))
    return config, source


def decode_still_webp(data: bytes, limits: Limits, budget: MemoryBudget | None) -> np.ndarray:
    """A still WebP -> prepare_array's result, decoded by libwebp's scaler directly at (about) working resolution:
    no full-resolution frame exists at any time, so a 40 MP WebP costs a few megabytes (libwebp decodes and
    rescales a few rows at a time). The header is read without decoding, and the pixel limit checked on it."""
    webp = _webp()
    if webp is None:  # pragma: no cover
        raise RuntimeError("the webp package is missing or of an unknown ABI")
    config, source = webp_features(data)
    width, height, has_alpha = config.input.width, config.input.height, bool(config.input.has_alpha)
    check_pixel_count((width, height), limits)
    _, out_width, out_height = working_size(width, height)
    channels = 4 if has_alpha else 3
    with reservation(budget, 2 * out_width * out_height * channels + 64 * width * 4):  # output + row buffers
        array = np.empty((out_height, out_width, channels), np.uint8)
        options = webp.ffi.cast("int *", webp.ffi.addressof(config.ptr, "options"))
        if (out_width, out_height) != (width, height):
            options[_OPTIONS_FIELDS.index("use_scaling")] = 1
            options[_OPTIONS_FIELDS.index("scaled_width")] = out_width
            options[_OPTIONS_FIELDS.index("scaled_height")] = out_height
        mode = webp.WebPColorMode.RGBA if has_alpha else webp.WebPColorMode.RGB
        config.output.colorspace = mode.value
        config.output.u.RGBA.rgba = webp.ffi.cast("uint8_t *", webp.ffi.from_buffer(array))
        config.output.u.RGBA.size = array.size
        config.output.u.RGBA.stride = out_width * channels
        config.output.is_external_memory = 1
        status = webp.lib.WebPDecode(source.ptr.bytes, source.size, config.ptr)
        webp.lib.WebPFreeDecBuffer(webp.ffi.addressof(config.ptr, "output"))
        if status != 0:
            raise ImageRejected(
                f"the WebP picture could not be decoded (libwebp status {status}); the file is "
                f"damaged or truncated. Send a complete {', '.join(ACCEPTED_FORMATS)} file"
            )
        return prepare_array(apply_exif_orientation(array, webp_exif_orientation(data)))


def webp_exif_orientation(data: bytes) -> int:
    """The EXIF orientation in a WebP's EXIF chunk (1 = upright, also when absent or damaged)."""
    offset = 12  # after "RIFF", the size, "WEBP"
    while offset + 8 <= len(data):
        fourcc, size = bytes(data[offset : offset + 4]), int.from_bytes(data[offset + 4 : offset + 8], "little")
        if fourcc == b"EXIF":
            payload = bytes(data[offset + 8 : offset + 8 + size])
            try:
                exif = Image.Exif()
                exif.load(payload[6:] if payload.startswith(b"Exif\0\0") else payload)
                value = int(exif.get(EXIF_ORIENTATION_TAG, 1))
            except Exception:
                return 1
            return value if 1 <= value <= 8 else 1
        offset += 8 + size + (size & 1)  # chunks are padded to an even size
    return 1


# ---------------------------------------------------------------------------------------------------------------
# Checks


def check_byte_count(data: bytes, limits: Limits) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageRejected(f"expected the image file's bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageRejected(f"empty image: send the bytes of a {', '.join(ACCEPTED_FORMATS)} file")
    if len(data) > limits.max_bytes:
        raise ImageRejected(
            f"image is {len(data):,} bytes; the limit is {limits.max_bytes:,}. Send a smaller file "
            "(crop to the digit, or save it as PNG or JPEG at a lower resolution)"
        )


def check_pixel_count(size: tuple[int, int], limits: Limits) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageRejected(f"image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageRejected(
            f"image is {width}x{height} = {width * height:,} pixels; the limit is {limits.max_pixels:,} "
            "(larger files are treated as decompression bombs). Send a smaller picture, cropped to the digit"
        )


# File signatures, to tell a damaged picture from something that is no picture at all.
_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"RIFF": "WebP",
}


# How the base64 text of a PNG, a JPEG, a GIF and a WebP file begins.
BASE64_PICTURE_HEADS = (b"iVBORw0KGgo", b"/9j/", b"R0lGOD", b"UklGR")


def unidentified_message(data: bytes) -> str:
    """Why Pillow could not even identify the bytes, and what to send instead."""
    accepted = ", ".join(ACCEPTED_FORMATS)
    head = bytes(data[:16])
    for signature, name in _SIGNATURES.items():
        if head.startswith(signature):
            return (
                f"the file starts like a {name} but its header is damaged or truncated, or the {name} is of a kind "
                f"we do not read (such as 32-bit float samples, or an unusual compression); save it as an 8-bit PNG "
                f"or JPEG, or send a complete {accepted} file"
            )
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return f"HEIC/HEIF/AVIF pictures are not accepted; export or share the photo as JPEG (or {accepted})"
    if head.startswith(b"%PDF"):
        what = "it looks like a PDF"
    elif head[:5].lower() == b"data:":
        what = "it is a data: URL, text: decode the base64 after its comma and send those bytes"
    elif head.startswith(BASE64_PICTURE_HEADS):
        what = "it is a picture written as base64 text: decode it (base64 -d) and send those bytes"
    elif head.lstrip().startswith((b"{", b"[")):
        what = "it looks like JSON; send the picture's own bytes, not JSON around them"
    elif head.lstrip().startswith(b"<"):
        what = "it looks like text or SVG/XML"
    else:
        what = f"it starts with bytes {head[:8].hex(' ')}"
    return f"not a picture in a format we read ({what}); send a {accepted} file"


def request_reduced_decode(img: Image.Image, max_side: int = WORK_MAX_SIDE) -> None:
    """Let JPEG decode at 1/2, 1/4 or 1/8 scale (DCT scaling) when the photo is far above `max_side` (working
    resolution, or half of it for the coarse pass).

    A 12-MP photo then costs ~1/4 of the time and memory; the result is still at least `max_side` on its long
    side, so no detail the pipeline uses is lost. Other formats ignore the request.
    """
    width, height = img.size
    scale = max(width, height) / max_side
    if img.format in ("JPEG", "MPO") and scale >= 2:  # MPO: a JPEG with extra frames
        img.draft(None, (max(1, int(width / scale)), max(1, int(height / scale))))


def png_exif_orientation(data: bytes) -> int | None:
    """The EXIF orientation of a PNG from its eXIf chunk, found by walking the chunks (wherever it lies, before the
    pixels or after them, as exif_orientation finds it once the pixels are loaded); None without one."""
    for kind, body, length in png_chunks(data):
        if kind == b"eXIf":
            exif = Image.Exif()
            try:
                exif.load(bytes(data[body : body + length]))
                value = int(exif.get(EXIF_ORIENTATION_TAG, 1))
            except Exception:
                return 1
            return value if 1 <= value <= 8 else 1
        if kind == b"IEND":
            break
    return None


def exif_orientation(img: Image.Image, *, load: bool = True) -> int:
    """The EXIF orientation (1..8; 1 = upright). A damaged EXIF block counts as upright rather than failing.
    Without `load`, only what the file's header holds is read (text chunks, XMP): a PNG's getexif() would decode
    the pixels first."""
    try:
        exif = img.getexif() if load else Image.Image.getexif(img)
        value = int(exif.get(EXIF_ORIENTATION_TAG, 1))
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def apply_exif_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip (H, W[, C]) so it displays upright, as ImageOps.exif_transpose would (tested against it)."""
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:  # transpose
        return array.swapaxes(0, 1)
    if orientation == 6:  # rotate 90 degrees clockwise
        return array.swapaxes(0, 1)[:, ::-1]
    if orientation == 7:  # transverse
        return array.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:  # rotate 90 degrees counter-clockwise
        return array.swapaxes(0, 1)[::-1]
    return array


def alpha_left_unset(img: Image.Image) -> bool:
    """Whether a loaded frame is a BMP whose alpha is 0 everywhere. A 32-bit BMP with an alpha mask
    (BI_BITFIELDS, V4 and V5 headers) often has it left at 0 by the program that wrote it, and browsers show
    such a file opaque; read as transparent, the digit in it was refused as "fully transparent". A BMP is
    uncompressed at 32 bits, so the byte limit keeps this scan of its pixels small."""
    return img.format == "BMP" and img.mode == "RGBA" and img.getchannel("A").getextrema() == (0, 0)


def array_mode(img: Image.Image, *, opaque: bool = False) -> str:
    """The 8-bit mode a picture becomes: L or RGB, or LA or RGBA when it has transparency (not if `opaque`)."""
    mode = img.mode
    has_transparency = not opaque and ("A" in mode or "a" in mode or "transparency" in img.info)
    if mode in ("1", "L", "LA", "La"):
        return "LA" if has_transparency else "L"
    return "RGBA" if has_transparency else "RGB"  # RGB, RGBX, P, PA, CMYK, YCbCr, LAB, HSV, RGBA, RGBa


def pil_to_array(img: Image.Image, *, opaque: bool = False) -> np.ndarray:
    """A loaded Pillow image in any mode -> (H, W) uint8, (H, W, 3) uint8 or, with transparency (kept unless
    `opaque`), (H, W, 2 or 4)."""
    if img.mode in _HIGH_BIT_DEPTH_MODES:
        return high_bit_depth_to_uint8(np.asarray(img))
    return np.asarray(img.convert(array_mode(img, opaque=opaque)))


_HIGH_BIT_DEPTH_MODES = ("I", "F", *_TWO_BYTE_MODES)


def float_scale(maximum: float) -> float:
    """Float grey is [0, 1] when its largest value (NaN read as 0, +inf as 255) is at most 1, else [0, 255]."""
    return 255.0 if maximum <= 1.0 else 1.0


def finite_float32(array: np.ndarray) -> np.ndarray:
    """Float grey as float32 with NaN read as 0 and +inf as 255. A float64 value past float32's range becomes
    infinite on the way, as brightness beyond any scale: read as +inf or -inf are (numpy's overflow warning is
    expected here, not a fault of the caller's)."""
    with np.errstate(over="ignore"):
        single = array.astype(np.float32)
    return np.nan_to_num(single, nan=0.0, posinf=255.0, neginf=0.0)


def finite_max(array: np.ndarray) -> float:
    return float(finite_float32(array).max(initial=0.0))


def high_bit_depth_to_uint8(array: np.ndarray, scale: float | None = None) -> np.ndarray:
    """16/32-bit integer grey (16-bit range assumed) or float grey ([0, 1] or [0, 255]; `scale` given, or decided
    from the array's own maximum) -> uint8."""
    if array.dtype.kind == "f":
        array = finite_float32(array)
        if scale is None:
            scale = 255.0 if array.size and float(array.max()) <= 1.0 else 1.0
        return np.clip(array * scale + 0.5, 0, 255).astype(np.uint8)
    return (np.clip(array, 0, 65535).astype(np.uint32) // 257).astype(np.uint8)  # 65535 -> 255


def prepare_array(image: np.ndarray) -> np.ndarray:
    """Any decoded array -> (H, W) or (H, W, 3) uint8, alpha composited, long side <= WORK_MAX_SIDE."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (2, 3, 4)):
        raise ImageRejected(f"expected a grey, grey+alpha, RGB or RGBA picture, got an array of shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageRejected(f"image has no pixels ({image.shape[1]}x{image.shape[0]})")
    image = np.ascontiguousarray(to_uint8(image))
    if image.ndim == 2 or image.shape[2] == 3:
        return np.ascontiguousarray(shrink_to(image, WORK_MAX_SIDE))
    return flatten_alpha(image, WORK_MAX_SIDE)


def flatten_alpha(image: np.ndarray, max_side: int) -> np.ndarray:
    """(H, W, 2 or 4) uint8, the last channel alpha -> (H, W) or (H, W, 3) uint8 composited onto the backdrop
    composite_alpha chooses, its long side at most `max_side` (the client's previews keep the full size)."""
    # Shrink before compositing, premultiplied: compositing is linear in (colour * alpha, alpha), so averaging
    # first gives the same result, and the float arithmetic runs on the small picture only.
    colour, alpha = np.ascontiguousarray(image[:, :, :-1]), np.ascontiguousarray(image[:, :, -1])
    key = colour_key(colour, alpha)  # before shrinking, which grades all-or-nothing alpha at the edges
    alpha_per_channel = alpha if colour.shape[2] == 1 else cv2.merge([alpha] * colour.shape[2])
    premultiplied = cv2.multiply(colour.reshape(alpha_per_channel.shape), alpha_per_channel, scale=1 / 255)
    return np.ascontiguousarray(composite_alpha(shrink_to(premultiplied, max_side), shrink_to(alpha, max_side), key))


def colour_key(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray | None:
    """(C,) float32: the one colour of every transparent pixel when transparency is all or nothing, as a colour
    key makes it (a GIF's transparent index, a PNG's tRNS colour): the colour the picture was drawn on. None for
    graded alpha (a web canvas's anti-aliased strokes), or transparent pixels of several colours."""
    if cv2.countNonZero(cv2.inRange(alpha, 1, 254)) > 0:
        return None
    transparent = colour[alpha == 0].reshape(-1, colour.shape[2] if colour.ndim == 3 else 1)  # (n, C)
    if len(transparent) == 0 or not (transparent == transparent[0]).all():
        return None
    return transparent[0].astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 as is; bool -> 0/255; 8-bit signed clipped; wider integers as 16-bit; floats as [0, 1] or [0, 255]."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255
    if image.dtype.kind in "ui" and image.dtype.itemsize == 1:
        return np.clip(image, 0, 255).astype(np.uint8)
    if image.dtype.kind in "uif":
        return high_bit_depth_to_uint8(image)
    raise ImageRejected(f"unsupported pixel type {image.dtype}")


def composite_alpha(premultiplied: np.ndarray, alpha: np.ndarray, key: np.ndarray | None = None) -> np.ndarray:
    """Flatten (H, W[, 3]) premultiplied colour with (H, W) alpha onto a backdrop chosen so the ink stays visible.

    Web canvases export the strokes in the alpha channel and leave RGB constant (often black: (0, 0, 0, 0) is the
    empty canvas), so a fixed white or black backdrop would make one kind or the other invisible. When most of
    the picture is transparent, the opaque part is the drawing: the backdrop is the colour key's (`key`, see
    colour_key) where the drawing stands out from it, else white under dark ink and black under light ink. When
    most is opaque, the opaque part is the paper (a photo with transparent corners): the backdrop is the paper's
    median colour, so the corners vanish into it.

    The key first: soft dark ink keyed out of white paper keeps its light fringes opaque, and their mean is light,
    so "light ink" put it on black, where its dark core vanished (a blurred "2026" read as "0").
    """
    premultiplied = premultiplied.astype(np.float32)
    premultiplied = premultiplied if premultiplied.ndim == 3 else premultiplied[:, :, None]  # (H, W, C)
    weight = alpha.astype(np.float32) / 255.0  # (H, W)
    total_weight = float(weight.sum(dtype=np.float64))
    if total_weight == 0:
        raise ImageRejected("the picture is fully transparent: there is nothing drawn on it")
    if float(weight.min()) < 1.0:
        if np.count_nonzero(alpha >= 128) * 2 < alpha.size:
            if key is not None and stands_out(premultiplied, weight, key):
                backdrop = key
            else:
                ink_luminance = float(premultiplied.mean(axis=2).sum(dtype=np.float64)) / total_weight
                backdrop = np.full(premultiplied.shape[2], 255.0 if ink_luminance < 128 else 0.0, np.float32)
        else:  # the paper's colour: the median of (a sample of) the opaque pixels, un-premultiplied
            colours = sample_grid(premultiplied, 256).reshape(-1, premultiplied.shape[2])  # (n, C)
            weights = sample_grid(weight, 256).reshape(-1, 1)  # (n, 1)
            opaque = weights[:, 0] >= 0.5
            if not opaque.any():  # transparent holes right on the sample grid: every opaque pixel instead
                colours = premultiplied.reshape(-1, premultiplied.shape[2])
                weights = weight.reshape(-1, 1)
                opaque = weights[:, 0] >= 0.5
            backdrop = np.median(colours[opaque] / weights[opaque], axis=0).astype(np.float32)
        premultiplied = premultiplied + backdrop * (1.0 - weight)[:, :, None]
    flat = np.clip(premultiplied + 0.5, 0, 255).astype(np.uint8)
    return flat[:, :, 0] if flat.shape[2] == 1 else flat


# A drawing stands out from a colour when a tenth of its opaque pixels differ from it by this much in luminance.
KEY_CONTRAST = 64


def stands_out(premultiplied: np.ndarray, weight: np.ndarray, key: np.ndarray) -> bool:
    """Whether the opaque pixels (weight >= 1/2, of (H, W, C) premultiplied colour) would show on `key` (C,):
    not when the ink is the key's own colour (a palette whose ink and transparent entries are both black)."""
    opaque = weight >= 0.5
    if not opaque.any():
        return False
    luminance = premultiplied[opaque].mean(axis=1) / weight[opaque]  # un-premultiplied
    return float(np.percentile(np.abs(luminance - float(key.mean())), 90)) >= KEY_CONTRAST


def shrink_to(image: np.ndarray, max_side: int) -> np.ndarray:
    """Area-average (H, W[, C]) down so its long side is at most max_side; smaller pictures are left alone."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)


def sample_grid(image: np.ndarray, max_side: int) -> np.ndarray:
    """Every k-th pixel of (H, W[, C]), at cell centres, so the long side has at most max_side samples.

    Plain sampling, not averaging: 40x cheaper, and a thin stroke's samples keep their full contrast, so the
    robust fit sees them as the outliers they are instead of as slightly darker paper.
    """
    h, w = image.shape[:2]
    step = max(1, int(np.ceil(max(h, w) / max_side)))
    # A side shorter than half a step (a 1 x 20,000 strip) still gets one sample row or column.
    return np.ascontiguousarray(image[min(step // 2, h - 1) :: step, min(step // 2, w - 1) :: step])
