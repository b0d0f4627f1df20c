"""Checkpoint and manifest faults, over a real server: none is served, the previous model keeps serving, and the
reason is logged once and shown by GetModelInfo.last_load_error.

FAULTS holds every kind of bad published model: issue 6's faults, the path-safety and unpickling cases, each built
so that the test fails if the check it is about were missing (an outside path holds a valid model, the pickle's
payload is live, ...). tests/inference/test_lifecycle.py covers a manifest that is not JSON. This file also tests a
server that starts with only a bad model, and a file replaced during its own verification.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sys
import time

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2

from shared.api.mnist.v1 import inference_pb2 as pb
from shared.checkpoint import (
    CHECKPOINT_FORMAT,
    MODEL_FORMAT,
    CheckpointError,
    Manifest,
    atomic_write_bytes,
    load_checkpoint,
    point_latest,
    publish_model,
    read_manifest,
    read_published_model,
)
from shared.data import normalize
from shared.image_pipeline import to_mnist
from shared.settings import Paths

from tests.inference.helpers import health_status, model_info, model_payload, publish, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def model_bytes(version: str, payload: dict, **overrides) -> bytes:
    buffer = io.BytesIO()
    torch.save(
        {"format": MODEL_FORMAT, "version": version, "created_at": "2026-01-01T00:00:00Z", **payload, **overrides},
        buffer,
    )
    return buffer.getvalue()


def manifest_fields(version: str, file: str, data: bytes) -> dict:
    return {
        "version": version,
        "file": file,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "arch": "compact",
        "created_at": "2026-01-01T00:00:00Z",
        "run_name": "faults",
        "metrics": {},
    }


def write_manifest(models, fields) -> None:
    atomic_write_bytes(models / "LATEST.json", json.dumps(fields).encode())


def publish_bytes(models, version: str, data: bytes) -> None:
    """A model file holding exactly `data`, and a manifest whose size and checksum match it."""
    atomic_write_bytes(models / f"{version}.pt", data)
    write_manifest(models, manifest_fields(version, f"{version}.pt", data))


class Evil:
    """Unpickling this calls os.mkdir(marker): proof that code ran."""

    marker = None

    def __reduce__(self):
        return (os.mkdir, (str(Evil.marker),))


def evil_bytes(version: str, marker) -> bytes:
    Evil.marker = marker
    payload = model_payload(3)
    payload["metrics"] = {"val_accuracy": Evil()}  # a perfect model otherwise
    return model_bytes(version, payload)


# ---------------------------------------------------------------------------------------------------------------
# Each fault: (what the reason must say, make(models, version) publishing it).


def truncated_after_manifest(models, version):
    """The file is cut short after the manifest was written: size and checksum no longer match.

    Cut before LATEST.json names it, so the server (polling every 0.05 s) can never catch the whole file first."""
    manifest = publish_model(models, version=version, model_payload=model_payload(3), serve=False)
    path = models / manifest.file
    path.write_bytes(path.read_bytes()[:1000])
    point_latest(models, manifest, event="publish")


def garbled_with_matching_manifest(models, version):
    """A garbled file with a manifest that matches it: checksums pass, torch cannot read it."""
    manifest = publish_model(models, version=version, model_payload=model_payload(3), serve=False)
    path = models / manifest.file
    data = b"not a torch file" + path.read_bytes()[100:]
    path.write_bytes(data)
    fields = {**manifest.__dict__, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    atomic_write_bytes(models / "LATEST.json", type(manifest)(**fields).to_json().encode())


def missing_file(models, version):
    data = model_bytes(version, model_payload(3))
    write_manifest(models, manifest_fields(version, f"{version}.pt", data))  # the file is never written


def replaced_after_manifest(models, version):
    """The manifest describes one model, the file holds another (valid) one: replaced after the manifest was made.

    Written file first, manifest last, so the server can never catch the intended model in between."""
    intended, replacement = model_bytes(version, model_payload(3)), model_bytes(version, model_payload(5))
    atomic_write_bytes(models / f"{version}.pt", replacement)
    write_manifest(models, manifest_fields(version, f"{version}.pt", intended))


def empty_file(models, version):
    publish_bytes(models, version, b"")


def other_architecture(models, version):
    payload = model_payload(3)
    publish_bytes(models, version, model_bytes(version, payload, arch="mynet", arch_kwargs={}))


def unknown_architecture(models, version):
    publish_bytes(models, version, model_bytes(version, model_payload(3), arch="resnet-9000"))


def other_width(models, version):
    payload = model_payload(3)
    payload["arch_kwargs"] = {"width": 16}  # the weights are for width 8
    publish_model(models, version=version, model_payload=payload)


def weights_filled_with(value: float):
    def make(models, version):
        payload = model_payload(3)
        payload["model"] = {
            k: (torch.full_like(v, value) if v.is_floating_point() else v) for k, v in payload["model"].items()
        }
        publish_model(models, version=version, model_payload=payload)

    return make


def zero_std(models, version):
    publish_model(
        models, version=version, model_payload={**model_payload(3), "normalization": {"mean": 0.1, "std": 0.0}}
    )


def nan_mean(models, version):
    publish_model(
        models, version=version, model_payload={**model_payload(3), "normalization": {"mean": float("nan"), "std": 0.3}}
    )


def payload_with(**fields):
    """A sound model whose payload says something no server can use: each failed a call later as INTERNAL."""

    def make(models, version):
        publish_model(models, version=version, model_payload={**model_payload(3), **fields})

    return make


def manifest_size_past_int64(models, version):  # ListModels failed for every caller
    data = model_bytes(version, model_payload(3))
    (models / f"{version}.pt").write_bytes(data)
    write_manifest(models, {**manifest_fields(version, f"{version}.pt", data), "size": 2**70})


def training_checkpoint(models, version):
    publish_bytes(models, version, model_bytes(version, model_payload(3), format=CHECKPOINT_FORMAT))


def other_version_inside(models, version):
    publish_bytes(models, version, model_bytes("someone-else", model_payload(3)))


def pickle_that_runs_code(models, version):
    publish_bytes(models, version, evil_bytes(version, models.parent / "PWNED"))


def symlink_out_of_models(models, version):
    """A model file that is a symlink out of the models folder, to a valid model: never followed."""
    outside = models.parent.parent / "elsewhere"
    outside.mkdir()
    manifest = publish_model(outside, version=version, model_payload=model_payload(3))
    (models / manifest.file).symlink_to(outside / manifest.file)
    atomic_write_bytes(models / "LATEST.json", manifest.to_json().encode())


def dot_dot_path(models, version):
    """A valid model one folder up, named by a consistent manifest: serving it would follow ../"""
    data = model_bytes(version, model_payload(3))
    (models.parent / "outside.pt").write_bytes(data)
    write_manifest(models, manifest_fields(version, "../outside.pt", data))


def absolute_path(models, version):
    elsewhere = models.parent / "elsewhere"
    elsewhere.mkdir()
    data = model_bytes(version, model_payload(3))
    (elsewhere / "abs.pt").write_bytes(data)
    write_manifest(models, manifest_fields(version, str(elsewhere / "abs.pt"), data))


def manifest_wrong_types(models, version):
    data = model_bytes(version, model_payload(3))
    (models / f"{version}.pt").write_bytes(data)
    write_manifest(models, {**manifest_fields(version, f"{version}.pt", data), "file": 5, "size": "big"})


def manifest_binary_garbage(models, version):
    atomic_write_bytes(models / "LATEST.json", bytes(range(256)))


def manifest_truncated(models, version):
    """A manifest cut off halfway (written by something other than the trainer, without atomic_write_bytes)."""
    manifest = publish_model(models, version=version, model_payload=model_payload(3), serve=False)
    text = manifest.to_json().encode()
    atomic_write_bytes(models / "LATEST.json", text[: len(text) // 2])


def manifest_json_list(models, version):
    atomic_write_bytes(models / "LATEST.json", b'["bad.pt"]')


def model_file_is_a_directory(models, version):
    (models / f"{version}.pt").mkdir()
    write_manifest(models, manifest_fields(version, f"{version}.pt", b"x"))


FAULTS = {
    "file truncated after the manifest was written": ("checksum", truncated_after_manifest),
    "garbled file with a matching manifest": ("not a readable checkpoint", garbled_with_matching_manifest),
    "manifest names a missing file": ("does not exist", missing_file),
    "file replaced after the manifest was written": ("checksum mismatch", replaced_after_manifest),
    "empty model file": ("not a readable checkpoint", empty_file),
    "weights of another architecture": ("do not fit architecture 'mynet'", other_architecture),
    "weights of another width": ("do not fit", other_width),
    "unknown architecture": ("unknown architecture 'resnet-9000'", unknown_architecture),
    "NaN weights": ("not finite", weights_filled_with(float("nan"))),
    "infinite weights": ("not finite", weights_filled_with(float("inf"))),
    "normalization std 0": ("must be positive", zero_std),
    "normalization mean NaN": ("not finite", nan_mean),
    "epoch past ModelInfo's int32": ("epoch is 2147483648, not a whole number", payload_with(epoch=2**31)),
    "split seed past 64 bits": ("split_seed is 1180591620717411303424", payload_with(split_seed=2**70)),
    "validation share of 0": ("val_fraction is 0.0", payload_with(val_fraction=0.0)),
    "validation share of 1.5": ("val_fraction is 1.5", payload_with(val_fraction=1.5)),
    "validation share NaN": ("val_fraction is nan, not finite", payload_with(val_fraction=float("nan"))),
    "manifest size past int64": ("not a file's size in bytes", manifest_size_past_int64),
    "a training checkpoint, not a model": ("a training checkpoint", training_checkpoint),
    "file says another version": ("file says version 'someone-else'", other_version_inside),
    "pickle that runs code": ("refused", pickle_that_runs_code),
    "model file is a symlink out of models/": ("outside", symlink_out_of_models),
    "manifest path ../outside.pt": ("not a plain name", dot_dot_path),
    "manifest absolute path": ("not a plain name", absolute_path),
    "manifest fields of the wrong type": ("malformed manifest", manifest_wrong_types),
    "manifest is binary garbage": ("malformed manifest", manifest_binary_garbage),
    "manifest is a JSON list": ("malformed manifest", manifest_json_list),
    "manifest is truncated JSON": ("malformed manifest", manifest_truncated),
    "model file is a directory": ("IsADirectoryError", model_file_is_a_directory),
}


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_a_fault_is_never_served(serve, tmp_path, digit_pngs, caplog, name):
    reason, make_fault = FAULTS[name]
    artifacts = tmp_path / "artifacts"
    models = Paths(artifacts).models
    publish(artifacts, "good", seed=1)
    running = serve(artifacts)
    caplog.set_level(logging.INFO, logger="inference")

    # Made while the watcher waits (it polls under this lock): several faults are a publish followed by damage,
    # and a poll in between would see the sound model, or a first, different fault.
    with running.server.store._poll_lock:
        make_fault(models, "bad")
    try:
        named = read_manifest(models)
    except CheckpointError as e:  # the manifest itself is the fault: it names no version anyone can read
        assert reason in str(e)
        named = None
    else:
        assert named.version == "bad"
    assert wait_until(lambda: model_info(running).HasField("last_load_error"))
    info = model_info(running)
    assert info.serving and info.version == "good"
    if named is not None:
        assert info.last_load_error.version == "bad"
    assert reason in info.last_load_error.reason
    assert info.last_load_error.at
    assert running.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=5).model_version == "good"
    assert health_status(running) == SERVING
    assert not (models.parent / "PWNED").exists()

    # Polled every 0.05 s, the fault is skipped and logged once (with its reason), not retried at every poll.
    time.sleep(0.5)
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and reason in skipped[0], skipped
    if named is not None:
        assert "bad" in skipped[0], skipped

    publish(artifacts, "fixed", seed=4)  # the trainer publishes a good one: served at once
    assert wait_until(lambda: model_info(running).version == "fixed")


def test_callers_are_told_what_is_wrong_with_the_model_but_not_where_the_server_keeps_it(serve, tmp_path, digit_pngs):
    """The web page's visitors read these messages too: the models folder is named models/, not by its path."""
    artifacts = tmp_path / "artifacts"
    models = Paths(artifacts).models
    models.mkdir(parents=True)
    symlink_out_of_models(models, "bad")
    running = serve(artifacts)
    reason = model_info(running).last_load_error.reason
    assert "outside models/" in reason and str(tmp_path) not in reason, reason
    with pytest.raises(grpc.RpcError) as e:
        running.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "outside models/" in e.value.details() and str(tmp_path) not in e.value.details()
    publish(artifacts, "good", seed=1)
    assert wait_until(lambda: health_status(running) == SERVING)
    with pytest.raises(grpc.RpcError) as e:
        running.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1], model_version="bad"), timeout=5)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "outside models/" in e.value.details() and str(tmp_path) not in e.value.details()


