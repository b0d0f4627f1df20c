"""Answers over the server's --max-message-bytes (inference/message_limit.py): refused in the handler, so the caller,
the access log and the metrics all say RESOURCE_EXHAUSTED, and the message says what to ask instead."""

from __future__ import annotations

import logging

import grpc
import pytest

from shared.api.mnist.v1 import inference_pb2 as pb

from inference.web.errors import http_status
from tests.inference.helpers import publish


def test_an_answer_over_the_message_limit_is_refused_as_such_and_logged_so_and_the_service_goes_on(
    serve, tmp_path, digit_pngs, caplog
):
    """gRPC refused to send it ("Sent message larger than max"), after the work, and the log said OK."""
    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve(max_message_bytes=20_000, max_image_bytes=15_000)
    pngs = [png for _, png, _ in digit_pngs]
    caplog.set_level(logging.INFO, logger="inference.access")
    request = pb.PredictBatchRequest(images=pngs * 2, return_model_input=True)
    assert request.ByteSize() < 20_000  # the question fits; its answer, with 64 model inputs, does not
    with pytest.raises(grpc.RpcError) as refused:
        running.stub.PredictBatch(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    said = refused.value.details()
    assert said.startswith("the PredictBatch answer is ") and "the limit is 20,000 bytes, its --max-message" in said
    assert http_status(refused.value.code(), said) == 413  # what the REST gateway makes of it, as of a request
    assert "without return_model_input" in said, said
    (line,) = [r for r in caplog.records if r.name == "inference.access" and r.access["method"] == "PredictBatch"]
    assert line.access["code"] == "RESOURCE_EXHAUSTED"
    # The same pictures without their inputs fit, and the service answers them.
    answer = running.stub.PredictBatch(pb.PredictBatchRequest(images=pngs * 2), timeout=30)
    assert len(answer.results) == 64 and answer.ByteSize() < 20_000
