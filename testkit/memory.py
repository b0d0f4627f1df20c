"""Measuring memory under huge pictures, shared by bench/bench_memory.py and the tests (tests/shared/
test_decode_memory.py, tests/reliability/test_memory_flood.py): a process's resident memory and its peak (Linux
/proc), one 40 MP picture's peak in a fresh process, a flood of concurrent Predict or ReadNumber calls, and the
pictures that cost a reading of a number, or the one-digit pipeline, the most memory. Each caller keeps its own
limits."""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent


def minor_faults(pid: int | str) -> int:
    """Minor page faults of a process so far (Linux /proc/PID/stat, field 10): each is a page the kernel mapped in
    and zeroed on first touch."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[7])


def status_kib(pid: int | str, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int | str) -> None:
    """Make VmHWM (peak resident memory) start again from the current RSS (Linux: clear_refs 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


# The single-picture measurement runs in a fresh interpreter that imports only the image pipeline, with glibc
# told to give every large block straight back to the system when freed (MALLOC_MMAP_THRESHOLD_), so one
# format's freed memory, kept by the allocator, cannot hide the next format's peak.
SINGLE_SCRIPT = """
import sys, numpy as np
from testkit.memory import reset_peak, status_kib
from shared.image_pipeline import to_mnist
from testkit.big_pictures import encode_big
digit = np.frombuffer(bytes.fromhex(sys.argv[1]), np.uint8).reshape(28, 28)
for fmt in sys.argv[2:]:
    data = encode_big(digit, fmt)
    to_mnist(encode_big(digit, fmt, side=600))  # warm up: every codec loaded, caches made
    reset_peak("self")
    baseline = status_kib("self", "VmRSS")
    assert to_mnist(data).shape == (28, 28)
    print(fmt, baseline, status_kib("self", "VmHWM"), len(data), flush=True)
"""


def run_fresh(script: str, digit: np.ndarray, *args: str) -> str:
    """Run `script` in a fresh interpreter at the repository root (argv: the digit's 784 bytes in hex, then
    `args`), with large freed blocks given straight back to the system, as the measurements need: its stdout."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    return subprocess.run(
        [sys.executable, "-c", script, digit.astype(np.uint8).tobytes().hex(), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout


def settled_rss(pid: int | str, seconds: float) -> int:
    """The process's resident bytes once the memory a surge freed has gone back to the system (the server does it
    in a thread of its own once surges stop: inference.capacity.QUIET_SECONDS): the least seen within `seconds`."""
    least = status_kib(pid, "VmRSS")
    for _ in range(int(seconds / 0.1)):
        time.sleep(0.1)
        least = min(least, status_kib(pid, "VmRSS"))
    return least * 1024


def measure_single(digit: np.ndarray, formats: tuple[str, ...]) -> dict[str, tuple[int, int, int]]:
    """{format: (baseline RSS bytes, peak RSS bytes, file bytes)}: one 40 MP picture of `digit` per format."""
    out = run_fresh(SINGLE_SCRIPT, digit, *formats)
    return {
        fmt: (int(base) * 1024, int(peak) * 1024, int(size))
        for fmt, base, peak, size in (line.split() for line in out.splitlines())
    }


def flood(target: str, pictures: list, small: bytes, method: str = "Predict") -> tuple[Counter, str | None, float]:
    """Send every picture at once (one thread each) to `method` (Predict or ReadNumber; PredictBatch: each item
    is a list of pictures, one call), then one small Predict: ({(code, details) of each failure or ("OK", ""):
    count}, the small one's failure or None, seconds)."""
    import grpc

    from shared.api.mnist.v1 import inference_pb2 as pb
    from shared.api.mnist.v1 import inference_pb2_grpc

    codes: Counter = Counter()
    lock = threading.Lock()
    start = threading.Barrier(len(pictures))

    from inference.channel import OWN_CONNECTION

    def call(data) -> None:
        # A connection per call, as separate clients would have: channels in one process otherwise share one
        # (inference/channel.py OWN_CONNECTION), and the flood would be one client's many calls.
        with grpc.insecure_channel(target, options=[OWN_CONNECTION]) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            grpc.channel_ready_future(channel).result(timeout=10)
            start.wait()
            try:
                if method == "ReadNumber":
                    stub.ReadNumber(pb.ReadNumberRequest(image=data), timeout=120)
                elif method == "PredictBatch":
                    stub.PredictBatch(pb.PredictBatchRequest(images=data), timeout=120)
                else:
                    stub.Predict(pb.PredictRequest(image=data), timeout=120)
                code = ("OK", "")
            except grpc.RpcError as e:
                code = (e.code().name, e.details() or "")
        with lock:
            codes[code] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=call, args=(data,)) for data in pictures]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    with grpc.insecure_channel(target) as channel:
        try:
            inference_pb2_grpc.InferenceStub(channel).Predict(pb.PredictRequest(image=small), timeout=30)
            failure = None
        except grpc.RpcError as e:
            failure = f"{e.code().name}: {e.details()}"
    return codes, failure, seconds


