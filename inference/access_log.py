"""One access-log line per call, and the request id that ties every line about a call together.

An interceptor (grpc/grpc's examples/python/interceptors: cross-cutting concerns live in one place, not in each
method) wraps every unary call:

- the request id is the caller's `x-request-id` metadata when it is a sane token (letters, digits and `._:-`,
  at most 128 characters), else a new random one: a malformed id is replaced, never echoed into logs or
  responses. It is sent back in the response's trailing metadata, with the status: headers sent first would
  stop clients' gRPC from retrying a call cut off by a crash.
- the call's record (`CallRecord`) is reachable from the servicer through `current_call()`, which runs on the
  same thread; the servicer notes the model version and image bytes there, and every log line written during
  the call carries the id (`RequestIdFilter`).
- when the call ends, one line: method, status code, latency, time it waited for a worker thread, image bytes,
  images, model version, peer, id.

Health checks and reflection are logged at DEBUG only: probes call every few seconds and would drown the log.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import grpc

log = logging.getLogger("inference.access")

REQUEST_ID_KEY = "x-request-id"
# gRPC's server pushback (gRFC A6): a negative value tells a client's retryPolicy not to send the call again.
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
QUIET_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def request_id_from(supplied: str | None) -> str:
    """The caller's request id if it is a sane token, else a fresh one (32 hex digits)."""
    if supplied and _SANE_REQUEST_ID.fullmatch(supplied):
        return supplied
    return uuid.uuid4().hex


@dataclass
class CallRecord:
    """What the access-log line says about one call; the servicer fills in what only it knows."""

    request_id: str
    method: str  # short name, e.g. "Predict"
    peer: str
    service: str = ""  # e.g. "mnist.v1.Inference"
    started: float = field(default_factory=time.perf_counter)
    queue_seconds: float = 0.0  # waited for a worker thread before `started`: not in the latency
    image_bytes: int = 0
    images: int = 0
    model_version: str = ""
    # Seconds left on the server's deadline when the caller left before the answer; None: it did not, or set none.
    deadline_left: float | None = None

    def fields(self, code: grpc.StatusCode) -> dict[str, Any]:
        return {
            "method": self.method,
            "code": code.name,
            "latency_ms": round((time.perf_counter() - self.started) * 1e3, 3),
            "queue_ms": round(self.queue_seconds * 1e3, 3),
            "image_bytes": self.image_bytes,
            "images": self.images,
            "model_version": self.model_version,
            # None, not "": a JSON collector types a field by its values, and this one is a number when present.
            "deadline_left_ms": round(self.deadline_left * 1e3, 3) if self.deadline_left is not None else None,
            "peer": self.peer,
            "request_id": self.request_id,
        }


_current: ContextVar[CallRecord | None] = ContextVar("mnist_call", default=None)


# How long the call a worker thread is about to run waited for it: the server's thread pool
# (inference.server.QueueCountingExecutor) measures it, and gRPC then runs the call's handler on that same thread.
_thread_wait = threading.local()


def waited_for_thread(seconds: float) -> None:
    """Say, on the worker thread about to run a call, how long the call waited for it."""
    _thread_wait.seconds = seconds


def current_call() -> CallRecord | None:
    """The record of the call this thread is serving, or None outside a call."""
    return _current.get()


def note(*, image_bytes: int = 0, images: int = 0, model_version: str | None = None) -> None:
    """Add what the servicer knows to the current call's record (a no-op outside a call)."""
    record = _current.get()
    if record is None:
        return
    record.image_bytes += image_bytes
    record.images += images
    if model_version is not None:
        record.model_version = model_version


class RequestIdFilter(logging.Filter):
    """Gives every log record a `request_id` attribute: the current call's, or "-" outside a call."""

    def filter(self, record: logging.LogRecord) -> bool:
        call = _current.get()
        if not hasattr(record, "request_id"):
            record.request_id = call.request_id if call is not None else "-"
        return True


def format_text(fields: dict[str, Any]) -> str:
    return " ".join(f"{key}={value if value not in ('', None) else '-'}" for key, value in fields.items())


Observer = Callable[[CallRecord, grpc.StatusCode, float], None]
Starter = Callable[[CallRecord], None]


def _tell(hooks, *args) -> None:
    """Call each hook; one that fails is logged and never changes the call's outcome."""
    for hook in hooks:
        try:
            hook(*args)
        except Exception:
            log.exception("access-log hook %r failed", hook)


