"""`python -m inference --workers 2`: two server processes behind one port, started and stopped together."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared import settings
from shared.api.mnist.v1 import inference_pb2 as pb
from shared.api.mnist.v1 import inference_pb2_grpc

from inference.workers import split_address
from tests.inference.helpers import start_workers


@pytest.mark.parametrize(
    "address, expected",
    [
        ("[::]:50051", ("::", 50051)),
        ("localhost:0", ("localhost", 0)),
        ("127.0.0.1:7", ("127.0.0.1", 7)),
    ],
)
def test_split_address(address, expected):
    assert split_address(address) == expected


@pytest.mark.parametrize("address", ["50051", "localhost:", "localhost:http"])
def test_split_address_rejects_what_is_not_host_port(address):
    with pytest.raises(ValueError, match="host:port"):
        split_address(address)


@pytest.fixture
def workers(tmp_path, mnist_dir):
    process, port, lines, _ = start_workers(tmp_path, mnist_dir)
    yield process, port, lines
    if process.poll() is None:
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
        process.kill()
        process.wait()
    process.stderr.close()


def test_both_workers_answer_on_one_port_and_stop_on_sigterm(workers, digit_pngs):
    process, port, _ = workers
    # Separate connections (a local subchannel pool per channel): the kernel spreads connections, not calls.
    for _i in range(24):
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            assert stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=30).model_version == "w"
            with pytest.raises(grpc.RpcError) as e:  # a bad image: each worker logs it with its own name
                stub.Predict(pb.PredictRequest(image=b"not an image"), timeout=30)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    log = process.stderr.read()
    answered = {int(n) for n in re.findall(r"\[worker (\d)\] inference\.service: Predict -> INVALID_ARGUMENT", log)}
    assert answered == {0, 1}, "the kernel should spread 24 connections over both workers"
    assert log.count("inference.server: stopped") == 2


def test_a_dead_worker_stops_the_service_with_an_error(workers):
    process, _, _ = workers
    worker_processes = [c for c in psutil.Process(process.pid).children() if "spawn_main" in " ".join(c.cmdline())]
    assert len(worker_processes) == 2
    worker_processes[0].kill()
    assert process.wait(timeout=60) == 1  # so that compose's restart policy starts it again
    assert "exited with code -9; stopping the others" in process.stderr.read()
    survivor = worker_processes[1]
    assert not survivor.is_running() or survivor.status() == psutil.STATUS_ZOMBIE


def test_workers_share_one_health_port_when_port_0_asks_for_a_free_one(tmp_path, mnist_dir):
    """--health-address with port 0 and --workers 2: the parent resolves the port once, so both workers answer
    health checks on the same port (a probe names one port), not each on a free port of its own."""
    process, _, lines, _ = start_workers(tmp_path, mnist_dir, extra_env={settings.ENV_HEALTH_ADDRESS: "127.0.0.1:0"})
    try:
        # Each worker's "listening" line names the health port it serves: one port, named by both.
        said = re.findall(
            r"\[worker (\d)\] inference\.server: listening on .*health checks also on port (\d+)", "".join(lines)
        )
        assert sorted(worker for worker, _ in said) == ["0", "1"], "".join(lines)
        health_ports = {int(port) for _, port in said}
        assert len(health_ports) == 1, "".join(lines)
        (health_port,) = health_ports
        answered = set()
        for _i in range(16):  # separate connections, spread over the workers by the kernel
            with grpc.insecure_channel(
                f"127.0.0.1:{health_port}", options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
                answered.add(reply.status)
        assert answered == {health_pb2.HealthCheckResponse.SERVING}
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        process.stderr.close()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--address", "localhost"], "--address: address 'localhost' is not host:port"),
        (["--health-address", "bogus"], "--health-address: address 'bogus' is not host:port"),
    ],
)
def test_a_malformed_address_with_workers_is_one_line_not_a_traceback(flags, message):
    from inference.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["--workers", "2", *flags])
    assert str(e.value) == message


def test_metrics_folders_of_parents_killed_before_their_clean_up_are_removed_and_live_ones_kept(tmp_path):
    """A parent killed with SIGKILL left its folder of metric files; a Kubernetes pod's /tmp outlives restarts."""
    from inference import workers as workers_module

    abandoned = tmp_path / f"{workers_module.METRICS_PREFIX}dead"
    abandoned.mkdir()
    (abandoned / workers_module.OWNER_LOCK).touch()  # its owner is gone: nobody holds the lock
    (abandoned / "counter_123.db").write_bytes(b"x" * 1000)
    other = tmp_path / f"{workers_module.METRICS_PREFIX}not-ours"  # no lock file: not one of these folders
    other.mkdir()
    live, owner = workers_module._owned_folder(str(tmp_path))
    try:
        workers_module.remove_abandoned_metrics_folders(str(tmp_path))
        assert not abandoned.exists()
        assert other.exists() and Path(live).exists()  # held by its owner's lock
    finally:
        os.close(owner)
    workers_module.remove_abandoned_metrics_folders(str(tmp_path))  # its owner let go: abandoned now
    assert not Path(live).exists()
