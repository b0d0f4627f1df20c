"""The Inference service over a real channel: Predict, PredictBatch, Evaluate, GetModelInfo, errors, reflection."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import threading
import time
from collections.abc import Iterator

import cv2
import grpc
import numpy as np
import pytest
import torch

from shared.api.mnist.v1 import inference_pb2 as pb
from shared.checkpoint import read_manifest, read_published_model
from shared.data import normalize
from shared.image_pipeline import to_mnist
from shared.metrics import evaluate
from shared.model import count_parameters
from shared.settings import Paths

from testkit import user_images as ui
from tests.inference.helpers import cycles_left_by, hold_calls, png_bytes


def local_model(artifacts):
    models = Paths(artifacts).models
    payload, model = read_published_model(models, read_manifest(models))
    return payload, model.eval()


def local_probabilities(model, payload, png: bytes) -> np.ndarray:
    norm = payload["normalization"]
    image = torch.from_numpy(to_mnist(png))[None]
    with torch.inference_mode():
        return model(normalize(image, norm["mean"], norm["std"])).exp()[0].numpy()


def test_predict_matches_the_model_run_locally(module_server, digit_pngs):
    payload, model = local_model(module_server.artifacts)
    for _, png, _ in digit_pngs[:8]:
        response = module_server.stub.Predict(pb.PredictRequest(image=png), timeout=10)
        expected = local_probabilities(model, payload, png)
        got = np.array(response.prediction.probabilities)
        assert response.model_version == "v1"
        assert got.shape == (10,)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert response.prediction.digit == int(expected.argmax())
        assert response.prediction.model_input_png == b""  # not asked for


def test_predict_returns_the_image_the_model_saw(module_server, digit_pngs):
    from PIL import Image

    png = digit_pngs[0][1]
    response = module_server.stub.Predict(pb.PredictRequest(image=png, return_model_input=True), timeout=10)
    seen = np.asarray(Image.open(io.BytesIO(response.prediction.model_input_png)))
    assert seen.dtype == np.uint8 and seen.shape == (28, 28)
    np.testing.assert_array_equal(seen, to_mnist(png))


def test_predict_batch_gives_each_image_its_own_result(module_server, digit_pngs):
    payload, model = local_model(module_server.artifacts)
    good = [png for _, png, _ in digit_pngs[:5]]
    images = [*good[:2], b"this is not an image", *good[2:]]
    response = module_server.stub.PredictBatch(pb.PredictBatchRequest(images=images), timeout=10)
    assert response.model_version == "v1"
    assert len(response.results) == len(images)
    bad = response.results[2]
    assert bad.WhichOneof("result") == "error"
    assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert bad.error.message
    for result, png in zip(response.results[:2] + response.results[3:], good):
        assert result.WhichOneof("result") == "prediction"
        np.testing.assert_allclose(result.prediction.probabilities, local_probabilities(model, payload, png), atol=1e-5)


def test_a_batch_whose_caller_has_gone_stops_decoding_between_pictures(serve, tmp_path, digit_pngs):
    """A deadline that passes mid-batch ends the work: the server does not decode large photos for no one."""
    import threading
    import time

    from tests.inference.helpers import publish

    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve(tmp_path / "artifacts")
    servicer = running.server.servicer
    decoded, finished = [], threading.Event()
    real_decode, real_decode_all = servicer._decode, servicer._decode_all

    def slow_decode(data, context):  # a large photo's worth of work per picture
        time.sleep(0.1)
        decoded.append(1)
        return real_decode(data, context)

    def decode_all_then_note(items, context):
        try:
            return real_decode_all(items, context)
        finally:
            finished.set()

    servicer._decode, servicer._decode_all = slow_decode, decode_all_then_note
    big = png_bytes(np.kron(digit_pngs[0][2], np.ones((3, 3), np.uint8)))  # 84x84: not the 28x28 fast path
    with pytest.raises(grpc.RpcError) as e:
        running.stub.PredictBatch(pb.PredictBatchRequest(images=[big] * 16), timeout=0.35)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert finished.wait(5)
    assert len(decoded) <= 6, f"decoded {len(decoded)} of 16 pictures after the caller left"
    # The server goes on serving.
    servicer._decode, servicer._decode_all = real_decode, real_decode_all
    assert running.stub.PredictBatch(pb.PredictBatchRequest(images=[big] * 2), timeout=10).results[0].prediction


@contextlib.contextmanager
def other_pictures(budget, nbytes: int) -> Iterator[None]:
    """Within the block, `nbytes` of the server's decode `budget` are held by another thread, as other calls'
    pictures would hold them."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with budget.reserve(nbytes):
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(5)
    try:
        yield
    finally:
        release.set()
        holder.join()