def test_the_load_error_reported_is_the_named_models_own_and_a_manifest_broken_anew_is_reported_again(tmp_path):
    """ModelStore, polled by hand (its back-off of 30 s holds throughout). LATEST.json names v2, which fails; it
    breaks, then names v2 again: the error was still the manifest's, as long as v2 waited out its back-off. Broken
    again the same way, nothing was reported: the manifest's old failure was still remembered."""
    from inference.model_store import ModelStore

    artifacts = tmp_path / "artifacts"
    models = Paths(artifacts).models
    publish(artifacts, "v1", seed=1)
    store = ModelStore(models, backend="torch")
    assert store.poll_once() and store.current.version == "v1"
    publish(artifacts, "v2", seed=2)
    damaged = bytearray((models / "v2.pt").read_bytes())
    damaged[-10] ^= 0xFF
    (models / "v2.pt").write_bytes(bytes(damaged))
    good_manifest = (models / "LATEST.json").read_bytes()
    assert not store.poll_once() and store.last_error.version == "v2"
    atomic_write_bytes(models / "LATEST.json", b"\x00 not json")
    assert not store.poll_once() and store.last_error.version == "LATEST.json"
    atomic_write_bytes(models / "LATEST.json", good_manifest)
    assert not store.poll_once() and store.last_error.version == "v2"  # v2's own failure, in its back-off
    assert "checksum" in store.last_error.reason
    atomic_write_bytes(models / "LATEST.json", b"\x00 not json")  # the same damage as before
    assert not store.poll_once() and store.last_error.version == "LATEST.json"
    assert store.current.version == "v1"  # served throughout


