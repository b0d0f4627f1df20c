"""The published models folder seen as versions: what ListModels, a pinned `model_version` and
`python -m inference.models` work with.

    models/<version>.pt       a model, written once (shared.checkpoint.publish_model)
    models/<version>.json     its own manifest: size, SHA-256, metrics, creation time (written with it)
    models/LATEST.json        the served version's manifest
    models/HISTORY.jsonl      every change of LATEST.json: publish, promote, rollback, and recovered (a change
                              whose line was lost, recorded by the next one: shared.checkpoint.record_unrecorded_latest)

Versions published before the per-version manifests existed have only their .pt: their manifest is made from
the file itself (checksum computed now), so they can still be listed, pinned and promoted. A version whose
publish by older code was cut short after its .pt looks the same; a publish now writes the .pt last, and
publishing the same model again (the trainer's --resume) gives such a version its export, in its manifest too.

Nothing here loads a model for serving or changes LATEST.json: checking a model is inference.model_store's job,
and promote/rollback (inference.models) do both in order.
"""

from __future__ import annotations

import hashlib
import io
import threading
from dataclasses import dataclass
from pathlib import Path

from shared.checkpoint import (
    CheckpointError,
    Manifest,
    is_version_name,
    load_checkpoint,
    numeric_metrics,
    read_history,
    read_manifest,
    read_published_onnx,
    read_version_manifest,
    verify_model_file,
    version_manifest_path,
)


@dataclass(frozen=True)
class VersionInfo:
    """One published version, as ListModels reports it."""

    manifest: Manifest
    served: bool
    # False when the version has no manifest of its own (published before they existed, or by an older publish cut
    # short): the checksum and size are the file's now, so they cannot show damage done since.
    recorded: bool
    # Why the version's file cannot be read, if it cannot ("" when it can, or was not looked at).
    problem: str = ""


_reconstructed: dict[tuple[str, int, int], Manifest] = {}
_reconstructed_lock = threading.Lock()


def manifest_from_file(models_dir: Path, version: str) -> Manifest:
    """A manifest made from models/<version>.pt itself, for a version that has no <version>.json.

    Raises FileNotFoundError if there is no such file and CheckpointError if it is unreadable. Cached by the
    file's size and modification time: ListModels asks again and again, and published files are never rewritten.
    """
    path = Path(models_dir) / f"{version}.pt"
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _reconstructed_lock:
        cached = _reconstructed.get(key)
    if cached is not None:
        return cached
    data = path.read_bytes()
    payload = load_checkpoint(io.BytesIO(data), name=path.name)
    manifest = Manifest(
        version=version,
        file=path.name,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        arch=str(payload.get("arch", "")),
        created_at=str(payload.get("created_at", "")),
        run_name=str(payload.get("run_name", "")),
        metrics=numeric_metrics(payload.get("metrics")),
    )
    with _reconstructed_lock:
        if len(_reconstructed) > 1024:  # bounded: files come and go over a server's life
            _reconstructed.clear()
        _reconstructed[key] = manifest
    return manifest


def find_manifest(models_dir: Path, version: str) -> Manifest | None:
    """The manifest of `version`: its own models/<version>.json, else (an older version) one made from its file.

    None when there is no such version: a name that is no version name at all (a path, "LATEST", "") included,
    so a caller's string never reaches the filesystem as a path. Raises CheckpointError when the version exists
    but its manifest or file cannot be read.
    """
    if not is_version_name(version):
        return None
    manifest = read_version_manifest(models_dir, version)
    if manifest is not None:
        # A manifest left without its model file (a removal cut short) names no version: ListModels, which lists
        # model files, does not show it either.
        return manifest if (Path(models_dir) / manifest.file).exists() else None
    try:
        latest = read_manifest(models_dir)
    except CheckpointError:
        latest = None
    if latest is not None and latest.version == version:
        # LATEST.json naming a model file that is gone is no published version either (ListModels lists files).
        return latest if (Path(models_dir) / latest.file).exists() else None
    try:
        return manifest_from_file(models_dir, version)
    except FileNotFoundError:
        return None


def is_missing(models_dir: Path) -> bool:
    """Whether the models folder does not exist. A path that cannot be a folder (a file on it) is not missing: the
    command's OSError says what to check (main)."""
    try:
        models_dir.stat()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def version_names(models_dir: Path) -> list[str]:
    """Every version with a model file in `models_dir` (temporary files of interrupted writes excluded)."""
    return sorted(path.stem for path in Path(models_dir).glob("*.pt") if is_version_name(path.stem))


