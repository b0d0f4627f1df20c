"""Checkpoints and published models: written atomically, loaded without unpickling arbitrary objects.

A *checkpoint* (runs/<run>/checkpoints/{last,best}.pt) holds everything needed to continue training.
A *published model* (models/<version>.pt) holds what the inference service needs, beside it its ONNX export
(models/<version>.onnx, shared/onnx_model.py), and `models/LATEST.json` (the manifest) names the one to serve with
the SHA-256 of both files, so a reader never sees a half-written model: the files are renamed into place first,
the manifest after them, each from a temporary name in the same folder. Each version also keeps its own manifest
(models/<version>.json, same format), so any version can be listed, pinned or promoted later with its checksums,
and every change of LATEST.json is appended to models/HISTORY.jsonl, which is what
`python -m inference.models rollback` walks back. A change whose line was lost (the process killed between
LATEST.json's rename and the append, a full disk) is recorded by the next change as a `recovered` line, before
its own (record_unrecorded_latest).

Everything stored is a tensor, number, string, list or dict, so `torch.load(..., weights_only=True)` reads it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import pickle
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.model import build_model

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "mnist-stack/checkpoint/v1"
MODEL_FORMAT = "mnist-stack/model/v1"
MANIFEST_NAME = "LATEST.json"
HISTORY_NAME = "HISTORY.jsonl"
# Version names that would collide with the folder's own files (LATEST.json, HISTORY.jsonl).
RESERVED_VERSIONS = frozenset({"LATEST", "HISTORY"})


class CheckpointError(ValueError):
    """A checkpoint, model or manifest that cannot be used; the message says why."""


class VersionTaken(CheckpointError):
    """A model published under a version that holds another model. Not an OSError: the trainer said it as a folder
    it could not write, and its advice (make the folder writable, then --resume) failed the same way each time."""


class ModelValidationError(ValueError):
    """A published model that loads but must not serve (non-finite output, bad normalization, ...)."""


def finite_field(value: Any, name: str) -> float:
    """A published model's field `name` as a finite float, else ModelValidationError."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ModelValidationError(f"{name} is {value!r}, not a number") from None
    if not math.isfinite(number):
        raise ModelValidationError(f"{name} is {number}, not finite")
    return number


def published_normalization(payload: Mapping[str, Any]) -> tuple[float, float]:
    """A published model's input normalization (mean, std), as the server and the publish gate read it; else
    ModelValidationError (a damaged file may hold anything there)."""
    norm = payload.get("normalization")
    if not isinstance(norm, dict) or "mean" not in norm or "std" not in norm:
        raise ModelValidationError("payload lacks normalization {mean, std}")
    mean = finite_field(norm["mean"], "normalization.mean")
    std = finite_field(norm["std"], "normalization.std")
    if std <= 0:
        raise ModelValidationError(f"normalization.std is {std}, must be positive")
    return mean, std