@pytest.mark.parametrize("name", ["manifest fields of the wrong type", "pickle that runs code"])
def test_a_server_whose_only_model_is_bad_starts_and_waits(serve, tmp_path, digit_pngs, name):
    """Before the fix, a manifest field of the wrong type made the server fail to start (TypeError)."""
    reason, make_fault = FAULTS[name]
    artifacts = tmp_path / "artifacts"
    models = Paths(artifacts).models
    models.mkdir(parents=True)
    make_fault(models, "bad")
    running = serve(artifacts)
    assert health_status(running) == NOT_SERVING
    info = model_info(running)
    assert not info.serving and reason in info.last_load_error.reason
    with pytest.raises(grpc.RpcError) as e:
        running.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not (artifacts / "PWNED").exists()

    publish(artifacts, "good", seed=1)
    assert wait_until(lambda: health_status(running) == SERVING)


def test_the_pickle_payload_is_live(tmp_path):
    """The control for "pickle that runs code": plain unpickling does run it, weights_only refuses it."""
    marker = tmp_path / "PWNED"
    data = evil_bytes("evil", marker)
    with pytest.raises(CheckpointError, match=r"refused: .*GLOBAL posix.mkdir"):
        load_checkpoint(io.BytesIO(data))
    assert not marker.exists()
    torch.load(io.BytesIO(data), weights_only=False)  # what a careless loader would do
    assert marker.is_dir()