# A caller whose deadline passes leaves with an HTTP/2 RST_STREAM CANCEL, the very signal an explicit cancel sends,
# and the server's deadline, the caller's timeout counted from the call's arrival, ends after the caller's by the
# call's transit (and the connection's set-up, for a channel's first call): gRPC tells the server "cancelled" for
# both. The one difference the server sees is when the caller left: a caller gone within this much of the server's
# deadline is taken to have given up at its own, and the line says deadline_left_ms, the time there still was.
DEADLINE_TRANSIT_ALLOWANCE = 0.25  # seconds
# ... or this share of the call's timeout, if less: with a timeout under the allowance, every caller that cancelled
# left within it of its deadline, and a 0.2 s call cancelled at once was logged (and counted) DEADLINE_EXCEEDED.
# A caller whose deadline passed leaves within its transit's jitter of the server's deadline, or the server's own
# deadline cancels the call (0 left): a tenth of the timeout is time enough for either.
DEADLINE_TRANSIT_SHARE = 0.1
# gRPC's Python server says "no deadline" as a deadline 2**63 ns from now; any longer than this is none.
_NO_DEADLINE_BEYOND = 1e9  # seconds, about 32 years


def deadline_left(context: grpc.ServicerContext) -> float | None:
    """Seconds left on the server's deadline for this call (0 once passed), or None when the caller set none."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > _NO_DEADLINE_BEYOND else remaining


def gone_callers_code(left: float | None, timeout: float | None = None) -> grpc.StatusCode:
    """What the caller of a call it left before the answer was told, from the time `left` on the server's deadline
    when it went (None: no deadline) and the call's `timeout` as the server received it (None: not known): its
    deadline passed, or it cancelled. Whatever the handler answered was never delivered, so the call is not logged
    (or counted) as OK, nor as the servicer's own "caller went away"."""
    allowance = DEADLINE_TRANSIT_ALLOWANCE
    if timeout is not None:
        allowance = min(allowance, DEADLINE_TRANSIT_SHARE * timeout)
    if left is not None and left <= allowance:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


class AccessLogInterceptor(grpc.ServerInterceptor):
    """Outermost interceptor: request id in and out, one log line per call, `on_start` hooks (metrics) told of
    each call as it begins (record) and `observers` of each finished call (record, status code, seconds)."""

    def __init__(self, observers: tuple[Observer, ...] = (), on_start: tuple[Starter, ...] = ()) -> None:
        self.observers = observers
        self.on_start = on_start

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler  # the project's own methods are all unary; streaming health Watch passes untouched
        full_method = handler_call_details.method
        level = logging.DEBUG if full_method.startswith(QUIET_PREFIXES) else logging.INFO
        service, _, method = full_method.lstrip("/").rpartition("/")
        metadata = dict(handler_call_details.invocation_metadata or ())
        inner = handler.unary_unary

        def behaviour(request, context: grpc.ServicerContext):
            record = CallRecord(
                request_id=request_id_from(metadata.get(REQUEST_ID_KEY)),
                method=method,
                peer=context.peer(),
                service=service,
                queue_seconds=getattr(_thread_wait, "seconds", 0.0),
            )
            _thread_wait.seconds = 0.0  # read once: a later call on this thread whose wait went unmeasured reads 0
            # The id goes back with the status, not in headers sent as the call starts: headers commit a call, and
            # a client's gRPC retries a call cut off by a crashed server (inference.channel's retryPolicy) only
            # while none of its headers have arrived. Sent first, they made every call a dying server was running
            # fail at its clients.
            trailing = ((REQUEST_ID_KEY, record.request_id),)
            context.set_trailing_metadata(trailing)
            token = _current.set(record)
            # The call's timeout as it arrived: what its deadline had left as the handler starts, and the wait for
            # a thread before (the transit allowance is a share of it when short: gone_callers_code).
            timeout = deadline_left(context)
            if timeout is not None:
                timeout += record.queue_seconds
            # gRPC calls this when the call ends: as its caller leaves (or the server cancels it as it stops), or
            # once its status is sent, after the handler. Before the handler ends, then, it means the caller left.
            left: list[float | None] = []
            if not context.add_callback(lambda: left.append(deadline_left(context))):
                left.append(deadline_left(context))  # gone while the call waited for a thread
            _tell(self.on_start, record)
            code = grpc.StatusCode.OK
            try:
                return inner(request, context)
            except BaseException:
                code = context.code() or grpc.StatusCode.UNKNOWN  # context.abort set it before raising
                # The service's own refusal ("no model is published yet", a bad picture) is its answer, not a
                # connection's failure: a client's retryPolicy, which may send an uncommitted call with a
                # retryable code again (UNAVAILABLE), must not ask four more times and get the same answer.
                context.set_trailing_metadata((*trailing, (RETRY_PUSHBACK_KEY, "-1")))
                raise
            finally:
                if left or not context.is_active():  # is_active() turns False a moment before the callback runs
                    record.deadline_left = left[0] if left else deadline_left(context)
                    code = gone_callers_code(record.deadline_left, timeout)
                fields = record.fields(code)
                _current.reset(token)
                if log.isEnabledFor(level):  # health checks every few seconds: not formatted unless logged
                    log.log(
                        level,
                        "access %s",
                        format_text(fields),
                        extra={"access": fields, "request_id": record.request_id},
                    )
                _tell(self.observers, record, code, fields["latency_ms"] / 1e3)

        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
