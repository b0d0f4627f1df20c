"""Any picture of one digit -> what an MNIST digit looks like: 28x28 uint8, ink bright on black.

Used by the inference server (every Predict) and the client's preview, so both see exactly what the model sees.

MNIST was built from black-and-white scans: each digit was scaled to fit a 20x20 box keeping its aspect ratio
(the scaling anti-aliased it into grey levels) and pasted into 28x28 so that its centre of mass lies on the
centre pixel. A user's picture is nothing like that: a large canvas, a white (or dark, or coloured) background,
uneven lighting, a small digit in a corner, a stroke far thinner or thicker than MNIST's. The steps:

1. decode_image   bytes -> array. Check the byte count, then the *declared* pixel count before anything is
                  decoded (decompression bombs); take the first frame; ask JPEG for a reduced-size decode when
                  the photo is large; 16-bit, CMYK and palette images become 8-bit grey or RGB; composite
                  transparency so that ink held only in the alpha channel stays visible; apply EXIF orientation;
                  shrink to at most WORK_MAX_SIDE pixels on the long side.
2. estimate_background   the paper: a smooth quadratic surface per colour channel, fitted robustly (the ink is
                  a minority and is rejected as outliers), so a lighting gradient or vignette is not ink.
3. ink_contrast   how far each pixel is from the paper, in the colour channel where it differs most. Dark ink
                  on white, light ink on black and red ink on equally bright green all become bright ink on black:
                  no polarity guess, no inversion step that can go wrong.
4. find_ink       threshold (Otsu, never below a contrast floor and the noise level), keep the connected
                  strokes that form the digit and drop specks of noise by their size relative to the digit, not
                  by morphology, so a one-pixel pen stroke survives. Nothing left -> ImageRejected (blank).
5. crop           to the ink, at working resolution, with a soft (anti-aliased) ink map rather than a binary one.
6. normalise_stroke_width   measure the stroke width (2 x area / perimeter) relative to the digit's size and
                  bring it into MNIST's range (median 0.11 of the box): thin pen strokes are grown, paint-brush
                  strokes are thinned, using distance transforms (cost independent of the width).
7. fit_in_box + centre_by_mass   scale so the longer side is 20 pixels (area averaging = anti-aliasing) and
                  paste into 28x28 with the centre of mass on pixel (14, 14), as MNIST's mean is (13.99, 14.01).

Everything heavy is one OpenCV call on a whole array; no Python loop touches pixels. A 640x480 photo takes a few
milliseconds (bench/bench_preprocess.py).
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

# ---------------------------------------------------------------------------------------------------------------
# Constants. The MNIST figures were measured on the 10,000 test digits (see the README's pipeline section).

MNIST_SIDE = 28
MNIST_BOX = 20  # the longer side of every MNIST digit's bounding box
MNIST_CENTRE = 14.0  # mean centre of mass of MNIST digits, in pixel-index coordinates: (13.99, 14.01)

# Stroke width / longer side of the bounding box, as 2*area/perimeter of the digit at 4x: MNIST's 10th, 50th and
# 90th percentiles are 0.082, 0.110 and 0.153, nearly the same for every digit (0.103..0.115 medians).
STROKE_RATIO_TARGET = 0.11
STROKE_RATIO_THIN = 0.07  # below this (MNIST's 3rd percentile) the stroke is grown to STROKE_RATIO_TARGET
STROKE_RATIO_THICK = 0.17  # above this (MNIST's 95th percentile) it is thinned to STROKE_RATIO_THICK_TARGET
STROKE_RATIO_THICK_TARGET = 0.13  # MNIST's 75th percentile: bold, but with open loops
MAX_THINNING_FRACTION = 0.3  # never remove more than this fraction of the stroke width (thin parts would vanish)

# Working resolution: the ink is found on the picture shrunk to this long side. A digit that fills a tenth of the
# picture is still ~100 px tall, five times MNIST's box; the cost stays bounded for 12-megapixel photos.
WORK_MAX_SIDE = 1024
# Stroke widths are adjusted on the cropped digit at this many pixels on its long side: fine enough for one-pixel
# precision at MNIST's scale (x8 of the 20-px box), cheap enough that the distance transforms cost ~0.2 ms.
STROKE_WORK_MAX_SIDE = 160
STROKE_WORK_MIN_SIDE = 64

BACKGROUND_GRID_SIDE = 48  # the paper is modelled on at most this many samples along the long side
BACKGROUND_FIT_ROUNDS = 3
BACKGROUND_MIN_TOLERANCE = 12.0  # grey levels: the robust fit's smallest inlier band (paper noise, texture, JPEG)

MIN_INK_CONTRAST = 40  # grey levels (of 255) between ink and paper below which nothing counts as ink
NOISE_MULTIPLE = 5.0  # the ink threshold also stays this many times above the typical background residue
SOFT_FLOOR_MIN = 6  # the soft ink map starts at this contrast (or 3x the noise level, if higher)
KEEP_AREA_FRACTION = 0.04  # strokes smaller than this fraction of the largest stroke are specks of noise...
KEEP_NEAR_FRACTION = 0.6  # ...and strokes this far from the largest (x its size) that are not big are stray marks
KEEP_BIG_FRACTION = 0.25  # a stroke at least this fraction of the largest is kept wherever it is
MIN_DIGIT_SIDE = 5  # pixels at working resolution; a smaller blob is a speck, not a digit

# What users may send, as Pillow names the formats ("JPEG" also opens phones' multi-picture MPO files). Only formats
# with a clear signature, so random bytes never decode as a headerless format (TGA), and nothing that runs an
# external program (EPS runs Ghostscript).
PIL_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WebP")  # for messages and the service's input contract

EXIF_ORIENTATION_TAG = 0x0112


class ImageRejected(ValueError):
    """The picture cannot be turned into a digit; the message says what is wrong and what to do about it."""


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


@dataclass(frozen=True)
class PipelineTrace:
    """Each stage's result, for the README figure, debugging and tests. Shapes in the comments."""

    image: np.ndarray  # (H, W) or (H, W, 3) uint8: decoded, composited, oriented, at working resolution
    background: np.ndarray  # same shape as image: the estimated paper
    ink: np.ndarray  # (H, W) uint8: contrast to the paper, ink bright on black
    region: "InkRegion"  # where the digit's strokes are in `ink`
    crop: np.ndarray  # (h, w) float32 in [0, 1]: soft ink cropped to the digit, stroke width normalised
    stroke_ratio: float  # stroke width / longer side of the digit, as measured before normalising
    output: np.ndarray  # (28, 28) uint8


