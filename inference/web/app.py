"""The REST API and the web page: an HTTP gateway in front of the gRPC service (FastAPI, served by uvicorn).

Every REST call becomes the matching gRPC call on a channel from inference.channel.make_channel (retries,
waitForReady, round-robin over every replica the target resolves to):

    POST /v1/predict          -> Predict          the image as the body, or as a multipart file
    POST /v1/predict/batch    -> PredictBatch     multipart, one part per image
    POST /v1/read-number      -> ReadNumber       a picture of one line of 1-12 digits, as /v1/predict takes it
    GET  /v1/model            -> GetModelInfo
    POST /v1/evaluate         -> Evaluate         {"split": "test"|"validation", "heatmap": true}
    GET  /healthz                                  liveness: this process answers (the service is not asked)
    GET  /readyz              -> grpc.health.v1    readiness: the service behind it is SERVING (and, until it has
                                 (GetModelInfo)    answered once, that --target serves this API: Backend.wrong_target)
    GET  /                                         the page (inference/web/static/, served under /static/)
    GET  /docs, /redoc, /openapi.json              the API's documentation

Nothing about images, models or limits is decided here: the image pipeline, the served model, the limits and
the error messages are the gRPC service's, so for the same bytes the REST answer is Predict's answer. The
gateway only bounds what it reads itself (--max-body-bytes) and maps gRPC status codes onto HTTP
(inference/web/errors.py). The caller's `Authorization` header is passed through as the gRPC `authorization`
metadata, so the service's bearer token applies to REST callers as to gRPC callers; with --token the gateway
also checks it itself, before reading a body. `X-Request-ID` is passed through too (one is made when the caller
sent none, or one the service would replace), and that id, the one in the service's access log, comes back in
every answer's `X-Request-ID`.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache, partial
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import anyio
import grpc
from fastapi import APIRouter, Depends, FastAPI, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect
from starlette.routing import Match, Mount, Router
from starlette.types import Receive, Scope, Send

from shared import settings
from shared.api.mnist.v1 import inference_pb2 as pb
from shared.api.mnist.v1 import inference_pb2_grpc

from inference.access_log import REQUEST_ID_KEY, request_id_from
from inference.channel import make_channel, reached_server, said_for_a_person
from inference.security import AUTH_METADATA_KEY, is_metadata_value, one_authorization
from inference.web import errors, guards, schemas

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The page loads nothing from elsewhere; images it shows are data: URLs (the model's input, the heatmap) and
# blob: URLs (the user's own picture). inference.web.guards adds nosniff, no framing and no referrer to every
# response, the page's included.
PAGE_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    # Revalidate each load (ETag): a new release of the page reaches users at once, unchanged files cost a 304.
    "Cache-Control": "no-cache",
}
# Multipart parts the gateway reads at most. The service's own batch limit (256 by default) decides what is
# accepted; this only bounds the parser before the request reaches it.
MAX_MULTIPART_FILES = 4096
# Threads that wait on gRPC calls at once (the stubs block), and the readiness probe's own two: a probe must not
# queue behind calls that wait out their deadline on a service that is down (45 waiting calls once held /readyz
# for 9 s). A call that waits for a thread counts that wait against its deadline. Fewer than the service's
# --max-concurrent-rpcs (32 by default): the service frees a call's slot a moment after its answer, so a gateway
# of 32 threads, each sending its next call on the answer, had 1-2 calls of 64 refused with 429 in 5 of 12 runs.
CALL_THREADS = 24
PROBE_THREADS = 2
# X-Request-ID is passed to the service as gRPC metadata, which carries printable ASCII only; and an id is a
# short token, not a payload.
MAX_REQUEST_ID_CHARS = 128
# The Authorization header is passed to the service as gRPC metadata, and gRPC refuses a call whose metadata is over
# the service's grpc.max_metadata_size (8 KiB by default, counting the call's own headers, some 700 bytes) at
# random, and over 16 KiB always, with RESOURCE_EXHAUSTED. Half of it leaves room for those; a bearer token is far
# shorter (a JWT a few hundred characters).
MAX_AUTHORIZATION_CHARS = 4096
# Names a caller gave (an unknown query parameter, a JSON key) that an error message says back: how much of each,
# and how many (said_names).
MAX_NAME_CHARS = 100
MAX_NAMES_SAID = 5
MAX_PATH_CHARS = 200  # of a path no route has, said back by a 404 (said_path)
# How often a call in flight checks whether its HTTP caller is still there.
DISCONNECT_POLL_SECONDS = 0.25
# How often gRPC's own thread looks at a subscribed channel's state (grpc/_channel.py, _poll_connectivity), and a
# little more.
CONNECTIVITY_POLL_SECONDS = 0.25
# Said to the caller where the service could not be reached: the address is in the gateway's log, not in the answer
# (a page's user has no use for "inference:50051" or an IP, and the network's layout is not theirs to see).
NAMED_IN_THE_LOG = " (the gateway's log names the address it called)"
# nginx's status for a request whose client closed the connection first: logged, never received by anyone.
CLIENT_CLOSED = 499
IMAGE_FIELD_HELP = "any field name; every file part is an image"
# Declares `Authorization: Bearer <token>` in the OpenAPI schema; `authorize` checks it (auto_error=False: its own
# 401 and message, and no check at all without --token).
DECLARE_BEARER = Security(
    HTTPBearer(auto_error=False, description="the token the gateway was started with (--token); needed only then")
)
# The documentation pages (/docs, /redoc) fetch the schema relative to themselves, and the schema names its server
# relative to itself ("." from /openapi.json is the gateway's root: OpenAPI 3 lets a server's URL be relative to
# where the document was fetched), so that "Try it out" calls stay under the prefix a reverse proxy serves the
# gateway at (https://host/mnist/docs fetches /mnist/openapi.json and calls /mnist/v1/model), as the page's own
# calls do, with nothing to configure. FastAPI's pages name /openapi.json from the host's root and its schema names
# no server, so calls went to /v1/model, past the prefix, unless each deployment told the gateway its prefix
# (root_path), one more setting to keep in step with the proxy's.
SCHEMA_FROM_THE_DOCS = "openapi.json"
DOCS_PAGE = "docs"
THIS_GATEWAY = {"url": ".", "description": "this gateway, at the address this schema was fetched from"}


@dataclass(frozen=True)
class WebOptions:
    """What create_app needs; the defaults are also the command line's (inference/web/__main__.py)."""

    target: str = settings.DEFAULT_GRPC_TARGET
    # The service's health-only port (its --health-address, plaintext), which /readyz asks: answered by threads of
    # its own however busy the main port is. None: the main target's health service.
    health_target: str | None = None
    # When set, REST calls (not the health endpoints and the page) need `Authorization: Bearer <token>`.
    token: str | None = None
    tls: bool = False
    tls_ca: Path | None = None
    tls_server_name: str | None = None
    # Deadline of each gRPC call. With waitForReady a call made while no replica is up waits this long for one.
    timeout: float = 10.0
    evaluate_timeout: float = 120.0
    # A call made while the service has been unreachable (every replica) for longer than this fails at once with
    # 503 instead of waiting out its deadline for a replica to come back: a restart is ridden out, an outage said.
    unreachable_grace: float = 5.0
    # Above the gRPC service's default message limit (16 MiB, --max-message-bytes), so the service's own limits
    # and messages decide what is too large; this bound only keeps the gateway from reading a body without end.
    max_body_bytes: int = 32 * 1024 * 1024
    # All request bodies in flight together: two of the largest at once. Each is held about 6.5 times over while it
    # is handled (inference.capacity.web_memory_mib): 64 MiB keeps the gateway within ~480 MiB, which the compose and
    # Kubernetes memory limits hold; 128 MiB (four of the largest) reached 900 MiB and OOM-killed a 512 MiB pod.
    max_inflight_bytes: int = 64 * 1024 * 1024
    # The Host names answered (inference.web.guards: DNS rebinding); the command line narrows it to the loopback
    # names when the gateway listens on loopback only.
    allowed_hosts: tuple[str, ...] = (guards.ANY_HOST,)


