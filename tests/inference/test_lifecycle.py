"""Model lifecycle over a real server: waiting for a first model, hot reload, a malformed manifest, shutdown.

Bad models (skipped, the previous one keeps serving) are tested in tests/reliability/test_checkpoint_faults.py.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.api.mnist.v1 import inference_pb2 as pb
from shared.checkpoint import atomic_write_bytes
from shared.settings import Paths

from inference.models import main as models_main
from tests.inference.helpers import health_status, hold_calls, model_info, publish, wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_waits_for_the_trainer_then_serves(serve, tmp_path, digit_pngs):
    running = serve(tmp_path / "artifacts")
    assert health_status(running) == NOT_SERVING
    assert health_status(running, "mnist.v1.Inference") == NOT_SERVING
    with pytest.raises(grpc.RpcError) as e:
        running.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "waiting for the trainer" in e.value.details()
    assert not model_info(running).serving

    publish(tmp_path / "artifacts", "first", seed=1)
    assert wait_until(lambda: health_status(running) == SERVING)
    assert health_status(running, "mnist.v1.Inference") == SERVING
    response = running.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=5)
    assert response.model_version == "first"


def test_a_server_pointed_at_no_models_folder_says_its_artifacts_dir_may_be_wrong(serve, tmp_path, digit_pngs):
    """--artifacts-dir given the models folder itself (artifacts/models, not artifacts) was told only "waiting for
    the trainer": a user serving a downloaded model waited for good. With no models/ folder at all the answer says
    the folder may be the wrong one; an empty models/ folder (the trainer at work) is not told so."""
    artifacts = tmp_path / "artifacts"
    publish(artifacts, "first", seed=1)
    wrong = serve(Paths(artifacts).models)  # it watches artifacts/models/models
    with pytest.raises(grpc.RpcError) as e:
        wrong.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (
        "waiting for the trainer" in e.value.details() and "--artifacts-dir names the wrong folder" in e.value.details()
    )
    assert str(tmp_path) not in e.value.details()  # callers are told what is wrong, not the server's paths
    empty = tmp_path / "fresh"
    Paths(empty).models.mkdir(parents=True)
    waiting = serve(empty)
    with pytest.raises(grpc.RpcError) as e:
        waiting.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=5)
    assert "waiting for the trainer" in e.value.details() and "wrong folder" not in e.value.details()


def test_a_model_published_between_polls_is_served_at_the_first_call(serve, tmp_path, digit_pngs):
    """With --workers, each process polls on its own: a health check could reach one that serves while the call
    after it reached one that had not looked yet, and was refused UNAVAILABLE (tests/deploy/test_stack_e2e.py's
    two replicas, once). A server with no model looks at the manifest when a call comes."""
    running = serve(tmp_path / "artifacts", poll_interval=3600.0)  # its own poll will not come during the test
    assert health_status(running) == NOT_SERVING
    publish(tmp_path / "artifacts", "between-polls", seed=1)
    response = running.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=10)
    assert response.model_version == "between-polls"
    assert health_status(running) == SERVING


def test_hot_reload_while_a_client_loops(serve, tmp_path, digit_pngs):
    artifacts = tmp_path / "artifacts"
    publish(artifacts, "old", seed=1)
    running = serve(artifacts)
    images = [png for _, png, _ in digit_pngs[:4]]
    versions, failures, stop = [], [], threading.Event()
    calls: list[tuple[float, float, str]] = []  # (sent, answered, version) of every call

    def client_loop():
        while not stop.is_set():
            try:
                sent = time.monotonic()
                if len(versions) % 2:
                    r = running.stub.Predict(pb.PredictRequest(image=images[0]), timeout=5)
                else:
                    r = running.stub.PredictBatch(pb.PredictBatchRequest(images=images), timeout=5)
                    assert all(x.WhichOneof("result") == "prediction" for x in r.results)
                calls.append((sent, time.monotonic(), r.model_version))
                versions.append(r.model_version)
            except Exception as e:  # any failed call fails the test
                failures.append(e)

    threads = [threading.Thread(target=client_loop) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: len(versions) >= 10)
        publish(artifacts, "new", seed=2)
        assert wait_until(lambda: versions and versions[-1] == "new")
        count = len(versions)
        assert wait_until(lambda: len(versions) >= count + 10)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert versions[0] == "old" and versions[-1] == "new"
    # An "old" answer can only come from a call sent before any call was answered by the new model: once one
    # is, the swap is done, and every call sent after it gets the new model (however long the calls take).
    first_new_answer = min(answered for _, answered, version in calls if version == "new")
    late_old = [(sent, answered) for sent, answered, version in calls if version == "old" and sent > first_new_answer]
    assert late_old == [], late_old
    assert model_info(running).version == "new"


def test_when_the_only_published_model_fails_its_checks_a_call_says_which_and_why(serve, tmp_path, digit_pngs):
    artifacts = tmp_path / "artifacts"
    publish(artifacts, "damaged", seed=1)
    weights = Paths(artifacts).models / "damaged.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    running = serve(artifacts)
    assert wait_until(lambda: model_info(running).HasField("last_load_error"))
    with pytest.raises(grpc.RpcError) as e:
        running.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "published model damaged fails the checks" in e.value.details()
    assert "checksum mismatch" in e.value.details() and "waiting for the trainer" not in e.value.details()
    publish(artifacts, "good", seed=2)  # the remedy the message gives
    assert wait_until(lambda: model_info(running).version == "good")
    assert running.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=5).model_version == "good"


def test_a_malformed_manifest_is_reported(serve, tmp_path):
    artifacts = tmp_path / "artifacts"
    publish(artifacts, "good", seed=1)
    running = serve(artifacts)
    atomic_write_bytes(Paths(artifacts).latest_manifest, b'{"version": "../../etc/passwd"')
    assert wait_until(lambda: model_info(running).HasField("last_load_error"))
    assert "manifest" in model_info(running).last_load_error.reason
    assert model_info(running).version == "good"


def test_a_good_model_after_a_skipped_one_clears_the_load_error(serve, tmp_path):
    artifacts = tmp_path / "artifacts"
    publish(artifacts, "good", seed=1)
    running = serve(artifacts)
    atomic_write_bytes(Paths(artifacts).latest_manifest, b"not json")
    assert wait_until(lambda: model_info(running).HasField("last_load_error"))
    publish(artifacts, "better", seed=2)
    assert wait_until(lambda: model_info(running).version == "better")
    assert not model_info(running).HasField("last_load_error"), model_info(running).last_load_error


def test_a_rollback_to_the_served_model_clears_the_load_error(serve, tmp_path):
    """last_load_error is the last *newer* model that failed: once LATEST.json names the served model again
    (mnist-models rollback), there is none."""
    artifacts = tmp_path / "artifacts"
    publish(artifacts, "good", seed=1)
    running = serve(artifacts)
    publish(artifacts, "damaged", seed=2)
    weights = Paths(artifacts).models / "damaged.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert wait_until(lambda: model_info(running).HasField("last_load_error"))
    assert models_main(["--artifacts-dir", str(artifacts), "rollback"]) == 0
    assert wait_until(lambda: not model_info(running).HasField("last_load_error"))
    assert model_info(running).version == "good"


def test_a_damaged_model_file_repaired_in_place_is_served_at_the_next_poll_not_after_the_back_off(serve, tmp_path):
    """The operator restores the file and promotes the version LATEST.json already names: before, the server kept
    the old model for its back-off (30 s, doubling to 10 minutes) and promote said "nothing changed"."""
    artifacts = tmp_path / "artifacts"
    publish(artifacts, "good", seed=1)
    running = serve(artifacts)
    publish(artifacts, "next", seed=2)
    weights = Paths(artifacts).models / "next.pt"
    intact = weights.read_bytes()
    weights.write_bytes(intact[:1000])
    assert wait_until(lambda: model_info(running).HasField("last_load_error"))
    repaired = weights.with_suffix(".restored")
    repaired.write_bytes(intact)
    repaired.replace(weights)  # a restore from a backup: another file at the same path
    assert models_main(["--artifacts-dir", str(artifacts), "promote", "next"]) == 0
    assert wait_until(lambda: model_info(running).version == "next", timeout=5)  # the back-off is 30 s


def test_shutdown_goes_not_serving_and_finishes_calls_in_flight(serve, tmp_path, digit_pngs, monkeypatch):
    import inference.service

    artifacts = tmp_path / "artifacts"
    publish(artifacts, "v1", seed=1)
    running = serve(artifacts)
    watch = running.health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert next(watch).status == SERVING

    # to_mnist_fast: the first step of every Predict (MNIST-like pictures never reach to_mnist).
    in_flight, release = hold_calls(monkeypatch, inference.service, "to_mnist_fast")
    call = running.stub.Predict.future(pb.PredictRequest(image=digit_pngs[0][1]), timeout=30)
    assert in_flight.wait(10)

    stopper = threading.Thread(target=running.server.stop, kwargs={"grace": 10})
    stopper.start()
    # Health turns NOT_SERVING at once, while the call is still in flight...
    assert next(watch).status == NOT_SERVING
    watch.cancel()  # an open Watch stream would otherwise hold the shutdown for the whole grace period
    assert not call.done()

    # ... new calls are refused ...
    def refused() -> bool:
        with grpc.insecure_channel(running.target) as channel:
            try:
                channel.unary_unary("/mnist.v1.Inference/GetModelInfo")(b"", timeout=5)
            except grpc.RpcError:
                return True
        return False

    assert wait_until(refused, timeout=5)
    assert not call.done()
    # ... and the call in flight finishes normally within the grace period.
    release.set()
    assert call.result().model_version == "v1"
    stopper.join(15)
    assert not stopper.is_alive()


def test_a_call_still_running_when_the_grace_ends_stops_its_work_and_its_caller_is_told_why(
    serve, tmp_path, monkeypatch, caplog
):
    """gRPC tells such a caller only "Cancelling all calls"; and an Evaluate that went on after the server had
    stopped made its thread pool while the interpreter exited, which raised, and was reported INTERNAL."""
    import logging

    import inference.evaluation
    from inference.channel import describe_rpc_error

    caplog.set_level(logging.INFO, logger="inference.access")
    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve()
    entered, release = hold_calls(monkeypatch, inference.evaluation, "forward_in_chunks", timeout=30)
    call = running.stub.Evaluate.future(pb.EvaluateRequest(omit_heatmap=True), timeout=60)
    assert entered.wait(30)
    running.server.stop(grace=0.2)
    error = call.exception(timeout=10)
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    # What the client says: gRPC's answer carries none of the call's metadata, which alone is no proof that the
    # server was reached, and it was told "cannot reach the inference server ... Is it running?".
    assert "stopped (a restart or an update)" in describe_rpc_error(error, "the target")

    def exiting(*args, **kwargs):
        raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    monkeypatch.setattr(inference.evaluation, "ThreadPoolExecutor", exiting)  # as while the interpreter exits
    release.set()

    def evaluate_line():
        return [r for r in caplog.records if r.name == "inference.access" and r.access["method"] == "Evaluate"]

    assert wait_until(evaluate_line, timeout=10)
    assert evaluate_line()[0].access["code"] == "CANCELLED"


def test_health_stays_not_serving_after_shutdown_begins(serve, tmp_path):
    artifacts = tmp_path / "artifacts"
    running = serve(artifacts)
    running.server.begin_shutdown()
    publish(artifacts, "late", seed=1)  # a model arriving during shutdown must not flip health back
    assert running.server.store.wait_for_version("late", timeout=10) is not None
    assert health_status(running) == NOT_SERVING


def test_a_server_busy_with_calls_still_answers_probes_on_its_health_port(serve, tmp_path, digit_pngs, monkeypatch):
    """Every worker thread taken by a slow call: a health check on the main port waits behind them past its
    deadline (a liveness probe's restart), the health port (--health-address) answers at once, and says
    NOT_SERVING through a graceful stop."""
    import inference.service

    artifacts = tmp_path / "artifacts"
    publish(artifacts, "v1", seed=1)
    running = serve(artifacts, max_workers=2, health_address="127.0.0.1:0")
    probe = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{running.server.health_port}"))
    entered, release = hold_calls(monkeypatch, inference.service, "to_mnist_fast")
    calls = [running.stub.Predict.future(pb.PredictRequest(image=digit_pngs[0][1]), timeout=30) for _ in range(3)]

    def predicts_running() -> float:
        labels = {"grpc_service": "mnist.v1.Inference", "grpc_method": "Predict"}
        return running.server.metrics.registry.get_sample_value("grpc_server_in_flight", labels) or 0

    try:
        assert entered.wait(10)
        assert wait_until(lambda: predicts_running() == 2, timeout=10)  # both threads taken, one call waiting
        with pytest.raises(grpc.RpcError) as e:
            running.health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=1)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        answer = probe.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=2)
        assert answer.status == SERVING
        assert probe.Check(health_pb2.HealthCheckRequest(service="mnist.v1.Inference"), timeout=2).status == SERVING
    finally:
        release.set()
    assert all(call.result().model_version == "v1" for call in calls)
    running.server.begin_shutdown()
    assert probe.Check(health_pb2.HealthCheckRequest(), timeout=2).status == NOT_SERVING
