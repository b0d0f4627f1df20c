"""The publish gate: whether a finished run's best model replaces the one being served (`--publish`).

    if-better  (default) only when its validation accuracy beats the published model's, both measured on this
               run's validation images (same split seed, same data); otherwise the model is kept as a version that
               is not served, for an operator to try (a call's model_version) and promote by hand
    always     whatever it scored
    never      not written to models/ at all

Without a gate, one careless run (`--preset seed --epochs 1`: 32.8 % test accuracy) replaced a 99.6 % model,
and every server swapped it in within a second.

The published model's accuracy is measured again here rather than read from its metrics: it may have been
validated on a subset (--eval-subset) or by other code, and only the same images make the two comparable. A
published model validated on another split is not compared at all: its training images may be this run's
validation images, which would flatter it.

A run's model is served by its run at most once: a run resumed after being killed between its publish and its
FINISHED.json does not serve it again over whatever an operator (a rollback, a promote) or another run has
served since. models/HISTORY.jsonl records that it was served, with the model file's SHA-256, so a new run that
reuses the name of a run whose versions were pruned is not taken for it; a publish killed between LATEST.json's
rename and its history line gets its line from the next change of the served model, before that change's own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.checkpoint import (
    CheckpointError,
    ModelValidationError,
    published_normalization,
    read_history,
    read_manifest,
    read_published_model,
    read_published_onnx,
)
from shared.data import published_split
from shared.metrics import evaluate

PUBLISH_MODES = ("if-better", "always", "never")


@dataclass(frozen=True)
class Decision:
    serve: bool  # point LATEST.json at the new model
    store: bool  # write the new model to models/ (served or not)
    reason: str


def decide(
    mode: str,
    *,
    version: str,
    val_accuracy: float,
    models_dir,
    split_seed: int,
    val_fraction: float,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    device: torch.device,
) -> Decision:
    """Whether to serve the run's best model (`version`, `val_accuracy` on `val_x`), per `mode`."""
    if mode not in PUBLISH_MODES:
        raise ValueError(f"unknown publish mode {mode!r}; use one of {PUBLISH_MODES}")
    if mode == "never":
        return Decision(False, False, "--publish never")
    try:
        manifest = read_manifest(models_dir)
    except CheckpointError as e:
        return Decision(True, True, f"the published manifest is unreadable, so nothing can be served from it ({e})")
    if _served_before(models_dir, version) and (manifest is None or manifest.version != version):
        # A run killed after its publish and before FINISHED.json, then resumed: whatever changed the served model
        # in between (a rollback, a promote, another run) was decided after this publish, and stands.
        now = f"{manifest.version} is served now" if manifest is not None else "nothing is served now"
        return Decision(
            False,
            True,
            f"this run's model {version} was served before the run was interrupted, and {now}: a later promote, "
            "rollback or publish is not undone",
        )
    if mode == "always":
        return Decision(True, True, "--publish always")
    if manifest is None:
        return Decision(True, True, "no model was published before")
    if manifest.version == version:
        return Decision(True, True, "this run's model is the published one (an interrupted publish is completed)")
    try:
        payload, published = read_published_model(models_dir, manifest)
        read_published_onnx(models_dir, manifest)  # servers load the export too (onnxruntime, the default backend)
        # The server's own reading (inference.model_store.load_served_model): its defaults for models that lack
        # them, and a split it refuses (a seed of None, a share of 1.5) is a model it cannot serve, not a traceback.
        its_seed, its_fraction = published_split(payload)
    except (CheckpointError, ModelValidationError) as e:
        return Decision(True, True, f"the published model {manifest.version} cannot be served ({e})")
    if (its_seed, its_fraction) != (split_seed, val_fraction):
        return Decision(
            False,
            True,
            (
                f"the published model {manifest.version} was validated on another split (split seed {its_seed}, "
                f"validation fraction {its_fraction}; this run: {split_seed}, {val_fraction}), so the two cannot be "
                "compared on the same images"
            ),
        )
    try:
        mean, std = published_normalization(payload)
    except ModelValidationError as e:
        return Decision(True, True, f"the published model {manifest.version} cannot be served ({e})")
    with torch.inference_mode():
        theirs = evaluate(published.to(device).eval(), val_x, val_y, mean=mean, std=std, device=device).accuracy
    same = f"on the same {len(val_y):,} validation images (split seed {split_seed})"
    if val_accuracy > theirs:
        return Decision(
            True,
            True,
            f"validation accuracy {val_accuracy:.2%} beats {theirs:.2%} of the published "
            f"model {manifest.version} {same}",
        )
    return Decision(
        False,
        True,
        f"validation accuracy {val_accuracy:.2%} does not beat {theirs:.2%} of the "
        f"published model {manifest.version} {same}",
    )


def _served_before(models_dir, version: str) -> bool:
    """Whether models/HISTORY.jsonl records this very model `version` being served (published, promoted, rolled back
    to, or recovered): the line's SHA-256 must be that of models/<version>.pt. A run resumed after its publish
    publishes the same file again, which is there; a new run under a reused name (its old versions pruned, which
    run_folder requires) has no file yet, or other bytes, and was refused to be served even with --publish always."""
    entries = [entry for entry in read_history(models_dir) if entry["version"] == version]
    if not entries:
        return False
    try:
        sha256 = hashlib.sha256((Path(models_dir) / f"{version}.pt").read_bytes()).hexdigest()
    except OSError:  # no file (yet) under this name, or none that can be read: not this run's served model
        return False
    return any(entry.get("sha256") == sha256 for entry in entries)
