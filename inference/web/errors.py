"""gRPC status -> HTTP status, and the one JSON error body every failed REST call answers with.

    {"error": {"status": 413, "code": "INVALID_ARGUMENT", "message": "image is 12,000,000 bytes; the limit is ..."}}

`code` is the gRPC status the inference service gave (or, for what the gateway refuses itself, the one it would
have given), so a REST client and a gRPC client read the same contract; `message` is the service's own, which says
what to fix. The mapping follows google.rpc.Code's documented HTTP equivalents, with three refinements:

- "too large" is 413, not 400/429. gRPC has no code of its own for it: the service answers INVALID_ARGUMENT for an
  image over its byte or pixel limit, and RESOURCE_EXHAUSTED for too many images in one call or a message over its
  size limit, and says "the limit is ..." in each message (shared/decode.py, inference/service.py, and gRPC's
  own "larger than max"). Those words are the signal; tests/inference/web/test_api.py sends each kind to a real
  server, so a reworded message fails a test instead of silently becoming a 400 or a 429.
- the remaining RESOURCE_EXHAUSTED (too many calls at once, an evaluation or as many readings as the service
  takes already running, the decode budget busy) is 429 with Retry-After; UNAVAILABLE (no model published yet, the
  service restarting or unreachable) is 503 with Retry-After.
  FAILED_PRECONDITION (no MNIST files for Evaluate, a pinned version that fails its checks) is 503 too, but
  without Retry-After: trying again in a second cannot help until someone acts, and a client that honours the
  header would loop.
- UNIMPLEMENTED is 502, not 501: the method is one the API has, and the server the gateway calls lacks it.
- gRPC's own RESOURCE_EXHAUSTED for a call's metadata over its limit ("received metadata size exceeds soft/hard
  limit": the caller's Authorization passed on) is 431, without Retry-After: the same request fails again, and
  as a 429 a client that honoured the header retried it forever. The gateway refuses such a header itself
  before the call (inference/web/app.py, pass_through_metadata); this covers a service with a lower limit.
"""

from __future__ import annotations

import re

import grpc

# google.rpc.Code -> HTTP, as in googleapis/google/rpc/code.proto, except where the module docstring says.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    # Not 501: the gateway's --target lacks a method of the API (the service's health-only port, another server, an
    # older service): the gateway is misconfigured. A method the path does not take is the gateway's own 405.
    grpc.StatusCode.UNIMPLEMENTED: 502,
    # The service has no model yet, is shutting down (it answers calls it had not started with CANCELLED,
    # grpc/grpc#41785), or cannot read the MNIST files Evaluate needs: the request was fine, the service is not
    # ready for it.
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.CANCELLED: 503,
    grpc.StatusCode.FAILED_PRECONDITION: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    # INTERNAL, UNKNOWN, DATA_LOSS: the service behind this gateway failed (its log has the traceback).
}
BAD_GATEWAY = 502
TOO_LARGE = 413
HEADERS_TOO_LARGE = 431
# Seconds a client should wait before trying again after a 429 or a 503.
RETRY_AFTER_SECONDS = 1

# The service's words for a limit that was exceeded (see the module docstring). gRPC's own message for a request
# over max_receive_message_length reads "Received message larger than max (N vs. M)"; Pillow's decompression-bomb
# ceiling (reached only when the pixel limit is set above it) "... exceeds limit of N pixels ...".
_LIMIT_EXCEEDED = re.compile(r"\bthe limit is\b|\blarger than max\b|\bexceeds limit\b", re.IGNORECASE)


# gRPC's words for metadata over the receiving side's limit (grpc.max_metadata_size, 8 KiB by default: over it a
# call is refused at random, over twice it always).
_METADATA_TOO_LARGE = re.compile(r"\bmetadata size exceeds\b", re.IGNORECASE)


def is_metadata_too_large(code: grpc.StatusCode, message: str) -> bool:
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and bool(_METADATA_TOO_LARGE.search(message))


def is_too_large(code: grpc.StatusCode, message: str) -> bool:
    return code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED) and bool(
        _LIMIT_EXCEEDED.search(message)
    )


def http_status(code: grpc.StatusCode, message: str) -> int:
    """The HTTP status for a gRPC status code and its message."""
    if is_metadata_too_large(code, message):
        return HEADERS_TOO_LARGE
    if is_too_large(code, message):
        return TOO_LARGE
    return HTTP_STATUS.get(code, BAD_GATEWAY)


def grpc_code_from_value(value: int) -> grpc.StatusCode:
    """A google.rpc.Code number (as in ImageError.code) -> grpc.StatusCode; UNKNOWN for a number gRPC lacks."""
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN


def error_body(status: int, code: grpc.StatusCode, message: str) -> dict:
    return {"error": {"status": status, "code": code.name, "message": message}}


def error_headers(status: int, code: grpc.StatusCode) -> dict[str, str]:
    """Headers HTTP defines for these statuses: how to authenticate, when to come back (not for a failed
    precondition, which waiting does not mend)."""
    if status == 401:
        return {"WWW-Authenticate": 'Bearer realm="mnist-stack"'}
    if status in (429, 503) and code != grpc.StatusCode.FAILED_PRECONDITION:
        return {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return {}