def whole_field(value: Any, name: str, below: int) -> int:
    """A whole number from 0 to below - 1 (what the field it goes into holds: ModelInfo's int32 epoch, the split's
    64-bit generator seed), else ModelValidationError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or not 0 <= value < below:
        raise ModelValidationError(f"{name} is {value!r}, not a whole number from 0 to {below - 1:,}")
    return int(value)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def files_sha256(paths: Iterable[Path], extra: Iterable[str] = ()) -> str:
    """SHA-256 (hex) over `extra` and each file's name and contents, in the order given: the key of a cache whose
    entries depend on code (trainer/picture_cache.py, testkit/cache.py), so an edit names another entry."""
    digest = hashlib.sha256()
    for text in extra:
        digest.update(text.encode() + b"\0")
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _process_umask() -> int:
    """The process's umask: from /proc (Linux), else by setting it and back (once, at import)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _process_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part.

    On any error the temporary file is removed and `path` is untouched, a full disk included (atomic_writer).
    """
    with atomic_writer(path) as (f, _):
        f.write(data)


@contextlib.contextmanager
def atomic_writer(path: Path, *, suffix: str = ".tmp") -> Iterator[tuple[io.BufferedWriter, Path]]:
    """Yield (file, its path) to write `path`'s new content into; when the block ends without an error, the file
    takes `path`'s name, so readers see the old file or the whole new one, never a part.

    The bytes go to a temporary file in the same folder (`.<name>.<random><suffix>`), which the block may read
    back (flush first) to check it before it counts. It is flushed to disk and renamed over `path` (atomic on POSIX
    within one filesystem). On any error, or an exception raised in the block, the temporary file is removed
    and `path` is untouched, a full disk included.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes the file owner-only (0600); a file made by open() has the umask's mode, which a server
            # running as another user of the group (the k8s manifests' fsGroup) needs to read the models. A
            # filesystem that refuses chmod keeps 0600, as before.
            with contextlib.suppress(OSError):
                os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            yield f, Path(tmp)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # Make the rename itself durable, so a power cut cannot leave the folder pointing at nothing.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Save a training checkpoint atomically. `checkpoint` must hold only weights_only-safe values."""
    atomic_write_bytes(path, _torch_bytes({"format": CHECKPOINT_FORMAT, **checkpoint}))