class GatewayError(Exception):
    """A failed call: becomes an HTTP status and the JSON error body (inference/web/errors.py). `logged` is for the
    gateway's log only: what its operator needs and a caller must not see (the service's address, gRPC's words
    about the connection, which name addresses too)."""

    def __init__(
        self, status: int, code: grpc.StatusCode, message: str, request_id: str | None = None, logged: str = ""
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.request_id, self.logged = status, code, message, request_id, logged


class BodyTooLarge(Exception):
    pass


class Backend:
    """The gRPC service behind the gateway: one channel, shared by every request."""

    def __init__(self, options: WebOptions) -> None:
        self.options = options
        self.channel = make_channel(
            options.target, tls=options.tls, tls_ca=options.tls_ca, tls_server_name=options.tls_server_name
        )
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)
        # The health-only server speaks plaintext (Kubernetes' probes speak no TLS), whatever the main port does.
        self.health_channel = make_channel(options.health_target) if options.health_target else None
        self.health_target = options.health_target or options.target  # what /readyz asks, for the log
        self.health = health_pb2_grpc.HealthStub(self.health_channel or self.channel)
        self.calls = anyio.CapacityLimiter(CALL_THREADS)
        self.probes = anyio.CapacityLimiter(PROBE_THREADS)
        # Whether --target has answered an Inference call, so it is the service and not its health-only port, whose
        # health service says SERVING too (wrong_target).
        self.serves_the_api = False
        # Since when no replica could be reached (monotonic seconds), or None while one is. Connecting starts now,
        # so a service that is down is known before the first call.
        self.unreachable_since: float | None = None
        self.channel.subscribe(self._on_connectivity, try_to_connect=True)

    def _on_connectivity(self, state: grpc.ChannelConnectivity) -> None:
        """gRPC's callback on each change of the channel's state. Between failed attempts the channel is
        CONNECTING again (back-off at most 1 s: inference.channel), so only READY ends an outage."""
        if state == grpc.ChannelConnectivity.READY:
            self.unreachable_since = None
        elif state == grpc.ChannelConnectivity.TRANSIENT_FAILURE and self.unreachable_since is None:
            self.unreachable_since = time.monotonic()

    def wait_for_ready(self) -> bool:
        """Whether a call should wait for a replica (the channel's waitForReady): not once the service has been
        unreachable for longer than --unreachable-grace; then the call fails at once with UNAVAILABLE (503)."""
        since = self.unreachable_since
        return since is None or time.monotonic() - since < self.options.unreachable_grace

    def wrong_target(self, timeout: float) -> grpc.RpcError | None:
        """The error that shows --target does not serve the Inference API, or None. A gRPC server without it (the
        service's health-only port, another server) answers UNIMPLEMENTED without the call's request id; the
        service answers GetModelInfo with a model or without one, so a service waiting for its first model passes.
        Asked until the target has answered once, then never again: a target does not change, and a probe must stay
        cheap on a busy main port. A call not answered (the main target down, or too busy: --health-target tells
        whether the service is up) proves nothing either way, and is asked again at the next probe."""
        if self.serves_the_api:
            return None
        try:
            self.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=timeout, wait_for_ready=False)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED and not reached_server(e):
                return e
            if not reached_server(e):
                return None
        self.serves_the_api = True
        return None

    def close(self) -> None:
        self.channel.unsubscribe(self._on_connectivity)
        # gRPC's thread that watches the state ends at its next look (every 0.2 s) once nobody is subscribed; a
        # channel closed under it makes it raise "Cannot monitor channel state: Channel closed!".
        time.sleep(CONNECTIVITY_POLL_SECONDS)
        self.channel.close()
        if self.health_channel is not None:
            self.health_channel.close()

    def describe(self, e: grpc.RpcError, timeout: float, method: str = "") -> str:
        """The service's message, or for failures of the connection itself, what happened and what to do: without
        the service's address or gRPC's words about the connection, which go to the gateway's log (where_to_log).
        `method`: the Inference method called, if it was one (not /readyz's health check)."""
        code, details = e.code(), e.details() or ""
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return (
                f"the inference service did not answer within {timeout:g} s; it is down, still starting or "
                "overloaded: GET /readyz tells whether it can be reached"
            )
        # Only a call that never reached the service is about reaching it: the service's own UNAVAILABLE (no model
        # can be served: its message says why) may say "Failed to load" too.
        if code == grpc.StatusCode.UNAVAILABLE and not reached_server(e):
            return f"cannot reach the inference service; try again when it is up{NAMED_IN_THE_LOG}"
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return f"{details}. Over HTTP, send the header 'Authorization: Bearer <token>'"
        # gRPC's words list the call's headers and their sizes, which say nothing to a REST caller (they go to the
        # log). Reached only past pass_through_metadata's bound, by a service whose limit is lower than gRPC's.
        if errors.is_metadata_too_large(code, details):
            return (
                "the request's headers passed on to the inference service as gRPC metadata (Authorization, "
                "X-Request-ID) are more than it takes: send a shorter Authorization header"
            )
        # The inference service answers every call of its API with the call's request id; a gRPC server without the
        # method answers "Method not found!" without it: the gateway's --target is not the service, or an older one.
        if code == grpc.StatusCode.UNIMPLEMENTED and method and not reached_server(e):
            return (
                f"the gateway's --target does not serve the mnist inference API, or not its {method} (an older "
                f"service): check that --target ({settings.ENV_GRPC_TARGET}) is the inference service's own port "
                f"(its --address, {settings.DEFAULT_GRPC_PORT} by default), not its health-only port (its "
                f"--health-address){NAMED_IN_THE_LOG}"
            )
        return said_for_a_person(code, details) or code.name

    def where_to_log(self, details: str = "", target: str | None = None) -> str:
        """What the gateway's log says beside a failure's message: the address called (`target`, the main one
        unless given), and gRPC's own words."""
        return f"inference service at {target or self.options.target}" + (f": {details}" if details else "")

    async def call(self, method: str, request, *, timeout: float, http: Request, response: Response):
        """Run one unary gRPC call on a worker thread (the stubs block); translate its failure. The deadline
        counts from the request's arrival (Arrival), so the time its body took to arrive and the time spent
        waiting for a thread are part of it: a slow upload cannot stretch the answer past `timeout`, and one that
        took all of it gets 504 without a call. A caller that leaves cancels the call, so the service stops
        working for nobody (an Evaluate would hold the one evaluation slot for minutes)."""
        arrived = arrival(http)
        metadata, request_id = pass_through_metadata(http)
        if (spent := time.monotonic() - arrived) >= timeout:
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            message = (
                f"the request took {spent:.1f} s to arrive, all of the {timeout:g} s the gateway answers within: no "
                "time was left to ask the inference service; send the body at once, or a smaller one"
            )
            raise GatewayError(errors.http_status(code, message), code, message)
        stub_method = getattr(self.stub, method)
        future: grpc.Future | None = None
        gone = threading.Event()
        given_up = threading.Event()  # the call waited for a replica while none could be reached past the grace

        def run():
            nonlocal future
            if gone.is_set():
                raise grpc.FutureCancelledError()
            left = max(timeout - (time.monotonic() - arrived), 0.001)
            future = stub_method.future(request, timeout=left, metadata=metadata, wait_for_ready=self.wait_for_ready())
            if gone.is_set():  # the caller left while the call was being made: leave() found no future
                future.cancel()
            # Waits for the call to end (FutureCancelledError if it was cancelled) without raising its error: a
            # failed gRPC future is its own RpcError, and raised from this frame, whose closure holds the future,
            # its traceback would close a reference cycle holding the call until the collector's next full pass.
            future.exception()
            return future

        def leave() -> None:
            """The caller has gone (or this request was cancelled): cancel the call, or keep it from being made."""
            gone.set()
            if future is not None:
                future.cancel()

        def give_up() -> bool:
            """Cancel the call if it is still waiting for a replica once none could be reached for
            --unreachable-grace, and say whether it did: a call made just as the service went down waited out its
            whole deadline (an Evaluate's two minutes), though a call made a moment later is told at once."""
            if future is not None and not future.done() and not self.wait_for_ready():
                given_up.set()
                future.cancel()
                return True
            return False

        # The call runs on a worker thread while this task polls for the caller leaving. Not a task group with a
        # watcher cancelled at the end: each cancelled watcher left a reference cycle (its CancelledError's
        # traceback holds its frame, which holds the request and the gRPC call) that kept both until the
        # collector's next full pass. asyncio.wait returns the moment the call is done, and cancels nothing.
        work = asyncio.ensure_future(anyio.to_thread.run_sync(run, limiter=self.calls))
        try:
            watching = True
            while watching and not work.done():
                try:
                    if await http.is_disconnected():
                        leave()
                        break
                except Exception:  # e.g. BodyTooLarge from an unread body: stop watching; the call goes on
                    break
                watching = not give_up()
                await asyncio.wait((work,), timeout=DISCONNECT_POLL_SECONDS)
            await asyncio.wait((work,))
        finally:
            if not work.done():  # this request was cancelled itself (the gateway stopping): so is its gRPC call
                leave()
                work.add_done_callback(outcome)  # its outcome taken, asyncio logs no "exception never retrieved"
        answered, error = outcome(work)
        result = None
        if answered is not None:  # the call ended: its error (never raised, so with no traceback), or its answer
            error = answered.exception()
            if error is None:
                result = answered.result()
        if isinstance(error, grpc.FutureCancelledError) and given_up.is_set():
            code = grpc.StatusCode.UNAVAILABLE
            message = (
                f"cannot reach the inference service (no replica for {self.options.unreachable_grace:g} s); try "
                f"again when it is up{NAMED_IN_THE_LOG}"
            )
            raise GatewayError(errors.http_status(code, message), code, message, logged=self.where_to_log())
        if isinstance(error, grpc.FutureCancelledError):
            raise GatewayError(CLIENT_CLOSED, grpc.StatusCode.CANCELLED, "the caller left before the answer")
        if isinstance(error, grpc.RpcError):
            message = self.describe(error, timeout, method)
            code = error.code()
            raise GatewayError(
                errors.http_status(code, message),
                code,
                message,
                request_id,
                logged=self.where_to_log(error.details() or ""),
            )
        if error is not None:
            raise error
        response.headers["X-Request-ID"] = request_id
        return result