# ---------------------------------------------------------------------------------------------------------------
# Public entry points


def to_mnist(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, GIF, BMP, TIFF, WebP) -> (28, 28) uint8 MNIST-style digit.

    Raises ImageRejected for empty, oversized, undecodable or blank input; never anything else for bad input.
    """
    return to_mnist_array(decode_image(data, limits=limits))


def to_mnist_array(image: np.ndarray) -> np.ndarray:
    """An already-decoded picture -> (28, 28) uint8 MNIST-style digit.

    image: (H, W) grey, (H, W, 1), (H, W, 2) grey+alpha, (H, W, 3) RGB or (H, W, 4) RGBA; uint8, uint16, bool or
    float in [0, 1]. Raises ImageRejected if it holds no digit.
    """
    return trace_pipeline(image).output


def trace_pipeline(image: np.ndarray) -> PipelineTrace:
    """to_mnist_array, keeping every intermediate stage (for the README figure and for debugging)."""
    work = prepare_array(image)
    background = estimate_background(work)
    ink = ink_contrast(work, background)
    region = find_ink(ink)
    crop, ratio = normalise_stroke_width(region.soft)
    output = centre_by_mass(fit_in_box(crop))
    return PipelineTrace(work, background, ink, region, crop, ratio, output)


def encode_png(img28: np.ndarray) -> bytes:
    """A (28, 28) uint8 image -> PNG bytes (what the model saw, for the client to show)."""
    img28 = np.asarray(img28)
    if img28.shape != (MNIST_SIDE, MNIST_SIDE) or img28.dtype != np.uint8:
        raise ValueError(f"expected a (28, 28) uint8 image, got {img28.shape} {img28.dtype}")
    ok, encoded = cv2.imencode(".png", img28)
    if not ok:  # pragma: no cover - OpenCV fails only without a PNG codec
        raise RuntimeError("OpenCV could not encode a PNG")
    return encoded.tobytes()


# ---------------------------------------------------------------------------------------------------------------
# 1. Decoding


def decode_image(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Bytes -> (H, W) or (H, W, 3) uint8 at working resolution, transparency composited, EXIF applied."""
    check_byte_count(data, limits)
    try:
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as img:
            check_pixel_count(img.size, limits)  # declared size, before a single pixel is decoded
            request_reduced_decode(img)
            img.load()  # the first frame only: animated GIFs, multi-page TIFFs
            check_pixel_count(img.size, limits)
            orientation = exif_orientation(img)
            array = pil_to_array(img)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own, far higher, ceiling
        raise ImageRejected(f"{e}. Send a smaller picture (at most {limits.max_pixels:,} pixels).") from None
    except Image.UnidentifiedImageError:
        raise ImageRejected(unidentified_message(data)) from None
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageRejected(
            f"the picture could not be decoded ({type(e).__name__}: {e}); the file is damaged or truncated. "
            f"Send a complete {', '.join(ACCEPTED_FORMATS)} file"
        ) from None
    return prepare_array(apply_exif_orientation(array, orientation))


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
    b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF87a": "GIF", b"GIF89a": "GIF", b"BM": "BMP",
    b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"RIFF": "WebP",
}