def zigzag_corners(width: int, height: int, legs: int) -> np.ndarray:
    """The (legs + 1, 2) corners (x, y) of a stroke zigzagging across a picture (height, width), 20 px in from its
    sides, each leg from near its top to near its bottom: the shape zigzag and dotted_zigzag draw."""
    margin = min(60, height // 5)
    xs = np.linspace(20, width - 20, legs + 1)
    ys = np.where(np.arange(legs + 1) % 2, margin, height - margin)
    return np.stack([xs, ys], 1)


def zigzag(width: int, height: int, pen: int, legs: int = 24) -> np.ndarray:
    """A picture (height, width) uint8 of one stroke zigzagging across it, dark on white: a single piece as wide as
    the picture that looks like touching digits everywhere, the costliest number to read a review found."""
    import cv2

    picture = np.full((height, width), 255, np.uint8)
    cv2.polylines(picture, [zigzag_corners(width, height, legs).astype(np.int32)], False, 0, pen)
    return picture


def dotted_zigzag(width: int, height: int, radius: int, spacing: int, legs: int = 24) -> np.ndarray:
    """zigzag's stroke written in dots of `radius`, `spacing` apart: ReadNumber joins them into strokes first."""
    import cv2

    picture = np.full((height, width), 255, np.uint8)
    corners = zigzag_corners(width, height, legs)
    for (x0, y0), (x1, y1) in itertools.pairwise(corners):
        for t in np.linspace(0, 1, int(np.hypot(x1 - x0, y1 - y0) / spacing)):
            cv2.circle(picture, (int(x0 + t * (x1 - x0)), int(y0 + t * (y1 - y0))), radius, 0, -1)
    return picture


def small_zigzags(count: int, height: int, pen: int, gap: int = 8, pad: int = 6) -> np.ndarray:
    """`count` zigzags of four legs, each `height` high and twice as wide, in a row `gap` apart: many regions, each
    cut many ways, so the classifier is asked about hundreds of halves at once."""
    import cv2

    width = 2 * height
    picture = np.full((height + 2 * pad, count * (width + gap) + 2 * pad), 255, np.uint8)
    for k in range(count):
        xs = np.linspace(pad + k * (width + gap), pad + k * (width + gap) + width, 5)
        ys = np.where(np.arange(5) % 2, pad, pad + height)
        cv2.polylines(picture, [np.stack([xs, ys], 1).astype(np.int32)], False, 0, pen)
    return picture


def costly_readings(seed: int = 0) -> dict[str, np.ndarray]:
    """{name: picture (h, w) uint8}: what costs ReadNumber the most memory per pixel at the working size (1024 px),
    from reviews' searches (stops 61 and 62): zigzags of every height down to a strip 40 px high, in dots and as
    many small marks, dots, lines, a checkerboard, a spiral."""
    import cv2

    rng = np.random.default_rng(seed)
    side = 1024
    sizes = ((40, 12), (80, 12), (140, 12), (256, 15), (500, 8), (762, 15), (1024, 8))
    out = {f"zigzag 1024x{h}, pen {p}": zigzag(side, h, p) for h, p in sizes}
    out["zigzag 1024x120 in dots"] = dotted_zigzag(side, 120, 2, 6)
    out["24 small zigzags, 1024x30"] = small_zigzags(24, 18, 2)
    dots = np.full((side, side), 255, np.uint8)
    for x, y in rng.integers(0, side, (3000, 2)):
        cv2.circle(dots, (int(x), int(y)), 3, 0, -1)
    out["3,000 dots"] = dots
    lines = np.full((side, side), 255, np.uint8)
    for x0, y0, x1, y1 in rng.integers(0, side, (200, 4)):
        cv2.line(lines, (int(x0), int(y0)), (int(x1), int(y1)), 0, 1)
    out["200 thin lines"] = lines
    y, x = np.mgrid[0:side, 0:side]
    out["checkerboard of 8 px"] = np.where((x // 8 + y // 8) % 2, 0, 255).astype(np.uint8)
    turns = np.linspace(0, 80 * np.pi, 200_000)
    radius = turns / turns[-1] * (side / 2 - 5)
    spiral = np.full((side, side), 255, np.uint8)
    points = np.stack([side / 2 + radius * np.cos(turns), side / 2 + radius * np.sin(turns)], 1).astype(np.int32)
    out["spiral of 40 turns"] = cv2.polylines(spiral, [points], False, 0, 2)
    return out


def costly_pictures(seed: int = 0) -> dict[str, np.ndarray]:
    """{name: picture (h, w[, 3]) uint8}: what costs the one-digit pipeline (shared.image_pipeline.to_mnist_array)
    the most memory per pixel at the working size, 1024 px (stop 65: 12-19 B/px, photos of a digit on paper 4-7):
    a spiral, zigzags across the whole picture and across a strip, noise in grey and in colour."""
    readings = costly_readings(seed)
    rng = np.random.default_rng(seed)
    out = {name: readings[name] for name in ("spiral of 40 turns", "zigzag 1024x1024, pen 8", "zigzag 1024x40, pen 12")}
    out["grey noise"] = rng.integers(0, 256, (1024, 1024), dtype=np.uint8)
    out["colour noise"] = rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    return out


def traced_peak(work: Callable[[], object]) -> int:
    """The most bytes `work()` holds at once (tracemalloc: every NumPy and OpenCV array; not torch's), refused as
    input (ImageRejected) or not: a picture refused after its work was done cost that work."""
    import tracemalloc

    from shared.decode import ImageRejected

    tracemalloc.start()
    try:
        with contextlib.suppress(ImageRejected):
            work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def pipeline_peak(picture: np.ndarray) -> int:
    """The most bytes shared.image_pipeline.to_mnist_array holds at once making a digit of `picture`."""
    from shared.image_pipeline import to_mnist_array

    return traced_peak(lambda: to_mnist_array(picture))


def unsure(batch: np.ndarray):
    """A classifier for shared.segment.read_number sure of nothing: every region is cut and every cut weighed, the
    most work (and memory) a reading can take."""
    from shared.segment import Classified

    return Classified(np.full((len(batch), 10), 0.1), np.full(len(batch), 0.5))


def reading_peak(picture: np.ndarray) -> int:
    """The most bytes shared.segment.read_number holds at once reading `picture` with `unsure` (its cuts all weighed,
    whether it is refused after or not)."""
    from shared.segment import read_number

    return traced_peak(lambda: read_number(picture, unsure))