@pytest.mark.parametrize("method", ["Predict", "PredictBatch", "ReadNumber"])
def test_a_picture_whose_caller_goes_while_it_waits_for_decoding_memory_is_not_decoded(
    module_server, monkeypatch, method
):
    """Other large pictures hold the decode budget; a caller with a short deadline leaves. Its picture was decoded
    in full once room came (a flood of large pictures with tiny deadlines cost full decodes); now its wait ends
    with the caller, and the server goes on serving."""
    import time

    import shared.image_pipeline

    import inference.service

    budget = module_server.server.servicer.limits.decode_budget
    decoded = []
    for module in (inference.service, shared.image_pipeline):  # to_mnist (Predict), decode_image (ReadNumber)
        for name in ("to_mnist", "decode_image"):
            if hasattr(module, name):
                real = getattr(module, name)

                def noting(*args, _real=real, **kwargs):
                    out = _real(*args, **kwargs)
                    decoded.append(time.monotonic())
                    return out

                monkeypatch.setattr(module, name, noting)
    photo = np.full((1990, 1990), 255, np.uint8)  # 4 MB decoded, a few kB as PNG
    photo[600:1400, 950:1050] = 0
    data = png_bytes(photo)
    request = {
        "Predict": pb.PredictRequest(image=data),
        "PredictBatch": pb.PredictBatchRequest(images=[data]),
        "ReadNumber": pb.ReadNumberRequest(image=data),
    }[method]
    with other_pictures(budget, budget.capacity - 2**20):  # room for no 4 MB picture
        with pytest.raises(grpc.RpcError) as e:
            getattr(module_server.stub, method)(request, timeout=0.3)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(0.5)  # the server's wait for room notices the caller gone
    time.sleep(0.5)  # where the wait had not noticed, the picture would be decoded now
    assert decoded == [] and budget.in_use == 0
    answer = module_server.stub.Predict(pb.PredictRequest(image=data), timeout=10)
    assert len(answer.prediction.probabilities) == 10 and decoded  # and decoded, as the counting sees it


def test_a_reading_holds_its_working_memory_in_the_decode_budget(module_server, monkeypatch):
    """ReadNumber's working memory was counted nowhere: 16 zigzags read at once held +0.5 GB beyond the decode
    budget. It is reserved there while the number is read (shared.segment.reading_bytes), and given back after."""
    from shared.segment import reading_bytes

    import inference.service

    budget = module_server.server.servicer.limits.decode_budget
    held = []
    real_read = inference.service.read_number

    def noting(picture, classify):
        held.append((budget.in_use, reading_bytes(picture)))
        return real_read(picture, classify)

    monkeypatch.setattr(inference.service, "read_number", noting)
    picture = np.full((480, 640), 255, np.uint8)
    cv2.putText(picture, "4071", (60, 320), cv2.FONT_HERSHEY_SIMPLEX, 5, 0, 14)
    module_server.stub.ReadNumber(pb.ReadNumberRequest(image=png_bytes(picture)), timeout=30)
    (in_use, needed), *_ = held
    assert in_use >= needed > 0
    assert budget.in_use == 0


