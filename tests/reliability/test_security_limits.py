"""Limits and access control beyond what tests/inference covers.

Already tested elsewhere, not repeated: message size, pixel, byte and batch limits (test_bad_input.py here and
tests/inference/test_service.py); one Evaluate at a time (test_service.py); TLS, the bearer token on GetModelInfo
and reflection, open health checks (tests/inference/test_security.py, test_cli.py); weights-only loading and
paths outside models/ (test_checkpoint_faults.py here, test_lifecycle.py).

Here: the server-wide cap on concurrent calls, Evaluate's cap with N > 1 and its slot given back after a failure
or an abandoned call, the token checked on every Inference method before the request is even parsed, and the
decode budget (decoded pictures in memory at once; the flood of 40 MP pictures is test_memory_flood.py).
"""

from __future__ import annotations

import io
import threading
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from shared.api.mnist.v1 import inference_pb2 as pb
from shared.decode import ImageRejected

from inference.channel import describe_rpc_error
from tests.inference.helpers import publish

TOKEN = "reliability-token"


@pytest.fixture
def blocked(monkeypatch):
    """Calls that reach the image pipeline (Predict) or Evaluate's scoring wait until released."""
    import inference.service

    state = {"entered": threading.Semaphore(0), "release": threading.Event()}
    # to_mnist_fast is the first step of every Predict (MNIST-like pictures never reach to_mnist).
    real_to_mnist, real_evaluate = inference.service.to_mnist_fast, inference.service.evaluate_model

    def wait_then(real):
        def wrapper(*args, **kwargs):
            state["entered"].release()
            state["release"].wait(30)
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(inference.service, "to_mnist_fast", wait_then(real_to_mnist))
    monkeypatch.setattr(inference.service, "evaluate_model", wait_then(real_evaluate))
    yield state
    state["release"].set()


