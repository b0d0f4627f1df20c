"""ONNX exports of published models, the serving backends (--backend onnxruntime|torch) and the default number of
server processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from shared.api.mnist.v1 import inference_pb2 as pb
from shared.checkpoint import (
    MANIFEST_NAME,
    CheckpointError,
    atomic_write_bytes,
    read_manifest,
    read_published_model,
    read_published_onnx,
)
from shared.data import normalize
from shared.onnx_model import MAX_DIFFERENCE, export_onnx, verify_onnx
from shared.resources import cpu_quota, usable_cpus, usable_memory_bytes
from shared.settings import Paths

from inference.capacity import default_worker_count, server_memory_mib
from inference.model_store import DEFAULT_BACKEND
from inference.options import ServerOptions
from tests.inference.helpers import model_payload, publish, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------------------------
# The export


def test_every_published_model_has_its_onnx_export_with_its_checksum_in_the_manifest(tmp_path, mnist):
    import hashlib

    manifest = publish(tmp_path, "v1", seed=1)
    models = Paths(tmp_path).models
    onnx_path = models / "v1.onnx"
    assert manifest.onnx_file == "v1.onnx" and onnx_path.is_file()
    data = onnx_path.read_bytes()
    assert (manifest.onnx_size, manifest.onnx_sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert read_manifest(models) == manifest  # written to LATEST.json, and read back
    assert read_published_onnx(models, manifest) == data
    _, model = read_published_model(models, manifest)
    check = verify_onnx(data, model, normalize(mnist.test_images[:2000]))
    assert check.ok, check.describe()


def test_the_trained_models_export_computes_what_it_does_on_the_whole_test_set(trained_artifacts, mnist):
    """The acceptance check of the export: onnxruntime against torch on all 10,000 test images."""
    models = Paths(trained_artifacts).models
    manifest = read_manifest(models)
    payload, model = read_published_model(models, manifest)
    norm = payload["normalization"]
    check = verify_onnx(
        read_published_onnx(models, manifest), model, normalize(mnist.test_images, norm["mean"], norm["std"])
    )
    assert check.images == 10_000
    assert check.max_difference <= MAX_DIFFERENCE, check.describe()
    assert check.argmax_differences == 0, check.describe()


def test_a_damaged_onnx_file_fails_its_checksum(tmp_path):
    manifest = publish(tmp_path, "v1", seed=1)
    path = Paths(tmp_path).models / manifest.onnx_file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        read_published_onnx(Paths(tmp_path).models, manifest)


def test_a_manifest_naming_an_onnx_file_outside_the_folder_is_refused(tmp_path):
    publish(tmp_path, "v1", seed=1)
    path = Paths(tmp_path).latest_manifest
    fields = json.loads(path.read_text())
    path.write_text(json.dumps({**fields, "onnx_file": "../v1.onnx"}))
    with pytest.raises(CheckpointError, match="not a plain name"):
        read_manifest(Paths(tmp_path).models)


def test_the_export_is_checked_against_the_model_and_can_fail(mnist):
    """verify_onnx is not a formality: the export of one network compared with another fails."""
    from shared.checkpoint import model_from_checkpoint

    one, other = model_from_checkpoint(model_payload(1)), model_from_checkpoint(model_payload(2))
    inputs = normalize(mnist.test_images[:500])
    assert verify_onnx(export_onnx(one), one, inputs).ok
    check = verify_onnx(export_onnx(one), other, inputs)
    assert not check.ok and check.max_difference > MAX_DIFFERENCE


def test_the_export_of_a_model_with_huge_log_probabilities_passes_the_check(mnist):
    """A badly trained model (a learning rate far too high) has log-probabilities of -84 to -486,072: float32's
    rounding alone made onnxruntime and torch differ by more than 1e-4, and the run could never publish, resumed or
    not (a review). The difference is weighed against the value's size beyond 1."""
    from shared.checkpoint import model_from_checkpoint

    model = model_from_checkpoint(model_payload(1))
    with torch.no_grad():
        model.head[-1].weight.mul_(10_000.0)
    inputs = normalize(mnist.test_images[:500])
    check = verify_onnx(export_onnx(model), model, inputs)
    with torch.no_grad():
        assert model(inputs.float())[:, :10].min() < -1000  # log-probabilities far beyond float32's 1e-4 at 1
    assert check.ok, check.describe()


# ---------------------------------------------------------------------------------------------------------------
# The backends


def test_the_default_backend_is_onnxruntime_and_serves_the_export(serve, tmp_path, digit_pngs):
    assert DEFAULT_BACKEND == "onnxruntime"
    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve()
    assert running.server.store.current.backend == "onnxruntime"
    assert running.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=10).model_version == "v1"