def test_predict_holds_its_pictures_working_memory_and_the_forward_pass_in_the_decode_budget(
    module_server, monkeypatch
):
    """Making the digit of a decoded picture (up to 19 MiB at the working size) and the network's forward pass (5-26
    MiB for 256 images) were counted nowhere: each is held in the decode budget while it runs, and given back."""
    import shared.image_pipeline

    from inference.model_store import ServedModel

    budget = module_server.server.servicer.limits.decode_budget
    pipeline, forward = [], []
    real_trace, real_log_probs = shared.image_pipeline.trace_pipeline, ServedModel.log_probs

    def tracing(image):
        pipeline.append((budget.in_use, shared.image_pipeline.pipeline_bytes(image)))
        return real_trace(image)

    def running(served, images, at_once=None):
        forward.append((budget.in_use, served.forward_bytes(len(images))))
        return real_log_probs(served, images, at_once)

    monkeypatch.setattr(shared.image_pipeline, "trace_pipeline", tracing)
    monkeypatch.setattr(ServedModel, "log_probs", running)
    picture = np.full((480, 640), 255, np.uint8)
    cv2.putText(picture, "7", (250, 380), cv2.FONT_HERSHEY_SIMPLEX, 10, 0, 30)
    data = png_bytes(picture)
    module_server.stub.Predict(pb.PredictRequest(image=data), timeout=30)
    module_server.stub.PredictBatch(pb.PredictBatchRequest(images=[data] * 3), timeout=30)
    assert len(pipeline) == 4 and all(in_use >= needed > 640 * 480 * 24 for in_use, needed in pipeline)
    (one_in_use, one), (three_in_use, three) = forward
    assert one_in_use >= one > 0 and three_in_use >= three == 3 * one
    assert budget.in_use == 0


def test_a_digit_is_answered_while_a_large_picture_waits_its_turn_for_room_in_the_decode_budget(
    module_server, digit_pngs
):
    """The forward pass holds its activations in the budget for milliseconds: it takes room when there is room.
    Queued behind a 40 MP picture waiting for its turn, a Predict of a 28x28 digit, which reserves nothing else,
    waited out its deadline with 120 MiB of the budget free (a review)."""
    budget = module_server.server.servicer.limits.decode_budget
    gone = threading.Event()

    def large_picture_waiting() -> None:
        with contextlib.suppress(Exception), budget.caller(lambda: not gone.is_set()):
            with budget.reserve(budget.capacity - 2**20):
                pass

    with other_pictures(budget, budget.capacity // 2):
        waiting = threading.Thread(target=large_picture_waiting)
        waiting.start()
        time.sleep(0.2)
        started = time.monotonic()
        answer = module_server.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=5)
        assert len(answer.prediction.probabilities) == 10 and time.monotonic() - started < 2
        gone.set()
        waiting.join(5)
    assert budget.in_use == 0


def test_a_reading_waits_for_room_in_the_decode_budget_while_predict_still_fits(module_server, monkeypatch):
    """With the budget all but full of other pictures, a 640x480 picture still decodes (1 MB) and is made a digit
    of (8 MiB of working memory) but is not read (27 MiB): the ReadNumber waits for room, and gives up with its
    caller, unread; a Predict of the same picture is answered meanwhile."""
    import inference.service

    budget = module_server.server.servicer.limits.decode_budget
    read = []
    real_read = inference.service.read_number
    monkeypatch.setattr(inference.service, "read_number", lambda *a: read.append(1) or real_read(*a))
    picture = np.full((480, 640), 255, np.uint8)
    cv2.putText(picture, "4071", (60, 320), cv2.FONT_HERSHEY_SIMPLEX, 5, 0, 14)
    data = png_bytes(picture)
    with other_pictures(budget, budget.capacity - 12 * 2**20):
        with pytest.raises(grpc.RpcError) as e:
            module_server.stub.ReadNumber(pb.ReadNumberRequest(image=data), timeout=1.0)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        answer = module_server.stub.Predict(pb.PredictRequest(image=data), timeout=10)
        assert len(answer.prediction.probabilities) == 10
    assert read == [] and budget.in_use == 0
    assert module_server.stub.ReadNumber(pb.ReadNumberRequest(image=data), timeout=30).digits  # room again: read