def unidentified_message(data: bytes) -> str:
    """Why Pillow could not even identify the bytes, and what to send instead."""
    accepted = ", ".join(ACCEPTED_FORMATS)
    head = bytes(data[:16])
    for signature, name in _SIGNATURES.items():
        if head.startswith(signature):
            return (f"the file starts like a {name} but its header is damaged or truncated; "
                    f"send a complete {accepted} file")
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return f"HEIC/HEIF/AVIF pictures are not accepted; export or share the photo as JPEG (or {accepted})"
    if head.startswith(b"%PDF"):
        what = "it looks like a PDF"
    elif head.lstrip().startswith(b"<"):
        what = "it looks like text or SVG/XML"
    else:
        what = f"it starts with bytes {head[:8].hex(' ')}"
    return f"not a picture in a format we read ({what}); send a {accepted} file"


def request_reduced_decode(img: Image.Image) -> None:
    """Let JPEG decode at 1/2, 1/4 or 1/8 scale (DCT scaling) when the photo is far above working resolution.

    A 12-MP photo then costs ~1/4 of the time and memory; the result is still at least WORK_MAX_SIDE on its long
    side, so no detail the pipeline uses is lost. Other formats ignore the request.
    """
    width, height = img.size
    scale = max(width, height) / WORK_MAX_SIDE
    if img.format in ("JPEG", "MPO") and scale >= 2:  # MPO: a JPEG with extra frames
        img.draft(None, (max(1, int(width / scale)), max(1, int(height / scale))))


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation (1..8; 1 = upright). A damaged EXIF block counts as upright rather than failing."""
    try:
        value = int(img.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 - malformed EXIF raises anything from struct.error to KeyError
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


def pil_to_array(img: Image.Image) -> np.ndarray:
    """A loaded Pillow image in any mode -> (H, W) uint8, (H, W, 3) uint8 or, with transparency, (H, W, 2 or 4)."""
    mode = img.mode
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return high_bit_depth_to_uint8(np.asarray(img))
    has_transparency = "A" in mode or "a" in mode or "transparency" in img.info
    if mode in ("1", "L") and not has_transparency:
        return np.asarray(img.convert("L"))
    if mode in ("L", "LA", "La") and has_transparency:
        return np.asarray(img.convert("LA"))
    if has_transparency:  # P with a transparent index, PA, RGBA, RGBa, RGB with a transparent colour
        return np.asarray(img.convert("RGBA"))
    return np.asarray(img.convert("RGB"))  # RGB, RGBX, P, CMYK, YCbCr, LAB, HSV


def high_bit_depth_to_uint8(array: np.ndarray) -> np.ndarray:
    """16/32-bit integer grey (16-bit range assumed) or float grey ([0, 1] or [0, 255]) -> uint8."""
    if array.dtype.kind == "f":
        array = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
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
    # Shrink before compositing, premultiplied: compositing is linear in (colour * alpha, alpha), so averaging
    # first gives the same result, and the float arithmetic runs on the small picture only.
    colour, alpha = np.ascontiguousarray(image[:, :, :-1]), np.ascontiguousarray(image[:, :, -1])
    alpha_per_channel = alpha if colour.shape[2] == 1 else cv2.merge([alpha] * colour.shape[2])
    premultiplied = cv2.multiply(colour.reshape(alpha_per_channel.shape), alpha_per_channel, scale=1 / 255)
    return np.ascontiguousarray(
        composite_alpha(shrink_to(premultiplied, WORK_MAX_SIDE), shrink_to(alpha, WORK_MAX_SIDE))
    )


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


def composite_alpha(premultiplied: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Flatten (H, W[, 3]) premultiplied colour with (H, W) alpha onto a backdrop chosen so the ink stays visible.

    Web canvases export the strokes in the alpha channel and leave RGB constant (often black: (0, 0, 0, 0) is the
    empty canvas), so a fixed white or black backdrop would make one kind or the other invisible. When most of
    the picture is transparent, the opaque part is the drawing: the backdrop is white under dark ink and black
    under light ink. When most is opaque, the opaque part is the paper (a photo with transparent corners): the
    backdrop is the paper's median colour, so the corners vanish into it.
    """
    premultiplied = premultiplied.astype(np.float32)
    premultiplied = premultiplied if premultiplied.ndim == 3 else premultiplied[:, :, None]  # (H, W, C)
    weight = alpha.astype(np.float32) / 255.0  # (H, W)
    total_weight = float(weight.sum(dtype=np.float64))
    if total_weight == 0:
        raise ImageRejected("the picture is fully transparent: there is nothing drawn on it")
    if float(weight.min()) < 1.0:
        if np.count_nonzero(alpha >= 128) * 2 < alpha.size:
            ink_luminance = float(premultiplied.mean(axis=2).sum(dtype=np.float64)) / total_weight
            backdrop = np.full(premultiplied.shape[2], 255.0 if ink_luminance < 128 else 0.0, np.float32)
        else:  # the paper's colour: the median of (a sample of) the opaque pixels, un-premultiplied
            colours = sample_grid(premultiplied, 256).reshape(-1, premultiplied.shape[2])  # (n, C)
            weights = sample_grid(weight, 256).reshape(-1, 1)  # (n, 1)
            opaque = weights[:, 0] >= 0.5
            backdrop = np.median(colours[opaque] / weights[opaque], axis=0).astype(np.float32)
        premultiplied = premultiplied + backdrop * (1.0 - weight)[:, :, None]
    flat = np.clip(premultiplied + 0.5, 0, 255).astype(np.uint8)
    return flat[:, :, 0] if flat.shape[2] == 1 else flat