def authorization_header(http: Request) -> str:
    """The caller's one Authorization header, scheme spelt 'Bearer' ('' for none); more than one is refused (401)
    rather than one of them chosen by its order."""
    try:
        return one_authorization(http.headers.getlist("authorization"))
    except ValueError as e:
        raise GatewayError(
            401, grpc.StatusCode.UNAUTHENTICATED, f"{e}: send one header 'Authorization: Bearer <token>'"
        ) from None


def outcome(work: asyncio.Future) -> tuple[Any, Exception | None]:
    """A finished call's (result, None), or (None, the exception it raised). Caught here, in a frame of its own
    that is gone once it returns: caught in the caller's frame, the exception's traceback would hold that frame
    and the frame the exception, a reference cycle."""
    try:
        return work.result(), None
    except Exception as e:
        return None, e


def pass_through_metadata(http: Request) -> tuple[list[tuple[str, str]], str]:
    """The caller's Authorization header and the call's request id as gRPC metadata, and that id. gRPC metadata
    carries printable ASCII only: other characters would fail the call as the service's fault ("Invalid
    metadata", a 502), so they are the caller's error here, said as such.

    The id is the caller's X-Request-ID when it is a sane token, else one made here, by the service's own rule
    (access_log.request_id_from), so the service keeps it: the gateway knows the id of every call it makes, and
    says it in every answer. The service says it only with its status, which a call past its deadline (a 504)
    never gets."""
    metadata = []
    if authorization := authorization_header(http):
        if len(authorization) > MAX_AUTHORIZATION_CHARS:
            # Refused here, before the call: gRPC's own refusal is RESOURCE_EXHAUSTED, a 429 whose Retry-After
            # had clients send the same header forever, and one between 8 and 16 KiB passed or failed at random.
            raise GatewayError(
                errors.HEADERS_TOO_LARGE,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the Authorization header is {len(authorization):,} characters; the gateway passes at most "
                f"{MAX_AUTHORIZATION_CHARS:,} on to the inference service (as gRPC metadata, which has a size "
                "limit): send 'Authorization: Bearer <token>' with the service's token",
            )
        if not is_metadata_value(authorization):
            raise GatewayError(
                401,
                grpc.StatusCode.UNAUTHENTICATED,
                "the Authorization header holds characters other than printable ASCII; send "
                "'Authorization: Bearer <token>' with the service's token",
            )
        metadata.append((AUTH_METADATA_KEY, authorization))
    supplied = http.headers.get(REQUEST_ID_KEY)
    if supplied is not None and len(supplied) > MAX_REQUEST_ID_CHARS:
        raise _bad_request(
            f"X-Request-ID must be at most {MAX_REQUEST_ID_CHARS} characters (it was {len(supplied):,}); send a "
            "shorter id, or none and one is made"
        )
    if supplied is not None and not is_metadata_value(supplied):  # a short one was told to be shorter
        raise _bad_request(
            "X-Request-ID must be printable ASCII (letters, digits, punctuation, spaces); send such an id, or none "
            "and one is made"
        )
    request_id = request_id_of(http)  # the id the answer says, whatever it is (RequestIds)
    metadata.append((REQUEST_ID_KEY, request_id))
    return metadata, request_id


ARRIVED = "arrived"  # Arrival's key in a request's scope["state"]


class Arrival:
    """ASGI middleware, the first to run: notes when the gateway began handling a request (monotonic seconds, in
    its scope's state), before any byte of its body is read. Backend.call counts the deadline from then."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            scope.setdefault("state", {})[ARRIVED] = time.monotonic()
        return await self.app(scope, receive, send)


class ClosesAfterAnUnreadBody:
    """ASGI middleware: an answer sent before the request's body was all received (a 408 or a 413 while it
    arrives, a 401 or a refused Host before it is read) says `Connection: close`, and uvicorn closes the connection
    after it. Otherwise uvicorn keeps the connection alive and reads what is left of the body only to throw it away,
    for as long as the caller goes on sending it: a body sent a byte every few seconds held its connection open for
    good after its 408."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        # Without either header a request has no body (RFC 9112, 6.3).
        unread = b"transfer-encoding" in headers or headers.get(b"content-length", b"0") != b"0"

        async def noting_receive():
            nonlocal unread
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                unread = False
            return message

        async def closing_send(message):
            if message["type"] == "http.response.start" and unread:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        return await self.app(scope, noting_receive, closing_send)


REQUEST_ID = "request_id"  # RequestIds' key in a request's scope["state"]
REQUEST_ID_HEADER = REQUEST_ID_KEY.encode()


