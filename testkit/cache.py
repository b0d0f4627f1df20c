"""A cache for what the tests make slowly and the same way every time: a trained model, thousands of pictures.

Each entry is keyed by a hash of the code that decides its content (and any extra key), so a change to that code
makes it again, and nothing stale is ever used. The cache lives in $MNIST_TEST_CACHE, else
~/.cache/mnist-stack/test-cache; deleting it is always safe.
"""

from __future__ import annotations

import fcntl
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from shared.checkpoint import atomic_write_bytes, files_sha256

REPO_ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def cache_root() -> Path:
    return Path(os.environ.get("MNIST_TEST_CACHE") or Path.home() / ".cache" / "mnist-stack" / "test-cache")


# In every key: the exact versions of every library (torch, Pillow, OpenCV, ...), which draw the pictures and train
# the model as much as the project's code does.
LIBRARY_PINS = "constraints.txt"


def code_hash(patterns: tuple[str, ...], extra: str = "") -> str:
    """16 hex digits of SHA-256 over `extra`, the files matching `patterns` (globs under the repository) and the
    pinned library versions."""
    files = [path for pattern in (*patterns, LIBRARY_PINS) for path in sorted(REPO_ROOT.glob(pattern))]
    return files_sha256(files, extra=(extra,))[:16]


def cached_pickle(name: str, key: str, build: Callable[[], T]) -> T:
    """`build()`'s result, made once per (name, key) and kept as a pickle. Written to a temporary file and
    renamed, so a run killed half-way leaves no half-written entry; an entry that cannot be read all the same (a
    disk that lost its last writes) is built again, not a failure of every test that uses it. One process at a time
    builds an entry: `make test`'s two workers (or two checkouts' runs) asking for the same pictures at once, the
    second waits for the first and reads what it kept, rather than drawing them all again beside it."""
    path = cache_root() / name / f"{key}.pickle"
    value = _read(path)
    if value is not _NOTHING:
        return value
    locks = cache_root() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        value = _read(path)  # built by another process while this one waited
        if value is not _NOTHING:
            return value
        value = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Pickled first: a value that cannot be kept fails here, before any file is made.
        atomic_write_bytes(path, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        return value


# What _read gives for no value kept: not None, which a build may return and the cache keeps like any other value.
_NOTHING = object()


def _read(path: Path) -> Any:
    """The value kept at `path`, or _NOTHING: none kept, or one that cannot be read (removed, to be built again)."""
    if not path.is_file():
        return _NOTHING
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError):
        path.unlink(missing_ok=True)
        return _NOTHING
