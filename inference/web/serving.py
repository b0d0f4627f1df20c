"""How uvicorn serves the gateway: bounds on connections and on the time a request's head may take, which uvicorn
leaves open by default, and a log filter for when the process runs out of file descriptors anyway.

uvicorn (0.55, its h11 protocol) bounds only the idle time between requests on a connection kept alive
(`timeout_keep_alive`, from the end of an answer to the next byte), and nothing about a request still arriving:
a connection that sends half its headers, or nothing at all, stays open for good, holding a file descriptor; and
it serves any number of connections. A few hundred such connections used up the descriptors of a gateway
(`ulimit -n`): accept() failed, nobody was answered, /healthz included, and asyncio logged each failure with a
traceback. So the gateway's server closes a connection whose request head has not arrived within HEADER_SECONDS,
and answers requests past MAX_CONNECTIONS open connections with 503 at once. What bounds a request's body is the
app's (app.BodyLimit: within --timeout in all, no gap over BODY_STALL_SECONDS). These bound slow and idle
clients, not a flood: one that opens connections faster than they time out can still use up the descriptors;
on the public internet, put a reverse proxy in front (docs/api.md), as uvicorn's own deployment guide says.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

import grpc
import h11
from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from inference.web import errors
from inference.web.app import RequestIds
from inference.web.guards import LIVENESS_PATH, SecurityHeaders

# A request's head (request line and headers) must arrive within this many seconds of the connection opening, or
# of the answer before it on a connection kept alive. A client sends its head at once, in one or two packets; a
# slow network takes a second or two. nginx's client_header_timeout is 60 s; the gateway's calls answer within
# --timeout (10 s), and a head slower than that is no caller the gateway can serve in time.
HEADER_SECONDS = 10.0
# uvicorn's own default: browsers reuse a connection for the page's next calls within moments, and every idle
# connection holds a descriptor. A proxy that keeps connections to the gateway alive should close its idle ones
# sooner (nginx: keepalive_timeout in the upstream block), or a request sent as the gateway closes one fails.
KEEP_ALIVE_SECONDS = 5
# Connections open at once (idle ones kept alive, uploads arriving, calls waiting) past which a request gets 503
# with Retry-After. The gateway waits on at most CALL_THREADS calls at once; beyond those a call waits for a
# thread, counting the wait against its deadline, so more connections than a few times that only queue. 128
# (five times it) leaves room for browsers' idle connections and for uploads, and stays well within the usual
# limit of 1,024 file descriptors (`ulimit -n`), beside the dozen or so the process holds itself (13 when idle).
MAX_CONNECTIONS = 128


def uvicorn_settings(
    *,
    header_seconds: float = HEADER_SECONDS,
    max_connections: int = MAX_CONNECTIONS,
    keep_alive_seconds: int = KEEP_ALIVE_SECONDS,
) -> dict[str, Any]:
    """The keyword arguments of uvicorn.Config that bound connections and their time (the defaults are what
    `python -m inference.web` runs with; the tests shorten them)."""
    return {
        "http": header_deadline_protocol(header_seconds),
        "limit_concurrency": max_connections,
        "timeout_keep_alive": keep_alive_seconds,
    }


def header_deadline_protocol(seconds: float) -> type[asyncio.Protocol]:
    """HeaderDeadlineProtocol with a header timeout of `seconds` (uvicorn makes one protocol object per
    connection, from the class, so the setting is the class's)."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_seconds": seconds})


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol (h11), with two bounds of its own:

    - a request head that has not arrived within `header_seconds` closes the connection (uvicorn's keep-alive
      timer stops at the first byte of the next request, and no timer runs before the first one);
    - past `limit_concurrency` connections or requests in progress, a request is answered 503 in the gateway's
      error shape, with Retry-After, and its connection closed. uvicorn's own check answers a plain-text 503
      without Retry-After; this is the same check, made when the request's task starts.
    """

    header_seconds: ClassVar[float] = HEADER_SECONDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timer: asyncio.TimerHandle | None = None
        self.max_connections = self.limit_concurrency
        self.limit_concurrency = None  # uvicorn's check off: within_capacity makes it
        self.app = self.within_capacity(self.app)

    # -- the head's deadline: armed while the connection waits for a request's head, cancelled once it is in

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.watch_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.watch_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_head_timer()
        super().connection_lost(exc)

    def watch_head(self) -> None:
        """h11's state of the client is IDLE from the connection's start, and again after each answer, until a
        request's head has been parsed; then SEND_BODY or DONE. The time counts from the start of that wait, not
        from each byte, so a head sent a byte at a time is bounded too."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self.head_timer is None:
            self.head_timer = self.loop.call_later(self.header_seconds, self.head_too_slow)
        elif not waiting:
            self.stop_head_timer()

    def stop_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def head_too_slow(self) -> None:
        """Closed without an answer, as uvicorn closes an idle connection: one that never sent a byte is owed
        none, and one stuck halfway through its headers is not a client worth a response."""
        self.head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    # -- connections and requests past the limit

    def within_capacity(self, app: Callable[..., Any]) -> Callable[..., Any]:
        limit = self.max_connections
        if limit is None:  # no limit set: every request goes through
            return app

        async def within_capacity(scope, receive, send) -> None:
            # This request's own connection and task are counted already (uvicorn adds the task before it runs).
            # Liveness is answered whatever the load: a 503 there made a liveness probe restart a gateway that was
            # merely busy, and every call it held with it. It asks nothing of the service, so it costs nothing.
            busy = max(len(self.connections), len(self.tasks)) > limit
            if busy and scope["type"] == "http" and scope.get("path") != LIVENESS_PATH:
                # Answered here, before the app's middleware: its headers (nosniff, no-store, the caller's request
                # id) added as they are to every other answer (a review found none on this one).
                await RequestIds(SecurityHeaders(over_capacity(limit)))(scope, receive, send)
            else:
                await app(scope, receive, send)

        return within_capacity


def over_capacity(limit: int) -> JSONResponse:
    code = grpc.StatusCode.UNAVAILABLE
    message = (
        f"the gateway is serving {limit:,} connections, the most it takes at once; try again in a moment (close "
        "idle connections, or send fewer requests at once)"
    )
    return JSONResponse(
        errors.error_body(503, code, message),
        status_code=503,
        headers={**errors.error_headers(503, code), "Connection": "close"},
    )


ACCEPT_FAILED = "socket.accept() out of system resource"


class AcceptFailureLog(logging.Filter):
    """For the `asyncio` logger: lets through one 'socket.accept() out of system resource' per `interval`
    seconds, and says in it how many were left out. Out of file descriptors (EMFILE), asyncio's accept loop
    (Python 3.11) logs that error with a traceback for each of the listen backlog's 2,048 tries, and again every
    second while descriptors stay short: 197 MB of log in 35 s, from a gateway that answered nobody. The first
    says what happened; the count says it went on. Other records pass untouched."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval, self.clock = interval, clock
        self.last: float | None = None  # when one was last let through
        self.left_out = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith(ACCEPT_FAILED)):
            return True
        now = self.clock()
        if self.last is not None and now - self.last < self.interval:
            self.left_out += 1
            return False
        if self.left_out and self.last is not None:
            record.msg = record.msg.replace(
                ACCEPT_FAILED,
                f"{ACCEPT_FAILED} ({self.left_out:,} more in the last {now - self.last:.0f} s, not logged; the "
                "process is out of file descriptors: see `ulimit -n`)",
                1,
            )
        self.last, self.left_out = now, 0
        return True