class RequestIds:
    """ASGI middleware: every answer carries X-Request-ID, the caller's when it is a sane token, else one made here
    by the service's rule (access_log.request_id_from); a call to the service passes that same id on
    (pass_through_metadata), so it is the id in the service's access log too. Only the answers of calls to the
    service said one: what the gateway answers itself (a 415, a 413, the 504 of a body slower than the deadline, a
    probe's) said none, though the caller's id is how they find an answer in their own logs."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # The first header by that name, as Starlette's request.headers.get reads it.
        supplied = next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == REQUEST_ID_HEADER), None)
        request_id = request_id_from(supplied)
        scope.setdefault("state", {})[REQUEST_ID] = request_id

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                if all(name.lower() != REQUEST_ID_HEADER for name, _ in headers):
                    message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, request_id.encode())]}
            await send(message)

        return await self.app(scope, receive, send_with_id)


def request_id_of(http: Request) -> str:
    """The id RequestIds chose for `http`; for a request it did not see, one chosen now by the same rule."""
    chosen = http.scope.get("state", {}).get(REQUEST_ID)
    return chosen if chosen is not None else request_id_from(http.headers.get(REQUEST_ID_KEY))


def arrival(http: Request) -> float:
    """When the gateway began handling `http` (Arrival); now for a request it did not see arrive."""
    arrived = http.scope.get("state", {}).get(ARRIVED)
    return arrived if arrived is not None else time.monotonic()


# --------------------------------------------------------------------------------------------------------------
# What the gateway reads itself: a bounded body, one or many images


BODY_STALL_SECONDS = 30.0
# A body declared over the limit is read and thrown away, up to this many times the limit and while it arrives
# without a pause of DRAIN_STALL_SECONDS, before the 413: closed with the body unread, the connection was reset (the
# kernel resets a socket closed with data unread), and a client that sends the whole body before it reads (Python's
# http.client, urllib, requests) lost the 413 to the reset: 10 of 10 bodies of 40 MB over the default 32 MiB.
DRAIN_FACTOR = 4
DRAIN_STALL_SECONDS = 1.0
DRAIN_SECONDS = 10.0


async def drain(receive: Receive, most: int) -> None:
    """Read and drop up to `most` bytes of a refused body: for DRAIN_SECONDS at most, and not past a pause of
    DRAIN_STALL_SECONDS (a caller that sent the headers alone is answered after that pause). Nothing is kept."""
    got, deadline = 0, time.monotonic() + DRAIN_SECONDS
    while got < most and (left := deadline - time.monotonic()) > 0:
        try:
            message = await asyncio.wait_for(receive(), min(DRAIN_STALL_SECONDS, left))
        except TimeoutError:
            return
        if message["type"] != "http.request":
            return
        got += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 before it is read into memory, and the bodies of
    all requests in flight together stay within `max_inflight_bytes` (429 with Retry-After past it).

    A Content-Length over the limit is refused before any of the body is kept (read and dropped first, up to a bound,
    from a sender that did not ask to continue: drain); otherwise the body is counted as it arrives, and the
    endpoint reading it gets BodyTooLarge at the first byte over. Each request's bytes that have arrived count
    against the shared budget until its response is sent: without it, 100 callers sending 32 MiB each at once would
    make the gateway hold 3.2 GB. Only bytes that arrived count, not a declared length: four connections that sent
    headers declaring 32 MiB and nothing more held the whole budget, and every image route answered 429 for as long
    as they stayed open. A body that stops arriving for BODY_STALL_SECONDS ends the request (408), giving back what
    it held; so does one that has not all arrived `body_seconds` after the request (Arrival; the gateway's
    --timeout, within which its answer is due anyway): a body sent a byte every few seconds never stalls that long,
    and held its request and connection open for as long as its caller liked.
    """

    def __init__(self, app, max_bytes: int, max_inflight_bytes: int, body_seconds: float) -> None:
        self.app, self.max_bytes, self.max_inflight_bytes = app, max_bytes, max_inflight_bytes
        self.body_seconds = body_seconds
        self.inflight = 0  # bytes of request bodies held now; one event loop, so no lock

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            if headers.get(b"expect", b"").lower() != b"100-continue":  # curl asks first, and reads the 413 unsent
                await drain(receive, min(int(declared), DRAIN_FACTOR * self.max_bytes))
            return await _too_large_response(self.max_bytes)(scope, receive, send)
        held = 0  # what this request counts against the budget: the bytes of its body that have arrived
        body_done = False
        deadline = scope.get("state", {}).get(ARRIVED, time.monotonic()) + self.body_seconds

        async def counted_receive():
            nonlocal held, body_done
            if body_done:  # after the body only a disconnect comes, whenever the caller leaves
                return await receive()
            left = deadline - time.monotonic()
            if left <= 0:
                raise BodyTooSlow()
            stall = left > BODY_STALL_SECONDS  # which of the two bounds the wait ends at
            try:
                message = await asyncio.wait_for(receive(), min(BODY_STALL_SECONDS, left))
            except TimeoutError:
                raise (BodyStalled() if stall else BodyTooSlow()) from None
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                grown = len(message.get("body", b""))
                if held + grown > self.max_bytes:
                    raise BodyTooLarge()
                if self.inflight + grown > self.max_inflight_bytes:
                    raise GatewayBusy()
                self.inflight += grown
                held += grown
            return message

        try:
            return await self.app(scope, counted_receive, send)
        finally:
            self.inflight -= held


class BodyStalled(Exception):
    """No byte of a request's body arrived for BODY_STALL_SECONDS: the caller is gone or stalled."""


class BodyTooSlow(Exception):
    """A request's body had not all arrived by its deadline (BodyLimit's body_seconds after its arrival)."""


class GatewayBusy(Exception):
    """The request bodies in flight have reached --max-inflight-bytes."""


def _busy_response(max_inflight_bytes: int) -> JSONResponse:
    message = (
        f"the gateway holds {max_inflight_bytes:,} bytes of request bodies in flight, its limit; try again in a moment"
    )
    return JSONResponse(
        errors.error_body(429, grpc.StatusCode.RESOURCE_EXHAUSTED, message),
        status_code=429,
        headers=errors.error_headers(429, grpc.StatusCode.RESOURCE_EXHAUSTED),
    )


def _too_large_response(max_bytes: int) -> JSONResponse:
    message = (
        f"the request body is over {max_bytes:,} bytes, the most this gateway reads (--max-body-bytes); send "
        "a smaller body: fewer or smaller images"
    )
    return JSONResponse(
        errors.error_body(errors.TOO_LARGE, grpc.StatusCode.RESOURCE_EXHAUSTED, message), status_code=errors.TOO_LARGE
    )


def _bad_request(message: str) -> GatewayError:
    return GatewayError(400, grpc.StatusCode.INVALID_ARGUMENT, message)


def said_names(names: list[str]) -> str:
    """Names the caller gave (query parameters, JSON keys), as an error message says them and the gateway's log
    repeats it: each quoted (repr: a newline in one cannot begin a forged log line) and cut to MAX_NAME_CHARS, and
    the first MAX_NAMES_SAID of them (one 60,000-character name added 120 kB to the log and the answer)."""
    return first_few([repr(name[:MAX_NAME_CHARS]) for name in names], ", ", " and")


def said_path(path: str) -> str:
    """A path no route has, as a 404 says it back: cut to MAX_PATH_CHARS (a 12,000-character path was said whole,
    in the answer and the log line)."""
    return path if len(path) <= MAX_PATH_CHARS else f"{path[:MAX_PATH_CHARS]}... ({len(path):,} characters)"


def first_few(parts: list[str], separator: str, before_more: str) -> str:
    """The first MAX_NAMES_SAID of `parts` joined by `separator`, then how many more there are, if any."""
    more = len(parts) - MAX_NAMES_SAID
    return separator.join(parts[:MAX_NAMES_SAID]) + (f"{before_more} {more:,} more" if more > 0 else "")


def known_query_parameters(request: Request) -> None:
    """A query parameter the route does not take is refused, naming it: `?modelversion=x` was ignored, and the
    served model answered as if the caller had asked for it."""
    endpoint = request.scope.get("endpoint")
    if endpoint is None:
        return
    known = query_parameter_names(endpoint)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        takes = ", ".join(sorted(known)) if known else "none"
        raise _bad_request(f"unknown query parameter {said_names(unknown)}: {request.url.path} takes {takes}")
    # Given twice, the last was taken: `?model_version=nope&model_version=` was answered by the served model.
    repeated = sorted(name for name in set(request.query_params) if len(request.query_params.getlist(name)) > 1)
    if repeated:
        raise _bad_request(f"query parameter {', '.join(repeated)} given more than once: give each once")


@cache
def query_parameter_names(endpoint: Any) -> frozenset[str]:
    """The query parameters a route's function takes: its arguments but the request and the response."""
    return frozenset(name for name in inspect.signature(endpoint).parameters if name not in ("request", "response"))


