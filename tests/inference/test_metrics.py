"""Prometheus metrics of one server, scraped over HTTP after real calls: calls by method and code, latency,
images, rejections by reason, calls in flight, the served model, loads, swaps and skips, Evaluate runs."""

from __future__ import annotations

import contextlib
import threading

import grpc
import pytest

from shared.api.mnist.v1 import inference_pb2 as pb
from shared.checkpoint import MANIFEST_NAME, point_latest, publish_model
from shared.image_pipeline import ImageRejected, Limits, to_mnist
from shared.settings import Paths

from inference import service as service_module
from inference.metrics import REJECTION_REASONS, rejection_reason
from tests.inference.helpers import hold_calls, model_payload, publish, wait_until
from tests.inference.metrics_scrape import scrape, value
from tests.reliability.helpers import SMALL_LIMITS
from tests.reliability.image_kinds import IMAGE_KINDS, INVALID

INFERENCE = "mnist.v1.Inference"
# What each kind of the reliability table's refused images is counted as, where the kind says it plainly.
EXPECTED_REASONS = {
    "empty bytes": "empty",
    "random bytes": "not_an_image",
    "HEIC": "not_an_image",
    "truncated PNG": "damaged",
    "truncated JPEG closed with EOI": "damaged",
    "PNG with a bad CRC": "damaged",
    "over the byte limit": "too_many_bytes",
    "PNG claiming 100,000 x 100,000": "too_many_pixels",
    "decompression bomb, 64 MP in 8 kB": "too_many_pixels",
    "all white": "blank",
    "paper with sensor noise only": "blank",
    "fully transparent": "transparent",
}


@pytest.fixture
def metered(serve, tmp_path):
    """A server serving v1 with metrics on a free port and the reliability tests' small limits."""
    artifacts = tmp_path / "artifacts"
    publish(artifacts, "v1", seed=1)
    running = serve(artifacts, metrics_address="127.0.0.1:0", **SMALL_LIMITS)
    assert running.server.metrics_port
    return running


def refused_kinds(mnist):
    digit = mnist.test_images[0].numpy()
    return {name: kind.build(digit) for name, kind in IMAGE_KINDS.items() if kind.expect == INVALID}


def test_every_refused_kind_of_image_has_a_reason_of_its_own(mnist):
    limits = Limits(max_bytes=SMALL_LIMITS["max_image_bytes"], max_pixels=SMALL_LIMITS["max_image_pixels"])
    for name, data in refused_kinds(mnist).items():
        with pytest.raises(ImageRejected) as e:
            to_mnist(data, limits=limits)
        reason = rejection_reason(e.value)
        assert reason in REJECTION_REASONS and reason != "other", f"{name}: {e.value}"
        assert reason == EXPECTED_REASONS.get(name, reason), name


def test_calls_are_counted_by_method_and_code_with_their_latency(metered, digit_pngs):
    stub = metered.stub
    for _, png, _ in digit_pngs[:3]:
        stub.Predict(pb.PredictRequest(image=png), timeout=10)
    for request in (pb.PredictRequest(image=b""), pb.PredictRequest(image=digit_pngs[0][1], model_version="nope")):
        with pytest.raises(grpc.RpcError):
            stub.Predict(request, timeout=10)
    stub.PredictBatch(pb.PredictBatchRequest(images=[png for _, png, _ in digit_pngs[:4]] + [b"x"]), timeout=10)
    samples = scrape(metered.server.metrics_port)
    handled = "grpc_server_handled_total"
    assert value(samples, handled, grpc_service=INFERENCE, grpc_method="Predict", grpc_code="OK") == 3
    assert value(samples, handled, grpc_method="Predict", grpc_code="INVALID_ARGUMENT") == 1
    assert value(samples, handled, grpc_method="Predict", grpc_code="NOT_FOUND") == 1
    assert value(samples, handled, grpc_method="PredictBatch", grpc_code="OK") == 1
    assert value(samples, "grpc_server_started_total", grpc_method="Predict") == 5
    assert value(samples, "grpc_server_handling_seconds_count", grpc_method="Predict") == 5
    assert value(samples, "grpc_server_handling_seconds_sum", grpc_method="Predict") > 0
    assert value(samples, "grpc_server_handling_seconds_bucket", grpc_method="Predict", le="+Inf") == 5
    assert value(samples, "mnist_images_predicted_total") == 3 + 4
    assert value(samples, "mnist_images_rejected_total", reason="empty") == 1
    assert value(samples, "mnist_images_rejected_total", reason="not_an_image") == 1  # the batch's b"x"
    assert value(samples, "grpc_server_in_flight", grpc_method="Predict") == 0