def test_calls_beyond_max_concurrent_rpcs_are_refused(serve, tmp_path, digit_pngs, blocked):
    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve(max_concurrent_rpcs=2, max_workers=4)
    request = pb.PredictRequest(image=digit_pngs[0][1])
    in_flight = [running.stub.Predict.future(request, timeout=30) for _ in range(2)]
    for _ in in_flight:
        assert blocked["entered"].acquire(timeout=10)
    with pytest.raises(grpc.RpcError) as e:
        running.stub.Predict(request, timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # gRPC's own "Concurrent RPC limit exceeded!", said with what to do by the client (and the REST gateway).
    said = describe_rpc_error(e.value, "the target")
    assert "as many calls at once as it takes (its --max-concurrent-rpcs); try again in a moment" in said
    blocked["release"].set()
    assert all(call.result().model_version == "v1" for call in in_flight)
    assert running.stub.Predict(request, timeout=10).model_version == "v1"  # capacity is back


def test_evaluate_cap_of_two(serve, tmp_path, blocked):
    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve(max_concurrent_evaluations=2)
    request = pb.EvaluateRequest(split=pb.SPLIT_TEST, omit_heatmap=True)
    first, second = (running.stub.Evaluate.future(request, timeout=60) for _ in range(2))
    assert blocked["entered"].acquire(timeout=10) and blocked["entered"].acquire(timeout=10)
    with pytest.raises(grpc.RpcError) as e:
        running.stub.Evaluate(request, timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 evaluation(s) already running" in e.value.details()
    assert running.server.metrics.registry.get_sample_value("mnist_calls_refused_total", {"limit": "evaluations"}) == 1
    blocked["release"].set()
    assert first.result().count == second.result().count == 10_000


@pytest.mark.parametrize("outcome", ["read", "refused as input", "failed inside"])
def test_read_number_cap_refuses_at_once_and_leaves_threads_for_predict(serve, tmp_path, monkeypatch, outcome):
    """A reading made to be slow takes a second: 16 clients looping on one (as many as --max-workers) kept Predict
    waiting up to 4.5 s and failed a third of the main port's health checks; 32 filled --max-concurrent-rpcs and
    every other call was refused. Past --max-concurrent-readings a ReadNumber is refused at once (a call waiting
    for a slot would hold a thread doing nothing), Predict is answered meanwhile, and the slot comes back whatever
    the held reading's end."""
    import cv2

    import inference.service
    from tests.inference.helpers import hold_calls, png_bytes

    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve(max_concurrent_readings=1)
    picture = np.full((120, 300), 255, np.uint8)
    cv2.putText(picture, "47", (40, 100), cv2.FONT_HERSHEY_SIMPLEX, 3, 0, 10)
    real_read = inference.service.read_number

    def ending(image, classify):
        if outcome == "refused as input":
            raise ImageRejected("no digit found")
        if outcome == "failed inside":
            raise RuntimeError("a bug")
        return real_read(image, classify)

    monkeypatch.setattr(inference.service, "read_number", ending)
    entered, release = hold_calls(monkeypatch, inference.service, "read_number")
    request = pb.ReadNumberRequest(image=png_bytes(picture))
    first = running.stub.ReadNumber.future(request, timeout=30)
    assert entered.wait(10)
    try:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            running.stub.ReadNumber(request, timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() - started < 2
        assert "1 ReadNumber call(s) already running" in e.value.details()
        assert "--max-concurrent-readings" in e.value.details() and "try again" in e.value.details()
        registry = running.server.metrics.registry
        assert registry.get_sample_value("mnist_calls_refused_total", {"limit": "readings"}) == 1
        answer = running.stub.Predict(pb.PredictRequest(image=png_bytes(picture[:, :150])), timeout=10)
        assert len(answer.prediction.probabilities) == 10
    finally:
        release.set()
    if outcome == "read":
        assert first.result().digits
    else:
        assert first.exception().code() != grpc.StatusCode.RESOURCE_EXHAUSTED
    monkeypatch.setattr(inference.service, "read_number", real_read)
    assert running.stub.ReadNumber(request, timeout=30).digits  # the slot is free again


def test_a_call_refused_by_a_cap_loads_no_pinned_version(serve, tmp_path, monkeypatch):
    """A ReadNumber or Evaluate refused by its cap that named an uncached model_version loaded it first (the checks
    included) and could push a version other callers use out of the cache, only to be told to come back."""
    import inference.service
    from tests.inference.helpers import hold_calls, png_bytes

    for version, seed in (("v1", 1), ("v2", 2)):
        publish(tmp_path / "artifacts", version, seed=seed)
    running = serve(max_concurrent_readings=1, max_concurrent_evaluations=1)
    loads = []
    real_model = inference.service.InferenceServicer._model
    monkeypatch.setattr(
        inference.service.InferenceServicer, "_model", lambda self, v="": loads.append(v) or real_model(self, v)
    )
    entered, release = hold_calls(monkeypatch, inference.service, "read_number")
    entered_evaluation, release_evaluation = hold_calls(monkeypatch, inference.service, "evaluate_model")
    picture = np.full((120, 300), 255, np.uint8)
    picture[20:100, 140:150] = 0
    held = [
        running.stub.ReadNumber.future(pb.ReadNumberRequest(image=png_bytes(picture)), timeout=30),
        running.stub.Evaluate.future(pb.EvaluateRequest(split=pb.SPLIT_TEST, omit_heatmap=True), timeout=60),
    ]
    try:
        assert entered.wait(10) and entered_evaluation.wait(10)
        loads.clear()
        for call, request in (
            (running.stub.ReadNumber, pb.ReadNumberRequest(image=png_bytes(picture), model_version="v1")),
            (running.stub.Evaluate, pb.EvaluateRequest(split=pb.SPLIT_TEST, omit_heatmap=True, model_version="v1")),
        ):
            with pytest.raises(grpc.RpcError) as e:
                call(request, timeout=10)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert loads == []
    finally:
        release.set()
        release_evaluation.set()
    for call in held:
        call.result()


def test_read_number_cap_is_half_the_worker_threads_unless_given(serve, tmp_path):
    publish(tmp_path / "artifacts", "v1", seed=1)
    assert serve(max_workers=6).server.servicer.limits.max_concurrent_readings == 3
    assert serve(max_workers=1).server.servicer.limits.max_concurrent_readings == 1
    assert serve(max_workers=6, max_concurrent_readings=5).server.servicer.limits.max_concurrent_readings == 5


def test_evaluate_gives_its_slot_back_after_a_failure(tmp_path):
    """MNIST missing: each Evaluate fails with FAILED_PRECONDITION, never with RESOURCE_EXHAUSTED (slot leaked)."""
    from tests.inference.helpers import start_server

    publish(tmp_path / "artifacts", "v1", seed=1)
    empty = tmp_path / "no-mnist-here"
    empty.mkdir()
    running = start_server(tmp_path / "artifacts", empty, max_concurrent_evaluations=1)
    try:
        evaluate_three_times(running)
    finally:
        running.channel.close()
        running.server.stop(grace=0)


def evaluate_three_times(running) -> None:
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as e:
            running.stub.Evaluate(pb.EvaluateRequest(split=pb.SPLIT_TEST, omit_heatmap=True), timeout=30)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # What the operator must do, not where the server looked: callers of the web page read this too.
        assert "--download-data" in e.value.details() and str(running.artifacts.parent) not in e.value.details()


def test_evaluate_gives_its_slot_back_when_the_caller_gives_up(serve, tmp_path, blocked, monkeypatch):
    import inference.service

    held = inference.service.evaluate_model  # the fixture's: waits until released
    outcomes = []

    def recorded(*args, **kwargs):
        outcome = held(*args, **kwargs)
        outcomes.append(outcome)
        return outcome

    monkeypatch.setattr(inference.service, "evaluate_model", recorded)
    # A version of its own: the process keeps the outputs of the last models evaluated (shared_evaluation_data), and
    # a "v1" of the same seed published within the same second by an earlier test was the same file, whose kept
    # output made the abandoned evaluation finish at once, with nothing left to stop.
    publish(tmp_path / "artifacts", "given-up", seed=1)
    running = serve(max_concurrent_evaluations=1)
    request = pb.EvaluateRequest(split=pb.SPLIT_TEST, omit_heatmap=True)
    with pytest.raises(grpc.RpcError) as e:
        running.stub.Evaluate(request, timeout=1)  # the caller's deadline passes while it is held
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert blocked["entered"].acquire(timeout=10)
    blocked["release"].set()
    # The abandoned evaluation stops at its next chunk and frees the slot.
    for _ in range(50):
        try:
            assert running.stub.Evaluate(request, timeout=60).count == 10_000
            break
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            threading.Event().wait(0.1)
    else:
        pytest.fail("the slot of the abandoned evaluation was never given back")
    # It stopped (evaluate_model returns None for a caller gone), rather than running to the end for nobody.
    assert outcomes[0] is None and outcomes[-1] is not None


CALLS = {
    "Predict": lambda r, md: r.stub.Predict(pb.PredictRequest(image=b"x"), metadata=md, timeout=10),
    "PredictBatch": lambda r, md: r.stub.PredictBatch(pb.PredictBatchRequest(images=[b"x"]), metadata=md, timeout=10),
    "Evaluate": lambda r, md: r.stub.Evaluate(pb.EvaluateRequest(), metadata=md, timeout=10),
    "GetModelInfo": lambda r, md: r.stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=md, timeout=10),
    "ReadNumber": lambda r, md: r.stub.ReadNumber(pb.ReadNumberRequest(image=b"x"), metadata=md, timeout=10),
    "Predict, request not even protobuf": lambda r, md: r.channel.unary_unary("/mnist.v1.Inference/Predict")(
        b"\xff\xff\xff", metadata=md, timeout=10
    ),
}


@pytest.mark.parametrize("method", list(CALLS))
@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer nope"),)], ids=["no token", "wrong token"])
def test_every_method_needs_the_token_before_any_work(serve, tmp_path, monkeypatch, method, metadata):
    from inference.service import InferenceServicer

    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve(auth_token=TOKEN)
    reached = []
    for name in ("_model", "input_contract"):  # the first thing each method does with the servicer
        real = getattr(InferenceServicer, name)
        monkeypatch.setattr(
            InferenceServicer, name, lambda self, *a, _real=real, _name=name: reached.append(_name) or _real(self, *a)
        )
    with pytest.raises(grpc.RpcError) as e:
        CALLS[method](running, metadata)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reached == []
    # With the token the same servicer answers (the patch above does record real work).
    running.stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=10)
    assert reached == ["input_contract"]


# --------------------------------------------------------------------------------------------------------------
# The decode budget: decoded pictures in memory at once, across calls and within a batch


def test_a_batch_of_large_pictures_decodes_them_one_at_a_time_within_the_budget(serve, tmp_path, mnist):
    from testkit.big_pictures import encode_big

    publish(tmp_path / "artifacts", "v1", seed=1)
    # Each 3200 x 3200 PNG is a 41 MB frame (39 MiB); the budget holds one (and not two) of them, and the reading
    # of a number (72 MiB, the least a server starts with).
    running = serve(decode_budget_mib=72, decode_wait=0.0, max_image_pixels=12_000_000)
    pictures = [encode_big(mnist.test_images[i].numpy(), "PNG", side=3200) for i in range(4)]
    response = running.stub.PredictBatch(pb.PredictBatchRequest(images=pictures), timeout=60)
    assert all(result.HasField("prediction") for result in response.results), response.results
    budget = running.server.servicer.limits.decode_budget
    assert budget.peak == 3200 * 3200 * 4 and budget.in_use == 0


def test_a_full_decode_budget_is_resource_exhausted_for_predict_and_per_image_in_a_batch(serve, tmp_path, mnist):
    from testkit.big_pictures import encode_big

    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve(decode_budget_mib=72, decode_wait=0.05, max_image_pixels=12_000_000)
    picture = encode_big(mnist.test_images[0].numpy(), "PNG", side=3200)
    budget = running.server.servicer.limits.decode_budget
    with budget.reserve(40 * 2**20):  # another call's picture, being decoded: 40 + 39 MiB do not fit in 72
        with pytest.raises(grpc.RpcError) as error:
            running.stub.Predict(pb.PredictRequest(image=picture), timeout=30)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = error.value.details()
        assert "decoding or reading other large pictures" in details and "try again" in details
        batch = running.stub.PredictBatch(pb.PredictBatchRequest(images=[picture]), timeout=30)
        assert batch.results[0].error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert running.stub.Predict(pb.PredictRequest(image=picture), timeout=30).prediction.probabilities


def test_a_picture_the_whole_decode_budget_cannot_hold_is_a_limit_the_gateway_says_413(serve, tmp_path, mnist):
    """Under the byte and pixel limits, over the decode budget (an animated WebP, a progressive JPEG, or here a
    budget set low): the gateway answered 400, as for a damaged picture, since the message named no limit."""
    import io

    from PIL import Image

    from inference.web.errors import http_status

    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve(decode_budget_mib=72, max_image_pixels=10_000_000)
    frames = [Image.new("RGB", (3000, 3000), "white") for _ in range(2)]  # 9 megapixels: under the pixel limit
    frames[0].paste((0, 0, 0), (1400, 800, 1600, 2200))
    out = io.BytesIO()
    frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:], method=0, quality=10)
    with pytest.raises(grpc.RpcError) as error:  # an animated WebP takes four times its frame to decode
        running.stub.Predict(pb.PredictRequest(image=out.getvalue()), timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "to decode" in error.value.details() and "the limit is 72 MiB" in error.value.details()
    assert http_status(error.value.code(), error.value.details()) == 413


def test_a_batch_whose_forward_pass_the_decode_budget_cannot_hold_at_once_runs_in_passes_it_can(
    serve, tmp_path, digit_pngs, monkeypatch
):
    """The network's forward pass is held in the decode budget, at most a quarter of it at a time: a batch whose
    activations a budget set low cannot hold is run a few images at a time, and reads each as a batch of one."""
    from inference.model_store import ServedModel

    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve(decode_budget_mib=16, max_image_pixels=100_000)  # a reading of 100,000 pixels takes 14 MiB
    budget = running.server.servicer.limits.decode_budget
    served = running.server.servicer.store.current
    images = [data for _, data, _ in digit_pngs] * 4  # 128 images: 48 MiB of activations for the compact network
    assert served.forward_bytes(len(images)) > budget.capacity
    held = []
    real_forward = ServedModel.forward
    monkeypatch.setattr(ServedModel, "forward", lambda s, x: held.append((len(x), budget.in_use)) or real_forward(s, x))
    batch = running.stub.PredictBatch(pb.PredictBatchRequest(images=images), timeout=30)
    assert len(held) > 1 and all(in_use <= budget.capacity // 4 for _, in_use in held), held
    assert sum(n for n, _ in held) == len(images) and budget.in_use == 0
    alone = [running.stub.Predict(pb.PredictRequest(image=data), timeout=30).prediction for data in images[:32]]
    for one, result in zip(alone, batch.results[:32], strict=True):
        assert result.prediction.digit == one.digit
        assert np.allclose(result.prediction.probabilities, one.probabilities, atol=1e-5)


def test_memory_error_while_decoding_is_resource_exhausted_and_the_server_serves_on(
    serve, tmp_path, monkeypatch, digit_pngs
):
    from shared import decode

    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve()
    # An RGB picture larger than 28x28: the full decoder reads it (MNIST-like PNGs take shared.fast_path).
    buffer = io.BytesIO()
    Image.open(io.BytesIO(digit_pngs[0][1])).convert("RGB").resize((112, 112)).save(buffer, "PNG")
    picture = buffer.getvalue()
    real = decode.reduced_array
    monkeypatch.setattr(decode, "reduced_array", lambda img: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(grpc.RpcError) as error:
        running.stub.Predict(pb.PredictRequest(image=picture), timeout=10)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "ran out of memory" in error.value.details()
    monkeypatch.setattr(decode, "reduced_array", real)
    assert running.stub.Predict(pb.PredictRequest(image=picture), timeout=10).prediction.probabilities
