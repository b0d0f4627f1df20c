"""A real Prometheus server scrapes `python -m inference --workers 2 --metrics-address ...`, and its query API
counts exactly the calls made: the metrics are the sum over the worker processes (prometheus_client's
multiprocess mode), in a form Prometheus reads. Needs the `prometheus` binary (Debian: apt-get install
prometheus; .ci/run installs it)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request

import grpc
import psutil
import pytest

from shared import settings
from shared.api.mnist.v1 import inference_pb2 as pb
from shared.api.mnist.v1 import inference_pb2_grpc

from testkit.ports import free_port
from tests.inference.helpers import publish, start_workers
from tests.inference.metrics_scrape import scrape, value

WORKERS = 2


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
        process.kill()
    process.wait(timeout=30)


@pytest.fixture
def workers_with_metrics(tmp_path, mnist_dir):
    """`python -m inference --workers 2` with metrics on: (process, gRPC port, metrics port, log lines)."""
    process, grpc_port, lines, metrics_port = start_workers(
        tmp_path, mnist_dir, WORKERS, extra_env={settings.ENV_METRICS_ADDRESS: "127.0.0.1:0"}, metrics=True
    )
    try:
        yield process, grpc_port, metrics_port, lines
    finally:
        stop(process)
        process.stderr.close()


@pytest.fixture
def prometheus(tmp_path):
    """Start Prometheus with a scrape config written by the test: returns start(targets) -> its HTTP base URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is not installed (apt-get install -y --no-install-recommends prometheus)")
    started: list[subprocess.Popen] = []

    def start(target: str) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: mnist-inference\n    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        port = free_port()
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / "prometheus.log", "w"),  # noqa: SIM115 - the process holds it to its end
        )
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return url
            except OSError:
                time.sleep(0.2)
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
        raise AssertionError("Prometheus did not get ready:\n" + (tmp_path / "prometheus.log").read_text())

    yield start
    for process in started:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def query(url: str, promql: str) -> dict[str, float]:
    """Prometheus' instant query API: {the result's labels as text: value}."""
    with urllib.request.urlopen(f"{url}/api/v1/query?query={urllib.parse.quote(promql)}", timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in body["data"]["result"]}


def wait_for_query(url: str, promql: str, expected: dict[str, float], timeout: float = 30.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    got = {}
    while time.monotonic() < deadline:
        got = query(url, promql)
        if got == expected:
            return got
        time.sleep(0.5)
    return got


def test_prometheus_counts_the_calls_made_to_all_workers(workers_with_metrics, prometheus, digit_pngs):
    process, port, metrics_port, _ = workers_with_metrics
    url = prometheus(f"127.0.0.1:{metrics_port}")
    good = bad = 0
    # One connection per round: the kernel spreads connections (not calls) over the workers.
    for _ in range(12):
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            assert stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=30).model_version == "w"
            good += 1
            with pytest.raises(grpc.RpcError):
                stub.Predict(pb.PredictRequest(image=b""), timeout=30)
            bad += 1

    by_code = 'sum by (grpc_code) (grpc_server_handled_total{job="mnist-inference", grpc_method="Predict"})'
    got = wait_for_query(url, by_code, {'{"grpc_code": "INVALID_ARGUMENT"}': bad, '{"grpc_code": "OK"}': good})
    assert got == {'{"grpc_code": "INVALID_ARGUMENT"}': bad, '{"grpc_code": "OK"}': good}
    assert query(url, 'sum(mnist_images_rejected_total{reason="empty"})') == {"{}": bad}
    assert query(url, "sum(mnist_images_predicted_total)") == {"{}": good}
    assert query(url, 'sum(grpc_server_handling_seconds_count{grpc_method="Predict"})') == {"{}": good + bad}
    assert query(url, "max by (version) (mnist_model_info)") == {'{"version": "w"}': 1}
    # Each worker loaded the model once and swapped it in: the sum says so.
    assert query(url, "sum(mnist_model_swaps_total)") == {"{}": WORKERS}

    # The sum really spans both processes: each worker answered some of the calls ...
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    log = process.stderr.read()
    answered = {int(n) for n in re.findall(r"\[worker (\d)\] inference\.service: Predict -> INVALID_ARGUMENT", log)}
    assert answered == set(range(WORKERS)), "the kernel should spread 12 connections over both workers"


def test_a_single_process_scrape_is_read_by_prometheus_too(serve, prometheus, tmp_path, digit_pngs):
    artifacts = tmp_path / "artifacts"
    publish(artifacts, "v1", seed=1)
    running = serve(artifacts, metrics_address="127.0.0.1:0")
    url = prometheus(f"127.0.0.1:{running.server.metrics_port}")
    for _ in range(3):
        running.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=10)
    expected = {"{}": 3.0}
    assert (
        wait_for_query(url, 'sum(grpc_server_handled_total{grpc_method="Predict", grpc_code="OK"})', expected)
        == expected
    )
    assert value(scrape(running.server.metrics_port), "grpc_server_handled_total", grpc_method="Predict") == 3
