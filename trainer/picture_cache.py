"""The pictures a run draws (trainer/negatives.py), kept for the next run that would draw the same ones.

Drawing the default run's 17,100 pictures that are not digits and typed digits takes 13-20 s on 2 cores, almost
all of it the users' image pipeline; it is the same work, to the bit, for every run with the same seed and code.
So the second run of a day (10 epochs, then 100; a run resumed after a crash; a benchmark's runs that share a
seed) reads them in a fraction of a second instead.

An entry is one .npz under ARTIFACTS/cache/, named by a SHA-256 of all that decides its content: what the run asks
for (counts, seeds, the digits the crossed-out kind scratches out), the source of the drawing code and of the image
pipeline (shared/), and the versions of the libraries that draw (NumPy, OpenCV, Pillow, matplotlib's fonts). Any
change to these names another entry, so a stale one is never read. Entries are written atomically; one that does
not hold the arrays the caller expects (shapes, types, values in range) is drawn again and replaced. At most KEEP
entries stay; the least recently used go first.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import PIL

import shared
from shared.checkpoint import atomic_write_bytes, files_sha256, remove_abandoned_temp_files

from trainer import negatives

KEEP = 4  # entries (~3 MB each for a default run)
PREFIX = "pictures-"


@dataclass(frozen=True)
class Expected:
    """What one stored array must be: its shape, its dtype, and (integers) the exclusive upper bound of its values."""

    shape: tuple[int, ...]
    dtype: np.dtype
    below: int | None = None

    def holds(self, array: np.ndarray) -> bool:
        if array.shape != self.shape or array.dtype != self.dtype:
            return False
        return self.below is None or array.size == 0 or (int(array.min()) >= 0 and int(array.max()) < self.below)


def source_digest() -> str:
    """SHA-256 over the drawing code, the image pipeline and the versions of the libraries they draw with."""
    files = [Path(negatives.__file__), *sorted(Path(shared.__file__).parent.glob("*.py"))]
    return files_sha256(files, extra=(np.__version__, cv2.__version__, PIL.__version__, matplotlib.__version__))


def entry_name(request: Mapping[str, object], inputs: Mapping[str, np.ndarray]) -> str:
    """The file name for `request` (JSON-able: counts, seeds) drawn from `inputs`, the named arrays the drawing
    reads (the digits the crossed-out kind scratches out), each hashed where it lies (no copy)."""
    digest = hashlib.sha256(source_digest().encode())
    digest.update(json.dumps(dict(request), sort_keys=True).encode())
    for name in sorted(inputs):
        array = np.ascontiguousarray(inputs[name])
        digest.update(repr((name, array.shape, array.dtype.str)).encode())
        digest.update(array.data)  # the buffer itself, C-ordered: no copy of its bytes
    return f"{PREFIX}{digest.hexdigest()[:32]}.npz"


def read_entry(path: Path, expected: Mapping[str, Expected]) -> dict[str, np.ndarray] | None:
    """The arrays stored at `path`, or None when there is no entry or it is not what `expected` describes."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            if set(stored.files) != set(expected):
                return None
            arrays = {name: stored[name] for name in expected}
    # Missing, truncated, not an npz, a damaged stream or CRC, a pickled object (never unpickled):
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error):
        return None
    if not all(expected[name].holds(array) for name, array in arrays.items()):
        return None
    with contextlib.suppress(OSError):  # another user's entry (a container's): read, but its age stays
        os.utime(path)  # recently used: kept longest
    return arrays


def write_entry(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Store `arrays` at `path` atomically, then drop all but the KEEP most recently used entries."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, allow_pickle=False, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
    remove_abandoned_temp_files(path.parent)  # a run killed while writing an entry left its part behind
    entries = sorted(path.parent.glob(f"{PREFIX}*.npz"), key=last_used, reverse=True)
    for old in entries[KEEP:]:
        old.unlink(missing_ok=True)


def last_used(path: Path) -> float:
    """When the entry was last written or read; 0 for one another process has just removed."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def cached_pictures(
    directory: Path | None,
    request: Mapping[str, object],
    inputs: Mapping[str, np.ndarray],
    expected: Mapping[str, Expected],
    draw: Callable[[], Mapping[str, np.ndarray]],
) -> tuple[dict[str, np.ndarray], Path | None]:
    """The arrays `draw()` makes for `request` from `inputs` (see entry_name): read from `directory` when an
    earlier run stored them, else drawn and stored there. Returns (arrays, the entry read, or None when they were
    drawn). `directory` None: always drawn, nothing stored. A cache that cannot be written (read-only, full disk)
    is only a slower start."""
    if directory is None:
        return dict(draw()), None
    path = directory / entry_name(request, inputs)
    arrays = read_entry(path, expected)
    if arrays is not None:
        return arrays, path
    arrays = dict(draw())
    try:
        write_entry(path, arrays)
    except OSError as e:
        print(f"could not keep the drawn pictures in {directory} ({e}); the next run draws them again", flush=True)
    return arrays, None
