"""Checkpoints and published models: written atomically, loaded without unpickling arbitrary objects.

A *checkpoint* (runs/<run>/checkpoints/{last,best}.pt) holds everything needed to continue training.
A *published model* (models/<version>.pt) holds what the inference service needs, and `models/LATEST.json`
(the manifest) names the newest one with its SHA-256, so a reader never sees a half-written model: the file is
renamed into place first, the manifest after it, each from a temporary name in the same folder.

Everything stored is a tensor, number, string, list or dict, so `torch.load(..., weights_only=True)` reads it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.model import build_model

CHECKPOINT_FORMAT = "mnist-stack/checkpoint/v1"
MODEL_FORMAT = "mnist-stack/model/v1"
MANIFEST_NAME = "LATEST.json"


class CheckpointError(ValueError):
    """A checkpoint, model or manifest that cannot be used; the message says why."""


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part.

    The bytes go to a temporary file in the same folder, are flushed to disk, and the file is renamed over
    `path` (atomic on POSIX within one filesystem). On any error the temporary file is removed and `path` is
    untouched, a full disk included.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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


def load_checkpoint(path: Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint or model file; never unpickles code (weights_only)."""
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or obj.get("format") not in (CHECKPOINT_FORMAT, MODEL_FORMAT):
        raise CheckpointError(f"{path}: not an mnist-stack checkpoint (no known 'format' field)")
    return obj


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

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n"


def publish_model(models_dir: Path, *, version: str, model_payload: dict[str, Any]) -> Manifest:
    """Publish a model for the inference service: write models/<version>.pt, then point LATEST.json at it.

    `model_payload` holds arch, arch_kwargs, model (state dict), normalization, metrics, run_name, epoch.
    A version is published once; publishing the same version again is an error rather than a silent rewrite.
    """
    models_dir = Path(models_dir)
    file_name = f"{version}.pt"
    if Path(file_name).name != file_name or file_name.startswith("."):
        raise ValueError(f"version {version!r} must be a plain file name")
    target = models_dir / file_name
    if target.exists():
        raise FileExistsError(f"model version {version} is already published at {target}")
    data = _torch_bytes({"format": MODEL_FORMAT, "version": version, "created_at": utc_now(), **model_payload})
    atomic_write_bytes(target, data)
    manifest = Manifest(
        version=version,
        file=file_name,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        arch=model_payload["arch"],
        created_at=utc_now(),
        run_name=str(model_payload.get("run_name", "")),
        metrics={k: float(v) for k, v in model_payload.get("metrics", {}).items()},
    )
    atomic_write_bytes(models_dir / MANIFEST_NAME, manifest.to_json().encode())
    return manifest


def read_manifest(models_dir: Path) -> Manifest | None:
    """The manifest of the newest published model, or None if nothing is published yet.

    Raises CheckpointError for a manifest that is malformed or names a file outside `models_dir`.
    """
    path = Path(models_dir) / MANIFEST_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        fields = json.loads(text)
        manifest = Manifest(**{k: fields[k] for k in Manifest.__dataclass_fields__})
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: malformed manifest ({e})") from e
    if Path(manifest.file).name != manifest.file or manifest.file in ("", ".", ".."):
        raise CheckpointError(f"{path}: model file {manifest.file!r} is not a plain name inside {models_dir}")
    return manifest


def read_published_model(models_dir: Path, manifest: Manifest) -> tuple[dict[str, Any], nn.Module]:
    """Read and verify the model a manifest names: size, SHA-256, format, strict weights. Returns (payload, model)."""
    models_dir = Path(models_dir).resolve()
    path = (models_dir / manifest.file).resolve()
    if path.parent != models_dir:  # a symlink pointing elsewhere, for instance
        raise CheckpointError(f"model file {manifest.file!r} resolves outside {models_dir}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"manifest names {manifest.file}, which does not exist") from None
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != manifest.size or digest != manifest.sha256:
        raise CheckpointError(
            f"{manifest.file}: checksum mismatch (size {len(data)} vs {manifest.size}, sha256 {digest[:12]} vs "
            f"{manifest.sha256[:12]}); the file is damaged or still being written"
        )
    payload = load_checkpoint(io.BytesIO(data))  # type: ignore[arg-type]
    if payload.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{manifest.file}: a training checkpoint, not a published model")
    return payload, model_from_checkpoint(payload)