def test_rejected_images_are_counted_by_reason(metered, mnist):
    kinds = refused_kinds(mnist)
    for name, data in kinds.items():
        with pytest.raises(grpc.RpcError) as e:
            metered.stub.Predict(pb.PredictRequest(image=data), timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
    samples = scrape(metered.server.metrics_port)
    assert value(samples, "mnist_images_rejected_total") == len(kinds)
    assert value(samples, "mnist_images_rejected_total", reason="other") == 0
    for reason in set(EXPECTED_REASONS.values()):
        expected = sum(1 for name in kinds if EXPECTED_REASONS.get(name) == reason)
        assert value(samples, "mnist_images_rejected_total", reason=reason) >= expected, reason
    assert value(samples, "grpc_server_handled_total", grpc_method="Predict", grpc_code="INVALID_ARGUMENT") == len(
        kinds
    )


def test_calls_in_flight_are_counted_while_they_run(metered, digit_pngs, monkeypatch):
    entered, release = hold_calls(monkeypatch, service_module, "to_mnist_fast")  # MNIST-like PNGs take the fast path
    call = threading.Thread(target=lambda: metered.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=30))
    call.start()
    try:
        assert entered.wait(10)
        samples = scrape(metered.server.metrics_port)
        assert value(samples, "grpc_server_in_flight", grpc_service=INFERENCE, grpc_method="Predict") == 1
    finally:
        release.set()
        call.join(30)
    assert value(scrape(metered.server.metrics_port), "grpc_server_in_flight", grpc_method="Predict") == 0


@contextlib.contextmanager
def second_call_queued(running, monkeypatch, image: bytes):
    """Two Predict calls of `image` (request ids call-0 and call-1) on a server of one worker thread, the first held
    in the service: within, the second waits for the thread (mnist_calls_queued is 1); on leaving, the first is
    released and both are answered."""
    entered, release = hold_calls(monkeypatch, service_module, "to_mnist_fast")
    calls = [
        threading.Thread(
            target=lambda i=i: running.stub.Predict(
                pb.PredictRequest(image=image), timeout=30, metadata=(("x-request-id", f"call-{i}"),)
            )
        )
        for i in range(2)
    ]
    calls[0].start()
    try:
        assert entered.wait(10)
        calls[1].start()
        assert wait_until(lambda: value(scrape(running.server.metrics_port), "mnist_calls_queued") == 1, timeout=10)
        yield
    finally:
        release.set()
        for call in calls:
            call.join(30)


def test_calls_waiting_for_a_free_worker_thread_are_counted_as_queued(serve, tmp_path, digit_pngs, monkeypatch):
    """One worker thread, held by a first call: a second call waits in the queue, where no interceptor sees it."""
    artifacts = tmp_path / "artifacts"
    publish(artifacts, "v1", seed=1)
    running = serve(artifacts, metrics_address="127.0.0.1:0", max_workers=1)
    with second_call_queued(running, monkeypatch, digit_pngs[0][1]):
        samples = scrape(running.server.metrics_port)
        assert value(samples, "grpc_server_in_flight", grpc_service=INFERENCE, grpc_method="Predict") == 1
    samples = scrape(running.server.metrics_port)
    assert value(samples, "mnist_calls_queued") == 0
    assert value(samples, "grpc_server_handled_total", grpc_method="Predict", grpc_code="OK") == 2


def test_the_time_a_call_waited_for_a_worker_thread_is_measured_apart_from_its_handling(
    serve, tmp_path, digit_pngs, monkeypatch, caplog
):
    """One worker thread, held by a first call for at least HELD s after a second call is queued: the second call's
    wait is in mnist_call_queue_seconds and its access line's queue_ms, not in its handling latency, so a slow model
    and too few threads no longer look alike."""
    import logging
    import time

    held = 0.5
    caplog.set_level(logging.INFO, logger="inference.access")
    artifacts = tmp_path / "artifacts"
    publish(artifacts, "v1", seed=1)
    running = serve(artifacts, metrics_address="127.0.0.1:0", max_workers=1)
    with second_call_queued(running, monkeypatch, digit_pngs[0][1]):
        time.sleep(held)
    samples = scrape(running.server.metrics_port)
    # Both calls (and nothing else: no health check was made) waited; one of them for the held time at least.
    assert value(samples, "mnist_call_queue_seconds_count") == 2
    assert value(samples, "mnist_call_queue_seconds_sum") >= held
    assert value(samples, "mnist_call_queue_seconds_bucket", le="0.25") == 1
    lines = {r.access["request_id"]: r.access for r in caplog.records if r.name == "inference.access"}
    assert lines["call-0"]["queue_ms"] < 250 <= held * 1e3 <= lines["call-1"]["queue_ms"]
    # The handling latency starts when the thread takes the call: the wait is not in it.
    assert lines["call-1"]["latency_ms"] < lines["call-1"]["queue_ms"] - 250