def shrink_to(image: np.ndarray, max_side: int) -> np.ndarray:
    """Area-average (H, W[, C]) down so its long side is at most max_side; smaller pictures are left alone."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(np.ascontiguousarray(image), size, interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------------------------------------------------------
# 2-3. Paper and ink


def estimate_background(image: np.ndarray) -> np.ndarray:
    """The paper under the digit, (H, W[, 3]) uint8: a quadratic surface per channel, fitted robustly.

    The picture is sampled on a grid of at most BACKGROUND_GRID_SIDE points a side. A quadratic in (x, y) covers a
    lighting gradient and a vignette. The fit starts from the border's median colour (the paper almost always
    reaches the border, even when a bold digit covers half the picture) and is refitted on the samples that lie
    within a tolerance of the current surface, so the ink samples (a minority) do not pull the paper towards them.
    """
    grid = sample_grid(image, BACKGROUND_GRID_SIDE).astype(np.float64)
    grid = grid if grid.ndim == 3 else grid[:, :, None]  # (h, w, C)
    h, w, channels = grid.shape
    values = grid.reshape(-1, channels)  # (h*w, C)
    border = np.concatenate([grid[0], grid[-1], grid[:, 0], grid[:, -1]])  # (2h + 2w, C)
    fitted = np.broadcast_to(np.median(border, axis=0), values.shape)
    design = quadratic_design(h, w)  # (h*w, 6)
    if len(values) >= 4 * design.shape[1]:
        for _ in range(BACKGROUND_FIT_ROUNDS):
            residual = np.abs(values - fitted).max(axis=1)  # (h*w,)
            tolerance = max(BACKGROUND_MIN_TOLERANCE, 3.0 * float(np.percentile(residual, 40)))
            inliers = residual <= tolerance
            if np.count_nonzero(inliers) < 2 * design.shape[1]:
                break
            fitted = fit_least_squares(design[inliers], values[inliers], design)
    surface = np.clip(fitted.reshape(h, w, channels) + 0.5, 0, 255).astype(np.uint8)
    full = cv2.resize(surface, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    return full.reshape(image.shape)


def fit_least_squares(design: np.ndarray, values: np.ndarray, evaluate_at: np.ndarray) -> np.ndarray:
    """Least squares through the normal equations: design (n, k), values (n, C) -> fit at evaluate_at (m, C).

    A 6x6 solve rather than np.linalg.lstsq, whose SVD took 8-30 ms instead of 0.05 ms on the shared 2-core
    machine (LAPACK waking its threads for a tiny problem).
    """
    normal = design.T @ design + 1e-6 * np.eye(design.shape[1])  # (k, k); the ridge keeps it invertible
    coefficients = np.linalg.solve(normal, design.T @ values)  # (k, C)
    return evaluate_at @ coefficients


def sample_grid(image: np.ndarray, max_side: int) -> np.ndarray:
    """Every k-th pixel of (H, W[, C]), at cell centres, so the long side has at most max_side samples.

    Plain sampling, not averaging: 40x cheaper, and a thin stroke's samples keep their full contrast, so the
    robust fit sees them as the outliers they are instead of as slightly darker paper.
    """
    h, w = image.shape[:2]
    step = max(1, int(np.ceil(max(h, w) / max_side)))
    # A side shorter than half a step (a 1 x 20,000 strip) still gets one sample row or column.
    return np.ascontiguousarray(image[min(step // 2, h - 1) :: step, min(step // 2, w - 1) :: step])


@functools.lru_cache(maxsize=64)
def quadratic_design(h: int, w: int) -> np.ndarray:
    """(h*w, 6) rows [1, x, y, x^2, xy, y^2] for the grid's cell centres, x and y in [-1, 1]. Read-only, cached."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    x = (2 * xs + 1) / w - 1
    y = (2 * ys + 1) / h - 1
    design = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1).reshape(-1, 6)
    design.flags.writeable = False  # shared between calls (and threads)
    return design


