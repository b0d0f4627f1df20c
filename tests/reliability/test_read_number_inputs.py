"""Bad input to ReadNumber: every picture of tests/reliability/test_bad_input.py's table through ReadNumber.

A picture Predict refuses is refused by ReadNumber with the same status and the same message (they share the
decoding and its checks); an unusual but valid picture is read (the served model here is random, so what digits
come back does not matter, but some must). Never INTERNAL, nothing logged as an error, and the server goes on
serving.
"""

from __future__ import annotations

import grpc
import pytest

from shared.api.mnist.v1 import inference_pb2 as pb

from tests.reliability.helpers import assert_no_logged_errors, assert_still_serving
from tests.reliability.image_kinds import IMAGE_KINDS, INVALID, OK, image_kind_params


@pytest.mark.parametrize("name", list(image_kind_params()))
def test_read_number(limited_server, built, digit_pngs, log, name):
    kind, data = IMAGE_KINDS[name], built[name]
    stub = limited_server.stub
    if kind.expect == OK:
        response = stub.ReadNumber(pb.ReadNumberRequest(image=data), timeout=30)
        assert 1 <= len(response.digits) <= 12 and len(response.per_digit) == len(response.digits)
        assert response.model_version == "v1" and response.width > 0 and response.height > 0
    else:
        with pytest.raises(grpc.RpcError) as read:
            stub.ReadNumber(pb.ReadNumberRequest(image=data), timeout=30)
        with pytest.raises(grpc.RpcError) as predicted:
            stub.Predict(pb.PredictRequest(image=data), timeout=30)
        assert read.value.code() == predicted.value.code() == kind.expect, read.value.details()
        assert kind.says.lower() in read.value.details().lower()
        if "blank" not in kind.says:  # a blank picture is "no digit found" to ReadNumber, with its own advice
            assert read.value.details() == predicted.value.details()
    assert_still_serving(limited_server, digit_pngs[0][1])
    assert_no_logged_errors(log)


def test_read_number_request_that_is_no_protobuf(limited_server, log):
    with pytest.raises(grpc.RpcError) as e:
        limited_server.channel.unary_unary("/mnist.v1.Inference/ReadNumber")(b"\x0a\xff\xff\xff\xff\x0f", timeout=30)
    assert e.value.code() == INVALID and "not a valid mnist.v1.ReadNumberRequest" in e.value.details()
    assert_no_logged_errors(log)
