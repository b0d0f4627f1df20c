"""Builders for the bad-input table (tests/reliability/test_bad_input.py): one function per kind of input.

Every builder takes a real MNIST digit (28x28 uint8, ink bright on black) and returns the bytes a client would
send. The valid-but-unusual kinds draw that digit, so an accepted one can be checked against it.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

EXIF_ORIENTATION_TAG = 0x0112


def on_paper(digit: np.ndarray, scale: int = 4) -> np.ndarray:
    """The digit scaled up `scale` times, dark ink on white paper, with a margin: (28*scale+40)^2 grey."""
    big = np.kron(digit, np.ones((scale, scale), np.uint8))
    paper = np.full((big.shape[0] + 40, big.shape[1] + 40), 255, np.uint8)
    paper[20:-20, 20:-20] = 255 - big
    return paper


def encode(array: np.ndarray | Image.Image, fmt: str, **params) -> bytes:
    img = array if isinstance(array, Image.Image) else Image.fromarray(array)
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_from_rows(
    width: int, height: int, bit_depth: int, colour_type: int, idat: bytes, extra_chunks: tuple[bytes, ...] = ()
) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + b"".join(extra_chunks)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------------------------------------------
# Not pictures at all


def empty(digit) -> bytes:
    return b""


def random_bytes(digit) -> bytes:
    return np.random.default_rng(6).integers(0, 256, 4096, dtype=np.uint8).tobytes()


def plain_text(digit) -> bytes:
    return b"seven\nthis is a text file, not a picture of a digit\n"


def svg(digit) -> bytes:
    return (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="280" height="280">'
        b'<rect width="280" height="280" fill="white"/><text x="100" y="200" font-size="200">7</text></svg>\n'
    )


def pdf(digit) -> bytes:
    return b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def heic(digit) -> bytes:
    return b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)


def eps(digit) -> bytes:
    """PostScript: Pillow would run Ghostscript on it. Never opened."""
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nnewpath 14 2 moveto 14 26 lineto stroke\nshowpage\n"


def tga(digit) -> bytes:
    """A valid TGA of the digit: a format without a signature, so not accepted (random bytes could pass as one)."""
    return encode(on_paper(digit), "TGA")


def ico(digit) -> bytes:
    return encode(Image.fromarray(on_paper(digit)).resize((64, 64)), "ICO")


# ---------------------------------------------------------------------------------------------------------------
# Damaged pictures


def truncated_png(digit) -> bytes:
    data = encode(on_paper(digit), "PNG")
    return data[: len(data) // 2]


def truncated_jpeg(digit) -> bytes:
    data = encode(on_paper(digit), "JPEG", quality=90)
    return data[: len(data) // 2]


def truncated_jpeg_closed(digit) -> bytes:
    """Cut at half its scan and closed with EOI: libjpeg fills the missing rows grey and Pillow does not say so."""
    data = encode(on_paper(digit), "JPEG", quality=90)
    return data[: len(data) // 2] + b"\xff\xd9"


def truncated_gif(digit) -> bytes:
    data = encode(on_paper(digit), "GIF")
    return data[: len(data) // 2]


def truncated_webp(digit) -> bytes:
    data = encode(on_paper(digit), "WEBP")
    return data[: len(data) // 2]


def png_bad_crc(digit) -> bytes:
    """One bit of the image data flipped: the chunk's CRC no longer matches."""
    data = bytearray(encode(on_paper(digit), "PNG"))
    at = data.index(b"IDAT") + 20
    data[at] ^= 0x10
    return bytes(data)


def header_only_png(digit) -> bytes:
    """Signature and IHDR, then nothing: no image data at all."""
    return encode(on_paper(digit), "PNG")[:33]


# ---------------------------------------------------------------------------------------------------------------
# Too big


def oversized_bytes(digit, limit: int) -> bytes:
    """A real PNG padded past the server's byte limit with an ancillary chunk (still a valid PNG)."""
    data = encode(on_paper(digit), "PNG")
    padding = png_chunk(b"tEXt", b"Comment\x00" + b"x" * (limit + 1000))
    return data[:33] + padding + data[33:]


def huge_dimensions_png(digit) -> bytes:
    """A 100 kB-free header that claims 100,000 x 100,000 pixels (10 gigapixels); the data is one row."""
    return png_from_rows(100_000, 100_000, 8, 0, zlib.compress(bytes(100_001)))


