"""Evaluate the served model on MNIST: the dataset is loaded once, lazily, and each split's images kept.

The images stay uint8 (the test set's 10,000 are 7.8 MB) and each chunk is normalized by the thread that runs
it through the network, just before: in parallel, in the cache, and with no float copy of a whole split (31-37 MB,
two kept) whose first fill was a tenth of a warm Evaluate, most of it page faults of the fresh memory.

A published model never changes (its version names one file, checked by SHA-256), so its output on a split is
the same every time too: the output (10,000 x 10 floats, 0.4 MB) is kept as well, and an Evaluate of a model and
split already evaluated only scores it. The forward pass was nine tenths of a warm Evaluate (0.5-1 s on 2 cores).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.data import Mnist, load_mnist, train_val_split
from shared.metrics import Evaluation, confusion_heatmap_png, evaluation_from_log_probs
from shared.resources import usable_cpus

from inference.lru import LruCache
from inference.model_store import ServedModel

log = logging.getLogger(__name__)

SPLITS = ("test", "validation")


class EvaluationDataError(RuntimeError):
    """MNIST could not be read (missing or corrupt files); the message says where it looked."""


@dataclass(frozen=True)
class EvaluationResult:
    split: str
    evaluation: Evaluation
    heatmap_png: bytes
    seconds: float


def split_key(split: str, seed: int, val_fraction: float) -> tuple:
    """What decides a split's images: the test set ignores the validation split's seed and fraction."""
    return (split,) if split == "test" else (split, seed, val_fraction)


def model_key(served: ServedModel) -> tuple:
    """What decides a served model's output: its published file (version and checksum) and the backend running it."""
    return (served.version, served.sha256, served.backend)


class EvaluationData:
    """MNIST for Evaluate, read from `data_dir` on first use and kept, with the images of a few splits, and the
    outputs of the last few (model, split) pairs evaluated."""

    def __init__(self, data_dir: Path, *, download: bool = False, cache_size: int = 2, outputs_cache_size: int = 4):
        self.data_dir = Path(data_dir)
        self.download = download
        self.cache_size = cache_size
        self._mnist: Mnist | None = None
        self._cache: LruCache[tuple, tuple[torch.Tensor, torch.Tensor]] = LruCache(cache_size)  # images, labels
        self._lock = threading.Lock()  # one reader of MNIST and one split's selection at a time
        # (model_key + split_key) -> log-probabilities (N, 10, 11 or 12)
        self.outputs: LruCache[tuple, torch.Tensor] = LruCache(outputs_cache_size)

    def _dataset(self) -> Mnist:
        if self._mnist is None:
            started = time.perf_counter()
            try:
                self._mnist = load_mnist(self.data_dir, download=self.download)
            except (OSError, ValueError, RuntimeError) as e:
                raise EvaluationDataError(
                    f"cannot read MNIST from {self.data_dir} ({e}); put the four MNIST files there or point "
                    "--data-dir / MNIST_DATA_DIR at them"
                ) from e
            log.info("MNIST loaded from %s in %.2f s", self.data_dir, time.perf_counter() - started)
        return self._mnist

    def inputs(self, split: str, *, seed: int = 0, val_fraction: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (N, 28, 28) uint8, as MNIST has them; labels (N,)) of `split`."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        key = split_key(split, seed, val_fraction)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                return cached
            mnist = self._dataset()
            if split == "test":
                images, labels = mnist.test_images, mnist.test_labels
            else:
                _, val_index = train_val_split(len(mnist.train_images), val_fraction=val_fraction, seed=seed)
                images, labels = mnist.train_images[val_index], mnist.train_labels[val_index]
            entry = (images.contiguous(), labels.clone())
            self._cache.put(key, entry)
            return entry


@functools.cache
def shared_evaluation_data(data_dir: str, download: bool = False) -> EvaluationData:
    """One EvaluationData per data folder in this process, so several servers (tests, benchmarks) share it."""
    return EvaluationData(Path(data_dir), download=download)


def forward_in_chunks(
    served: ServedModel,
    images: torch.Tensor,
    *,
    chunk_size: int = 256,
    workers: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> torch.Tensor | None:
    """The network's output (N, 10, 11 or 12) for uint8 MNIST images (N, 28, 28), normalized with the model's own
    (mean, std) a chunk at a time, chunks spread over `workers` threads.

    The server keeps torch at one intra-op thread so concurrent calls do not oversubscribe the cores; this
    runs chunks side by side instead (torch releases the GIL inside each forward), so one Evaluate still
    uses every core. Small chunks stay in cache. Returns None if `should_stop` turns true (caller gone).
    """

    def forward(chunk: torch.Tensor) -> torch.Tensor | None:
        if should_stop is not None and should_stop():
            return None
        return served.log_probs(chunk)

    if should_stop is not None and should_stop():
        # Not even a thread pool: once the server has stopped and the interpreter is exiting, making one raises
        # RuntimeError ("cannot schedule new futures"), which a call still running reported as INTERNAL.
        return None
    chunks = list(torch.split(images, chunk_size))
    with ThreadPoolExecutor(max_workers=workers or usable_cpus(), thread_name_prefix="evaluate") as pool:
        outputs = list(pool.map(forward, chunks))
    finished = [o for o in outputs if o is not None]
    if len(finished) < len(outputs):
        return None
    return torch.cat(finished) if finished else torch.empty(0, 10)


def evaluate_model(
    served: ServedModel,
    data: EvaluationData,
    split: str,
    *,
    heatmap: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> EvaluationResult | None:
    """Score `served` on `split`. Returns None if `should_stop` turned true part-way (the caller is gone)."""
    started = time.perf_counter()
    images, labels = data.inputs(split, seed=served.split_seed, val_fraction=served.val_fraction)
    key = model_key(served) + split_key(split, served.split_seed, served.val_fraction)
    log_probs = data.outputs.get(key)
    if log_probs is None:
        log_probs = forward_in_chunks(served, images, should_stop=should_stop)
        if log_probs is None:
            return None
        log_probs = log_probs.float()
        data.outputs.put(key, log_probs)
    evaluation = evaluation_from_log_probs(log_probs, labels)
    png = b""
    if heatmap:
        # The caller left while it was scored: the heatmap (0.2 s; a second the first time) would be for nobody.
        if should_stop is not None and should_stop():
            return None
        png = confusion_heatmap_png(evaluation.confusion, title=f"Model {served.version}, {split}")
    return EvaluationResult(split=split, evaluation=evaluation, heatmap_png=png, seconds=time.perf_counter() - started)