# A PNG's signature (89 'PNG' CR LF 1A LF) with its CR and LF gone: what `curl -d @digit.png` sends (it drops a
# file's line breaks, as for form text); every real PNG has CR LF there, so the prefix names that mistake alone.
PNG_WITHOUT_LINE_BREAKS = b"\x89PNG\x1a"


async def read_images(request: Request) -> list[bytes]:
    """The images of a request: each file part of a multipart/form-data body, or else the whole body."""
    content_type = request.headers.get("content-type", "")
    # A gzipped body reached the service as its compressed bytes, and came back "not an image".
    coding = request.headers.get("content-encoding", "").strip().lower()
    if coding not in ("", "identity"):
        raise GatewayError(
            415,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the body is sent with Content-Encoding {coding[:MAX_NAME_CHARS]!r}, which the gateway does not decode: "
            "send the image's own bytes, with no Content-Encoding (PNG, JPEG and WebP are compressed already)",
        )
    if media_type(content_type) == "application/json":
        raise GatewayError(
            415,
            grpc.StatusCode.INVALID_ARGUMENT,
            "an image is sent as its own bytes, not inside JSON: the body itself (curl --data-binary @digit.png "
            "-H 'Content-Type: image/png') or a multipart file (curl -F file=@digit.png)",
        )
    # The media type itself: 'multipart/form-datax; boundary=...' passed a prefix test, and Starlette, which
    # parses no such type, gave no images (a batch answered 200 with no results).
    if media_type(content_type) != "multipart/form-data":
        body = await request.body()
        if body.startswith(PNG_WITHOUT_LINE_BREAKS):
            raise _bad_request(
                "the body is a PNG whose line-break bytes were taken out, as curl -d does to a file: send it with "
                "curl --data-binary @digit.png, or as a file part (curl -F file=@digit.png)"
            )
        return [body]
    # The body is read once: request.form() parses the same bytes.
    body = await request.body()
    closed = complete_multipart(body, content_type)
    try:
        form = await request.form(max_files=MAX_MULTIPART_FILES)
    except (MultiPartException, StarletteHTTPException) as e:
        # Starlette raises its parser's MultiPartException as an HTTPException(400) inside an application.
        problem = e.message if isinstance(e, MultiPartException) else str(e.detail)
        if "too many files" in problem.lower():
            raise GatewayError(
                errors.TOO_LARGE,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"more than {MAX_MULTIPART_FILES:,} files in one request, the most this gateway reads; send the "
                "images in several requests",
            ) from None
        raise _bad_request(f"the multipart body could not be read ({problem}); send the image as a file part") from None
    try:
        # A text field is a mistake (curl -F 'files=<a.png' sends the file's bytes as text): said, not skipped.
        if text_fields := [name for name, value in form.multi_items() if not isinstance(value, UploadFile)]:
            raise _bad_request(
                f"the multipart body has text field {text_fields[0][:100]!r}, not a file; send each image as a "
                "file part (curl -F 'files=@a.png')"
            )
        if closed is not None and not all_parts_finished(body, *closed, len(form.multi_items())):
            raise _bad_request(
                "the multipart body opens a part that does not end before its closing boundary: it was cut short, "
                "and an image would be lost; send the whole body"
            )
        return [await value.read() for _, value in form.multi_items() if isinstance(value, UploadFile)]
    finally:
        await form.close()


def complete_multipart(body: bytes, content_type: str) -> tuple[bytes, int] | None:
    """Refuse a multipart body that ends before its closing delimiter (--boundary--): the parser gives the parts
    it finished and drops the last one without a word, so a batch of three came back as two results. A delimiter
    counts only at the body's start or right after a CRLF (RFC 2046): '--boundary--' glued to an image's last
    bytes is part of that image, which then never ends. Returns the boundary and where the closing delimiter
    is, for all_parts_finished; None without a boundary (the parser refuses that body itself)."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        return None
    # bytes.find, not a regular expression with '(?:\A|\r\n)': that finds no literal to skip to, and took 0.4 s
    # of the event loop for a 32 MiB body.
    close = 0 if body.startswith(b"--" + boundary + b"--") else body.find(b"\r\n--" + boundary + b"--")
    if close < 0:
        raise _bad_request(
            "the multipart body ends before its closing boundary (--BOUNDARY-- at the start of a line): it was cut "
            "short, and its last image would be lost; send the whole body"
        )
    return boundary, close


def all_parts_finished(body: bytes, boundary: bytes, close: int, finished: int) -> bool:
    """Whether the body opens no more parts before its closing delimiter (at `close`) than the parser `finished`:
    one it opened and never ended is not in the form (one image fewer, answered 200). An opening delimiter, as
    the parser reads one: at the body's start followed by a CRLF, or after a CRLF followed by optional blanks
    (transport padding) and a CRLF. Counted up to one past `finished`, so a body of a million delimiters costs
    no more than one of a few."""
    opened = int(body.startswith(b"--" + boundary + b"\r\n"))
    delimiters = re.compile(rb"\r\n--" + re.escape(boundary) + rb"[ \t]*\r\n").finditer(body, 0, close)
    return opened + sum(1 for _ in islice(delimiters, finished + 1 - opened)) <= finished


def media_type(content_type: str) -> str:
    """'application/json; charset=utf-8' -> 'application/json'."""
    return content_type.split(";")[0].strip().lower()


def read_evaluate_request(raw: bytes, content_type: str) -> schemas.EvaluateRequest:
    """An Evaluate request: sent as application/json, its body JSON, or empty for the defaults. Another content
    type is refused, an empty body's too: a web page of any site may POST text/plain, a form or nothing at all to
    this gateway without asking (no CORS preflight), and so make a visitor's local service evaluate, holding its
    one evaluation slot. application/json is not one a page can send without the preflight, which fails here."""
    if media_type(content_type) != "application/json":
        came = f"it came as {content_type[:100]!r}" if content_type else "it came without one"
        raise GatewayError(
            415,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"an Evaluate request must be sent with Content-Type: application/json ({came}), its body empty or "
            'JSON such as {"split": "validation"}',
        )
    if not raw.strip():
        return schemas.EvaluateRequest()
    try:
        body = schemas.EvaluateRequest.model_validate_json(raw)
    except ValidationError as e:
        raise _bad_request(
            f'invalid request: {validation_problems(e)}; send JSON such as {{"split": "validation", "heatmap": false}}'
        ) from None
    # Given twice, the last was taken: {"model_version": "nope", "model_version": ""} was answered by the served
    # model, as a repeated query parameter was. Looked for once the body is valid: one flat object of known keys.
    if repeated := repeated_keys(raw):
        raise _bad_request(f"invalid request: key {said_names(repeated)} given more than once: give each once")
    return body


def repeated_keys(raw: bytes) -> list[str]:
    """The keys that a JSON object of `raw` names more than once (JSON allows it; the last one is what pydantic
    and json.loads keep)."""
    repeated: set[str] = set()

    def note_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        counted = Counter(key for key, _ in pairs)  # not list.count: a body may hold a million pairs
        repeated.update(key for key, times in counted.items() if times > 1)
        return dict(pairs)

    try:
        json.loads(raw, object_pairs_hook=note_repeats)
    except ValueError:  # JSON pydantic read and the standard library does not: no repeats it could say
        return []
    return sorted(repeated)


def validation_problems(e: ValidationError | RequestValidationError) -> str:
    """Pydantic's or FastAPI's validation errors in one line: 'query.model_input: Input should be ...', the first
    MAX_NAMES_SAID of them (a body of 10,000 unknown keys has as many)."""
    return first_few([f"{where_invalid(error)}: {error['msg']}" for error in e.errors()], "; ", "; and")


def where_invalid(error: Mapping[str, Any]) -> str:
    """Where a validation error is: 'query.model_input', 'split', or 'body' for the whole. A key the gateway does
    not take is the caller's own name, said as said_names says it: one with a newline and a log line's words after
    it forged a line of the gateway's log."""
    loc = [str(part) for part in error["loc"]]
    if error["type"] == "extra_forbidden" and loc:
        loc[-1] = said_names(loc[-1:])
    return ".".join(loc) or "body"


