"""Very large pictures of one drawn digit, in every format users may send: the memory-budget flood's inputs.

A digit fills the middle of a `side` x `side` canvas (40 MP at the default 6,320 px, just under the server's
40,000,000-pixel limit), drawn as one thick stroke: a small file that decodes to a huge frame, which is what an
attacker sends. Each format as users' tools write it: PNG as a web canvas (RGBA, ink only in alpha), JPEG and
WebP as photos of paper (RGB), TIFF with deflate compression (RGB), GIF as a palette image.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

FORMATS = ("PNG", "JPEG", "TIFF", "WEBP", "GIF")
DEFAULT_SIDE = 6320  # 6320^2 = 39,942,400 pixels


def digit_ink(digit28: np.ndarray, side: int) -> np.ndarray:
    """(side, side) uint8 coverage: the 28x28 digit scaled up to fill ~60 % of the canvas, centred, crisp."""
    box = int(side * 0.6)
    big = cv2.resize(digit28.astype(np.uint8), (box, box), interpolation=cv2.INTER_LINEAR)
    canvas = np.zeros((side, side), np.uint8)
    top = (side - box) // 2
    canvas[top : top + box, top : top + box] = np.where(big >= 128, 255, 0).astype(np.uint8)
    return canvas


def encode_big(digit28: np.ndarray, fmt: str, side: int = DEFAULT_SIDE) -> bytes:
    """One `side` x `side` picture of `digit28` in `fmt` (one of FORMATS), as that format's users make it."""
    ink = digit_ink(digit28, side)
    buffer = io.BytesIO()
    if fmt == "PNG":  # a canvas export: black strokes, transparent elsewhere
        rgba = np.zeros((side, side, 4), np.uint8)
        rgba[:, :, 3] = ink
        Image.fromarray(rgba, "RGBA").save(buffer, format="PNG", compress_level=1)
    elif fmt == "GIF":  # a palette image: dark ink on white
        Image.fromarray(255 - ink, "L").convert("P").save(buffer, format="GIF")
    else:  # a photo or scan of paper: dark ink on white, RGB
        grey = 255 - ink
        rgb = Image.fromarray(np.dstack([grey, grey, grey]), "RGB")
        options = {
            "JPEG": {"quality": 85},
            "TIFF": {"compression": "tiff_deflate"},
            "WEBP": {"quality": 80, "method": 0},
        }[fmt]
        rgb.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decoded_8bit_bytes(fmt: str, side: int = DEFAULT_SIDE) -> int:
    """The picture's size decoded at 8 bits per channel, in the channels the file has: the figure the issue's
    'peak extra memory at most 2x its decoded 8-bit size' is measured against."""
    channels = {"PNG": 4, "GIF": 1, "JPEG": 3, "TIFF": 3, "WEBP": 3}[fmt]
    return side * side * channels