def test_a_read_number_whose_caller_goes_while_its_second_decode_waits_is_not_decoded_again(module_server, monkeypatch):
    """A one-digit JPEG is decoded again as Predict decodes it (at half size first); that second decode waited out
    --decode-wait and decoded for no one (a review of the fix above)."""
    import threading
    import time

    from PIL import Image

    import inference.service

    budget = module_server.server.servicer.limits.decode_budget
    photo = np.full((1990, 1990), 255, np.uint8)
    photo[600:1400, 950:1050] = 0
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "JPEG", quality=90)
    release, decoded = threading.Event(), []
    real_to_mnist, real_half_size = inference.service.to_mnist, inference.service.decodes_at_half_size

    def noting(*args, **kwargs):
        out = real_to_mnist(*args, **kwargs)
        decoded.append(time.monotonic())
        return out

    # Other large pictures take the budget once the number is read (and the reading's own share given back): asked
    # whether to decode again, just before the second decode.
    def read_then_fill(*args, **kwargs):
        out = real_half_size(*args, **kwargs)
        held = threading.Event()

        def hold() -> None:
            with budget.reserve(budget.capacity - 2**10):
                held.set()
                release.wait(10)

        threading.Thread(target=hold, daemon=True).start()
        held.wait(5)
        return out

    monkeypatch.setattr(inference.service, "to_mnist", noting)
    monkeypatch.setattr(inference.service, "decodes_at_half_size", read_then_fill)
    try:
        with pytest.raises(grpc.RpcError) as e:
            module_server.stub.ReadNumber(pb.ReadNumberRequest(image=buffer.getvalue()), timeout=2.0)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(0.5)
    finally:
        release.set()
    time.sleep(1.0)  # where the wait had not noticed the caller gone, the picture would be decoded now
    assert decoded == [] and budget.in_use == 0


def test_predict_batch_of_only_bad_images(module_server):
    response = module_server.stub.PredictBatch(pb.PredictBatchRequest(images=[b"", b"junk"]), timeout=10)
    assert [r.WhichOneof("result") for r in response.results] == ["error", "error"]


