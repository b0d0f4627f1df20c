"""Model versions over a real channel: ListModels, and Predict / PredictBatch / Evaluate pinned to a version."""

from __future__ import annotations

import hashlib
import json

import grpc
import numpy as np
import pytest

from shared.api.mnist.v1 import inference_pb2 as pb
from shared.checkpoint import publish_model, read_manifest, read_version_manifest
from shared.settings import Paths

from inference.models import main as models_main
from inference.versions import list_versions, remove_version
from tests.inference.helpers import model_payload, publish


@pytest.fixture
def three_versions(serve, tmp_path):
    """A server whose models/ holds v1 (seed 1), v2 (seed 2, stored but never served) and v3 (seed 3, served)."""
    artifacts = tmp_path / "artifacts"
    publish(artifacts, "v1", seed=1)
    publish_model(Paths(artifacts).models, version="v2", model_payload=model_payload(2), serve=False)
    publish(artifacts, "v3", seed=3)
    running = serve(artifacts)
    assert running.server.store.current.version == "v3"
    return running


def probabilities(response) -> np.ndarray:
    return np.array(response.prediction.probabilities)


def test_list_models_describes_every_version_and_marks_the_served_one(three_versions):
    response = three_versions.stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert [m.version for m in response.models] == ["v3", "v2", "v1"]  # newest first
    assert response.served_version == "v3"
    assert [m.served for m in response.models] == [True, False, False]
    models = Paths(three_versions.artifacts).models
    for m in response.models:
        data = (models / f"{m.version}.pt").read_bytes()
        assert m.size_bytes == len(data) and m.sha256 == hashlib.sha256(data).hexdigest()
        assert m.checksum_recorded and not m.problem
        assert m.arch == "compact" and m.created_at.endswith("Z")
        seed = int(m.version[1])
        assert m.metrics["val_accuracy"] == pytest.approx(0.1 + seed / 1000)
        assert m.run_name == f"test-run-{seed}"


def test_a_version_published_before_per_version_manifests_is_listed_with_its_checksum_computed(three_versions):
    models = Paths(three_versions.artifacts).models
    (models / "v1.json").unlink()
    response = three_versions.stub.ListModels(pb.ListModelsRequest(), timeout=10)
    (v1,) = [m for m in response.models if m.version == "v1"]
    assert not v1.checksum_recorded
    assert v1.sha256 == hashlib.sha256((models / "v1.pt").read_bytes()).hexdigest()
    assert v1.metrics["val_accuracy"] == pytest.approx(0.101)


def test_predict_batch_and_evaluate_use_the_pinned_version(three_versions, digit_pngs):
    stub = three_versions.stub
    png = digit_pngs[0][1]
    served = stub.Predict(pb.PredictRequest(image=png), timeout=10)
    assert served.model_version == "v3"
    for version in ("v1", "v2", "v3"):
        pinned = stub.Predict(pb.PredictRequest(image=png, model_version=version), timeout=10)
        assert pinned.model_version == version
        batch = stub.PredictBatch(pb.PredictBatchRequest(images=[png], model_version=version), timeout=10)
        assert batch.model_version == version
        np.testing.assert_allclose(
            batch.results[0].prediction.probabilities, pinned.prediction.probabilities, atol=1e-6
        )
    # Different weights give different answers: the pin is real, not a relabelled served model.
    v1 = stub.Predict(pb.PredictRequest(image=png, model_version="v1"), timeout=10)
    assert not np.allclose(probabilities(v1), probabilities(served), atol=1e-3)
    evaluation = stub.Evaluate(pb.EvaluateRequest(model_version="v2", omit_heatmap=True), timeout=60)
    assert evaluation.model_version == "v2" and evaluation.count == 10_000
    # Pinning did not change what is served.
    assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).version == "v3"
    assert stub.Predict(pb.PredictRequest(image=png), timeout=10).model_version == "v3"


@pytest.mark.parametrize(
    "version",
    ["v9", "../artifacts/models/v1", "/etc/passwd", "LATEST", "HISTORY", ".hidden", "v1.pt", "x" * 5000, "v1\x00"],
)
def test_a_bad_model_version_is_not_found(three_versions, digit_pngs, version):
    stub = three_versions.stub
    for method, request in (
        (stub.Predict, pb.PredictRequest(image=digit_pngs[0][1], model_version=version)),
        (stub.PredictBatch, pb.PredictBatchRequest(images=[digit_pngs[0][1]], model_version=version)),
        (stub.Evaluate, pb.EvaluateRequest(model_version=version, omit_heatmap=True)),
    ):
        with pytest.raises(grpc.RpcError) as e:
            method(request, timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND, e.value.details()
        assert "not published" in e.value.details() and "ListModels" in e.value.details()
        assert len(e.value.details()) < 400  # the name is quoted cut short, never echoed whole
    # The server goes on serving.
    assert stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=10).model_version == "v3"


