"""MNIST: read the IDX files straight into uint8 tensors, download and verify them when missing, split 8:2.

The four files are read in place (gzip or raw), so a read-only data directory works as it is. Nothing here
loops over pixels in Python: a whole file becomes one numpy array with `np.frombuffer`.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import logging
import math
import shutil
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.checkpoint import ModelValidationError, atomic_writer, finite_field, numeric_metrics, whole_field

log = logging.getLogger(__name__)

# MD5 of the *decompressed* files: the same for every genuine copy, whatever gzip wrapper it came in.
FILES = {
    "train_images": ("train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb", (60000, 28, 28)),
    "train_labels": ("train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624", (60000,)),
    "test_images": ("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea", (10000, 28, 28)),
    "test_labels": ("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637", (10000,)),
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
NUM_CLASSES = 10
# Mean and standard deviation of the training images' pixels, scaled to [0, 1]. Stored in every checkpoint, so
# a served model normalizes its input exactly as it was trained.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

# IDX header: two zero bytes, a type code (0x08 = unsigned byte) and the number of dimensions.
_IDX_UBYTE = 0x08


class MnistNotFound(FileNotFoundError):
    """An MNIST file is missing and downloading was not allowed; the message says where it looked."""


class MnistUnreadable(MnistNotFound):
    """An MNIST file (or its folder) is there but this user may not read it. A MnistNotFound, so that every caller
    that says "put the files there" says this instead of taking it for something else (an unwritable folder)."""


def unreadable(path: Path, error: OSError) -> MnistUnreadable:
    return MnistUnreadable(
        f"{path}: cannot read it ({error.strerror or error}); make it readable by this user, or point --data-dir "
        "(MNIST_DATA_DIR) at a readable copy"
    )


class MnistDownloadFailed(RuntimeError):
    """No mirror gave an MNIST file; the message says what each answered and where to put the files instead."""


class MnistNotWritable(MnistDownloadFailed):
    """An MNIST file is missing and the folder it would be downloaded into cannot be written: no mirror can help."""


class _MirrorFailed(Exception):
    """One mirror's download of one file failed (the network, the server, a file that is not MNIST)."""


class MnistFormatError(ValueError):
    """An IDX file that is truncated, garbled or not what its name says."""