def test_refusal_does_not_advise_turning_weights_only_off(tmp_path):
    """torch's own message suggests retrying with weights_only=False; that advice must not reach operators."""
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(io.BytesIO(evil_bytes("evil", tmp_path / "PWNED")))
    assert "weights_only" not in str(e.value)


@pytest.mark.parametrize("file", ["../outside.pt", "/etc/passwd", "sub/../../outside.pt"])
def test_read_published_model_checks_the_path_itself(tmp_path, file):
    """Defence in depth: even with a Manifest built in code (not read_manifest), nothing outside is read."""
    models = tmp_path / "models"
    models.mkdir()
    data = model_bytes("v", model_payload(3))
    (tmp_path / "outside.pt").write_bytes(data)
    manifest = Manifest(**manifest_fields("v", file, data))
    with pytest.raises(CheckpointError, match="outside"):
        read_published_model(models, manifest)


def local_probabilities(payload: dict, png: bytes) -> np.ndarray:
    from shared.checkpoint import model_from_checkpoint

    model = model_from_checkpoint(payload)
    norm = payload["normalization"]
    with torch.inference_mode():
        return model(normalize(torch.from_numpy(to_mnist(png))[None], norm["mean"], norm["std"])).exp()[0].numpy()


def test_a_file_replaced_while_it_is_verified_serves_the_verified_bytes(serve, tmp_path, digit_pngs, monkeypatch):
    """The file is swapped for another model right after its checksum was computed. The server must load the
    bytes it verified, not read the file a second time (which would serve unverified weights)."""
    import shared.checkpoint

    artifacts = tmp_path / "artifacts"
    models = Paths(artifacts).models
    publish(artifacts, "v1", seed=1)
    running = serve(artifacts)
    swapped = []
    real_hashlib = hashlib

    class SwappingHashlib:
        @staticmethod
        def sha256(data=b""):
            digest = real_hashlib.sha256(data)
            # The checksum of the .pt (read first; the .onnx is read and checked the same way after it).
            if sys._getframe(1).f_code.co_name == "_read_verified" and not swapped:
                (models / "v2.pt").write_bytes(model_bytes("v2", model_payload(5)))  # seed 5 replaces seed 2
                swapped.append(True)
            return digest

    # The weights that will be published, built before the server can start loading them: building a model draws
    # from torch's global random generator, which the server's loading thread draws from too.
    payload = model_payload(2)
    verified = load_checkpoint(io.BytesIO(model_bytes("v2", payload)))
    monkeypatch.setattr(shared.checkpoint, "hashlib", SwappingHashlib)  # publish_model's own hashing is left alone
    publish_model(models, version="v2", model_payload=payload)
    assert running.server.store.wait_for_version("v2", timeout=10) is not None
    assert swapped, "the swap never happened: the test did not exercise the race"

    png = digit_pngs[0][1]
    response = running.stub.Predict(pb.PredictRequest(image=png), timeout=5)
    assert response.model_version == "v2"
    np.testing.assert_allclose(response.prediction.probabilities, local_probabilities(verified, png), atol=1e-5)
    replaced = load_checkpoint(models / "v2.pt")
    assert not np.allclose(local_probabilities(replaced, png), local_probabilities(verified, png), atol=1e-3)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_written_files_have_the_umasks_mode_not_owner_only(tmp_path, monkeypatch, umask):
    """mkstemp makes files 0600; the model a server of another user in the group reads must not be. Several umasks,
    read as at import: with 0o022 alone, a fixed 0o644 passed as the umask's mode."""
    import shared.checkpoint

    previous = os.umask(umask)
    try:
        monkeypatch.setattr(shared.checkpoint, "_UMASK", shared.checkpoint._process_umask())
        atomic_write_bytes(tmp_path / "m.pt", b"weights")
    finally:
        os.umask(previous)
    assert (tmp_path / "m.pt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_publish_removes_what_a_killed_publish_left_and_keeps_a_live_writers_file(tmp_path):
    """A trainer killed while writing models/ leaves a temporary file of atomic_write_bytes; the next publish removes
    it once it is old enough that no process can still be writing it. A younger one may be another trainer's
    publish in progress, and stays."""
    models = Paths(tmp_path).models
    models.mkdir(parents=True)
    abandoned, live = models / ".v0.pt.k1ll3d.tmp", models / ".v9.pt.wr1t1n.tmp"
    for path in (abandoned, live):
        path.write_bytes(b"part of a model")
    two_hours_ago = time.time() - 7200
    os.utime(abandoned, (two_hours_ago, two_hours_ago))
    publish(tmp_path, "v1")
    assert not abandoned.exists() and live.exists()
    assert read_manifest(models).version == "v1"


def test_a_metric_that_is_not_a_number_is_left_out_of_the_manifest_not_a_half_published_version(tmp_path):
    """publish_model used to write the .pt and .onnx, then fail turning the metrics into numbers: a version on disk
    without its manifest. Metrics are only shown, so one that is no number is left out, as every reader does."""
    payload = model_payload(1)
    payload["metrics"] = {"val_accuracy": 0.5, "note": "baseline", "per_class": [0.9, 0.8]}
    manifest = publish_model(Paths(tmp_path).models, version="v1", model_payload=payload)
    assert manifest.metrics == {"val_accuracy": 0.5}
    assert read_manifest(Paths(tmp_path).models) == manifest