def test_both_backends_give_the_same_answers(serve, tmp_path, digit_pngs):
    publish(tmp_path / "artifacts", "v1", seed=1)
    onnx, torch_ = serve(backend="onnxruntime"), serve(backend="torch")
    assert (onnx.server.store.current.backend, torch_.server.store.current.backend) == ("onnxruntime", "torch")
    request = pb.PredictBatchRequest(images=[png for _, png, _ in digit_pngs])
    a, b = onnx.stub.PredictBatch(request, timeout=30), torch_.stub.PredictBatch(request, timeout=30)
    for x, y in zip(a.results, b.results):
        assert x.prediction.digit == y.prediction.digit
        np.testing.assert_allclose(x.prediction.probabilities, y.prediction.probabilities, atol=1e-5)
    evaluations = [
        s.stub.Evaluate(pb.EvaluateRequest(split=pb.SPLIT_TEST, omit_heatmap=True), timeout=120) for s in (onnx, torch_)
    ]
    assert evaluations[0].accuracy == evaluations[1].accuracy
    assert [list(r.counts) for r in evaluations[0].confusion] == [list(r.counts) for r in evaluations[1].confusion]


def stage(tmp_path: Path, version: str, seed: int) -> Path:
    """Publish `version` into a folder of its own and return that models folder, to copy from."""
    staging = tmp_path / f"staging-{version}"
    publish(staging, version, seed=seed)
    return Paths(staging).models


def install(models: Path, staged: Path, onnx_bytes: bytes | None, *, drop_onnx: bool = False) -> None:
    """Copy a staged model into `models` with these ONNX bytes (or none), then write its manifest last."""
    manifest = json.loads((staged / MANIFEST_NAME).read_text())
    shutil.copy(staged / manifest["file"], models / manifest["file"])
    if drop_onnx:
        for name in ("onnx_file", "onnx_sha256", "onnx_size"):
            manifest.pop(name)
    else:
        (models / manifest["onnx_file"]).write_bytes(onnx_bytes)
    atomic_write_bytes(models / MANIFEST_NAME, json.dumps(manifest).encode())


def test_a_damaged_export_skips_the_model_and_the_previous_one_keeps_serving(serve, tmp_path):
    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve()
    staged = stage(tmp_path, "v2", seed=2)
    data = bytearray((staged / "v2.onnx").read_bytes())
    data[100] ^= 0xFF
    install(Paths(tmp_path / "artifacts").models, staged, bytes(data))
    assert wait_until(lambda: running.server.store.last_error is not None)
    assert running.server.store.last_error.version == "v2"
    assert "v2.onnx: checksum mismatch" in running.server.store.last_error.reason
    assert running.server.store.current.version == "v1"


def test_an_export_of_other_weights_skips_the_model(serve, tmp_path):
    """A file with a valid checksum that is not the .pt's network: the load-time comparison catches it."""
    import hashlib

    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve()
    staged = stage(tmp_path, "v2", seed=2)
    other = (stage(tmp_path, "v3", seed=3) / "v3.onnx").read_bytes()
    manifest = json.loads((staged / MANIFEST_NAME).read_text())
    manifest.update(onnx_sha256=hashlib.sha256(other).hexdigest(), onnx_size=len(other))
    (staged / MANIFEST_NAME).write_text(json.dumps(manifest))
    install(Paths(tmp_path / "artifacts").models, staged, other)
    assert wait_until(lambda: running.server.store.last_error is not None)
    assert "does not compute what v2.pt does" in running.server.store.last_error.reason
    assert running.server.store.current.version == "v1"
    # The torch backend does not read the export: it serves v2.
    assert serve(backend="torch").server.store.current.version == "v2"


def test_a_pinned_version_runs_on_the_servers_backend_as_the_served_one_does(serve, tmp_path, digit_pngs):
    """Scoring a candidate by pinning it must run what will serve it: the same backend, the same checks."""
    artifacts = tmp_path / "artifacts"
    publish(artifacts, "v1", seed=1)
    publish(artifacts, "v2", seed=2)
    for backend in ("torch", "onnxruntime"):
        store = serve(backend=backend).server.store
        assert store.current.version == "v2" and store.current.backend == backend
        assert store.model_for("v1").backend == backend
    # With --backend torch a damaged export does not stop a pinned version, as it does not stop the served one.
    (Paths(artifacts).models / "v1.onnx").write_bytes(b"not an onnx model")
    running = serve(backend="torch")
    answer = running.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1], model_version="v1"), timeout=10)
    assert answer.model_version == "v1"


def test_a_model_published_before_exports_existed_is_served_with_torch(serve, tmp_path, digit_pngs):
    models = Paths(tmp_path / "artifacts").models
    models.mkdir(parents=True)
    install(models, stage(tmp_path, "old", seed=1), None, drop_onnx=True)
    running = serve()
    assert running.server.store.current.version == "old"
    assert running.server.store.current.backend == "torch"
    assert running.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=10).model_version == "old"


