"""Clients that are slow on purpose or by accident, over real sockets against a real gateway: a body that keeps
trickling, a request whose headers never end, more connections than the gateway serves, and the log when the
process runs out of file descriptors. Each bound is set short here (seconds), so each test takes a few seconds."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import time

from inference.web import serving
from tests.inference.web.helpers import assert_error

CHUNKED_PNG_HEAD = (
    b"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def read_until_closed(connection: socket.socket, within: float) -> tuple[bytes, float]:
    """Everything the gateway sends on `connection` until it closes it, and how long that took; fails if it is
    still open after `within` seconds."""
    connection.settimeout(within)
    started, said = time.monotonic(), b""
    try:
        while chunk := connection.recv(65536):
            said += chunk
    except TimeoutError:
        raise AssertionError(f"still open after {within:g} s; said {said[:300]!r}") from None
    except ConnectionResetError:  # closed with bytes of ours unread: as closed
        pass
    return said, time.monotonic() - started


def parsed(said: bytes) -> tuple[int, dict[str, str], dict]:
    """A raw HTTP/1.1 answer with a Content-Length: (status, lower-case headers, JSON body)."""
    head, _, body = said.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, json.loads(body[: int(headers["content-length"])])


def test_a_body_that_never_stops_arriving_is_408_once_the_deadline_has_passed(web, backend):
    """A chunked body that sends a byte every few moments never stalls for BODY_STALL_SECONDS, and was read for
    as long as its caller kept sending (the review's: a byte every 10 s, open for good). The whole body must
    arrive within --timeout of the request; then 408 in the error shape, and the connection is closed, so the
    rest of the body is not read and thrown away for ever on a connection kept alive."""
    gateway = web(target=backend.target, timeout=1.5)
    with socket.create_connection(("127.0.0.1", gateway.port)) as trickle:
        trickle.sendall(CHUNKED_PNG_HEAD)
        trickle.settimeout(0.2)
        started, said = time.monotonic(), b""
        while not said and time.monotonic() - started < 10:
            try:
                trickle.sendall(b"1\r\nx\r\n")
                said = trickle.recv(65536)
            except TimeoutError:
                continue
            except OSError:  # closed as we sent
                break
        answered_after = time.monotonic() - started
        rest, _ = read_until_closed(trickle, within=5)
    assert said, "no answer within 10 s to a body that kept trickling"
    assert answered_after < 1.5 + 2.0, f"answered after {answered_after:.1f} s of a 1.5 s deadline"
    status, headers, body = parsed(said + rest)
    assert (status, body["error"]["status"], body["error"]["code"]) == (408, 408, "DEADLINE_EXCEEDED"), body
    assert "did not arrive within 1.5 s" in body["error"]["message"], body
    assert headers["connection"] == "close"
    assert headers["x-request-id"]  # the gateway's own errors carry it too


def test_a_client_that_leaves_before_its_body_is_no_error_of_the_gateways(web, backend, caplog):
    """A client closing its connection halfway through its body was logged as "Exception in ASGI application"
    with Starlette's ClientDisconnect traceback (a review's): nobody is left to answer, and it is no bug here."""
    gateway = web(target=backend.target, timeout=5)
    uvicorn_log = logging.getLogger("uvicorn.error")  # which propagates to no logger caplog hears
    uvicorn_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO):
            with socket.create_connection(("127.0.0.1", gateway.port)) as leaving:
                leaving.sendall(
                    b"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/png\r\n"
                    b"Content-Length: 1000\r\n\r\n" + b"x" * 10
                )
                time.sleep(0.3)  # the body is being read
            deadline = time.monotonic() + 5
            while "closed the connection before its body" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    assert "Exception in ASGI application" not in caplog.text, caplog.text
    assert "closed the connection before its body" in caplog.text, caplog.text


def test_a_body_in_time_is_answered_as_before(web, backend, digit_pngs):
    gateway = web(target=backend.target, timeout=5)
    png = digit_pngs[0][1]
    with socket.create_connection(("127.0.0.1", gateway.port)) as caller:
        caller.sendall(CHUNKED_PNG_HEAD)
        for k in range(0, len(png), len(png) // 3 + 1):
            part = png[k : k + len(png) // 3 + 1]
            caller.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            time.sleep(0.3)
        caller.sendall(b"0\r\n\r\n")
        caller.settimeout(10)
        said = b""
        while b'"digit"' not in said:
            said += caller.recv(65536)
    assert said.startswith(b"HTTP/1.1 200"), said[:300]


def test_a_request_whose_headers_never_end_is_closed_after_the_header_timeout(web, backend):
    """uvicorn bounds no request's head: a connection that sent half its headers (or nothing) stayed open for
    good, and enough of them used up the process's file descriptors. Such a connection is closed once the
    head has not arrived within the header timeout: after it opened, or after the answer before on a connection
    kept alive."""
    gateway = web(target=backend.target, serving=serving.uvicorn_settings(header_seconds=1.0))
    with (
        socket.create_connection(("127.0.0.1", gateway.port)) as half,
        socket.create_connection(("127.0.0.1", gateway.port)) as silent,
        socket.create_connection(("127.0.0.1", gateway.port)) as kept_alive,
    ):
        half.sendall(b"GET /v1/model HTTP/1.1\r\nHost: localhost\r\n")
        kept_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        kept_alive.settimeout(5)
        first = b""
        while not first.endswith(b"}"):
            first += kept_alive.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        # The next request begins, and its head never ends (uvicorn's keep-alive timer stops at its first byte).
        kept_alive.sendall(b"GET /healthz HTTP/1.1\r\n")
        for connection in (half, silent, kept_alive):
            said, took = read_until_closed(connection, within=5)
            assert said == b"" and took < 4, (said[:200], took)
    # A head that arrives in time is served as ever.
    assert gateway.get("/healthz").status == 200


def test_connections_past_the_limit_get_503_in_the_error_shape_and_the_rest_are_served(web, backend):
    """uvicorn serves any number of connections by default: idle ones accumulated until the process had no file
    descriptor left, and then nobody was answered, /healthz included. Past the limit a request is answered at
    once with 503 and Retry-After (the gateway's error shape), its connection closed; below it, served. Liveness
    is answered whatever the load: a 503 there restarted a gateway that was only busy."""
    gateway = web(target=backend.target, serving=serving.uvicorn_settings(header_seconds=30.0, max_connections=3))
    idle = [socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(3)]
    try:
        for connection in idle:
            connection.sendall(b"GET /v1/model HTTP/1.1\r\n")
        time.sleep(0.3)  # accepted
        refused = gateway.get("/v1/model", timeout=5, headers={"X-Request-ID": "mine-123"})
        message = assert_error(refused, 503, "UNAVAILABLE", "3 connections", "try again")
        assert refused.headers["retry-after"] == "1" and refused.headers["connection"] == "close", message
        # The headers of every answer, though this one is given before the app's middleware (a review).
        assert refused.headers["x-request-id"] == "mine-123", refused.headers
        assert refused.headers["x-content-type-options"] == "nosniff" and refused.headers["cache-control"] == "no-store"
        assert gateway.get("/healthz", timeout=5).status == 200
    finally:
        for connection in idle:
            connection.close()
    deadline = time.monotonic() + 5
    while (answer := gateway.get("/v1/model", timeout=5)).status == 503 and time.monotonic() < deadline:
        time.sleep(0.05)  # the closed connections are gone at the gateway's next look
    assert answer.status != 503


def test_the_gateways_own_server_settings_bound_connections_and_their_time():
    """What `python -m inference.web` gives uvicorn: the header timeout (uvicorn has none), its keep-alive, and a
    connection limit from the gateway's own capacity (the tests' gateways run with the same, start_web)."""
    from inference.web.__main__ import get_args_parser, server_config
    from inference.web.app import CALL_THREADS, WebOptions

    config = server_config(get_args_parser().parse_args([]), WebOptions())
    config.load()
    assert config.http_protocol_class.header_seconds == serving.HEADER_SECONDS
    assert config.limit_concurrency == serving.MAX_CONNECTIONS and serving.MAX_CONNECTIONS >= 2 * CALL_THREADS
    assert config.timeout_keep_alive == serving.KEEP_ALIVE_SECONDS


def test_the_gateway_waits_on_fewer_calls_at_once_than_the_service_takes():
    """The service frees a call's slot a moment after its answer: a gateway waiting on as many calls as the service's
    default --max-concurrent-rpcs (32, each thread sending its next call on the answer) got RESOURCE_EXHAUSTED, a
    429, for 1-2 of 64 concurrent requests in 5 of 12 runs (a review). It keeps a margin below that limit."""
    from inference.options import ServerOptions
    from inference.web.app import CALL_THREADS

    service_limit = next(f.default for f in dataclasses.fields(ServerOptions) if f.name == "max_concurrent_rpcs")
    assert 0.75 * service_limit >= CALL_THREADS


def accept_failure(logger: logging.Logger) -> logging.LogRecord:
    return logger.makeRecord(
        "asyncio", logging.ERROR, __file__, 0, "socket.accept() out of system resource\nsocket: <fd=6>", (), None
    )


def test_accept_failures_for_want_of_descriptors_are_logged_once_a_minute_with_a_count():
    """Out of file descriptors, asyncio (3.11) logs 'socket.accept() out of system resource' with a traceback
    up to 2,048 times a second (the listen backlog, every second): 197 MB of log in 35 s. One a minute is let
    through, saying how many were left out; other errors of the loop are not touched."""
    now = [100.0]
    accepts = serving.AcceptFailureLog(interval=60.0, clock=lambda: now[0])
    logger = logging.getLogger("asyncio")
    assert accepts.filter(accept_failure(logger))
    assert not any(accepts.filter(accept_failure(logger)) for _ in range(2048))
    other = logger.makeRecord("asyncio", logging.ERROR, __file__, 0, "Task exception was never retrieved", (), None)
    assert accepts.filter(other)
    now[0] += 61
    record = accept_failure(logger)
    assert accepts.filter(record)
    assert "2,048 more in the last 61 s" in record.getMessage()
    assert record.getMessage().startswith("socket.accept() out of system resource")


def test_the_gateway_process_filters_the_accept_failures():
    from inference.web.__main__ import install_log_filters

    logger = logging.getLogger("asyncio")
    before = list(logger.filters)
    try:
        install_log_filters()
        assert any(isinstance(f, serving.AcceptFailureLog) for f in logger.filters)
    finally:
        logger.filters[:] = before
