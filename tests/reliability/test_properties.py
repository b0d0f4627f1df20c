"""Property-based tests (hypothesis) of the image pipeline and of Predict/PredictBatch, bounded for CI.

Inputs are real encoded digits in every accepted format, damaged by random mutations (bit flips, overwritten
runs, truncation, insertions, deletions): they get past the signature check and deep into the decoders, which
random bytes rarely do (tests/shared/test_image_pipeline.py fuzzes random bytes, arrays and pictures).

Properties:
- the pipeline returns a 28x28 uint8 digit with saturated ink, or raises ImageRejected with a message; nothing
  else, within the deadline, and the same bytes always give the same answer;
- Predict answers OK exactly when the pipeline accepts the bytes (else INVALID_ARGUMENT), with ten probabilities
  summing to 1 and the arg-max as the digit;
- PredictBatch gives each image the answer Predict gives it alone.

Each test is capped by max_examples; derandomized, so CI runs the same examples every time.
"""

from __future__ import annotations

import io
from datetime import timedelta

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from shared.api.mnist.v1 import inference_pb2 as pb
from shared.image_pipeline import DEFAULT_LIMITS, ImageRejected, to_mnist

from tests.reliability import bad_inputs as b

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
BOUNDED = settings(
    max_examples=150,
    deadline=timedelta(seconds=3),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def encoded(mnist) -> list[bytes]:
    """Digits 0..5 of the MNIST test set, each drawn on paper and encoded in one of the accepted formats."""
    out = []
    for i, fmt in enumerate(FORMATS):
        paper = b.on_paper(mnist.test_images[i].numpy(), scale=2)
        out.append(b.encode(paper, fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {})))
    return out


mutation = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 7)),
    st.tuples(st.just("overwrite"), st.floats(0, 1), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("truncate"), st.floats(0, 1), st.none()),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 64)),
)
damaged = st.tuples(st.integers(0, len(FORMATS) - 1), st.lists(mutation, min_size=1, max_size=4))


def mutate(data: bytes, mutations) -> bytes:
    out = bytearray(data)
    for op, where, arg in mutations:
        at = min(int(where * len(out)), max(len(out) - 1, 0))
        if op == "flip" and out:
            out[at] ^= 1 << arg
        elif op == "overwrite":
            out[at : at + len(arg)] = arg
        elif op == "truncate":
            del out[at:]
        elif op == "insert":
            out[at:at] = arg
        elif op == "delete":
            del out[at : at + arg]
    return bytes(out)


def local_outcome(data: bytes):
    """The pipeline's answer: the 28x28 digit, or the ImageRejected message."""
    try:
        return to_mnist(data, limits=DEFAULT_LIMITS)
    except ImageRejected as e:
        return str(e)


@BOUNDED
@given(case=damaged)
def test_pipeline_returns_a_digit_or_rejects(encoded, case):
    index, mutations = case
    data = mutate(encoded[index], mutations)
    first = local_outcome(data)  # anything but ImageRejected escapes and fails the test
    event("rejected" if isinstance(first, str) else "accepted")
    if isinstance(first, str):
        assert len(first) > 20
    else:
        assert first.shape == (28, 28) and first.dtype == np.uint8
        assert first.max() == 255  # contrast is stretched: a digit that was found is saturated
    again = local_outcome(data)
    if isinstance(first, str):
        assert again == first
    else:
        np.testing.assert_array_equal(again, first)


def assert_probabilities(prediction: pb.Prediction) -> None:
    p = np.array(prediction.probabilities)
    assert p.shape == (10,) and np.all(p >= 0) and abs(p.sum() - 1) < 1e-4
    assert prediction.digit == int(p.argmax())


@pytest.fixture(scope="module")
def server(tmp_path_factory, mnist_dir):
    from tests.inference.helpers import publish, start_server

    artifacts = tmp_path_factory.mktemp("artifacts")
    publish(artifacts, "v1", seed=1)
    running = start_server(artifacts, mnist_dir)
    yield running
    running.channel.close()
    running.server.stop(grace=0)


@BOUNDED
@given(case=damaged)
def test_predict_agrees_with_the_pipeline(server, encoded, case):
    index, mutations = case
    data = mutate(encoded[index], mutations)
    expected = local_outcome(data)
    event("rejected" if isinstance(expected, str) else "accepted")
    try:
        response = server.stub.Predict(pb.PredictRequest(image=data, return_model_input=True), timeout=30)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (e.code(), e.details())
        assert e.details() == expected
        return
    assert not isinstance(expected, str), f"the server accepted what the pipeline rejects: {expected}"
    assert_probabilities(response.prediction)
    seen = np.asarray(Image.open(io.BytesIO(response.prediction.model_input_png)))
    np.testing.assert_array_equal(seen, expected)


@settings(BOUNDED, max_examples=40)
@given(cases=st.lists(damaged, min_size=1, max_size=5))
def test_predict_batch_answers_each_image_as_predict_does(server, encoded, cases):
    images = [mutate(encoded[index], mutations) for index, mutations in cases]
    response = server.stub.PredictBatch(pb.PredictBatchRequest(images=images), timeout=30)
    assert len(response.results) == len(images)
    for data, result in zip(images, response.results):
        try:
            alone = server.stub.Predict(pb.PredictRequest(image=data), timeout=30)
        except grpc.RpcError as e:
            assert result.WhichOneof("result") == "error"
            assert (result.error.code, result.error.message) == (e.code().value[0], e.details())
            continue
        assert result.WhichOneof("result") == "prediction"
        assert_probabilities(result.prediction)
        # One forward pass over the batch vs one per image: the same answer up to float rounding.
        np.testing.assert_allclose(result.prediction.probabilities, alone.prediction.probabilities, atol=1e-5)