def test_the_backend_flag_and_its_environment_variable(monkeypatch, capsys):
    from inference.__main__ import get_args_parser

    monkeypatch.delenv("MNIST_INFERENCE_BACKEND", raising=False)
    assert get_args_parser().parse_args([]).backend == "onnxruntime"
    assert get_args_parser().parse_args(["--backend", "torch"]).backend == "torch"
    monkeypatch.setenv("MNIST_INFERENCE_BACKEND", "torch")
    assert get_args_parser().parse_args([]).backend == "torch"
    monkeypatch.setenv("MNIST_INFERENCE_BACKEND", "tensorflow")
    with pytest.raises(SystemExit):
        get_args_parser().parse_args([])
    assert "MNIST_INFERENCE_BACKEND='tensorflow' must be one of" in capsys.readouterr().err
    assert get_args_parser().parse_args(["--backend", "torch"]).backend == "torch"  # the typed flag replaces it


# ---------------------------------------------------------------------------------------------------------------
# The default number of server processes


GIB = 2**30


PER_PROCESS_MIB = 2188  # server_memory_mib with the server's defaults


@pytest.mark.parametrize(
    "cpus, memory, expected",
    [
        (2, 24 * GIB, 2),  # the development machine: one per core
        (16, 24 * GIB, 10),  # memory-bound: (24 GiB - 512 MiB) // 2188 MiB
        (16, 4 * GIB, 1),
        (8, GIB, 1),  # too little memory for even one: still one
        (4, None, 4),  # memory unknown: the cores decide
        (1, 64 * GIB, 1),
    ],
)
def test_the_default_worker_count_follows_cores_and_memory(cpus, memory, expected):
    assert default_worker_count(cpus, memory, PER_PROCESS_MIB) == expected


def test_the_worker_count_takes_the_memory_figures():
    defaults = ServerOptions(artifacts_dir=None, data_dir=None)
    assert server_memory_mib(defaults) == PER_PROCESS_MIB
    assert default_worker_count(8, 8 * GIB + 512 * 2**20, 1024) == 8
    assert default_worker_count(8, 8 * GIB + 512 * 2**20, 2048) == 4
    with pytest.raises(ValueError):
        default_worker_count(0, 8 * GIB, 1024)


def test_this_machine_has_usable_cores_and_memory(monkeypatch):
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    if cpu_quota() is None:  # no CPU quota: every core of the affinity mask
        assert usable_cpus() == 64
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5})
    assert usable_cpus() == 1
    memory = usable_memory_bytes()  # Linux has /proc/meminfo: never unknown here
    assert memory is not None and 0 < memory <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_the_workers_flag_defaults_to_the_machines_choice(monkeypatch):
    from inference.__main__ import get_args_parser

    monkeypatch.delenv("MNIST_INFERENCE_WORKERS", raising=False)
    assert get_args_parser().parse_args([]).workers == 0  # 0: default_worker_count decides at start
    monkeypatch.setenv("MNIST_INFERENCE_WORKERS", "3")
    assert get_args_parser().parse_args([]).workers == 3


def test_workers_stop_when_their_parent_is_killed(tmp_path, mnist_dir):
    """SIGKILL leaves the parent no chance to stop its workers; the kernel tells them (PR_SET_PDEATHSIG)."""
    from tests.inference.helpers import start_workers

    process, _, _, _ = start_workers(tmp_path, mnist_dir)
    workers = [c for c in psutil.Process(process.pid).children() if "spawn_main" in " ".join(c.cmdline())]
    assert len(workers) == 2

    def alive() -> list[psutil.Process]:
        return [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]

    try:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        assert wait_until(lambda: not alive(), timeout=30), f"workers left serving: {alive()}"
    finally:
        for worker in alive():  # only if the test failed
            worker.kill()
        process.stderr.close()


def test_the_server_starts_the_default_number_of_processes(tmp_path, mnist_dir):
    publish(tmp_path / "artifacts", "w", seed=1)
    env = {**os.environ, "MNIST_ARTIFACTS_DIR": str(tmp_path / "artifacts"), "MNIST_DATA_DIR": str(mnist_dir)}
    env.pop("MNIST_INFERENCE_WORKERS", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "inference", "--address", "127.0.0.1:0"],
        cwd=REPO_ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        expected = default_worker_count(usable_cpus(), usable_memory_bytes(), PER_PROCESS_MIB)
        first = process.stderr.readline()
        assert f"{expected} worker process(es): {usable_cpus()} usable CPU core(s)" in first, first
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        process.stderr.close()