def load_checkpoint(
    path: Path | io.BytesIO, *, map_location: str | torch.device = "cpu", name: str | None = None
) -> dict[str, Any]:
    """Load a checkpoint or model file (or its bytes, then called `name` in errors); never unpickles code."""
    where = name or path
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{where}: {_refusal(e)}") from e
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(f"{where}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or obj.get("format") not in (CHECKPOINT_FORMAT, MODEL_FORMAT):
        raise CheckpointError(f"{where}: not an mnist-stack checkpoint (no known 'format' field)")
    return obj


def _refusal(e: pickle.UnpicklingError) -> str:
    """Why the weights-only unpickler refused a file, without torch's advice to retry with weights_only=False
    (which would run whatever code the file carries; this message reaches logs and GetModelInfo)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    cause = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[-1] if lines else "")
    if "GLOBAL" in cause:
        return f"refused: it holds Python objects other than tensors and plain data, which could run code ({cause})"
    return f"not a readable checkpoint (damaged, or not a torch file: {cause})"


def model_from_checkpoint(checkpoint: dict[str, Any]) -> nn.Module:
    """Rebuild the network a checkpoint describes and load its weights strictly. Returns it in eval mode."""
    try:
        model = build_model(checkpoint["arch"], **checkpoint.get("arch_kwargs", {}))
        model.load_state_dict(checkpoint["model"], strict=True)
    except KeyError as e:
        raise CheckpointError(f"checkpoint lacks the field {e}") from e
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"weights do not fit architecture {checkpoint.get('arch')!r}: {e}") from e
    return model.eval()


@dataclass(frozen=True)
class Manifest:
    """What models/LATEST.json says about the newest published model."""

    version: str
    file: str
    sha256: str
    size: int
    arch: str
    created_at: str
    run_name: str
    metrics: dict[str, float]
    # The ONNX export beside the .pt. Empty in manifests written before exports existed (served with torch).
    onnx_file: str = ""
    onnx_sha256: str = ""
    onnx_size: int = 0

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n"


def publish_model(
    models_dir: Path, *, version: str, model_payload: dict[str, Any], onnx: bytes | None = None, serve: bool = True
) -> Manifest:
    """Publish a model for the inference service: write models/<version>.onnx, models/<version>.json and
    models/<version>.pt, then (with `serve`) point LATEST.json at them. Without `serve` the version is stored but
    not served: it can be pinned by a call's model_version, or promoted (`python -m inference.models promote`).

    The model file comes last: versions are found by their .pt files, so a publish cut short (the process killed,
    the disk full) leaves no version at all rather than one without its manifest and export, which was listed as
    published before manifests existed and, promoted, was served with torch for good. An export and a manifest
    left without their model file name no version (listing and lookups go by .pt files) and are written again.

    `model_payload` holds arch, arch_kwargs, model (state dict), normalization, metrics, run_name, epoch.
    `onnx` is its export (the trainer passes the one it verified on the test set); None exports it here. A
    payload whose weights do not fit its architecture cannot be exported: it is published as the .pt alone,
    which the inference service refuses as it always did.
    A version is published once: publishing it again with other weights is an error rather than a silent
    rewrite. Publishing it again with the *same* weights completes a publish that was cut short after the model
    file was renamed into place: the file is kept as it is and LATEST.json is pointed at it, so
    `python -m trainer --resume` can finish the job. An export already there is kept too (it was written for these
    weights), and a recorded manifest that names no export (one `promote` wrote for a model file an older publish
    cut short left alone) gets the export's fields.
    """
    models_dir = Path(models_dir)
    file_name = f"{version}.pt"
    if not is_version_name(version):
        raise ValueError(
            f"version {version!r} must be a plain file name of at most {MAX_VERSION_BYTES} bytes, not "
            f"starting with '.', and not {' or '.join(sorted(RESERVED_VERSIONS))}"
        )
    metrics = numeric_metrics(model_payload.get("metrics"))  # before anything is written: nothing half-published
    for path in remove_abandoned_temp_files(models_dir):
        log.info("removed %s, left by a publish that was killed while writing it", path.name)
    target = models_dir / file_name
    onnx_target = models_dir / f"{version}.onnx"
    republished = target.exists()
    # An export already there is this model's only when the model file was (a publish finished again); one left
    # beside a removed model file may hold other weights, so it is written again.
    keep_export = republished and onnx_target.exists()
    if republished:
        data = _same_model_bytes(target, version, model_payload)
    else:
        data = _torch_bytes({"format": MODEL_FORMAT, "version": version, "created_at": utc_now(), **model_payload})
    if keep_export:
        onnx = onnx_target.read_bytes()
    elif onnx is None:
        onnx = _export(model_payload)
    manifest = Manifest(
        version=version,
        file=file_name,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        arch=model_payload["arch"],
        created_at=utc_now(),
        run_name=str(model_payload.get("run_name", "")),
        metrics=metrics,
        onnx_file=onnx_target.name if onnx is not None else "",
        onnx_sha256=hashlib.sha256(onnx).hexdigest() if onnx is not None else "",
        onnx_size=len(onnx) if onnx is not None else 0,
    )
    recorded = None
    if republished:  # a manifest left without its model file describes no version of these bytes
        try:
            recorded = read_version_manifest(models_dir, version)
        except CheckpointError:
            recorded = None
    if recorded is not None and recorded.sha256 == manifest.sha256:
        # Its first publish's time: republishing the same bytes changes nothing, unless the manifest names no export
        # and one is there now. `promote` records none for a model file an older publish left without its export,
        # and kept so, the version was served with torch for good. A recorded export's checksum is kept: an export
        # damaged since stays refused rather than recorded as it is now.
        manifest = (
            recorded
            if recorded.onnx_file
            else replace(
                recorded, onnx_file=manifest.onnx_file, onnx_sha256=manifest.onnx_sha256, onnx_size=manifest.onnx_size
            )
        )
    if onnx is not None and not keep_export:
        atomic_write_bytes(onnx_target, onnx)
    if recorded != manifest:
        atomic_write_bytes(version_manifest_path(models_dir, version), manifest.to_json().encode())
    if not republished:
        atomic_write_bytes(target, data)  # last: now it is a version, with its manifest and export beside it
    if not serve:
        return manifest
    try:
        current = read_manifest(models_dir)
    except CheckpointError:
        current = None
    if current == manifest:
        # Already named by the manifest, every field of it: a publish cut short after LATEST.json's rename, whose
        # history line may be missing yet (the trainer's gate reads the history to tell what was served).
        try:
            record_unrecorded_latest(models_dir)
        except OSError as e:
            log.warning("serving %s, but %s could not record it: %s", version, HISTORY_NAME, e)
        return current
    point_latest(models_dir, manifest, event="publish")
    return manifest


def _export(model_payload: dict[str, Any]) -> bytes | None:
    """The payload's network as ONNX, or None if its weights do not build it (see publish_model)."""
    try:
        model = model_from_checkpoint(model_payload)
    except CheckpointError:
        return None
    weights = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        weights.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    key = (
        model_payload["arch"],
        json.dumps(model_payload.get("arch_kwargs") or {}, sort_keys=True),
        weights.hexdigest(),
    )
    return _export_cached(key, model)


def _export_cached(key: tuple, model: nn.Module) -> bytes:
    """export_onnx, once per distinct network in this process (tools and tests publish the same weights often)."""
    from shared.onnx_model import export_onnx

    cached = _EXPORTS.get(key)
    if cached is None:
        cached = _EXPORTS[key] = export_onnx(model)
        while len(_EXPORTS) > 8:
            _EXPORTS.pop(next(iter(_EXPORTS)))
    return cached


_EXPORTS: dict[tuple, bytes] = {}  # (arch, arch_kwargs, SHA-256 of the weights) -> ONNX bytes, the newest 8


MAX_VERSION_BYTES = 200  # <version>.json within the 255 bytes a file name may have


def numeric_metrics(metrics: Any) -> dict[str, float]:
    """The entries of a payload's or manifest's metrics that are numbers, as floats; others are left out. Metrics
    are shown and compared, never trusted to be well formed: a file on disk or a caller's payload supplies them."""
    if not isinstance(metrics, dict):
        return {}
    numbers = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            try:
                number = float(v)
            except OverflowError:  # a whole number past float's range (JSON has no limit): it broke ListModels
                continue
            if math.isfinite(number):  # NaN and Infinity are no JSON: `list --json` printed them for jq to refuse
                numbers[str(k)] = number
    return numbers


def verify_model_file(models_dir: Path, manifest: Manifest) -> None:
    """Raise CheckpointError unless the model file `manifest` names has its size and SHA-256."""
    _read_verified(models_dir, manifest.file, manifest.size, manifest.sha256)


def is_version_name(version: str) -> bool:
    """Whether `version` can name a published model: <version>.pt and .json are plain names in models/."""
    if not isinstance(version, str):
        return False
    try:
        # Strict UTF-8: a file name that is not (Python holds its bytes as surrogates) cannot go into a protobuf
        # string or a JSON answer, so it names no version (it once failed ListModels for every caller).
        encoded = version.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return (
        bool(version)
        and not version.startswith(".")
        and "\x00" not in version
        and len(encoded) <= MAX_VERSION_BYTES
        and Path(f"{version}.pt").name == f"{version}.pt"
        and version not in RESERVED_VERSIONS
    )


@contextlib.contextmanager
def models_lock(models_dir: Path) -> Iterator[None]:
    """Hold the models folder's lock for the block: what decides which version is served (the trainer's publish
    gate, promote, rollback, prune) and the change it makes run one at a time. Without it a promote made while a
    trainer compared its model with the served one was overwritten by the trainer's worse model a second later.

    An exclusive flock on the folder itself (no lock file appears among the versions), waited for; a
    folder that does not exist yet is not locked (a writer makes it first: the trainer does), and a filesystem
    that cannot lock a folder (some network ones) goes without, as before, with a warning."""
    try:
        fd = os.open(models_dir, os.O_RDONLY)
    except FileNotFoundError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            log.warning(
                "%s cannot be locked (%s): changes to the served model are not kept one at a time", models_dir, e
            )
        yield
    finally:
        os.close(fd)  # releases the lock


def version_manifest_path(models_dir: Path, version: str) -> Path:
    return Path(models_dir) / f"{version}.json"


def point_latest(models_dir: Path, manifest: Manifest, *, event: str) -> None:
    """Make `manifest` the served one: rename a new LATEST.json into place, then append the change to the
    history (`event`: publish, promote or rollback). The caller has checked the model, and holds the folder's
    lock where other writers may be at work (models_lock).

    The served version's own line, if it was lost, is recorded first (record_unrecorded_latest): this change
    replaces it, and the trainer's publish gate tells what was served from the history alone.

    A rollback is recorded first, and not made unless it is: a history that does not end with the served version
    is read as if that version were pushed on top (inference.versions.served_stack), which is right for a publish
    or a promote whose line was lost, but made a rollback from C to B whose line was lost read as A, B, C, B, and
    the next rollback served C again. Recorded and then not made (LATEST.json could not be written), it reads as
    rolled back and then C pushed on top: the next rollback goes to B, as it should."""
    models_dir = Path(models_dir)
    entry = {"at": utc_now(), "event": event, "version": manifest.version, "sha256": manifest.sha256}
    if event == "rollback":
        record_unrecorded_latest(models_dir)  # OSError: nothing has changed
        append_history(models_dir, entry)
        atomic_write_bytes(models_dir / MANIFEST_NAME, manifest.to_json().encode())
        return
    # LATEST.json, not the history, says what is served, so a failure to record (a full disk) only warns: a history
    # that does not end with the served version is read as if it did.
    try:
        record_unrecorded_latest(models_dir)
    except OSError as e:
        log.warning("%s could not record the version served until now: %s", HISTORY_NAME, e)
    atomic_write_bytes(models_dir / MANIFEST_NAME, manifest.to_json().encode())
    try:
        append_history(models_dir, entry)
    except OSError as e:
        log.warning("serving %s, but %s could not record it: %s", manifest.version, HISTORY_NAME, e)


RECOVERED_EVENT = "recovered"  # a history line recorded late, for a change of LATEST.json whose own line was lost


def record_unrecorded_latest(models_dir: Path) -> None:
    """Append a `recovered` line for the version LATEST.json names if the history does not end with it: the line of
    the change that served it was lost (a process killed between LATEST.json's rename and the append, or a full
    disk). Read as a publish or promote would be (it pushes the version; inference.versions.served_stack read it so
    already), and it tells the trainer's publish gate that the version was served: without it a run resumed after
    such a kill served its model again over a rollback made since. Raises OSError if the line cannot be written;
    an unreadable LATEST.json names nothing to record."""
    try:
        latest = read_manifest(models_dir)
    except (CheckpointError, OSError):
        return
    if latest is None:
        return
    history = read_history(models_dir)
    if history and history[-1]["version"] == latest.version:
        return
    append_history(
        models_dir,
        {"at": utc_now(), "event": RECOVERED_EVENT, "version": latest.version, "sha256": latest.sha256},
    )


def append_history(models_dir: Path, entry: dict[str, str]) -> None:
    """Append one change of LATEST.json to the history, synced. One short line in append mode: concurrent writers
    cannot interleave within it on a local filesystem, and a line cut short by a crash is skipped by read_history;
    the entry after it starts a line of its own (else the two made one bad line, and rollback skipped that
    version)."""
    with open(Path(models_dir) / HISTORY_NAME, "a+b") as f:
        cut_short = f.seek(0, os.SEEK_END) > 0 and f.seek(-1, os.SEEK_END) >= 0 and f.read(1) != b"\n"
        f.write((b"\n" if cut_short else b"") + json.dumps(entry, sort_keys=True).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())


def _json_text(text: str) -> Any:
    """json.loads(text), refusing JSON that holds no text: a lone surrogate escape ("\\ud800") is valid JSON but no
    UTF-8, a protobuf string field refuses it, and ListModels failed INTERNAL for every caller. Raises ValueError
    (JSONDecodeError; UnicodeEncodeError for the surrogate), or RecursionError for JSON nested thousands deep."""
    value = json.loads(text)
    json.dumps(value, ensure_ascii=False).encode("utf-8")
    return value


def read_history(models_dir: Path) -> list[dict[str, str]]:
    """Every change of LATEST.json, oldest first, as {at, event, version, sha256}; [] when there is none."""
    try:
        lines = (Path(models_dir) / HISTORY_NAME).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines:
        try:
            entry = _json_text(line)
        except (ValueError, RecursionError):
            continue  # a line cut short by a crash, or damaged (nested thousands deep)
        if isinstance(entry, dict) and all(isinstance(entry.get(k), str) for k in ("event", "version")):
            entries.append(entry)
    return entries


def _same_model_bytes(target: Path, version: str, model_payload: dict[str, Any]) -> bytes:
    """The bytes of an already published models/<version>.pt if it holds the very model of `model_payload`."""
    data = target.read_bytes()
    try:
        existing = load_checkpoint(io.BytesIO(data), name=target.name)
    except CheckpointError:
        existing = {}
    weights, new_weights = existing.get("model"), model_payload.get("model")
    same = (
        existing.get("format") == MODEL_FORMAT
        and existing.get("version") == version
        and existing.get("arch") == model_payload.get("arch")
        and dict(existing.get("arch_kwargs") or {}) == dict(model_payload.get("arch_kwargs") or {})
        and isinstance(weights, dict)
        and isinstance(new_weights, dict)
        and weights.keys() == new_weights.keys()
        and all(
            isinstance(v, torch.Tensor) and torch.equal(v, new_weights[k].detach().cpu()) for k, v in weights.items()
        )
    )
    if not same:
        raise VersionTaken(
            f"model version {version} is already published at {target} with other weights, and a published version "
            "is never rewritten (a run resumed after its publish on another machine or build can end with other "
            f"weights): the published one stands (python -m inference.models promote {version} serves it); to "
            "publish this run's model, train it as another run (--run-name)"
        )
    return data


def remove_stale_temp_files(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """Delete the temporary files atomic_write_bytes left for `names` in `folder` when its process was killed.

    Only for a folder no other process writes at the same time (a run's checkpoints/): another writer's
    temporary file there would be deleted under it. Returns what was removed.
    """
    removed = []
    for name in names:
        for path in Path(folder).glob(f".{name}.*.tmp"):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# A temporary file of atomic_write_bytes older than this was left by a process killed while writing it: one write
# takes seconds at most (a model is a few MB), so a live writer's file is never this old.
ABANDONED_AFTER_SECONDS = 3600.0


def remove_abandoned_temp_files(folder: Path, older_than: float = ABANDONED_AFTER_SECONDS) -> list[Path]:
    """Delete the temporary files atomic_write_bytes left in `folder` (a shared one: models/, the picture cache)
    when its process was killed, if unchanged for `older_than` seconds. Another process may be writing in the same
    folder, so a younger one is left alone. Returns what was removed; a file that cannot be removed is skipped."""
    removed = []
    deadline = time.time() - older_than
    for path in Path(folder).glob(".*.tmp"):
        try:
            if path.stat().st_mtime < deadline:
                path.unlink()
                removed.append(path)
        except OSError:  # removed by another process meanwhile, or not ours to remove
            continue
    return removed


# Each manifest field and the JSON type it must have: a manifest is read from disk, so nothing about it is trusted.
_MANIFEST_TYPES: dict[str, type] = {
    "version": str,
    "file": str,
    "sha256": str,
    "size": int,
    "arch": str,
    "created_at": str,
    "run_name": str,
    "metrics": dict,
}
# Fields a manifest may lack (it was written before they existed), with their types.
_OPTIONAL_MANIFEST_TYPES: dict[str, type] = {"onnx_file": str, "onnx_sha256": str, "onnx_size": int}


def read_manifest(models_dir: Path) -> Manifest | None:
    """The manifest of the served model (models/LATEST.json), or None if nothing is published yet.

    Raises CheckpointError for a manifest that is malformed (not JSON, a field missing or of the wrong type)
    or names a file outside `models_dir`.
    """
    return _read_manifest_file(Path(models_dir) / MANIFEST_NAME, models_dir)


def read_version_manifest(models_dir: Path, version: str) -> Manifest | None:
    """models/<version>.json, the manifest a version got when it was published; None if it has none (a version
    published before these existed, or no such version). Raises CheckpointError as read_manifest does, and for
    a manifest that describes another version."""
    if not is_version_name(version):
        return None
    manifest = _read_manifest_file(version_manifest_path(models_dir, version), models_dir)
    if manifest is not None and (manifest.version, manifest.file) != (version, f"{version}.pt"):
        raise CheckpointError(f"{version}.json describes version {manifest.version!r} ({manifest.file})")
    return manifest


def _read_manifest_file(path: Path, models_dir: Path) -> Manifest | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        fields = _json_text(raw.decode("utf-8"))
        if not isinstance(fields, dict):
            raise TypeError(f"a JSON {type(fields).__name__}, not an object")
        optional = {name: kind for name, kind in _OPTIONAL_MANIFEST_TYPES.items() if name in fields}
        for name, kind in {**_MANIFEST_TYPES, **optional}.items():
            value = fields[name]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise TypeError(f"{name} is {value!r}, not a {kind.__name__}")
        for name in ("size", "onnx_size"):  # a file's size in bytes, as ModelVersion's int64 size_bytes holds it
            if not 0 <= fields.get(name, 0) < 2**63:
                raise ValueError(f"{name} is {fields[name]}, not a file's size in bytes")
        fields["metrics"] = numeric_metrics(fields["metrics"])  # a text or list among them is left out, not shown
        manifest = Manifest(**{k: fields[k] for k in Manifest.__dataclass_fields__ if k in fields})
    # UnicodeDecodeError and JSONDecodeError are ValueErrors; RecursionError: JSON nested thousands deep.
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise CheckpointError(f"{path}: malformed manifest ({type(e).__name__}: {e})") from e
    for name in (manifest.file, *([manifest.onnx_file] if manifest.onnx_file else [])):
        if Path(name).name != name or name in ("", ".", "..") or "\x00" in name:
            raise CheckpointError(f"{path}: model file {name!r} is not a plain name inside {models_dir}")
    return manifest


def _read_verified(models_dir: Path, name: str, size: int, sha256: str) -> bytes:
    """The bytes of models_dir/name if they have the manifest's size and SHA-256; else CheckpointError."""
    models_dir = Path(models_dir).resolve()
    path = (models_dir / name).resolve()
    if path.parent != models_dir:  # a symlink pointing elsewhere, for instance
        raise CheckpointError(f"model file {name!r} resolves outside {models_dir}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"manifest names {name}, which does not exist") from None
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != size or digest != sha256:
        raise CheckpointError(
            f"{name}: checksum mismatch (size {len(data)} vs {size}, sha256 {digest[:12]} vs "
            f"{sha256[:12]}); the file is damaged or still being written"
        )
    return data


def read_published_onnx(models_dir: Path, manifest: Manifest) -> bytes | None:
    """The verified bytes (size, SHA-256) of the ONNX export a manifest names, or None if it names none."""
    if not manifest.onnx_file:
        return None
    return _read_verified(models_dir, manifest.onnx_file, manifest.onnx_size, manifest.onnx_sha256)


def read_published_model(models_dir: Path, manifest: Manifest) -> tuple[dict[str, Any], nn.Module]:
    """Read and verify the model a manifest names: size, SHA-256, format, strict weights. Returns (payload, model)."""
    data = _read_verified(models_dir, manifest.file, manifest.size, manifest.sha256)
    payload = load_checkpoint(io.BytesIO(data), name=manifest.file)  # the verified bytes, not the file again
    if payload.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{manifest.file}: a training checkpoint, not a published model")
    return payload, model_from_checkpoint(payload)
