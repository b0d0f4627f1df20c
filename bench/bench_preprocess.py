"""How long shared.image_pipeline takes per picture: median and p95 per user style, and for a 640x480 photo.

    python -m bench.bench_preprocess [--per-style 10] [--repeat 20] [--threads N]

Two numbers per row: `to_mnist` (bytes in: decoding included, as the server runs it) and `to_mnist_array` (an
already-decoded array: the image processing alone). The target is a 640x480 photo in under 5 ms. Timings on a
shared machine vary with the other processes' load; the minimum column shows the uncontended cost.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from shared.cli import positive_int
from shared.image_pipeline import decode_image, to_mnist, to_mnist_array

from bench.machine import describe_machine
from bench.timing import time_calls
from testkit.user_images import DRAWN_STYLES, encode, make_printed_digits, make_user_images, paper_photo

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"  # as tests/conftest.py; or MNIST_DATA_DIR

PHOTO_TARGET_MS = 5.0


def photo_640x480(images: np.ndarray, count: int, seed: int) -> list[bytes]:
    """Paper photos at exactly 640x480 (JPEG), upright, the most common size a phone app downsizes to."""
    out = []
    rng = np.random.default_rng([seed, 640480])
    while len(out) < count:
        data = paper_photo(images[int(rng.integers(len(images)))], rng)
        array = decode_image(data)
        if array.shape[:2] == (480, 640):
            out.append(encode(array, "JPEG", quality=85))
    return out


def row(name: str, times_bytes: np.ndarray, times_array: np.ndarray) -> str:
    ms = lambda t, q: np.percentile(t, q) * 1e3  # noqa: E731
    return (
        f"{name:22s} {ms(times_bytes, 50):7.2f} {ms(times_bytes, 95):7.2f} {times_bytes.min() * 1e3:7.2f}   "
        f"{ms(times_array, 50):7.2f} {ms(times_array, 95):7.2f} {times_array.min() * 1e3:7.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_preprocess",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DATA_DIR") or str(DEFAULT_DATA_DIR))
    parser.add_argument("--per-style", type=positive_int, default=10, help="pictures per style")
    parser.add_argument("--repeat", type=positive_int, default=10, help="timed passes over each style's pictures")
    parser.add_argument("--threads", type=int, default=None, help="cv2.setNumThreads (default: OpenCV's own)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import cv2

    from shared.data import load_mnist

    if args.threads is not None:
        cv2.setNumThreads(args.threads)
    mnist = load_mnist(args.data_dir, download=False, verify=False)
    images, labels = mnist.test_images.numpy(), mnist.test_labels.numpy()
    pictures = make_user_images(images, labels, per_style=args.per_style, seed=args.seed)
    pictures += make_printed_digits(per_font=1, seed=args.seed)

    print(describe_machine())
    print(f"OpenCV threads: {cv2.getNumThreads()}")
    print(f"{'ms per picture':22s} {'to_mnist (bytes in)':^23s}   {'to_mnist_array (decoded)':^23s}")
    print(f"{'style':22s} {'median':>7s} {'p95':>7s} {'min':>7s}   {'median':>7s} {'p95':>7s} {'min':>7s}")
    for style in [*DRAWN_STYLES, "printed"]:
        data = [p.data for p in pictures if p.style == style]
        arrays = [decode_image(d) for d in data]
        print(row(style, time_calls(to_mnist, data, args.repeat), time_calls(to_mnist_array, arrays, args.repeat)))

    photos = photo_640x480(images, args.per_style, args.seed)
    photo_arrays = [decode_image(d) for d in photos]
    bytes_times = time_calls(to_mnist, photos, args.repeat)
    array_times = time_calls(to_mnist_array, photo_arrays, args.repeat)
    print(row("photo 640x480 (JPEG)", bytes_times, array_times))
    median = np.median(bytes_times) * 1e3
    print(
        f"\n640x480 photo, bytes to 28x28: median {median:.2f} ms (target < {PHOTO_TARGET_MS} ms): "
        f"{'OK' if median < PHOTO_TARGET_MS else 'OVER'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