def ink_contrast(image: np.ndarray, background: np.ndarray) -> np.ndarray:
    """(H, W) uint8: per pixel, the largest difference from the paper over the colour channels."""
    difference = cv2.absdiff(image, background)
    if difference.ndim == 2:
        return difference
    return cv2.max(cv2.max(difference[:, :, 0], difference[:, :, 1]), difference[:, :, 2])


# ---------------------------------------------------------------------------------------------------------------
# 4-5. Strokes and crop


@dataclass(frozen=True)
class InkRegion:
    """The digit found in an ink-contrast map, as a window (x, y, w, h) of it holding the kept strokes."""

    window: tuple[int, int, int, int]  # x, y, width, height in the ink map
    strokes: np.ndarray  # (h, w) bool: pixels of the kept strokes
    soft: np.ndarray  # (h, w) float32 in [0, 1]: anti-aliased ink on the kept strokes and a one-pixel fringe
    threshold: float  # the contrast that counted as ink


def find_ink(ink: np.ndarray) -> InkRegion:
    """The digit's strokes in an ink-contrast map (H, W) uint8; ImageRejected when there are none."""
    noise = noise_level(ink)
    threshold = ink_threshold(ink, noise)
    strong = (ink >= threshold).astype(np.uint8)
    labels, stats = connected_components(strong)
    keep = digit_components(stats)  # (components,) bool; label 0 (the paper) is never kept
    if not keep.any():
        raise_blank(ink, threshold)
    x0, y0, x1, y1 = union_box(stats[keep])
    if max(x1 - x0, y1 - y0) < MIN_DIGIT_SIDE:
        raise ImageRejected(
            f"no digit found: the only marks are specks of at most {max(x1 - x0, y1 - y0)} pixels. Send a picture "
            "in which the digit is clearly visible and fills a good part of the frame"
        )
    # Grow the window by one pixel for the anti-aliased fringe around the strokes.
    height, width = ink.shape
    x0, y0, x1, y1 = max(x0 - 1, 0), max(y0 - 1, 0), min(x1 + 1, width), min(y1 + 1, height)
    strokes = keep[labels[y0:y1, x0:x1]]  # (h, w) bool, by looking each pixel's label up
    window = ink[y0:y1, x0:x1]
    fringe = cv2.dilate(strokes.astype(np.uint8), np.ones((3, 3), np.uint8))
    # Map contrast to ink coverage: the noise floor -> 0, the strokes' typical contrast -> 1.
    low = max(SOFT_FLOOR_MIN, min(3.0 * noise, threshold / 2))
    high = max(percentile_uint8(window[strokes], 75), threshold + 1.0)
    soft = np.clip((window.astype(np.float32) - low) / (high - low), 0, 1) * fringe
    return InkRegion((x0, y0, x1 - x0, y1 - y0), strokes, soft, threshold)


