"""Manage the published models: `python -m inference.models list | promote VERSION | rollback | prune --keep N`.

    python -m inference.models list                  # every version, newest first; * marks the served one
    python -m inference.models promote VERSION       # serve VERSION (running servers swap it in within a second)
    python -m inference.models rollback              # serve the version served before this one
    python -m inference.models prune --keep 5        # all but the 5 newest (never the served one nor the one before)

promote and rollback check the model exactly as a server does before it serves one (size and SHA-256,
weights-only loading, strict weights, a warm-up batch: inference.model_store.load_served_model), with the
onnxruntime backend: it checks the .pt as the torch backend does and its ONNX export besides, so a model it
passes is one a server of either backend serves. A model that fails is refused with the reason and nothing
changes. Only then is a new LATEST.json renamed into place, so a server never reads a half-written one, and the
change is appended to models/HISTORY.jsonl, which rollback walks back: rollback after rollback goes further back.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from shared import settings
from shared.checkpoint import (
    CheckpointError,
    Manifest,
    atomic_write_bytes,
    models_lock,
    point_latest,
    read_manifest,
    read_version_manifest,
    version_manifest_path,
)
from shared.cli import ArgumentParser, HelpFormatter, escape_unprintable_output, folder, positive_int
from shared.settings import Paths

from inference.versions import (
    VersionInfo,
    find_manifest,
    is_missing,
    list_versions,
    prune_plan,
    remove_version,
    rollback_target,
)


class Refused(Exception):
    """The command cannot do what was asked; the message says why. Nothing was changed."""


def check_model(models_dir: Path, manifest: Manifest) -> None:
    """Raise Refused unless a server would serve this model."""
    from inference.model_store import ModelValidationError, load_served_model  # torch: only when needed

    try:
        load_served_model(models_dir, manifest)
    except (CheckpointError, ModelValidationError) as e:
        reason = str(e)
    except Exception as e:  # anything else from torch or the payload: a server would skip it too (model_store)
        reason = f"{type(e).__name__}: {e}"
    else:
        return
    raise Refused(
        f"model version {manifest.version} fails the checks a server makes before serving it: {reason}. "
        "Nothing was changed"
    )


# What a mistyped --artifacts-dir gets told: its models folder looked like an empty store.
NO_SUCH_FOLDER = "no such folder: is --artifacts-dir right? the trainer makes it"


def require_models_folder(models_dir: Path) -> None:
    """Refuse a models folder that does not exist: prune said '0 version(s) kept; 0 removed' and rollback 'nothing
    to roll back to', as if the folder were there and empty."""
    if is_missing(models_dir):
        raise Refused(f"{models_dir} ({NO_SUCH_FOLDER}). Nothing was changed")
    if not models_dir.is_dir():  # said as main says a folder it cannot use: promote advised another version
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(models_dir))


def serve_version(models_dir: Path, version: str, *, event: str) -> tuple[Manifest, Manifest | None]:
    """Check `version` and make it the served one, holding the models folder's lock (shared.checkpoint.models_lock).
    Returns (its manifest, the one served before, if readable)."""
    require_models_folder(models_dir)
    with models_lock(models_dir):
        return _serve_version(models_dir, version, event=event)


def _serve_version(models_dir: Path, version: str, *, event: str) -> tuple[Manifest, Manifest | None]:
    try:
        manifest = find_manifest(models_dir, version)
    except (CheckpointError, OSError) as e:
        raise Refused(
            f"model version {version} cannot be read: {e}. Nothing was changed; `promote` another version, which "
            "`list` shows"
        ) from None
    if manifest is None:
        raise Refused(f"no model version {version!r} in {models_dir}; `python -m inference.models list` shows them")
    check_model(models_dir, manifest)
    try:
        previous = read_manifest(models_dir)
    except (CheckpointError, OSError):
        previous = None  # a damaged or unreadable LATEST.json: replacing it is the repair
    # Every field, not the version and checksum alone: a LATEST.json damaged in its ONNX fields names the version
    # but no server loads it, and promoting that version is its repair (it said "already names it" and left it).
    if previous == manifest:
        return manifest, previous
    try:
        recorded = read_version_manifest(models_dir, version)
    except CheckpointError:
        recorded = None
    if recorded is None:
        # A version older than per-version manifests: its checksum, checked just now, is recorded from here on.
        atomic_write_bytes(version_manifest_path(models_dir, version), manifest.to_json().encode())
    point_latest(models_dir, manifest, event=event)
    return manifest, previous


def promote(models_dir: Path, version: str) -> tuple[Manifest, Manifest | None]:
    return serve_version(models_dir, version, event="promote")


def rollback(models_dir: Path) -> tuple[Manifest, Manifest | None]:
    require_models_folder(models_dir)
    with models_lock(models_dir):
        target = rollback_target(models_dir)
        if target is None:
            raise Refused(
                f"nothing to roll back to: {models_dir}/HISTORY.jsonl names no earlier served version that "
                "still exists; serve one by name with `promote VERSION`"
            )
        try:
            return _serve_version(models_dir, target, event="rollback")
        except Refused as e:  # a rollback again would pick the same version: say the way past it
            raise Refused(f"{e}; serve another version by name with `promote VERSION` (`list` shows them)") from None


def _percent(metrics: dict[str, float], name: str) -> str:
    value = metrics.get(name)
    return f"{value:.2%}" if value is not None else "-"