def list_versions(models_dir: Path) -> list[VersionInfo]:
    """All published versions, newest first (by creation time, then name); the served one is marked."""
    try:
        latest = read_manifest(models_dir)
    except (CheckpointError, OSError):  # OSError: unreadable (a folder by that name): the list is still shown
        latest = None
    infos = []
    for version in version_names(models_dir):
        recorded, problem = True, ""
        try:
            manifest = read_version_manifest(models_dir, version)
        except (CheckpointError, OSError) as e:  # OSError: unreadable (permissions, a folder by that name)
            manifest, problem = None, str(e)
        if manifest is None:
            recorded = False
            try:
                manifest = manifest_from_file(models_dir, version)
            except (CheckpointError, OSError) as e:
                problem = problem or str(e)
                manifest = Manifest(
                    version=version,
                    file=f"{version}.pt",
                    sha256="",
                    size=_size(models_dir, version),
                    arch="",
                    created_at="",
                    run_name="",
                    metrics={},
                )
        served = latest is not None and (latest.version, latest.sha256) == (version, manifest.sha256)
        if served and not problem and latest is not None:
            # The one version servers load: its files are checked as they check them (a byte flipped in it was
            # listed as served and sound, while every server refused it). The others are checked when promoted.
            try:
                verify_model_file(models_dir, latest)
                read_published_onnx(models_dir, latest)
            except (CheckpointError, OSError) as e:
                problem = f"LATEST.json names it, but servers cannot load it: {e}"
        infos.append(VersionInfo(manifest=manifest, served=served, recorded=recorded, problem=problem))
    infos.sort(key=lambda info: (info.manifest.created_at, info.manifest.version), reverse=True)
    return infos


def _size(models_dir: Path, version: str) -> int:
    try:
        return (Path(models_dir) / f"{version}.pt").stat().st_size
    except OSError:
        return 0


def served_stack(models_dir: Path) -> list[str]:
    """The versions LATEST.json has named, as a stack whose top is the served one: publish and promote push,
    rollback pops. So rollback after rollback walks further back, as an operator undoing changes expects.

    A LATEST.json that the history does not end with (written by an older version of this code, or by hand) is
    taken as pushed on top.
    """
    stack: list[str] = []
    for entry in read_history(models_dir):
        version = entry["version"]
        if entry["event"] == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != version:
                stack.append(version)
        elif not stack or stack[-1] != version:
            stack.append(version)
    try:
        latest = read_manifest(models_dir)
    except (CheckpointError, OSError):
        latest = None
    if latest is not None and (not stack or stack[-1] != latest.version):
        stack.append(latest.version)
    return stack


def rollback_target(models_dir: Path) -> str | None:
    """The version served before the served one that still has the file it was served with, or None. A name reused
    after a prune holds a model never served (the gate may have refused it): rollback went back to it by name."""
    stack = served_stack(models_dir)
    if not stack:
        return None
    current = stack[-1]
    existing = set(version_names(models_dir))
    recorded = _served_sums(models_dir)
    for version in reversed(stack[:-1]):
        if version != current and version in existing and _published_as_served(models_dir, version, recorded):
            return version
    return None


def _served_sums(models_dir: Path) -> dict[str, set[str]]:
    """Each version's SHA-256s as models/HISTORY.jsonl recorded them when it was served."""
    sums: dict[str, set[str]] = {}
    for entry in read_history(models_dir):
        sums.setdefault(entry["version"], set()).add(str(entry.get("sha256", "")))
    return sums


def _published_as_served(models_dir: Path, version: str, recorded: dict[str, set[str]]) -> bool:
    """Whether `version` now names the model it was served as: its manifest's SHA-256 (the file's as published) is
    one the history recorded. A name reused after a prune names another model, never served (the gate may have
    refused it). A manifest that cannot be read is left for the rollback to refuse, saying why."""
    try:
        manifest = find_manifest(models_dir, version)
    except (CheckpointError, OSError):
        return True
    return manifest is not None and manifest.sha256 in recorded.get(version, set())


def possibly_served(models_dir: Path) -> set[str]:
    """The versions a running server may be serving: the one LATEST.json names, the one named before it (a server
    that skipped the newest as failing its checks, a checksum or its warm-up, serves that one), and, while files
    fail their checksums, each one named before those back to the newest whose files pass: the .pt and its ONNX
    export, which a server with the onnxruntime backend loads too."""
    stack = served_stack(models_dir)
    versions = set(stack[-2:])
    for version in reversed(stack):
        versions.add(version)
        try:
            manifest = find_manifest(models_dir, version)
            if manifest is not None:
                verify_model_file(models_dir, manifest)
                read_published_onnx(models_dir, manifest)
                break
        except (CheckpointError, OSError):
            continue
    return versions


def prune_plan(models_dir: Path, keep: int) -> tuple[list[VersionInfo], list[VersionInfo]]:
    """(kept, removed): the `keep` newest versions are kept, and those a server may be serving always, whatever
    their age (possibly_served)."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    protected = possibly_served(models_dir)  # by name: even if the named file no longer matches
    infos = list_versions(models_dir)
    kept = [info for index, info in enumerate(infos) if index < keep or info.manifest.version in protected]
    removed = [info for info in infos if info not in kept]
    return kept, removed


def remove_version(models_dir: Path, version: str) -> None:
    """Delete a version's model file, then its ONNX export and its manifest: versions are found by their .pt
    files, so a removal cut short leaves at most files that name nothing."""
    (Path(models_dir) / f"{version}.pt").unlink(missing_ok=True)
    (Path(models_dir) / f"{version}.onnx").unlink(missing_ok=True)
    version_manifest_path(models_dir, version).unlink(missing_ok=True)