async def read_one_image(request: Request) -> bytes:
    images = await read_images(request)
    if len(images) != 1:
        raise _bad_request(
            f"{len(images)} files in the multipart body; send exactly one image here "
            "(POST /v1/predict/batch takes several)"
        )
    return images[0]


# --------------------------------------------------------------------------------------------------------------
# The application


def error_responses(descriptions: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": schemas.ErrorResponse, "description": text} for status, text in descriptions.items()}


# Every /v1 route.
ERROR_RESPONSES = error_responses(
    {
        400: "not an image, damaged, blank, or a bad request",
        401: "the service needs `Authorization: Bearer <token>`",
        429: "busy: too many calls at once, or an evaluation already running; retry after Retry-After seconds",
        431: "the `Authorization` header is longer than the gateway passes on to the service "
        f"({MAX_AUTHORIZATION_CHARS:,} characters)",
        502: "the inference service failed inside (its log has the traceback), or the gateway's --target does not "
        "serve the method (the service's health-only port, an older service)",
        503: "no model published yet, the inference service restarting or unreachable, the gateway serving as many "
        "connections as it takes, or (without Retry-After) no MNIST files for Evaluate or a pinned version that "
        "fails its checks",
        504: "the inference service did not answer in time",
    }
)
# Routes that read a body.
BODY_RESPONSES = error_responses(
    {
        408: f"the request body did not arrive within the gateway's --timeout ({WebOptions.timeout:g} s by "
        f"default), or stopped arriving for {BODY_STALL_SECONDS:g} s",
        413: "over a limit: image bytes or pixels, images per batch, or request bytes",
    }
)
IMAGE_RESPONSES = {
    **BODY_RESPONSES,
    **error_responses({415: "the image was sent inside JSON: send its own bytes, or a multipart file"}),
}
# Calls that take ?model_version= (or "model_version" in the body) can name a version that is not published.
PINNED_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": schemas.ErrorResponse, "description": "`model_version` is not a published version"},
}
READ_NUMBER_RESPONSES: dict[int | str, dict[str, Any]] = {
    **IMAGE_RESPONSES,
    **PINNED_RESPONSES,
    400: {
        "model": schemas.ErrorResponse,
        "description": "not an image, damaged or blank; no digit found, more than one line of writing, or more "
        "than 12 digits (the message says which and what to send instead); or a bad request",
    },
}
IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary", "description": IMAGE_FIELD_HELP}},
                }
            },
        },
        "description": "one encoded image (PNG, JPEG, GIF, BMP, TIFF or WebP) as the body, or as a multipart file",
    }
}
EVALUATE_BODY = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": schemas.EvaluateRequest.model_json_schema()}},
        "description": "JSON, or empty for the defaults; always with `Content-Type: application/json`",
    }
}
EVALUATE_RESPONSES = {
    **BODY_RESPONSES,
    **PINNED_RESPONSES,
    **error_responses({415: "not sent as `Content-Type: application/json`"}),
}
BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": IMAGE_FIELD_HELP,
                        }
                    },
                }
            }
        },
        "description": "multipart/form-data, one file part per image; results come back in the same order (a "
        "body that is not multipart is read as one image, as by /v1/predict)",
    }
}