def huge_dimensions_jpeg(digit) -> bytes:
    """A real JPEG whose frame header (SOF0) is edited to claim 65,000 x 65,000 pixels."""
    data = bytearray(encode(on_paper(digit), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65_000, 65_000)
    return bytes(data)


def decompression_bomb_png(digit) -> bytes:
    """A genuine bomb: 8,000 x 8,000 1-bit pixels (64 megapixels, 64 MB once decoded to 8-bit grey) in ~8 kB.

    Below Pillow's own bomb ceiling (179 MP), so the server's pixel limit is what stops it.
    """
    width = height = 8_000
    row = b"\x00" + bytes(width // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return png_from_rows(width, height, 1, 0, idat)


def gif_huge_screen(digit) -> bytes:
    """A real GIF whose logical screen is edited to 65,535 x 65,535 (the decoder would allocate 4 GB)."""
    data = bytearray(encode(on_paper(digit), "GIF"))
    data[6:10] = struct.pack("<HH", 65_535, 65_535)
    return bytes(data)


def png_text_bomb(digit) -> bytes:
    """A valid picture carrying a compressed text chunk that inflates to 100 MB."""
    data = encode(on_paper(digit), "PNG")
    compressor = zlib.compressobj(9)
    text = b"".join(compressor.compress(bytes(1 << 20)) for _ in range(100)) + compressor.flush()
    return data[:33] + png_chunk(b"zTXt", b"Comment\x00\x00" + text) + data[33:]


# ---------------------------------------------------------------------------------------------------------------
# Valid but unusual pictures of the digit


def one_by_one(digit) -> bytes:
    return encode(np.zeros((1, 1), np.uint8), "PNG")


def all_white(digit) -> bytes:
    return encode(np.full((280, 280), 255, np.uint8), "PNG")


def all_black(digit) -> bytes:
    return encode(np.zeros((280, 280), np.uint8), "JPEG")


def fully_transparent(digit) -> bytes:
    return encode(np.zeros((100, 100, 4), np.uint8), "PNG")


def grey_16_bit(digit) -> bytes:
    return encode(Image.fromarray(on_paper(digit).astype(np.uint16) * 257), "PNG")  # mode I;16


def cmyk_jpeg(digit) -> bytes:
    rgb = np.stack([on_paper(digit)] * 3, axis=2)
    return encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)


def palette_with_transparency(digit) -> bytes:
    """Palette PNG: index 0 (background) transparent, index 1 ink; both palette colours black."""
    indices = (np.kron(digit, np.ones((4, 4), np.uint8)) > 127).astype(np.uint8)
    img = Image.fromarray(indices, mode="L").convert("P")
    img.putpalette([0, 0, 0, 0, 0, 0] + [0] * 762)
    return encode(img, "PNG", transparency=0)


def animated_gif(digit) -> bytes:
    """Two frames: the digit, then a blank page. The first frame is the picture."""
    frames = [Image.fromarray(on_paper(digit)), Image.fromarray(np.full_like(on_paper(digit), 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def multi_page_tiff(digit) -> bytes:
    frames = [Image.fromarray(on_paper(digit)), Image.fromarray(np.full_like(on_paper(digit), 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "TIFF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def exif_rotated(digit) -> bytes:
    """Stored turned 90 degrees counter-clockwise with EXIF orientation 6 ("rotate 90 clockwise to display")."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6
    return encode(np.ascontiguousarray(np.rot90(on_paper(digit), 1)), "PNG", exif=exif.tobytes())


def one_bit_bmp(digit) -> bytes:
    return encode(Image.fromarray(on_paper(digit) > 127), "BMP")


def float_tiff_with_nan(digit) -> bytes:
    """32-bit float pixels in [0, 1], a few of them NaN (as scientific software writes missing values)."""
    pixels = on_paper(digit).astype(np.float32) / 255
    pixels[0, :5] = np.nan
    return encode(Image.fromarray(pixels, mode="F"), "TIFF")


def extreme_aspect_ratio(digit) -> bytes:
    """A 1-pixel-tall, 20,000-pixel-wide strip with a dark dash in the middle."""
    strip = np.full((1, 20_000), 255, np.uint8)
    strip[0, 9_000:11_000] = 0
    return encode(strip, "PNG")


def noise_only(digit) -> bytes:
    """Grey paper with faint sensor noise and no digit."""
    rng = np.random.default_rng(6)
    return encode(np.clip(rng.normal(180, 3, (240, 320)), 0, 255).astype(np.uint8), "PNG")
