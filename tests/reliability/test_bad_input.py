"""Bad input to Predict, PredictBatch and Evaluate, table-driven: each kind gets its stated outcome, a clear
message, no INTERNAL and no logged error, and the server answers a good Predict right after it.

Valid but unusual pictures (16-bit, CMYK, palette with transparency, animated, multi-page, EXIF-rotated, ...) must
be predicted, and the 28x28 image the model saw must be the digit that was drawn; pictures with nothing on them
are INVALID_ARGUMENT ("blank"). tests/inference/test_service.py has the first five rows' simpler cousins and
tests/shared/test_image_pipeline.py the pipeline's own cases; this table runs everything through the server.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from shared.api.mnist.v1 import inference_pb2 as pb
from shared.image_pipeline import to_mnist

from tests.reliability import bad_inputs as b
from tests.reliability.helpers import (
    assert_no_logged_errors,
    assert_still_serving,
    assert_valid_prediction,
    correlation,
    model_saw,
)
from tests.reliability.image_kinds import EXHAUSTED, IMAGE_KINDS, INVALID, OK, image_kind_params


@pytest.fixture(scope="module")
def reference_input(digit) -> np.ndarray:
    """What the model sees for the digit sent as a plain PNG: the unusual encodings must come out the same."""
    return to_mnist(b.encode(b.on_paper(digit), "PNG"))


@pytest.mark.parametrize("name", list(image_kind_params()))
def test_predict(limited_server, built, reference_input, digit_pngs, log, name):
    kind, data = IMAGE_KINDS[name], built[name]
    request = pb.PredictRequest(image=data, return_model_input=True)
    if kind.expect == OK:
        response = limited_server.stub.Predict(request, timeout=30)
        assert_valid_prediction(response.prediction)
        # The unusual encoding was read as the digit it holds (first frame, EXIF applied, 16 bits scaled, ...).
        if kind.same_as_digit:
            assert correlation(model_saw(response.prediction), reference_input) > 0.9
    else:
        with pytest.raises(grpc.RpcError) as e:
            limited_server.stub.Predict(request, timeout=30)
        assert e.value.code() == kind.expect, e.value.details()
        assert kind.says.lower() in e.value.details().lower()
        assert len(e.value.details()) > 30  # says what is wrong and what to send instead
    assert_still_serving(limited_server, digit_pngs[0][1])
    assert_no_logged_errors(log)


@pytest.mark.parametrize("name", list(image_kind_params()))
def test_predict_batch(limited_server, built, digit_pngs, log, name):
    """The bad image fails alone, with the message Predict gives; its neighbours are predicted."""
    kind, data = IMAGE_KINDS[name], built[name]
    good = digit_pngs[0][1]
    response = limited_server.stub.PredictBatch(pb.PredictBatchRequest(images=[good, data, good]), timeout=30)
    assert response.model_version == "v1" and len(response.results) == 3
    first, middle, last = response.results
    assert first.WhichOneof("result") == last.WhichOneof("result") == "prediction"
    assert list(first.prediction.probabilities) == list(last.prediction.probabilities)
    if kind.expect == OK:
        assert middle.WhichOneof("result") == "prediction"
        assert_valid_prediction(middle.prediction)
    else:
        assert middle.WhichOneof("result") == "error"
        assert middle.error.code == kind.expect.value[0]
        assert kind.says.lower() in middle.error.message.lower()
    assert_still_serving(limited_server, good)
    assert_no_logged_errors(log)


# ---------------------------------------------------------------------------------------------------------------
# Whole-message kinds: size and count limits, absurd parameters, bytes that are no protobuf message.


def raw_call(server, method: str, payload: bytes):
    """Call /mnist.v1.Inference/<method> with arbitrary bytes as the request message."""
    return server.channel.unary_unary(f"/mnist.v1.Inference/{method}")(payload, timeout=30)


def image_field_as_a_number() -> bytes:
    """PredictRequest whose field 1 (image, bytes) is sent as a varint: a well-formed message, wrong wire type."""
    return bytes([1 << 3 | 0, 42])


MESSAGE_KINDS = {
    # name: (call(server, good_png), expected status or OK, what the message says)
    "Predict message over the size limit": (
        lambda s, good: s.stub.Predict(pb.PredictRequest(image=bytes(1_100_000)), timeout=30),
        EXHAUSTED,
        "",
    ),
    "PredictBatch message over the size limit": (
        lambda s, good: s.stub.PredictBatch(pb.PredictBatchRequest(images=[bytes(190_000)] * 6), timeout=30),
        EXHAUSTED,
        "",
    ),
    "17 images in a batch (limit 16)": (
        lambda s, good: s.stub.PredictBatch(pb.PredictBatchRequest(images=[good] * 17), timeout=30),
        EXHAUSTED,
        "the limit is 16",
    ),
    "100,000 one-byte images in a batch": (
        lambda s, good: s.stub.PredictBatch(pb.PredictBatchRequest(images=[b"x"] * 100_000), timeout=30),
        EXHAUSTED,
        "the limit is 16",
    ),
    "empty batch": (lambda s, good: s.stub.PredictBatch(pb.PredictBatchRequest(images=[]), timeout=30), OK, ""),
    "Evaluate split 99 (unknown enum value)": (
        lambda s, good: s.stub.Evaluate(pb.EvaluateRequest(split=99), timeout=30),
        INVALID,
        "unknown split 99",
    ),
    "Evaluate split -1": (
        lambda s, good: s.stub.Evaluate(pb.EvaluateRequest(split=-1), timeout=30),
        INVALID,
        "unknown split -1",
    ),
    "Evaluate split 2**31-1": (
        lambda s, good: s.stub.Evaluate(pb.EvaluateRequest(split=2**31 - 1), timeout=30),
        INVALID,
        "unknown split",
    ),
    "Predict request that is no protobuf": (
        lambda s, good: raw_call(s, "Predict", b"\xff\xff\xff\xff\xff"),
        INVALID,
        "not a valid mnist.v1.PredictRequest",
    ),
    "PredictBatch request that is no protobuf": (
        lambda s, good: raw_call(s, "PredictBatch", b"\x0a\xff\xff\xff\xff\x0f"),
        INVALID,
        "not a valid mnist.v1.PredictBatchRequest",
    ),
    "Evaluate request that is no protobuf": (
        lambda s, good: raw_call(s, "Evaluate", b"\x08"),
        INVALID,
        "not a valid mnist.v1.EvaluateRequest",
    ),
    "GetModelInfo request that is no protobuf": (
        lambda s, good: raw_call(s, "GetModelInfo", b"\x07"),
        INVALID,
        "not a valid mnist.v1.GetModelInfoRequest",
    ),
    "Predict image field sent as a number": (
        lambda s, good: raw_call(s, "Predict", image_field_as_a_number()),
        INVALID,
        "empty image",
    ),
}


@pytest.mark.parametrize("name", list(MESSAGE_KINDS))
def test_message(limited_server, digit_pngs, log, name):
    call, expect, says = MESSAGE_KINDS[name]
    good = digit_pngs[0][1]
    if expect == OK:
        response = call(limited_server, good)
        assert len(response.results) == 0 and response.model_version == "v1"
    else:
        with pytest.raises(grpc.RpcError) as e:
            call(limited_server, good)
        assert e.value.code() == expect, e.value.details()
        assert says.lower() in (e.value.details() or "").lower()
        assert e.value.details()
    assert_still_serving(limited_server, good)
    assert_no_logged_errors(log)


def test_the_table_is_wide_enough():
    assert len(IMAGE_KINDS) + len(MESSAGE_KINDS) >= 25
    assert {OK, INVALID} <= {k.expect for k in IMAGE_KINDS.values()}