def test_a_damaged_pinned_version_fails_its_checks_and_the_server_keeps_serving(three_versions, digit_pngs):
    models = Paths(three_versions.artifacts).models
    good = (models / "v1.pt").read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the recorded checksum no longer matches
    (models / "v1.pt").write_bytes(bytes(data))
    stub = three_versions.stub
    for _ in range(2):  # the second answer comes from the remembered failure, with the same reason
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(pb.PredictRequest(image=digit_pngs[0][1], model_version="v1"), timeout=10)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "checksum mismatch" in e.value.details()
    assert stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=10).model_version == "v3"
    assert stub.Predict(pb.PredictRequest(image=digit_pngs[0][1], model_version="v2"), timeout=10).model_version == "v2"
    # The file restored is read again at once, not after the failure's back-off (30 s), as the served model is.
    (models / "v1.pt").write_bytes(good)
    assert stub.Predict(pb.PredictRequest(image=digit_pngs[0][1], model_version="v1"), timeout=10).model_version == "v1"


def test_pinned_versions_are_cached_least_recently_used_first_out(serve, tmp_path):
    artifacts = tmp_path / "artifacts"
    for seed in range(1, 5):
        publish(artifacts, f"v{seed}", seed=seed)
    running = serve(artifacts, pinned_cache_size=2)
    store = running.server.store
    first = store.model_for("v1")
    assert store.model_for("v1") is first  # a hit: the same loaded model, not a second load
    store.model_for("v2")
    store.model_for("v1")  # v1 is now the most recently used
    store.model_for("v3")  # evicts v2
    assert store.model_for("v1") is first
    assert store._pinned.keys() == ["v3", "v1"]
    assert store.model_for("v4") is store.current  # the served version is never loaded twice


def test_list_models_with_nothing_published_is_empty(serve):
    running = serve()
    response = running.stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert list(response.models) == [] and response.served_version == ""


def test_the_trainer_style_manifest_and_the_version_manifest_agree(three_versions):
    models = Paths(three_versions.artifacts).models
    assert json.loads((models / "v3.json").read_text()) == json.loads((models / "LATEST.json").read_text())
    assert read_manifest(models).version == "v3"


def test_a_file_name_that_is_not_utf8_is_no_version_and_listing_goes_on(three_versions):
    """A model file whose name is not UTF-8 (Python holds its bytes as surrogates) cannot be named in a protobuf
    string: it is skipped, and ListModels answers for the others (it once failed with INTERNAL for everyone)."""
    models = Paths(three_versions.artifacts).models
    odd = models / "caf\udce9.pt"  # the bytes b"caf\xe9.pt"
    odd.write_bytes((models / "v1.pt").read_bytes())
    listed = three_versions.stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert [m.version for m in listed.models] == ["v3", "v2", "v1"]