# A model file without its manifest: published before manifests existed, or by an older publish (which wrote the
# model file first) cut short; a publish now writes the manifest and export before the model file.
UNRECORDED = "no recorded checksum (published before they existed, or by an older publish cut short)"


def format_table(infos: list[VersionInfo]) -> list[str]:
    rows = [("", "version", "created (UTC)", "val acc", "test acc", "size", "sha256", "")]
    for info in infos:
        m = info.manifest
        note = info.problem or ("" if info.recorded else UNRECORDED)
        rows.append(
            (
                "*" if info.served else "",
                m.version,
                m.created_at or "-",
                _percent(m.metrics, "val_accuracy"),
                _percent(m.metrics, "test_accuracy"),
                f"{m.size:,}",
                m.sha256[:12] or "-",
                note,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [" ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def cmd_list(models_dir: Path, args) -> int:
    infos = list_versions(models_dir)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        **info.manifest.__dict__,
                        "served": info.served,
                        "checksum_recorded": info.recorded,
                        "problem": info.problem,
                    }
                    for info in infos
                ],
                indent=2,
            )
        )
        return 0
    if not infos:
        # Not a folder at all, missing or a file on the path: either way no store, never an empty one.
        missing = f" ({NO_SUCH_FOLDER})" if not models_dir.is_dir() else ""
        print(f"no published models in {models_dir}{missing}")
        return 0
    print("\n".join(format_table(infos)))
    if not any(info.served for info in infos):
        print("(no version is served: models/LATEST.json is missing or damaged)")
    elif any(info.served and info.problem for info in infos):
        print(
            "(models/LATEST.json names a damaged version: servers keep the model they have, or serve none; promote "
            "a sound version, or roll back)"
        )
    return 0


def _served_line(manifest: Manifest, previous: Manifest | None, verb: str) -> str:
    if previous == manifest:
        return (
            f"models/LATEST.json already names {manifest.version}, which passes the checks; a server that skipped it "
            "(a damaged file, since repaired) loads it at its next poll"
        )
    was = f" (was {previous.version})" if previous is not None else ""
    if previous is not None and previous.version == manifest.version:
        loaded = ("file", "sha256", "size", "onnx_file", "onnx_sha256", "onnx_size")  # what servers check
        if any(getattr(previous, name) != getattr(manifest, name) for name in loaded):
            was = " (models/LATEST.json named it with other files or checksums, which no server could load: rewritten)"
        else:
            was = f" (models/LATEST.json rewritten to match models/{manifest.version}.json)"
    return (
        f"{verb} {manifest.version} (sha256 {manifest.sha256[:12]}){was}; running servers swap it in at their next poll"
    )


def cmd_promote(models_dir: Path, args) -> int:
    manifest, previous = promote(models_dir, args.version)
    print(_served_line(manifest, previous, "now serving"))
    return 0


def cmd_rollback(models_dir: Path, args) -> int:
    manifest, previous = rollback(models_dir)
    print(_served_line(manifest, previous, "rolled back to"))
    return 0


def cmd_prune(models_dir: Path, args) -> int:
    require_models_folder(models_dir)
    with models_lock(models_dir):  # a promote cannot serve a version this is removing
        kept, removed = prune_plan(models_dir, args.keep)
        for info in removed:
            if not args.dry_run:
                remove_version(models_dir, info.manifest.version)
            print(f"{'would remove' if args.dry_run else 'removed'} {info.manifest.version}")
    served = next((info.manifest.version for info in kept if info.served), None)
    print(
        f"{len(kept)} version(s) kept{f', {served} served' if served else ''}; {len(removed)} "
        f"{'would be ' if args.dry_run else ''}removed"
    )
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m inference.models",
        description="List, promote, roll back and prune the published models (<artifacts>/models).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--artifacts-dir",
        type=folder,
        default=settings.artifacts_dir(),
        help=f"the artifacts folder whose models/ to manage (env {settings.ENV_ARTIFACTS_DIR})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser(
        "list", help="every version, newest first; * marks the served one", formatter_class=HelpFormatter
    )
    listing.add_argument("--json", action="store_true", help="one JSON list instead of a table")
    listing.set_defaults(run=cmd_list)
    promoting = commands.add_parser("promote", help="check VERSION and serve it", formatter_class=HelpFormatter)
    promoting.add_argument("version", metavar="VERSION")
    promoting.set_defaults(run=cmd_promote)
    commands.add_parser(
        "rollback", help="check and serve the version served before this one", formatter_class=HelpFormatter
    ).set_defaults(run=cmd_rollback)
    pruning = commands.add_parser(
        "prune",
        help="delete all but the newest versions; never the served one, nor the one served before it",
        formatter_class=HelpFormatter,
    )
    pruning.add_argument("--keep", type=positive_int, required=True, metavar="N", help="versions to keep")
    pruning.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    pruning.set_defaults(run=cmd_prune)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    escape_unprintable_output()
    models_dir = Paths(args.artifacts_dir).models
    try:
        return args.run(models_dir, args)
    except Refused as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a folder that cannot be read or written, a directory for a file
        print(
            f"error: cannot use {e.filename or models_dir} ({e.strerror or e}); check --artifacts-dir (or "
            f"{settings.ENV_ARTIFACTS_DIR}): its models folder must be a folder this user can read and write, with "
            "room on its disk",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