def create_app(options: WebOptions) -> FastAPI:
    backend: Backend | None = None  # made at start-up (lifespan), closed at shutdown

    def connected() -> Backend:
        assert backend is not None, "the app's lifespan has not started"
        return backend

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal backend
        backend = Backend(options)
        log.info(
            "REST API and page in front of the gRPC service at %s%s%s",
            options.target,
            f" (readiness asked at {options.health_target})" if options.health_target else "",
            "; token required" if options.token else "",
        )
        try:
            yield
        finally:
            backend.close()

    app = FastAPI(
        title="mnist-stack",
        version="1",
        summary="Handwritten-digit recognition over HTTP: the REST face of the gRPC service mnist.v1.Inference.",
        description="Each call is the matching gRPC call (protos/mnist/v1/inference.proto): the same image "
        'pipeline, model, limits and error messages. Errors are `{"error": {"status", "code", '
        '"message"}}`, where `code` is the gRPC status and `message` says what to fix.',
        servers=[THIS_GATEWAY],
        # Served below, naming the schema relative to themselves (SCHEMA_FROM_THE_DOCS). No OAuth2 redirect page:
        # the only scheme is a bearer token, typed into Authorize.
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        # Starlette's redirect of '/docs/' names a URL from the host's root, outside a proxy's prefix;
        # redirects_without_the_slash's is relative.
        redirect_slashes=False,
    )
    redirects_without_the_slash(app.router)
    # The last added runs first: the arrival is noted before anything else (the deadline counts from it), an answer
    # before the body was read closes its connection, the headers (the request id's included) go on every answer,
    # the Host is checked before any body is read.
    app.add_middleware(
        BodyLimit,
        max_bytes=options.max_body_bytes,
        max_inflight_bytes=options.max_inflight_bytes,
        body_seconds=options.timeout,
    )
    app.add_middleware(guards.HostCheck, allowed=options.allowed_hosts)
    app.add_middleware(guards.SecurityHeaders)
    app.add_middleware(RequestIds)
    app.add_middleware(ClosesAfterAnUnreadBody)
    app.add_middleware(Arrival)
    expected_authorization = f"Bearer {options.token}".encode() if options.token else None

    def authorize(request: Request, _declared: Any = DECLARE_BEARER) -> None:
        """With --token: the REST caller must send it. Checked before the body is read, in constant time. The
        `Security` parameter only declares the scheme in the OpenAPI schema (/docs then has Authorize)."""
        if expected_authorization is None:
            return
        supplied = authorization_header(request)
        if not hmac.compare_digest(supplied.encode(), expected_authorization):
            reason = "no Authorization header" if not supplied else "wrong token"
            raise GatewayError(
                401, grpc.StatusCode.UNAUTHENTICATED, f"{reason}: send the header 'Authorization: Bearer <token>'"
            )

    # ----------------------------------------------------------------------------------------------------------
    # Errors: one JSON shape for all of them

    def error_response(
        status: int,
        code: grpc.StatusCode,
        message: str,
        request_id: str | None = None,
        extra_headers: dict[str, str] | None = None,
    ):
        headers = {**(extra_headers or {}), **errors.error_headers(status, code)}
        if request_id:
            headers["X-Request-ID"] = request_id
        return JSONResponse(errors.error_body(status, code, message), status_code=status, headers=headers)

    @app.exception_handler(GatewayError)
    async def on_gateway_error(request: Request, e: GatewayError):
        logged = f" [{e.logged}]" if e.logged else ""
        log.info("%s %s -> %d %s: %s%s", request.method, request.url.path, e.status, e.code.name, e.message, logged)
        return error_response(e.status, e.code, e.message, e.request_id)

    @app.exception_handler(ClientDisconnect)
    async def on_client_gone(request: Request, e: ClientDisconnect):
        # The client closed its connection before its body had all come: no one to answer, and no bug of ours.
        # Left to the handler below, it was logged as "Exception in ASGI application" with a traceback.
        log.info("%s %s: the client closed the connection before its body came", request.method, request.url.path)
        return error_response(
            400, grpc.StatusCode.CANCELLED, "the client closed the connection", request_id_of(request)
        )

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, e: Exception):
        # A bug: Starlette answers it outside every middleware added here (and logs the traceback after), so its
        # answer gets here what they add to every other one: the request's id, the common headers, no caching;
        # and the error body of every other answer, not a plain-text "Internal Server Error".
        message = "internal error in the gateway; its log has the traceback (search it for this X-Request-ID)"
        headers = {k.decode(): v.decode() for k, v in {**guards.COMMON_HEADERS, **guards.API_HEADERS}.items()}
        return error_response(500, grpc.StatusCode.INTERNAL, message, request_id_of(request), headers)

    @app.exception_handler(BodyTooLarge)
    async def on_body_too_large(request: Request, e: BodyTooLarge):
        return _too_large_response(options.max_body_bytes)

    @app.exception_handler(BodyStalled)
    @app.exception_handler(BodyTooSlow)
    async def on_body_late(request: Request, e: BodyStalled | BodyTooSlow):
        late = (
            f"no byte of the request body arrived for {BODY_STALL_SECONDS:.0f} s"
            if isinstance(e, BodyStalled)
            else f"the request body did not arrive within {options.timeout:g} s, the time the gateway has to answer "
            "(--timeout, counted from the request's arrival)"
        )
        message = f"{late}; send the whole body at once, as soon as the headers"
        return error_response(408, grpc.StatusCode.DEADLINE_EXCEEDED, message)

    @app.exception_handler(GatewayBusy)
    async def on_gateway_busy(request: Request, e: GatewayBusy):
        return _busy_response(options.max_inflight_bytes)

    @app.exception_handler(RequestValidationError)
    async def on_invalid_request(request: Request, e: RequestValidationError):
        return error_response(400, grpc.StatusCode.INVALID_ARGUMENT, f"invalid request: {validation_problems(e)}")

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, e: StarletteHTTPException):
        code = {404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED}.get(
            e.status_code, grpc.StatusCode.INVALID_ARGUMENT
        )
        # The docs named relative to the URL asked (as the page names its calls), not as /docs: under a proxy's
        # prefix that is https://host/docs, outside the gateway.
        docs = where_the_docs_are(sent_path(request.scope))
        message = (
            f"{e.detail}: {request.method} {said_path(request.url.path)}; {docs} "
            "(the docs page beside the gateway's web page)"
        )
        # Starlette's own headers: a 405's Allow (the methods the path takes), which HTTP requires.
        return error_response(e.status_code, code, message, extra_headers=dict(e.headers or {}))

    # ----------------------------------------------------------------------------------------------------------
    # The API

    api = APIRouter(
        prefix="/v1", dependencies=[Depends(authorize), Depends(known_query_parameters)], responses=ERROR_RESPONSES
    )

    @api.post(
        "/predict",
        response_model=schemas.Prediction,
        openapi_extra=IMAGE_BODY,
        responses={**IMAGE_RESPONSES, **PINNED_RESPONSES},
        summary="Read the digit in one picture (gRPC Predict)",
    )
    async def predict(
        request: Request, response: Response, model_input: bool = True, model_version: str = ""
    ) -> schemas.Prediction:
        """`model_version` reads with another published version (GET /v1/models; empty: the served one)."""
        image = await read_one_image(request)
        result = await connected().call(
            "Predict",
            pb.PredictRequest(image=image, return_model_input=model_input, model_version=model_version),
            timeout=options.timeout,
            http=request,
            response=response,
        )
        return schemas.Prediction.from_response(result)

    @api.post(
        "/predict/batch",
        response_model=schemas.BatchPrediction,
        openapi_extra=BATCH_BODY,
        responses={**IMAGE_RESPONSES, **PINNED_RESPONSES},
        summary="Read the digit in each of many pictures, in one forward pass (gRPC PredictBatch)",
    )
    async def predict_batch(
        request: Request, response: Response, model_input: bool = True, model_version: str = ""
    ) -> schemas.BatchPrediction:
        images = await read_images(request)
        result = await connected().call(
            "PredictBatch",
            pb.PredictBatchRequest(images=images, return_model_input=model_input, model_version=model_version),
            timeout=options.timeout,
            http=request,
            response=response,
        )
        results: list[schemas.DigitPrediction | schemas.ImageFailure] = []
        for item in result.results:
            if item.HasField("error"):
                code = errors.grpc_code_from_value(item.error.code)
                status = errors.http_status(code, item.error.message)
                results.append(
                    schemas.ImageFailure(error=schemas.Error(status=status, code=code.name, message=item.error.message))
                )
            else:
                results.append(schemas.DigitPrediction.from_pb(item.prediction))
        return schemas.BatchPrediction(model_version=result.model_version, results=results)

    @api.get(
        "/model",
        response_model=schemas.ModelInfo,
        summary="The served model, its input contract and limits (gRPC GetModelInfo)",
    )
    async def model(request: Request, response: Response) -> schemas.ModelInfo:
        info = await connected().call(
            "GetModelInfo", pb.GetModelInfoRequest(), timeout=options.timeout, http=request, response=response
        )
        return schemas.ModelInfo.from_pb(info)

    @api.get(
        "/models",
        response_model=schemas.ModelList,
        summary="The published model versions, newest first, and which one is served (gRPC ListModels)",
    )
    async def models(request: Request, response: Response) -> schemas.ModelList:
        result = await connected().call(
            "ListModels", pb.ListModelsRequest(), timeout=options.timeout, http=request, response=response
        )
        return schemas.ModelList.from_pb(result)

    @api.post(
        "/evaluate",
        response_model=schemas.Evaluation,
        openapi_extra=EVALUATE_BODY,
        responses=EVALUATE_RESPONSES,
        summary="Score the served model on MNIST: metrics, per-class scores, confusion matrix (gRPC Evaluate)",
    )
    async def evaluate(request: Request, response: Response) -> schemas.Evaluation:
        """The body is optional (none: the test split, with the heatmap), `Content-Type: application/json`
        is not."""
        # Read here, not declared as a parameter: FastAPI reads a declared body before the token check runs.
        body = read_evaluate_request(await request.body(), request.headers.get("content-type", ""))
        result = await connected().call(
            "Evaluate",
            pb.EvaluateRequest(
                split=schemas.SPLITS[body.split], omit_heatmap=not body.heatmap, model_version=body.model_version
            ),
            timeout=options.evaluate_timeout,
            http=request,
            response=response,
        )
        return schemas.Evaluation.from_pb(result)

    @api.post(
        "/read-number",
        response_model=schemas.NumberReading,
        openapi_extra=IMAGE_BODY,
        responses=READ_NUMBER_RESPONSES,
        summary="Read a whole number: one line of 1-12 handwritten digits, each with its box (gRPC ReadNumber)",
    )
    async def read_number(
        request: Request, response: Response, model_input: bool = True, model_version: str = ""
    ) -> schemas.NumberReading:
        """The digits left to right, each with its box in the picture's pixels, its probabilities and (unless
        `model_input=false`) the 28x28 image the model saw; decimal points and commas come back as `separators`.
        `model_version` reads with another published version (empty: the served one)."""
        image = await read_one_image(request)
        result = await connected().call(
            "ReadNumber",
            pb.ReadNumberRequest(image=image, return_model_input=model_input, model_version=model_version),
            timeout=options.timeout,
            http=request,
            response=response,
        )
        return schemas.NumberReading.from_pb(result)

    answer_head_where_get(api)
    app.include_router(api)
    _document_validation_errors_as_400(app)

    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=SCHEMA_FROM_THE_DOCS, title=f"{app.title} - Swagger UI")

    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(openapi_url=SCHEMA_FROM_THE_DOCS, title=f"{app.title} - ReDoc")

    # Starlette routes, as FastAPI's own pages are: GET and HEAD, and not in the schema.
    app.add_route("/docs", swagger_ui, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)

    # ----------------------------------------------------------------------------------------------------------
    # Probes: no token (as gRPC health checking), they reveal only whether the service is up

    @app.get(guards.LIVENESS_PATH, response_model=schemas.Health, summary="Liveness: this gateway answers")
    async def healthz() -> schemas.Health:
        return schemas.Health(status="ok")

    @app.get(
        guards.READINESS_PATH,
        response_model=schemas.Health,
        responses={503: ERROR_RESPONSES[503]},
        summary="Readiness: the inference service behind the gateway is SERVING a model",
    )
    async def readyz() -> schemas.Health:
        waited = min(options.timeout, 3.0)
        began = time.monotonic()
        try:
            # No waiting for a connection: a probe must say "not ready" at once.
            answer = await anyio.to_thread.run_sync(
                partial(
                    connected().health.Check,
                    health_pb2.HealthCheckRequest(service=""),
                    timeout=waited,
                    wait_for_ready=False,
                ),
                limiter=connected().probes,
            )
        except grpc.RpcError as e:
            # describe's advice for a call that timed out is to ask this very probe.
            said = (
                f"the inference service's health check did not answer within {waited:g} s; it is down, still "
                "starting or overloaded"
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                else connected().describe(e, waited)
            )
            # The log names the address asked, --health-target's when given: the main target's was logged then,
            # which sent whoever read it to a service that answered.
            raise GatewayError(
                503,
                grpc.StatusCode.UNAVAILABLE,
                f"not ready: {said}",
                logged=connected().where_to_log(e.details() or "", connected().health_target),
            ) from None
        # The health-only port's health service says SERVING too: a --target given that port was ready while every
        # call got 502. Asked whatever the status, so that such a target is said as the mistake, not as no model.
        left = max(waited - (time.monotonic() - began), 0.001)
        wrong = await anyio.to_thread.run_sync(connected().wrong_target, left, limiter=connected().probes)
        if wrong is not None:
            raise GatewayError(
                503,
                grpc.StatusCode.UNAVAILABLE,
                f"not ready: {connected().describe(wrong, left, 'GetModelInfo')}",
                logged=connected().where_to_log(wrong.details() or ""),
            )
        if answer.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            raise GatewayError(
                503,
                grpc.StatusCode.UNAVAILABLE,
                f"not ready: the inference service is {status} (no model is published yet, the published one "
                "fails its checks (GET /v1/model says why), or it is shutting down)",
                logged=connected().where_to_log(target=connected().health_target),
            )
        # The address stays out of this answer as out of the failures' (NAMED_IN_THE_LOG): it said "inference:50051"
        # or an IP to anyone who asked, no token needed.
        return schemas.Health(status="ready")

    # ----------------------------------------------------------------------------------------------------------
    # The page: index.html at /, its script and styles under /static (so that a wrong method on an API path is
    # a 405, not a search for a file)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_SECURITY_HEADERS)

    app.mount("/static", PageFiles(directory=STATIC_DIR), name="static")
    answer_head_where_get(app.router)
    return app


