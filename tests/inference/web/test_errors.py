"""inference/web/errors.py: the HTTP status and headers each gRPC outcome gets, as a table. The routes' tests reach
most rows through a real service; these are the rows no route test reaches (review, stop 44: deleting either
left every test passing)."""

from __future__ import annotations

import grpc
import pytest

from inference.web import errors


@pytest.mark.parametrize(
    "code, message, status",
    [
        # A service shutting down answers the calls it had not started with CANCELLED: not ready, retry (not 502).
        (grpc.StatusCode.CANCELLED, "Cancelling all calls", 503),
        # Pillow's own decompression-bomb ceiling, reached when the pixel limit is set above it.
        (grpc.StatusCode.INVALID_ARGUMENT, "Image size (300000000 pixels) exceeds limit of 178956970 pixels", 413),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (20000000 vs. 16777216)", 413),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "an evaluation is already running", 429),
        (grpc.StatusCode.INTERNAL, "internal error in Predict", 502),
        (grpc.StatusCode.UNKNOWN, "exceeds limit", 502),  # the words count for a caller's limit only
        # gRPC's own refusal of a call's headers (an Authorization of 20,000 characters): the request's fault, which
        # waiting does not mend; as 429 with Retry-After, a client that obeyed it retried the same call forever.
        (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "received metadata size exceeds hard limit (value length 20007 vs. 16384)",
            431,
        ),
        (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "received metadata size exceeds soft limit (8526 vs. 8192);  :path:43B",
            431,
        ),
    ],
)
def test_each_grpc_outcome_gets_its_http_status(code, message, status):
    assert errors.http_status(code, message) == status


def test_a_service_shutting_down_is_retried_after_a_moment_and_a_failed_precondition_is_not():
    assert errors.error_headers(503, grpc.StatusCode.CANCELLED) == {"Retry-After": str(errors.RETRY_AFTER_SECONDS)}
    assert errors.error_headers(503, grpc.StatusCode.FAILED_PRECONDITION) == {}


def test_headers_too_large_for_the_service_are_not_retried():
    assert errors.error_headers(431, grpc.StatusCode.RESOURCE_EXHAUSTED) == {}