def test_a_manifest_left_without_its_model_file_is_not_found_as_listing_says(three_versions, digit_pngs):
    """A removal cut short after the model file leaves <v>.json behind: the version is gone for ListModels, and a
    call pinned to it gets NOT_FOUND (404 over REST), not FAILED_PRECONDITION (503, 'retry')."""
    models = Paths(three_versions.artifacts).models
    (models / "v1.pt").unlink()
    (models / "v1.onnx").unlink(missing_ok=True)
    assert (models / "v1.json").exists()
    stub = three_versions.stub
    assert "v1" not in [m.version for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models]
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(pb.PredictRequest(image=digit_pngs[0][1], model_version="v1"), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND, e.value.details()


def test_a_version_latest_names_without_its_model_file_is_not_found_as_listing_says(three_versions, digit_pngs):
    """LATEST.json naming a version whose model file (and manifest) is gone, a hand edit or a copy cut short: the
    server keeps serving what it had, ListModels does not list the name, and a call pinned to it is NOT_FOUND, as
    for any version not published (it was FAILED_PRECONDITION, 'fails the checks', where no <v>.json was left)."""
    models = Paths(three_versions.artifacts).models
    latest = json.loads((models / "LATEST.json").read_text())
    (models / "ghost.json.tmp").write_text(json.dumps(dict(latest, version="ghost", file="ghost.pt")))
    (models / "ghost.json.tmp").replace(models / "LATEST.json")
    stub = three_versions.stub
    assert "ghost" not in [m.version for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models]
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(pb.PredictRequest(image=digit_pngs[0][1], model_version="ghost"), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND, e.value.details()


def test_a_pinned_version_removed_after_it_was_loaded_is_not_found_and_published_again_is_loaded_again(
    three_versions, digit_pngs
):
    """The server keeps pinned models loaded; that must not outlive the version's file. Removed (mnist-models
    prune), a call pinned to it is NOT_FOUND as ListModels says; published again under the same name with other
    weights, calls get the new weights, never the old ones kept in memory."""
    stub, models = three_versions.stub, Paths(three_versions.artifacts).models
    request = pb.PredictRequest(image=digit_pngs[0][1], model_version="v2")
    old = probabilities(stub.Predict(request, timeout=10))  # v2 is loaded and cached now
    remove_version(models, "v2")
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(request, timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND, e.value.details()
    publish_model(models, version="v2", model_payload=model_payload(7), serve=False)
    new = probabilities(stub.Predict(request, timeout=10))
    assert not np.allclose(new, old, atol=1e-4)
    reference = three_versions.server.store.model_for("v2")
    assert reference.sha256 == read_version_manifest(models, "v2").sha256


def test_an_odd_version_manifest_is_reported_in_its_own_row_not_as_a_failed_listing(three_versions, capsys):
    """A metric that is not a number in v1.json (or a whole number past a float's range), and a v2.json that cannot
    be read (a folder in its place stands for a file the server may not read): ListModels and `mnist-models list`
    still list every version. The row says what is wrong without the server's folder (as GetModelInfo does)."""
    models = Paths(three_versions.artifacts).models
    fields = json.loads((models / "v1.json").read_text())
    fields["metrics"]["note"] = "baseline"
    fields["metrics"]["huge"] = 10**400
    (models / "v1.json").write_text(json.dumps(fields))
    (models / "v2.json").unlink()
    (models / "v2.json").mkdir()
    response = three_versions.stub.ListModels(pb.ListModelsRequest(), timeout=10)
    rows = {m.version: m for m in response.models}
    assert list(rows) == ["v3", "v2", "v1"]  # newest first, the odd ones in their places
    assert "note" not in rows["v1"].metrics and "huge" not in rows["v1"].metrics
    assert "val_accuracy" in rows["v1"].metrics
    assert "directory" in rows["v2"].problem.lower()
    assert "models/v2.json" in rows["v2"].problem and str(three_versions.artifacts) not in rows["v2"].problem
    assert models_main(["--artifacts-dir", str(three_versions.artifacts), "list"]) == 0
    assert "v1" in capsys.readouterr().out


@pytest.mark.parametrize(
    "damage",
    [
        # Valid JSON, no UTF-8: a protobuf string refuses a lone surrogate, and ListModels failed INTERNAL.
        lambda text: text.replace('"run_name": "test-run-1"', '"run_name": "test\\ud800run"'),
        lambda text: "[" * 100_000 + "]" * 100_000,  # json.loads raised RecursionError
    ],
    ids=["a lone surrogate escape", "nested a hundred thousand deep"],
)
def test_a_manifest_json_cannot_carry_is_one_versions_problem_not_a_failed_listing(three_versions, capsys, damage):
    models = Paths(three_versions.artifacts).models
    text = (models / "v1.json").read_text()
    damaged = damage(text)
    assert damaged != text
    (models / "v1.json").write_text(damaged)
    response = three_versions.stub.ListModels(pb.ListModelsRequest(), timeout=10)
    rows = {m.version: m for m in response.models}
    assert list(rows) == ["v3", "v2", "v1"] and "malformed manifest" in rows["v1"].problem
    request = pb.PredictRequest(image=b"not read: the version is refused first", model_version="v1")
    with pytest.raises(grpc.RpcError) as refused:
        three_versions.stub.Predict(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.value.details()
    assert models_main(["--artifacts-dir", str(three_versions.artifacts), "list"]) == 0
    assert "malformed manifest" in capsys.readouterr().out


def test_publishing_again_over_a_stale_export_writes_the_new_models_export(tmp_path):
    """<v>.onnx left beside a removed <v>.pt may hold other weights: publishing <v> anew writes its own export, so the
    manifest's checksum, the file and the weights agree."""
    models = Paths(tmp_path / "artifacts").models
    publish_model(models, version="v", model_payload=model_payload(1), serve=False)
    old_export = (models / "v.onnx").read_bytes()
    (models / "v.pt").unlink()
    (models / "v.json").unlink()
    manifest = publish_model(models, version="v", model_payload=model_payload(2), serve=False)
    new_export = (models / "v.onnx").read_bytes()
    assert new_export != old_export
    assert manifest.onnx_sha256 == hashlib.sha256(new_export).hexdigest()


class Killed(BaseException):
    """The publishing process dies here (raised from a write, so nothing after it runs)."""


@pytest.mark.parametrize("killed_at", [1, 2, 3, 4])
def test_a_publish_killed_at_any_write_leaves_no_version_without_its_manifest_and_export(
    tmp_path, monkeypatch, killed_at
):
    """The model file went into place first: killed before its export and manifest, the version was listed as
    'published before they existed', and promoting it served it with torch, without its export, for good."""
    import shared.checkpoint

    models = Paths(tmp_path / "artifacts").models
    real = shared.checkpoint.atomic_write_bytes
    writes = 0

    def killed_at_a_write(path, data):
        nonlocal writes
        writes += 1
        if writes == killed_at:
            raise Killed(path.name)
        return real(path, data)

    monkeypatch.setattr(shared.checkpoint, "atomic_write_bytes", killed_at_a_write)
    with pytest.raises(Killed):
        publish_model(models, version="v", model_payload=model_payload(1))
    monkeypatch.setattr(shared.checkpoint, "atomic_write_bytes", real)
    if (models / "v.pt").exists():
        recorded = read_version_manifest(models, "v")
        assert recorded is not None and recorded.onnx_file == "v.onnx", f"killed at write {killed_at}: {recorded}"
        assert [(info.manifest.version, info.recorded) for info in list_versions(models)] == [("v", True)]
    else:
        assert list_versions(models) == []
    manifest = publish_model(models, version="v", model_payload=model_payload(1))  # the trainer's --resume
    assert read_manifest(models) == manifest and manifest.onnx_file == "v.onnx"


def test_publishing_again_a_version_promoted_without_its_export_serves_its_export(tmp_path, capsys):
    """An older publish killed after the model file left v2.pt alone; `promote v2` recorded its manifest without an
    export, and the trainer's --resume, which wrote v2.onnx, kept that manifest: v2 was served with torch for good."""
    artifacts = tmp_path / "artifacts"
    models = Paths(artifacts).models
    publish(artifacts, "v1", seed=1)
    payload = model_payload(2)
    publish_model(models, version="v2", model_payload=payload, serve=False)
    (models / "v2.onnx").unlink()
    (models / "v2.json").unlink()  # as the older publish left it
    assert models_main(["--artifacts-dir", str(artifacts), "list"]) == 0
    listed = capsys.readouterr().out
    assert models_main(["--artifacts-dir", str(artifacts), "promote", "v2"]) == 0
    assert read_manifest(models).onnx_file == ""

    manifest = publish_model(models, version="v2", model_payload=payload)
    export = (models / "v2.onnx").read_bytes()
    assert manifest.onnx_sha256 == hashlib.sha256(export).hexdigest()
    assert read_version_manifest(models, "v2") == manifest and read_manifest(models) == manifest
    assert "or by an older publish cut short" in listed, listed


def test_a_failed_call_pinned_to_a_version_is_logged_with_that_version(three_versions, caplog):
    with caplog.at_level("INFO", logger="inference.service"), pytest.raises(grpc.RpcError):
        three_versions.stub.Predict(pb.PredictRequest(image=b"not a picture", model_version="v1"), timeout=10)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Predict -> INVALID_ARGUMENT")]
    assert line.endswith("(model v1)"), line  # not the served v3


@pytest.mark.parametrize("damaged", ["v2.pt", "v2.onnx"])
def test_a_damaged_served_version_is_listed_with_what_is_wrong(tmp_path, capsys, damaged):
    """Servers refuse a served version whose file fails its checksum; the listing said it was served and sound."""
    models = Paths(tmp_path).models
    publish_model(models, version="v1", model_payload=model_payload(1))
    publish_model(models, version="v2", model_payload=model_payload(2))
    data = bytearray((models / damaged).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (models / damaged).write_bytes(bytes(data))
    rows = {info.manifest.version: info for info in list_versions(models)}
    assert rows["v2"].served and "servers cannot load it" in rows["v2"].problem and damaged in rows["v2"].problem
    assert rows["v1"].problem == ""
    assert models_main(["--artifacts-dir", str(tmp_path), "list"]) == 0
    out = capsys.readouterr().out
    assert "models/LATEST.json names a damaged version" in out and "promote a sound version, or roll back" in out