def answer_head_where_get(router: APIRouter) -> None:
    """HEAD on every GET route (RFC 9110, 9.3.2: a server that takes GET should take HEAD): load balancers and uptime
    checkers probe /healthz and /readyz so, and a HEAD /v1/model was a 405 that listed only GET. FastAPI adds HEAD
    to none of its routes. Each is its own route, left out of the schema, where it would repeat GET's operation id;
    the same endpoint and dependencies (the token), so HEAD answers what GET would, less the body (uvicorn drops
    it)."""
    for route in list(router.routes):
        if isinstance(route, APIRoute) and "GET" in (methods := route.methods or set()) and "HEAD" not in methods:
            router.add_api_route(
                route.path.removeprefix(router.prefix),
                route.endpoint,
                methods=["HEAD"],
                response_model=route.response_model,
                # The router adds its own (the token) again.
                dependencies=[d for d in route.dependencies if d not in router.dependencies],
                include_in_schema=False,
            )


def sent_path(scope: Mapping[str, Any]) -> str:
    """The request's path as the client sent it (percent-encoded): a relative reference resolves against that, so
    an encoded slash (%2F), which the decoded path shows as a slash, must not count as one."""
    raw = scope.get("raw_path") or b""
    # Without one (or with an absolute-form target, "GET http://host/x"), the decoded path, encoded again.
    return raw.decode("latin-1") if raw.startswith(b"/") else quote(scope["path"])


def reference_from(path: str, target: str) -> str:
    """A relative reference that resolves, against a URL whose path ends with `path` (the gateway's, behind any
    prefix a proxy adds), to the gateway's `target` (a path from its root, without the leading slash):
    '/v1/nothing' -> '../docs', '/nothing' -> './docs'. The directories counted are those left once dot segments are
    removed, as the client removes them when it resolves the reference (RFC 3986, 5.2.4; %2e is a dot to browsers)."""
    directories: list[str] = []
    for segment in path.split("/")[1:-1]:  # the last segment is no directory, even '..' (RFC 3986, 5.2.3)
        dots = unquote(segment)
        if dots == "..":
            if directories:
                directories.pop()
        elif dots != ".":
            directories.append(segment)
    return "../" * len(directories) + target if directories else "./" + target


def where_the_docs_are(path: str) -> str:
    """Where a 404 or 405 says the docs page is, to the caller of `path` (as the client sent it): relative to the URL
    asked. Not from a path with an empty segment ('/v1//nothing'): clients resolve '..' across one apart (browsers,
    as RFC 3986, climb it: '../../docs' from https://host/mnist/v1//nothing is /mnist/docs; Python's urljoin drops it
    first and climbs past the prefix, to the host's /docs), so no reference leads every client to the docs. No path
    of the gateway has one, so the doubled slash is likely the mistake: the caller is told to send the path with
    single slashes, and the reference is from that URL, which every client resolves alike."""
    if "" not in path.split("/")[1:-1]:  # the last segment is no directory: one trailing slash is no empty one
        return f"the API is described at {reference_from(path, DOCS_PAGE)} from this URL"
    single = re.sub("/{2,}", "/", path)
    return (
        "its path has an empty segment ('//'), which no path of this gateway has: send it with single slashes; the "
        f"API is described at {reference_from(single, DOCS_PAGE)} from that URL"
    )


def redirects_without_the_slash(router: Router) -> None:
    """A path that `router` has but for one trailing slash ('/docs/', '/v1/model/') is redirected (307: method and
    body kept) to the path without it, by a reference relative to the URL asked ('../docs', '../model'), query
    kept. Starlette's own redirect (redirect_slashes) names a whole URL from the host's root, so it leaves the
    prefix a reverse proxy serves the gateway at: https://host/mnist/docs/ went to https://host/docs, outside the
    gateway. Its host and scheme were the request's too: behind a proxy that calls the gateway by its own name
    (nginx's default), the gateway's inner address ("http://web:8080/docs"), which no user can reach, and http
    behind https; HostCheck bounds which names a request may say, not what a proxy says.

    Anything else is 404 as before: several slashes ('/docs//'), since clients resolve '../../docs' from there
    differently (RFC 3986 climbs the empty segment, Python's urljoin, which requests follows redirects with, drops
    it and climbs past the prefix); and adding a slash, which only the page's files' mount would take, and it
    serves no directory."""
    not_found = router.default

    async def default(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (location := _without_the_slash(router, scope)):
            await RedirectResponse(location, status_code=307)(scope, receive, send)
        else:
            await not_found(scope, receive, send)

    router.default = default


def _without_the_slash(router: Router, scope: Scope) -> str | None:
    """The relative reference from the URL asked to the route it names with one trailing slash, if one; else None."""
    path, sent = scope["path"], sent_path(scope)
    if not (path.endswith("/") and sent.endswith("/")) or path.endswith("//") or sent.endswith("//"):
        return None
    name = path[:-1].rsplit("/", 1)[-1]
    # Taken from the path as the client sent it, which it resolves the reference against: an encoded slash
    # ('/docs%2F') is part of its last segment there, and '../docs' from /mnist/docs%2F is /docs.
    if name in ("", ".", "..") or unquote(sent[:-1].rsplit("/", 1)[-1]) != name:
        return None
    routed = {**scope, "path": path[:-1]}
    if not any(not isinstance(route, Mount) and route.matches(routed)[0] is not Match.NONE for route in router.routes):
        return None
    query = scope.get("query_string", b"").decode("latin-1")
    return "../" + quote(name) + (f"?{query}" if query else "")


def _document_validation_errors_as_400(app: FastAPI) -> None:
    """FastAPI documents a 422 for every endpoint with parameters; here they are 400 (on_invalid_request)."""
    generate = app.openapi

    def openapi() -> dict:
        schema = generate()
        for operations in schema["paths"].values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the schema


class PageFiles(StaticFiles):
    """The page's static files, with security and caching headers."""

    def file_response(self, *args, **kwargs) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(PAGE_SECURITY_HEADERS)
        return response