def parse_idx(raw: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parse one IDX file's decompressed bytes into a uint8 array of the shape its header declares."""
    if len(raw) < 4:
        raise MnistFormatError(f"{source}: {len(raw)} bytes is too short for an IDX header")
    zero, dtype_code, ndim = int.from_bytes(raw[0:2], "big"), raw[2], raw[3]
    if zero != 0 or dtype_code != _IDX_UBYTE or not 1 <= ndim <= 3:
        raise MnistFormatError(
            f"{source}: bad magic number 0x{raw[:4].hex()} (expected 0x0000080N, unsigned bytes, N = 1..3 dimensions)"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise MnistFormatError(f"{source}: header truncated ({len(raw)} of {header_len} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(shape)  # Python's ints: numpy's int64 product wrapped to 0 for a crafted header
    actual = len(raw) - header_len
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise MnistFormatError(
            f"{source}: {what}: header declares shape {shape} = {expected} bytes, file holds {actual}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape)


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        if head != b"\x1f\x8b":  # not gzip's magic: the file as it is
            return path.read_bytes()
    except PermissionError as e:
        raise unreadable(path, e) from e
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: a damaged deflate stream
        raise MnistFormatError(f"{path}: corrupt gzip stream ({e})") from e


def check_mnist_present(data_dir: Path) -> None:
    """MnistNotFound, naming the first missing file, unless all four MNIST files are in `data_dir` (gzipped or not).
    Only their presence: load_mnist reads and checks them."""
    for name, _md5, _shape in FILES.values():
        if find_file(Path(data_dir), name) is None:
            raise MnistNotFound(f"{name}(.gz) is not in {data_dir}")


def download_missing(data_dir: Path) -> None:
    """Download (and verify) each of the four MNIST files that is not in `data_dir`; MnistDownloadFailed if one
    cannot be had. Files already there are left to load_mnist to check."""
    for name, _md5, _shape in FILES.values():
        if find_file(Path(data_dir), name) is None:
            _download(name, Path(data_dir))


def find_file(directory: Path, name: str) -> Path | None:
    """The file `name` in `directory`, gzipped or not; None if neither is there."""
    for candidate in (directory / f"{name}.gz", directory / name):
        try:
            if candidate.is_file():
                return candidate
        except PermissionError as e:  # a folder this user may not look into
            raise unreadable(directory, e) from e
    return None


def read_idx_file(path: Path, *, md5: str | None = None, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read and check one IDX file. With `md5`, the decompressed content must match it."""
    raw = _read_bytes(path)
    if md5 is not None:
        digest = hashlib.md5(raw).hexdigest()
        if digest != md5:
            raise MnistFormatError(
                f"{path}: content MD5 {digest} is not MNIST's {md5}; the file is corrupt or not MNIST"
            )
    array = parse_idx(raw, source=str(path))
    if shape is not None and array.shape != shape:
        raise MnistFormatError(f"{path}: shape {array.shape}, expected {shape}")
    return array


STALE_PART_SECONDS = 3600  # a download still being written by another process is younger than this


def remove_stale_parts(directory: Path, name: str) -> None:
    """Remove what downloads of `name` killed before their clean-up (kill -9, a power cut) left: .<name>.*.part
    files older than STALE_PART_SECONDS."""
    for part in directory.glob(f".{name}.*.part") if directory.is_dir() else ():
        with contextlib.suppress(OSError):
            if time.time() - part.stat().st_mtime > STALE_PART_SECONDS:
                part.unlink()


# Writing a download failed for want of room (a full disk, a quota, a file size limit): each mirror was tried in
# turn and blamed ("could not download ... from every mirror"), and the advice was to put the files in that folder.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
MNIST_GZ_MB = 11  # the four .gz files: 11.4 MB


def _download(name: str, directory: Path) -> Path:
    """Fetch `name`.gz from the first mirror that answers, verify it, and move it into `directory` atomically."""
    _, md5, shape = next(v for v in FILES.values() if v[0] == name)
    errors = []
    # Folders made here for nothing (a mistyped --data-dir) do not stay behind: the folder and every one above it
    # that the download's writer would make (typo/sub/mnist left typo/ and typo/sub/).
    made = [folder for folder in (directory, *directory.parents) if not folder.exists()]
    remove_stale_parts(directory, name)
    for mirror in MIRRORS:
        url = f"{mirror}{name}.gz"
        try:
            # Written under a temporary name (.<name>.gz.<random>.part), verified, then renamed into place:
            # synced, and readable as the umask allows (a server running as another user must read it). An error
            # making, syncing or renaming that file is this machine's (a file where the folder should be, a
            # read-only folder), said as such: it was blamed on every mirror in turn, as if the network had failed.
            with atomic_writer(directory / f"{name}.gz", suffix=".part") as (out, part):
                try:
                    with urllib.request.urlopen(url, timeout=60) as response:
                        log.info("downloading %s", url)
                        shutil.copyfileobj(response, out)
                    out.flush()
                    read_idx_file(part, md5=md5, shape=shape)  # verify before it takes the real name
                except Exception as e:
                    if isinstance(e, OSError) and e.errno in DISK_FULL:  # writing the part: every mirror would too
                        raise
                    raise _MirrorFailed(f"{url}: {type(e).__name__}: {e}") from e
            return directory / f"{name}.gz"
        except _MirrorFailed as e:
            errors.append(str(e))
        except OSError as e:
            gone_if_made(made)
            mend = (
                f"free some space there (MNIST's four files take about {MNIST_GZ_MB} MB)"
                if e.errno in DISK_FULL
                else "make it a writable folder"
            )
            raise MnistNotWritable(
                f"cannot write {name}.gz into {directory} ({e.strerror or e}); {mend}, or point --data-dir / "
                "MNIST_DATA_DIR at a folder that has the MNIST files"
            ) from e
    gone_if_made(made)
    raise MnistDownloadFailed(
        f"could not download {name}: " + "; ".join(errors) + f". Put the MNIST files in {directory} "
        "or point --data-dir / MNIST_DATA_DIR at a folder that has them."
    )


def gone_if_made(made: list[Path]) -> None:
    """Remove the folders this download `made` (deepest first) that are still empty."""
    for folder in made:
        try:
            folder.rmdir()
        except OSError:  # not empty, or gone: leave it, and the folders above it
            return


@dataclass(frozen=True)
class Mnist:
    """The whole dataset as uint8 tensors: images (N, 28, 28), labels (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def load_mnist(data_dir: Path | str, *, download: bool = True, verify: bool = True) -> Mnist:
    """Load MNIST from `data_dir`, downloading missing files when `download` is true.

    `verify` checks each file's content MD5 (about 0.3 s for all four); a corrupt file is an error, never a
    silently shorter dataset.
    """
    data_dir = Path(data_dir)
    if download:
        download_missing(data_dir)
    else:
        check_mnist_present(data_dir)
    arrays = {}
    for key, (name, md5, shape) in FILES.items():
        path = find_file(data_dir, name)
        if path is None:  # removed since it was checked or downloaded
            raise MnistNotFound(f"{name}(.gz) is not in {data_dir}")
        arrays[key] = torch.from_numpy(read_idx_file(path, md5=md5 if verify else None, shape=shape).copy())
    for split in ("train", "test"):
        labels = arrays[f"{split}_labels"]
        if int(labels.max()) >= NUM_CLASSES:
            raise MnistFormatError(f"{split} labels hold {int(labels.max())}, outside 0..9")
    return Mnist(**arrays)


def train_val_split(n: int, *, val_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a reproducible train/validation split of `n` items (8:2 by default)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    n_val = round(n * val_fraction)
    return order[n_val:], order[:n_val]


def published_split(payload: Mapping[str, Any]) -> tuple[int, float]:
    """The validation split a published model was chosen on: its split seed and validation share (the trainer's
    defaults, 0 and 0.2, for models that lack them), so that Evaluate(SPLIT_VALIDATION) and the publish gate draw
    the images it did. ModelValidationError for a split that cannot be drawn: the server skips such a model, and the
    gate, which compared its fields unchecked, failed on one with a traceback at the end of a run."""
    metrics = numeric_metrics(payload.get("metrics"))
    seed = whole_field(payload.get("split_seed", metrics.get("split_seed", 0)), "split_seed", 2**63)
    fraction = finite_field(payload.get("val_fraction", metrics.get("val_fraction", 0.2)), "val_fraction")
    training_images = FILES["train_images"][2][0]
    if not 0 < round(training_images * fraction) < training_images:
        raise ModelValidationError(
            f"val_fraction is {fraction}: the validation share of the training images must leave images on both "
            "sides of the split"
        )
    return seed, fraction


def normalize(images: torch.Tensor, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> torch.Tensor:
    """uint8 images (N, 28, 28), ink bright on black as in MNIST -> the network's input (N, 1, 28, 28) float.

    Works on any device, so the trainer can keep the uint8 dataset on the GPU and normalize per batch.
    """
    return standardize(images.float().div_(255.0).unsqueeze(1), mean, std)


def standardize(images01: torch.Tensor, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> torch.Tensor:
    """Float images in [0, 1] of any shape -> zero mean, unit variance by MNIST's statistics."""
    return (images01 - mean).div_(std)
