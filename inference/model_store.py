"""Watch models/LATEST.json, load and validate each newly published model, and swap it in atomically.

Once a model is served, requests never wait for the load of a newer one: the watcher thread builds and checks the
new model on its own, then replaces one reference (`ModelStore.current`). (Before the first model, a request loads
it itself, and a request for a pinned version loads that version, one at a time.) A request reads that reference
once and uses the model it got to the end, so a swap mid-request is harmless and the old model is freed when its
last request finishes.

A model that fails to load or validate is skipped with a logged reason and the previous one keeps serving.
The same bad manifest is retried only after a back-off (doubling up to `max_retry_after`), never in a tight
loop: a transient read error heals on its own, a damaged file is not re-read every second.

A call may also pin an older or newer version (`model_version`): `model_for(version)` loads it on demand with
the same checks, into a small least-recently-used cache, without touching what LATEST.json serves.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.checkpoint import (
    MANIFEST_NAME,
    CheckpointError,
    Manifest,
    ModelValidationError,
    finite_field,
    numeric_metrics,
    published_normalization,
    read_manifest,
    read_published_model,
    read_published_onnx,
    utc_now,
    whole_field,
)
from shared.data import normalize, published_split
from shared.model import DIGITS, activation_bytes, count_parameters, output_columns
from shared.onnx_model import OnnxRunner, TorchRunner, compare

from inference.lru import LruCache
from inference.options import BACKENDS, DEFAULT_BACKEND
from inference.versions import find_manifest

log = logging.getLogger(__name__)


class UnknownVersion(LookupError):
    """A pinned model_version that is not published (or is no version name at all)."""


class VersionUnavailable(RuntimeError):
    """A pinned version that is published but fails the checks every model must pass; the message says why."""


# Why a model was skipped, as a metric label: a few fixed words, never the message (which names files).
SKIP_REASONS = (
    "manifest",
    "missing",
    "path",
    "checksum",
    "unsafe",
    "unreadable",
    "weights",
    "validation",
    "io",
    "other",
)
_CHECKPOINT_ERROR_REASONS = (  # (words in a CheckpointError's message, reason); see shared/checkpoint.py
    ("malformed manifest", "manifest"),
    ("is not a plain name", "manifest"),
    ("does not exist", "missing"),
    ("resolves outside", "path"),
    ("checksum mismatch", "checksum"),
    ("refused:", "unsafe"),
    ("weights do not fit", "weights"),
    ("lacks the field", "weights"),
    ("training checkpoint", "unreadable"),
    ("not an mnist-stack", "unreadable"),
    ("not a readable checkpoint", "unreadable"),
)


def skip_reason(error: BaseException) -> str:
    """The SKIP_REASONS word for an error that stopped a model from loading."""
    if isinstance(error, ModelValidationError):
        return "validation"
    if isinstance(error, CheckpointError):
        message = str(error)
        return next((reason for words, reason in _CHECKPOINT_ERROR_REASONS if words in message), "other")
    if isinstance(error, OSError):
        return "io"
    return "other"


class ModelEvents:
    """What the model store tells about its work (inference.metrics counts it); these defaults do nothing."""

    def loaded(self, source: str, ok: bool) -> None:
        """A load finished: `source` "latest" (LATEST.json) or "pinned" (a call's model_version)."""

    def swapped(self, served: ServedModel, previous: ServedModel | None) -> None:
        """A newly published model now serves."""

    def skipped(self, reason: str) -> None:
        """A published model was skipped; `reason` is one of SKIP_REASONS."""


@dataclass(frozen=True)
class ServedModel:
    """A loaded, validated model and what GetModelInfo says about it. Immutable: swapped whole, never edited."""

    version: str
    model: nn.Module
    mean: float
    std: float
    arch: str
    arch_kwargs: dict[str, Any]
    parameter_count: int
    sha256: str
    metrics: dict[str, float]
    run_name: str
    epoch: int
    trained_at: str
    loaded_at: str
    split_seed: int
    val_fraction: float
    # The threshold on the digit score the trainer chose on the validation split; None for a model without the
    # not-digit class (shared/model.py).
    digit_threshold: float | None = None
    # What computes the forward pass: OnnxRunner of the model's verified ONNX export, or (None) TorchRunner(model).
    runner: OnnxRunner | TorchRunner | None = None
    # What its forward pass may hold for each image of a batch (shared.model.activation_bytes; None: measured here).
    image_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.runner is None:
            object.__setattr__(self, "runner", TorchRunner(self.model))
        if self.image_bytes is None:
            object.__setattr__(self, "image_bytes", activation_bytes(self.model))

    def forward_bytes(self, images: int) -> int:
        """The memory a forward pass over `images` images may hold at once, which the service holds in its decode
        budget while the network runs. Nothing counted it before: a forward pass of 256 images held 5 MiB
        (onnxruntime) to 26 MiB (torch), eight at once +128 MiB with onnxruntime, sixteen +390 MiB with torch."""
        assert self.image_bytes is not None  # __post_init__ sets it
        return images * self.image_bytes

    @property
    def backend(self) -> str:
        assert self.runner is not None  # __post_init__ sets it
        return self.runner.backend

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Normalized inputs (N, 1, 28, 28) -> the network's output, with the model's backend: log-probabilities
        (N, 10), then for a not-digit network its digit log-odds (N, 11) and, with its digit distance, the
        distance's penalty (N, 12; shared/model.py)."""
        assert self.runner is not None
        return self.runner(inputs)

    def images_at_once(self, most_bytes: int) -> int:
        """How many images a forward pass may take at once to hold at most `most_bytes` (at least one)."""
        assert self.image_bytes is not None  # __post_init__ sets it
        return max(1, most_bytes // self.image_bytes)

    def log_probs(self, images: torch.Tensor, at_once: int | None = None) -> torch.Tensor:
        """uint8 images (N, 28, 28) -> the network's output (N, 10, 11 or 12): in one forward pass, or in forward
        passes of at most `at_once` images, as even as they can be (a network's output for an image does not
        depend on the others in its batch)."""
        count = len(images)
        passes = 1 if at_once is None or count <= at_once else math.ceil(count / at_once)
        size = max(1, math.ceil(count / passes))
        with torch.inference_mode():
            outputs = [
                self.forward(normalize(images[start : start + size], self.mean, self.std))
                for start in range(0, count, size)
            ]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


@dataclass(frozen=True)
class LoadError:
    """A published model that was skipped, and why."""

    version: str
    reason: str
    at: str


def warm_up_inputs() -> torch.Tensor:
    """A fixed uint8 batch (4, 28, 28): black, white, a vertical stroke and a ring, like blank paper and digits."""
    images = torch.zeros(4, 28, 28, dtype=torch.uint8)
    images[1] = 255
    images[2, 4:24, 12:16] = 255
    yy, xx = torch.meshgrid(torch.arange(28), torch.arange(28), indexing="ij")
    radius = ((yy - 14) ** 2 + (xx - 14) ** 2).float().sqrt()
    images[3][(radius > 6) & (radius < 9)] = 255
    return images


def validate(model: nn.Module, mean: float, std: float) -> None:
    """Run a warm-up batch: the output must be finite log-probabilities of shape (N, 10), or (N, 11) for a
    network with the not-digit class, (N, 12) with its digit distance (shared/model.py).

    Doubles as the warm-up itself, so the first real request does not pay for lazy initialisation.
    """
    images = warm_up_inputs()
    with torch.inference_mode():
        for batch in (images[:1], images):  # batch of one (Predict) and several (PredictBatch)
            out = model(normalize(batch, mean, std))
            if out.shape not in ((len(batch), 10), (len(batch), 11), (len(batch), 12)):
                raise ModelValidationError(
                    f"warm-up output has shape {tuple(out.shape)}, expected ({len(batch)}, 10), ({len(batch)}, 11) "
                    f"or ({len(batch)}, 12)"
                )
            if not torch.isfinite(out).all():
                raise ModelValidationError("warm-up output is not finite (NaN or infinite weights?)")
            total = out[:, :10].double().exp().sum(dim=1)
            if not torch.allclose(total, torch.ones_like(total), atol=1e-3):
                raise ModelValidationError(
                    f"warm-up output is not log-probabilities (exp sums to {total.min():.3f}..{total.max():.3f})"
                )


def onnx_runner(models_dir: Path, manifest: Manifest, model: nn.Module, mean: float, std: float) -> OnnxRunner | None:
    """The model's ONNX export in onnxruntime, checked against the torch model on the warm-up batch; None if the
    manifest names no export (a model published before they existed). A damaged file (checksum) or an export that
    disagrees with the .pt is an error: the model is skipped, as for a damaged .pt."""
    onnx = read_published_onnx(models_dir, manifest)
    if onnx is None:
        log.info("model %s has no ONNX export; serving it with torch", manifest.version)
        return None
    try:
        runner = OnnxRunner(onnx, threads=torch.get_num_threads())
    except Exception as e:  # onnxruntime raises its own types for a file it cannot load
        raise ModelValidationError(f"{manifest.onnx_file}: onnxruntime cannot load it ({type(e).__name__}: {e})") from e
    try:
        check = compare(runner, model, normalize(warm_up_inputs(), mean, std))
    except Exception as e:  # an export of another network: outputs of another shape cannot even be compared
        raise ModelValidationError(
            f"{manifest.onnx_file} does not compute what {manifest.file} does ({type(e).__name__}: {e})"
        ) from e
    if not check.ok:
        raise ModelValidationError(
            f"{manifest.onnx_file} does not compute what {manifest.file} does: {check.describe()}"
        )
    return runner


def load_served_model(models_dir: Path, manifest: Manifest, backend: str = DEFAULT_BACKEND) -> ServedModel:
    """Read, verify (size, SHA-256, strict weights: see shared.checkpoint) and validate one published model, and
    with backend 'onnxruntime' its ONNX export."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} must be one of {', '.join(BACKENDS)}")
    payload, model = read_published_model(models_dir, manifest)
    if payload.get("version", manifest.version) != manifest.version:
        raise ModelValidationError(f"file says version {payload.get('version')!r}, manifest says {manifest.version!r}")
    mean, std = published_normalization(payload)
    model.eval()
    validate(model, mean, std)
    runner = onnx_runner(models_dir, manifest, model, mean, std) if backend == "onnxruntime" else None
    metrics = numeric_metrics(payload.get("metrics"))
    digit_threshold = None
    if output_columns(model) > DIGITS:  # the not-digit class's log-odds (shared/model.py)
        digit_threshold = finite_field(payload.get("digit_threshold", 0.5), "digit_threshold")
        if not 0 <= digit_threshold <= 1:
            raise ModelValidationError(f"digit_threshold is {digit_threshold}, must be in [0, 1]")
    # The trainer stores the validation split's seed and share so Evaluate(SPLIT_VALIDATION) sees the same images it
    # did. Checked here, or a model whose split cannot be drawn would fail each Evaluate as INTERNAL.
    split_seed, val_fraction = published_split(payload)
    return ServedModel(
        version=manifest.version,
        model=model,
        mean=mean,
        std=std,
        arch=str(payload["arch"]),
        arch_kwargs=dict(payload.get("arch_kwargs") or {}),
        parameter_count=count_parameters(model),
        sha256=manifest.sha256,
        metrics=metrics,
        run_name=str(payload.get("run_name", manifest.run_name)),
        epoch=whole_field(payload.get("epoch", 0) or 0, "epoch", 2**31),
        trained_at=str(payload.get("created_at", manifest.created_at)),
        loaded_at=utc_now(),
        split_seed=split_seed,
        val_fraction=val_fraction,
        runner=runner,
        digit_threshold=digit_threshold,
    )


@dataclass
class _Failure:
    attempts: int
    retry_at: float
    error: LoadError  # what GetModelInfo says while the failure waits out its back-off


def _log_unloaded(version: str, _entry: _Pinned) -> None:
    log.info("pinned model %s unloaded (least recently used)", version)


FileStamp = tuple[int, int, int, int]  # (device, inode, size, modification time in ns) of a model file


def file_stamp(path: Path) -> FileStamp | None:
    """What tells one file from another at `path` without reading it: a version removed and published again
    gets a new file. None if there is no file."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class _Pinned:
    """A pinned version in the cache, with the stamp of the file it was loaded from."""

    served: ServedModel
    path: Path
    stamp: FileStamp


@dataclass
class ModelStore:
    """Owns the served model: polls `models_dir` every `poll_interval` seconds from a background thread.

    `on_swap(served)` is called after each swap (the server sets health to SERVING there); `events` hears of
    every load, swap and skip. `pinned_cache_size` versions other than the served one stay loaded for calls that
    pin them.
    """

    models_dir: Path
    poll_interval: float = 1.0
    backend: str = DEFAULT_BACKEND
    retry_after: float = 30.0
    max_retry_after: float = 600.0
    on_swap: Callable[[ServedModel], None] | None = None
    events: ModelEvents = field(default_factory=ModelEvents)
    pinned_cache_size: int = 3
    _pinned: LruCache[str, _Pinned] = field(init=False)  # version -> the loaded model and its file's stamp
    _pinned_failures: dict[tuple, tuple[str, float]] = field(default_factory=dict, init=False)
    _pinned_failures_lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _pinned_load_lock: threading.Lock = field(default_factory=threading.Lock, init=False)  # one load at a time
    _current: ServedModel | None = field(default=None, init=False)
    _last_error: LoadError | None = field(default=None, init=False)
    _failures: dict[tuple, _Failure] = field(default_factory=dict, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _poll_lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _swapped: threading.Condition = field(default_factory=threading.Condition, init=False)

    def __post_init__(self) -> None:
        self._pinned = LruCache(self.pinned_cache_size, on_evict=_log_unloaded)

    @property
    def current(self) -> ServedModel | None:
        """The model to serve now, or None before the first one. One read of one reference: no lock needed."""
        return self._current

    @property
    def last_error(self) -> LoadError | None:
        return self._last_error

    def poll_once(self) -> bool:
        """Look at the manifest once; load, validate and swap in a new model. True if a swap happened."""
        with self._poll_lock:  # the watcher thread and a test's direct call never load concurrently
            return self._poll()

    def _poll(self) -> bool:
        # The manifest is small: it is re-read at every poll, so a repaired one is picked up at once, but the same
        # error is reported again only after its back-off, not at every poll.
        try:
            manifest = read_manifest(self.models_dir)
        except CheckpointError as e:
            self._skip_manifest(("manifest", str(e)), f"unreadable manifest: {e}", "manifest")
            return False
        except OSError as e:
            self._skip_manifest(("manifest", repr(e)), f"cannot read the manifest: {e}", "io")
            return False
        except Exception as e:  # a reader bug must neither stop the server starting nor loop unreported
            self._skip_manifest(("manifest", repr(e)), f"cannot read the manifest: {type(e).__name__}: {e}", "other")
            return False
        # Readable again: a manifest failure remembered from before is no reason to stay quiet if it breaks anew.
        for stale in [key for key in self._failures if key[0] == "manifest" and len(key) == 2]:
            del self._failures[stale]
        if manifest is None:
            return False
        current = self._current
        if current is not None and (current.version, current.sha256) == (manifest.version, manifest.sha256):
            # LATEST.json names what is served (again, after a rollback to it, or a repaired manifest): a model
            # skipped before is no newer model that failed any more.
            self._last_error = None
            return False
        key = self._failure_key(manifest)
        failure = self._failures.get(key)
        if failure is not None and time.monotonic() < failure.retry_at:
            self._last_error = failure.error  # the named model's own failure, not whatever failed last
            return False
        started = time.perf_counter()
        try:
            served = load_served_model(self.models_dir, manifest, self.backend)
        except (CheckpointError, ModelValidationError) as e:
            self.events.loaded("latest", False)
            self._skip(key, manifest.version, str(e), skip_reason(e))
            return False
        except Exception as e:  # anything else from torch or the filesystem: skip it, keep serving
            self.events.loaded("latest", False)
            self._skip(key, manifest.version, f"{type(e).__name__}: {e}", skip_reason(e))
            return False
        self.events.loaded("latest", True)
        self._failures.pop(key, None)
        self._current = served  # the atomic swap
        # A skipped model older than the one now served is history: GetModelInfo reports only a newer one.
        self._last_error = None
        log.info(
            "model %s loaded (%s, %d parameters, sha256 %s, %s) in %.0f ms; swapped in%s",
            served.version,
            served.arch,
            served.parameter_count,
            served.sha256[:12],
            served.backend,
            (time.perf_counter() - started) * 1e3,
            f", replacing {current.version}" if current is not None else "",
        )
        self.events.swapped(served, current)
        if self.on_swap is not None:
            self.on_swap(served)
        with self._swapped:
            self._swapped.notify_all()
        return True

    def _skip_manifest(self, key: tuple, reason: str, kind: str) -> None:
        failure = self._failures.get(key)
        if failure is None or time.monotonic() >= failure.retry_at:
            self._skip(key, MANIFEST_NAME, reason, kind)  # no version can be named: the manifest names none

    def _skip(self, key: tuple, version: str, reason: str, kind: str) -> None:
        self.events.skipped(kind)
        previous = self._failures.get(key)
        attempts = previous.attempts + 1 if previous else 1
        delay = min(self.retry_after * 2 ** (attempts - 1), self.max_retry_after)
        self._last_error = LoadError(version=version, reason=reason, at=utc_now())
        self._failures[key] = _Failure(attempts, time.monotonic() + delay, self._last_error)
        serving = self._current.version if self._current is not None else "none"
        log.warning("model %s skipped: %s; still serving %s; next try in %.0f s", version, reason, serving, delay)

    def _failure_key(self, manifest: Manifest) -> tuple:
        """What a remembered load failure is for: the manifest's version and checksum, and the stamps of its files,
        so a damaged file restored (mnist-models promote names the same version again) is tried at once, not after
        the back-off of the copy that failed. One key for the served model's polls and for pinned versions."""
        files = [manifest.file, *([manifest.onnx_file] if manifest.onnx_file else [])]
        return (manifest.version, manifest.sha256, manifest.size, *(file_stamp(self.models_dir / f) for f in files))

    def model_for(self, version: str) -> ServedModel | None:
        """The model a call asked for: the served one for "" (None before the first), else that version.

        A pinned version is loaded with every check a served model passes (load_served_model) and kept in a
        least-recently-used cache of `pinned_cache_size`. Raises UnknownVersion when it is not published and
        VersionUnavailable when it fails the checks; such a failure is remembered for `retry_after` seconds, so a
        client asking again and again for a damaged version does not make the server re-read it every time.
        """
        current = self._current
        if not version:
            return current if current is not None else self._first_model()
        if current is not None and current.version == version:
            return current
        hit = self._pinned_hit(version)
        if hit is not None:
            return hit
        with self._pinned_load_lock:  # loads take ~0.1 s of CPU: one at a time, and never twice for one version
            hit = self._pinned_hit(version)
            if hit is not None:
                return hit
            try:
                manifest = find_manifest(self.models_dir, version)
            except (CheckpointError, OSError) as e:
                raise VersionUnavailable(f"model version {version} cannot be read: {e}") from None
            if manifest is None:
                raise UnknownVersion(version)
            path = self.models_dir / manifest.file
            stamp = file_stamp(path)  # before reading it: a file replaced meanwhile is seen as changed next time
            key = self._failure_key(manifest)
            with self._pinned_failures_lock:
                failure = self._pinned_failures.get(key)
            if failure is not None and time.monotonic() < failure[1]:
                raise VersionUnavailable(failure[0])
            started = time.perf_counter()
            try:
                served = load_served_model(self.models_dir, manifest, self.backend)
            except Exception as e:
                self.events.loaded("pinned", False)
                detail = (
                    str(e) if isinstance(e, (CheckpointError, ModelValidationError)) else f"{type(e).__name__}: {e}"
                )
                message = f"model version {version} fails the checks every served model must pass: {detail}"
                log.warning("pinned %s", message)
                with self._pinned_failures_lock:
                    self._pinned_failures[key] = (message, time.monotonic() + self.retry_after)
                raise VersionUnavailable(message) from None
            self.events.loaded("pinned", True)
            if stamp is not None:
                self._pinned.put(version, _Pinned(served, path, stamp))
            log.info(
                "pinned model %s loaded (%s, sha256 %s) in %.0f ms for calls that ask for it",
                version,
                served.arch,
                served.sha256[:12],
                (time.perf_counter() - started) * 1e3,
            )
            return served

    def _pinned_hit(self, version: str) -> ServedModel | None:
        """The cached model of `version` if its file is still the one it was loaded from (one stat): a version
        removed since (mnist-models prune) is no longer answered, and one removed and published again with other
        weights is loaded again, never answered with the old ones."""
        entry = self._pinned.get(version)
        if entry is None:
            return None
        if file_stamp(entry.path) != entry.stamp:
            self._pinned.discard(version, entry)
            return None
        return entry.served

    def _first_model(self) -> ServedModel | None:
        """No model served yet: look at the manifest now rather than at the next poll. Processes that share a port
        (--workers) poll each on its own, so one can answer a health check SERVING while the one a call reaches has
        not looked yet; and the first call after the trainer publishes is served rather than refused. A manifest
        that failed is not re-read before its back-off (_poll), so refused calls cost one small read each."""
        self.poll_once()
        return self._current

    def wait_for_version(self, version: str | None = None, timeout: float = 10.0) -> ServedModel | None:
        """Block until a model (of `version`, if given) serves, or `timeout` passes. For tests and tools."""
        deadline = time.monotonic() + timeout
        with self._swapped:
            while True:
                current = self._current
                if current is not None and (version is None or current.version == version):
                    return current
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._swapped.wait(min(remaining, self.poll_interval))

    def start(self) -> None:
        """Poll once now (so a server starts SERVING at once when a model exists), then in the background."""
        self.poll_once()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.poll_once()
            except Exception:  # a bug here must not stop the watching for good
                log.exception("model watcher: unexpected error; watching on")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