def test_the_served_model_loads_swaps_and_skips_are_reported(metered):
    port = metered.server.metrics_port
    samples = scrape(port)
    info = {dict(labels)["version"]: v for (name, labels), v in samples.items() if name == "mnist_model_info"}
    assert info == {"v1": 1}
    assert value(samples, "mnist_model_loads_total", source="latest", outcome="ok") == 1
    assert value(samples, "mnist_model_swaps_total") == 1
    models = Paths(metered.artifacts).models
    # A model whose file does not match its manifest: skipped, counted by reason; v1 keeps serving. Damaged
    # before LATEST.json names it, so the server never sees it whole.
    manifest = publish_model(models, version="v2", model_payload=model_payload(2), serve=False)
    (models / "v2.pt").write_bytes((models / "v2.pt").read_bytes()[:-10])
    point_latest(models, manifest, event="publish")
    assert wait_until(lambda: value(scrape(port), "mnist_model_skips_total", reason="checksum") == 1)
    samples = scrape(port)
    assert value(samples, "mnist_model_loads_total", source="latest", outcome="failed") == 1
    # Then a good one: swapped in, and the info metric names it alone.
    publish(metered.artifacts, "v3", seed=3)
    assert metered.server.store.wait_for_version("v3", timeout=10) is not None
    samples = scrape(port)
    info = {dict(labels)["version"]: v for (name, labels), v in samples.items() if name == "mnist_model_info"}
    assert info == {"v3": 1}
    assert value(samples, "mnist_model_swaps_total") == 2
    # A manifest that is not JSON.
    (models / MANIFEST_NAME).write_bytes(b"{not json")
    assert wait_until(lambda: value(scrape(port), "mnist_model_skips_total", reason="manifest") == 1)


def test_pinned_loads_and_evaluate_runs_are_counted(metered, digit_pngs):
    publish(metered.artifacts, "v2", seed=2)
    assert metered.server.store.wait_for_version("v2", timeout=10) is not None
    metered.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1], model_version="v1"), timeout=10)
    metered.stub.Evaluate(pb.EvaluateRequest(omit_heatmap=True), timeout=60)
    metered.stub.Evaluate(pb.EvaluateRequest(split=pb.SPLIT_VALIDATION, omit_heatmap=True), timeout=60)
    samples = scrape(metered.server.metrics_port)
    assert value(samples, "mnist_model_loads_total", source="pinned", outcome="ok") == 1
    assert value(samples, "mnist_evaluations_total", split="test") == 1
    assert value(samples, "mnist_evaluations_total", split="validation") == 1


def test_refused_by_the_token_check_still_counts(serve, tmp_path, digit_pngs):
    artifacts = tmp_path / "artifacts"
    publish(artifacts, "v1", seed=1)
    running = serve(artifacts, metrics_address="127.0.0.1:0", auth_token="secret")
    with pytest.raises(grpc.RpcError) as e:
        running.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (
        value(
            scrape(running.server.metrics_port),
            "grpc_server_handled_total",
            grpc_method="Predict",
            grpc_code="UNAUTHENTICATED",
        )
        == 1
    )


def test_decode_memory_reports_the_servers_decode_budget_in_use(metered):
    """Before, nothing connected the gauge to the budget: it read 0 through every decode."""
    budget = metered.server.servicer.limits.decode_budget
    with budget.reserve(3 * 2**20):
        assert value(scrape(metered.server.metrics_port), "mnist_decode_memory_bytes") == 3 * 2**20
    assert value(scrape(metered.server.metrics_port), "mnist_decode_memory_bytes") == 0


def test_decode_memory_is_read_from_the_callable_it_is_given(metered):
    in_use = [0]
    metered.server.metrics.decode_memory_from(lambda: in_use[0])
    in_use[0] = 12_345_678
    assert value(scrape(metered.server.metrics_port), "mnist_decode_memory_bytes") == 12_345_678


def test_metrics_are_off_unless_asked_for(serve):
    assert serve().server.metrics_port is None


def test_a_metrics_address_that_is_not_host_port_is_refused_at_start(tmp_path):
    import subprocess
    import sys

    from tests.inference.helpers import REPO_ROOT

    result = subprocess.run(
        [sys.executable, "-m", "inference", "--artifacts-dir", str(tmp_path), "--metrics-address", "9464"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode != 0
    assert "--metrics-address: address '9464' is not host:port" in result.stderr