def percentile_uint8(values: np.ndarray, q: float) -> float:
    """The q-th percentile of uint8 values by counting (linear time, unlike sorting)."""
    counts = np.cumsum(np.bincount(values.ravel(), minlength=256))
    return float(np.searchsorted(counts, q / 100 * counts[-1]))


def noise_level(ink: np.ndarray) -> float:
    """The typical contrast of the paper itself (its texture, noise, JPEG artefacts): the 30th percentile."""
    sample = ink[::2, ::2] if ink.size > 40_000 else ink  # a quarter of the pixels is plenty, and 4x faster
    return percentile_uint8(sample, 30)


def ink_threshold(ink: np.ndarray, noise: float) -> float:
    """Otsu's split between paper and ink, but never below the contrast floor or well inside the noise."""
    otsu, _ = cv2.threshold(ink, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return max(float(otsu), float(MIN_INK_CONTRAST), NOISE_MULTIPLE * noise)


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a (H, W) uint8 mask: (labels (H, W), stats (n, 5): x, y, w, h, area).

    16-bit labels make OpenCV's statistics pass twice as fast; a noisy picture with more than 65,535
    components falls back to 32-bit labels.
    """
    try:
        _, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(mask, 8, cv2.CV_16U, cv2.CCL_DEFAULT)
    except cv2.error:
        _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    return labels, stats


def digit_components(stats: np.ndarray) -> np.ndarray:
    """Which connected components (rows of OpenCV's stats: x, y, w, h, area) belong to the digit.

    Keep the largest stroke, every stroke at least KEEP_BIG_FRACTION of its size, and smaller strokes (a 5's flag,
    a 7's bar, a pen that skipped) within KEEP_NEAR_FRACTION of its size from it. Specks below KEEP_AREA_FRACTION
    of it are noise. Sizes, not morphology, decide, so a one-pixel-wide stroke is as safe as a thick one.
    """
    area = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
    area[0] = 0  # label 0 is the background
    keep = np.zeros(len(stats), bool)
    if len(stats) < 2 or area.max() == 0:
        return keep
    main = int(area.argmax())
    mx, my, mw, mh = stats[main, :4]
    x, y, w, h = (stats[:, i] for i in range(4))
    gap_x = np.maximum(0, np.maximum(mx - (x + w), x - (mx + mw)))  # 0 when the boxes overlap horizontally
    gap_y = np.maximum(0, np.maximum(my - (y + h), y - (my + mh)))
    near = np.hypot(gap_x, gap_y) <= KEEP_NEAR_FRACTION * max(mw, mh)
    big = area >= KEEP_BIG_FRACTION * area[main]
    keep = (area >= KEEP_AREA_FRACTION * area[main]) & (big | near)
    keep[0] = False
    return keep


def union_box(stats: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), exclusive ends, of the union of components' boxes (rows: x, y, w, h, area)."""
    x0, y0 = stats[:, 0].min(), stats[:, 1].min()
    x1, y1 = (stats[:, 0] + stats[:, 2]).max(), (stats[:, 1] + stats[:, 3]).max()
    return int(x0), int(y0), int(x1), int(y1)


def raise_blank(ink: np.ndarray, threshold: float) -> None:
    raise ImageRejected(
        f"no ink found: the picture looks blank (the strongest contrast to the background is {int(ink.max())} of "
        f"255; ink needs at least {int(threshold)}). Send a picture of a digit written darker or lighter than its "
        "background, e.g. a dark pen on white paper"
    )


# ---------------------------------------------------------------------------------------------------------------
# 6. Stroke width


def normalise_stroke_width(crop: np.ndarray) -> tuple[np.ndarray, float]:
    """(h, w) float32 soft ink -> the same digit with MNIST-like stroke width, and the ratio measured before.

    The width is measured (and changed) on the crop resized to STROKE_WORK_MIN_SIDE..STROKE_WORK_MAX_SIDE pixels
    on its long side, the resolution the ratio was calibrated at on MNIST. Area averaging keeps a thin stroke as
    faint grey when shrinking; binarising shrunk ink at a lower level keeps it. A stroke already in MNIST's
    range is returned untouched, so a genuine MNIST digit passes through unchanged.
    """
    work, shrink_factor = resize_long_side_into(crop, STROKE_WORK_MIN_SIDE, STROKE_WORK_MAX_SIDE)
    binary = work >= (0.2 if shrink_factor >= 2 else 0.5)
    ratio = stroke_ratio(binary)
    if STROKE_RATIO_THIN <= ratio <= STROKE_RATIO_THICK or not binary.any():
        return crop, ratio
    long_side = max(work.shape)
    width = ratio * long_side
    if ratio < STROKE_RATIO_THIN:
        target = STROKE_RATIO_TARGET
        grow = (target * long_side - width) / (2 * (1 - target))  # the box grows by 2*grow too
        return thicken(work, binary, grow), ratio
    target = STROKE_RATIO_THICK_TARGET
    shrink = min((width - target * long_side) / (2 * (1 - target)), MAX_THINNING_FRACTION * width)
    return thin(work, binary, shrink), ratio


def resize_long_side_into(image: np.ndarray, low: int, high: int) -> tuple[np.ndarray, float]:
    """Resize (h, w) float so its long side lies in [low, high]: area-average down, interpolate up.

    Returns (resized, shrink factor: original / new long side, < 1 when enlarged).
    """
    long_side = max(image.shape)
    if low <= long_side <= high:
        return image, 1.0
    target = high if long_side > high else low
    scale = target / long_side
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation), 1 / scale


def stroke_ratio(binary: np.ndarray) -> float:
    """Stroke width / longer side of the box, with width = 2 * area / perimeter (contours, holes included).

    For a stroke of length L and width w, area = wL and perimeter ~ 2L. Calibrated on MNIST with this same
    estimator, so its small biases (stroke ends, pixel staircases) cancel.
    """
    mask = binary.astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    perimeter = sum(cv2.arcLength(c, True) for c in contours)
    x, y, w, h = cv2.boundingRect(mask)
    if perimeter == 0 or max(w, h) == 0:
        return STROKE_RATIO_TARGET  # one pixel or nothing: leave it alone
    return float(2.0 * np.count_nonzero(mask) / perimeter / max(w, h))


def thicken(soft: np.ndarray, binary: np.ndarray, radius: float) -> np.ndarray:
    """Grow the strokes by `radius` pixels on each side, with a one-pixel anti-aliased edge. (h', w') float32."""
    pad = int(np.ceil(radius)) + 2
    soft = cv2.copyMakeBorder(soft, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    outside = cv2.copyMakeBorder((~binary).astype(np.uint8), pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=1)
    distance = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)  # to the nearest stroke pixel
    grown = np.clip(radius + 1.0 - distance, 0, 1)  # neighbours are at distance 1
    return np.maximum(soft, grown)


def thin(soft: np.ndarray, binary: np.ndarray, radius: float) -> np.ndarray:
    """Erode the strokes by `radius` pixels on each side, with a one-pixel anti-aliased edge. (h, w) float32."""
    inside = cv2.copyMakeBorder(binary.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    distance = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]  # to the paper
    return soft * np.clip(distance - radius, 0, 1)  # edge pixels are at distance 1


# ---------------------------------------------------------------------------------------------------------------
# 7. MNIST's box and centring


def fit_in_box(crop: np.ndarray) -> np.ndarray:
    """Crop to the ink and scale so the longer side is MNIST_BOX, keeping the aspect ratio. (<=20, <=20) float32.

    Shrinking averages areas, which is the anti-aliasing MNIST's own normalisation produced. The result is
    stretched so its brightest pixel is 1.
    """
    x, y, w, h = cv2.boundingRect((crop > 0.02).astype(np.uint8))
    if w == 0 or h == 0:
        raise ImageRejected("no ink left after cleaning the picture; send a clearer picture of the digit")
    crop = np.ascontiguousarray(crop[y : y + h, x : x + w])
    scale = MNIST_BOX / max(w, h)
    size = (max(1, min(MNIST_BOX, round(w * scale))), max(1, min(MNIST_BOX, round(h * scale))))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    patch = np.clip(cv2.resize(crop, size, interpolation=interpolation), 0, 1)
    # Every MNIST digit's brightest pixel is 254 or 255; a thin or faint stroke averaged down must reach it too.
    return patch / max(float(patch.max()), 1e-6)


def centre_by_mass(patch: np.ndarray) -> np.ndarray:
    """Paste a (h, w) float patch into 28x28 so its centre of mass lands on pixel (14, 14). (28, 28) uint8.

    Whole-pixel shifts, as MNIST's own centres show (their fractional parts are uniform), so nothing is blurred.
    The shift is clamped so the box stays inside the frame rather than cutting off a lopsided digit's edge.
    """
    h, w = patch.shape
    mass = float(patch.sum())
    if mass <= 0:
        raise ImageRejected("no ink left after cleaning the picture; send a clearer picture of the digit")
    rows, cols = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
    centre_y = float(patch.sum(axis=1) @ rows) / mass
    centre_x = float(patch.sum(axis=0) @ cols) / mass
    top = int(np.clip(round(MNIST_CENTRE - centre_y), 0, MNIST_SIDE - h))
    left = int(np.clip(round(MNIST_CENTRE - centre_x), 0, MNIST_SIDE - w))
    out = np.zeros((MNIST_SIDE, MNIST_SIDE), np.float32)
    out[top : top + h, left : left + w] = patch
    return (out * 255.0 + 0.5).astype(np.uint8)