def test_batch_over_the_limit_is_resource_exhausted(module_server, digit_pngs):
    images = [digit_pngs[0][1]] * 17  # the module server allows 16
    with pytest.raises(grpc.RpcError) as e:
        module_server.stub.PredictBatch(pb.PredictBatchRequest(images=images), timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "16" in e.value.details()


def test_a_batch_over_the_limit_is_refused_before_its_model_is_looked_up(module_server, digit_pngs, monkeypatch):
    """Refusing a batch too large costs nothing; a pinned version was loaded first (and could push another out of
    the cache) only to be told to split the batch, and an unknown version answered NOT_FOUND first."""
    import inference.service

    looked_up = []
    real = inference.service.InferenceServicer._model
    monkeypatch.setattr(
        inference.service.InferenceServicer, "_model", lambda self, *a: looked_up.append(a) or real(self, *a)
    )
    images = [digit_pngs[0][1]] * 17  # the module server allows 16
    with pytest.raises(grpc.RpcError) as e:
        module_server.stub.PredictBatch(pb.PredictBatchRequest(images=images, model_version="no-such"), timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()
    assert looked_up == []


def test_running_out_of_memory_after_decoding_is_resource_exhausted_not_internal(
    module_server, digit_pngs, monkeypatch
):
    """A MemoryError while segmenting a number (or cleaning a picture) is the server's state, like one while
    decoding: RESOURCE_EXHAUSTED, try again; not INTERNAL ("a bug")."""
    import inference.service

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(inference.service, "read_number", out_of_memory)
    with pytest.raises(grpc.RpcError) as e:
        module_server.stub.ReadNumber(pb.ReadNumberRequest(image=digit_pngs[0][1]), timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()
    assert "out of memory" in e.value.details()


def test_message_over_the_limit_is_resource_exhausted(module_server):
    with pytest.raises(grpc.RpcError) as e:
        module_server.stub.Predict(pb.PredictRequest(image=b"\0" * 1_100_000), timeout=10)  # limit 1,000,000
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def _big_png(width: int, height: int) -> bytes:
    image = np.zeros((height, width), np.uint8)
    image[height // 4 : 3 * height // 4, width // 2 - 20 : width // 2 + 20] = 255
    return png_bytes(image)


def _noise_png(side: int) -> bytes:
    """A valid PNG that does not compress: about side * side bytes."""
    return png_bytes(np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8))


@pytest.mark.parametrize(
    "name, data, says",
    [
        ("empty", b"", "empty image: send the bytes of a PNG, JPEG"),
        ("undecodable", b"GIF89a but not really", "starts like a GIF but its header is damaged or truncated"),
        # A valid picture, refused for its size alone: 500 x 500 noise is about 250,000 bytes, the limit 200,000.
        ("too many bytes", None, "bytes; the limit is 200,000"),
        # 2,500 x 2,000 = 5 M pixels, limit 4 M, yet a small file
        ("too many pixels", None, "2500x2000 = 5,000,000 pixels; the limit is 4,000,000"),
        ("blank", png_bytes(np.zeros((28, 28), np.uint8)), "blank"),
    ],
)
def test_bad_images_are_invalid_argument_saying_what_is_wrong(module_server, name, data, says):
    if name == "too many bytes":
        data = _noise_png(500)
        assert len(data) > 200_000
    elif name == "too many pixels":
        data = _big_png(2500, 2000)
        assert len(data) < 200_000
    with pytest.raises(grpc.RpcError) as e:
        module_server.stub.Predict(pb.PredictRequest(image=data), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
    assert says in e.value.details()


def test_evaluate_agrees_with_local_evaluation(module_server, mnist):
    response = module_server.stub.Evaluate(pb.EvaluateRequest(split=pb.SPLIT_TEST), timeout=60)
    confusion = np.array([row.counts for row in response.confusion])
    assert response.model_version == "v1"
    assert response.split == pb.SPLIT_TEST
    assert confusion.shape == (10, 10)
    assert confusion.sum() == response.count == 10_000
    assert response.accuracy == pytest.approx(np.trace(confusion) / confusion.sum())
    assert [c.digit for c in response.per_class] == list(range(10))
    assert [c.support for c in response.per_class] == confusion.sum(axis=1).tolist()
    assert response.heatmap_png.startswith(b"\x89PNG")

    payload, model = local_model(module_server.artifacts)
    norm = payload["normalization"]
    local = evaluate(model, mnist.test_images, mnist.test_labels, mean=norm["mean"], std=norm["std"])
    np.testing.assert_array_equal(confusion, local.confusion)
    assert response.accuracy == pytest.approx(local.accuracy)
    assert response.loss == pytest.approx(local.loss, rel=1e-5)
    np.testing.assert_allclose([c.precision for c in response.per_class], local.precision)
    np.testing.assert_allclose([c.recall for c in response.per_class], local.recall)
    np.testing.assert_allclose([c.f1 for c in response.per_class], local.f1)


def test_evaluate_validation_split(module_server, mnist):
    from shared.data import train_val_split

    response = module_server.stub.Evaluate(pb.EvaluateRequest(split=pb.SPLIT_VALIDATION, omit_heatmap=True), timeout=60)
    _, val_index = train_val_split(len(mnist.train_images), seed=0)  # the payload's split_seed
    assert response.split == pb.SPLIT_VALIDATION
    assert response.count == len(val_index) == 12_000
    assert response.heatmap_png == b""
    support = np.bincount(mnist.train_labels[val_index].numpy(), minlength=10)
    assert [c.support for c in response.per_class] == support.tolist()


def test_evaluating_a_published_model_again_only_scores_its_kept_output(module_server, monkeypatch):
    """A published model never changes, so its output on a split is kept: asked again, Evaluate gives the same
    answer without running the network."""
    import inference.evaluation

    request = pb.EvaluateRequest(split=pb.SPLIT_TEST, omit_heatmap=True)
    first = module_server.stub.Evaluate(request, timeout=60)
    forward_calls = []
    real = inference.evaluation.forward_in_chunks
    monkeypatch.setattr(
        inference.evaluation, "forward_in_chunks", lambda *a, **k: forward_calls.append(a) or real(*a, **k)
    )
    again = module_server.stub.Evaluate(request, timeout=60)
    assert forward_calls == []
    assert again.accuracy == first.accuracy and again.loss == first.loss
    assert [row.counts for row in again.confusion] == [row.counts for row in first.confusion]


def test_an_evaluation_whose_caller_left_while_it_was_scored_draws_no_heatmap(module_server, monkeypatch):
    """The forward pass stops for a caller gone (checked between chunks); the heatmap after it was drawn all the
    same, holding the one evaluation slot for nobody."""
    import inference.evaluation
    import inference.service

    # The forward pass kept first (as a published model's is), so the call below reaches the scoring whatever
    # ran before this test and however long the forward pass takes on this machine.
    module_server.stub.Evaluate(pb.EvaluateRequest(split=pb.SPLIT_TEST, omit_heatmap=True), timeout=60)
    real_score, real_evaluate = inference.evaluation.evaluation_from_log_probs, inference.service.evaluate_model
    drawn, scored_calls, returned = [], [], threading.Event()

    def slow_score(*args, **kwargs):
        scored = real_score(*args, **kwargs)
        scored_calls.append(1)
        time.sleep(1.5)  # past the caller's deadline, once the scores are made
        return scored

    def evaluate(*args, **kwargs):
        try:
            return real_evaluate(*args, **kwargs)
        finally:
            returned.set()

    monkeypatch.setattr(inference.evaluation, "evaluation_from_log_probs", slow_score)
    monkeypatch.setattr(inference.evaluation, "confusion_heatmap_png", lambda *a, **k: drawn.append(a) or b"")
    monkeypatch.setattr(inference.service, "evaluate_model", evaluate)
    with pytest.raises(grpc.RpcError) as e:
        module_server.stub.Evaluate(pb.EvaluateRequest(split=pb.SPLIT_TEST), timeout=1.0)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert returned.wait(30)
    assert scored_calls, "the call never reached the scoring: the heatmap was not in question"
    assert drawn == []


def test_only_one_evaluation_at_a_time(module_server, monkeypatch):
    import inference.service

    started, release = hold_calls(monkeypatch, inference.service, "evaluate_model")
    request = pb.EvaluateRequest(split=pb.SPLIT_TEST, omit_heatmap=True)
    first = module_server.stub.Evaluate.future(request, timeout=60)
    try:
        assert started.wait(10)
        with pytest.raises(grpc.RpcError) as e:
            module_server.stub.Evaluate(request, timeout=10)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        release.set()
    assert first.result().count == 10_000


def test_model_info(module_server):
    info = module_server.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
    payload, model = local_model(module_server.artifacts)
    manifest = read_manifest(Paths(module_server.artifacts).models)
    assert info.serving
    assert info.version == "v1"
    assert info.arch == "compact"
    assert json.loads(info.arch_kwargs_json) == payload["arch_kwargs"]
    assert info.parameter_count == count_parameters(model)
    assert info.sha256 == manifest.sha256
    assert dict(info.training_metrics) == pytest.approx(payload["metrics"])
    assert info.run_name == payload["run_name"] and info.epoch == payload["epoch"]
    assert info.trained_at == payload["created_at"] and info.loaded_at
    assert (info.input.height, info.input.width, info.input.channels) == (28, 28, 1)
    assert info.input.normalization_mean == pytest.approx(payload["normalization"]["mean"])
    assert info.input.normalization_std == pytest.approx(payload["normalization"]["std"])
    assert info.input.max_batch_size == 16 and info.input.max_image_pixels == 4_000_000
    assert "PNG" in info.input.accepted_formats
    assert not info.HasField("last_load_error")


def test_reflection_lists_the_services(module_server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    services = set(ProtoReflectionDescriptorDatabase(module_server.channel).get_services())
    assert {"mnist.v1.Inference", "grpc.health.v1.Health"} <= services


def test_internal_errors_are_internal_and_logged(module_server, monkeypatch, caplog, digit_pngs):
    import inference.service

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(inference.service, "to_mnist_fast", broken)  # the first step of every Predict
    with pytest.raises(grpc.RpcError) as e:
        module_server.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), timeout=10)
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert "a bug" not in e.value.details()  # internals stay in the log
    assert any("INTERNAL" in r.getMessage() and r.exc_info for r in caplog.records)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"])
def test_predict_accepts_every_advertised_format(module_server, fmt):
    """A black digit on white paper, 112x112, in each format the API promises."""
    from PIL import Image

    image = np.full((112, 112), 255, np.uint8)
    image[20:92, 50:62] = 0  # a "1"
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    response = module_server.stub.Predict(
        pb.PredictRequest(image=buffer.getvalue(), return_model_input=True), timeout=10
    )
    assert response.model_version == "v1"
    assert len(response.prediction.probabilities) == 10
    seen = np.asarray(Image.open(io.BytesIO(response.prediction.model_input_png)))
    assert seen.max() > 128 and seen[0].max() == 0  # bright ink, black border: MNIST's polarity


class GoneCaller:
    """A call's context whose caller has gone (its deadline passed): abort raises, as grpc's does."""

    def is_active(self) -> bool:
        return False

    def abort(self, code, details):
        raise grpc.RpcError(code, details)


@pytest.mark.parametrize("method", ["Predict", "ReadNumber", "PredictBatch"])
def test_a_caller_that_has_gone_gets_no_pipeline_work_done_for_it(module_server, digit_pngs, method, monkeypatch):
    import inference.service

    decoded = []
    real = inference.service.InferenceServicer._decode
    monkeypatch.setattr(
        inference.service.InferenceServicer, "_decode", lambda self, data: decoded.append(1) or real(self, data)
    )
    monkeypatch.setattr(inference.service, "read_number", lambda *a: decoded.append(1))
    jpeg = ui.encode(np.full((64, 64), 255, np.uint8), "JPEG")  # not for the fast path: the full pipeline's
    request = {
        "Predict": pb.PredictRequest(image=jpeg),
        "ReadNumber": pb.ReadNumberRequest(image=digit_pngs[0][1]),
        "PredictBatch": pb.PredictBatchRequest(images=[jpeg, jpeg]),
    }[method]
    with pytest.raises(grpc.RpcError) as e:
        getattr(module_server.server.servicer, method)(request, GoneCaller())
    assert e.value.args[0] == grpc.StatusCode.CANCELLED
    assert decoded == []


def test_a_refused_call_leaves_no_cycle_that_keeps_its_request_or_the_pipelines_arrays(module_server, digit_pngs):
    """An error a frame holds and raises makes a cycle (the frame, the error, its traceback, the frame) that only
    a full garbage collection frees, and the error held, chained to it, the ImageRejected with the pipeline's frames
    and their arrays: Predict raised the error _decode_all gave it, ReadNumber the one it made for a caller gone,
    and PredictBatch kept each refused picture's whole error. 16 concurrent Predicts of a 3 MB colour-noise PNG,
    three rounds, grew the server by 1 GiB. Each of those refusals, then everything the calls left unreachable."""
    noise = png_bytes(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8))  # 120 KB
    blank = png_bytes(np.full((300, 400), 255, np.uint8))
    stub = module_server.stub

    def gone_reading():
        try:  # not pytest.raises: its ExceptionInfo, held in this frame, would make a cycle of the test's own
            module_server.server.servicer.ReadNumber(pb.ReadNumberRequest(image=digit_pngs[0][1]), GoneCaller())
        except grpc.RpcError as e:
            return e.args[1]

    def batch():
        answer = stub.PredictBatch(pb.PredictBatchRequest(images=[noise, digit_pngs[0][1]]), timeout=30)
        return answer.results[0].error.message

    calls = {  # what each is answered with, to show the test takes the path it names
        "a picture too noisy": (lambda: stub.Predict(pb.PredictRequest(image=noise), timeout=30), "too noisy"),
        "no ink": (lambda: stub.Predict(pb.PredictRequest(image=blank), timeout=30), "no ink found"),
        "a batch with a picture too noisy": (batch, "too noisy"),
        "a reading whose caller has gone": (gone_reading, "the caller went away"),
    }

    def said(call):  # what a call was answered, or the details of the error it got
        try:
            return call()
        except grpc.RpcError as e:
            return e.details()

    calls = {name: (functools.partial(said, call), answer) for name, (call, answer) in calls.items()}
    assert cycles_left_by(calls) == []
