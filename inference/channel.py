"""The clients' gRPC channel: retries across server restarts, round-robin over replicas, optional TLS.

Used by the command-line client, the health probe, the web gateway and the benchmarks. Imports no torch.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import grpc

from shared import settings

from inference.access_log import REQUEST_ID_KEY
from inference.security import channel_credentials

# gRPC service config: https://github.com/grpc/grpc/blob/master/doc/service_config.md
#
# A restart of the server (a new version deployed, a crash and the supervisor starting it again) must not fail
# calls. Two mechanisms together:
# - waitForReady: a call made while the channel has no connection waits for one, until its deadline, instead of
#   failing at once with UNAVAILABLE. Without it a call fails within milliseconds of the server going away.
# - retryPolicy: a call that was on the wire when the connection broke (the old server killed mid-call, or
#   refusing new calls in its graceful shutdown) fails with UNAVAILABLE and is sent again; thanks to
#   waitForReady the new attempt then waits for the new server. Every Inference method is read-only, so a call
#   that did reach the old server can safely run twice.
# The retry back-off alone (at most 5 attempts) could only ride out a ~1 s outage; a Python server takes
# seconds to start. Health checks do not wait: a probe must answer "down" quickly.
# CANCELLED is retried too: a gRPC server that shuts down answers calls it had received but not yet handed to a
# handler with CANCELLED rather than UNAVAILABLE (grpc/grpc#41785, seen here once in 4 restarts under load). A
# call this client cancels itself is never retried, so this only covers the server's side.
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{"service": "mnist.v1.Inference"}],
            "waitForReady": True,
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.1s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
            },
        },
        {
            "name": [{"service": "grpc.health.v1.Health"}],
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "0.1s",
                "maxBackoff": "0.5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        },
    ],
}
# gRPC keeps a request to send it again only up to this size (256 KiB by default): a larger one (a photo's JPEG)
# commits the call once sent, so a server that died before answering failed it instead of its being retried.
# The service's default message limit covers every request it accepts unless raised.
RETRY_BUFFER_BYTES = settings.DEFAULT_MAX_MESSAGE_BYTES
# While the server is away the channel tries to reconnect with exponential back-off (gRPC's default grows to
# 120 s). Capped at 1 s, a restarted server is found within a second of it listening again.
RECONNECT_BACKOFF_MS = (100, 1000)
# Channels to one target in one process share a single TCP connection (gRPC's global subchannel pool), whatever
# their number: a benchmark's N clients would then be one connection, served by one of the server's workers and
# read by one of its threads at a time, not the N connections N separate client processes open. With this option
# each channel keeps its subchannels, and so its connection, to itself.
OWN_CONNECTION = ("grpc.use_local_subchannel_pool", 1)


# gRPC's own target forms (https://github.com/grpc/grpc/blob/master/doc/naming.md), passed on unchecked: gRPC's
# resolver reads them, and they name addresses in ways of their own (lists, socket paths, dns:/// with its server).
GRPC_TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")
_TARGET_FORM = "give it as host:port (e.g. localhost:50051), or in one of gRPC's forms (dns:, ipv4:, ipv6:, unix:)"


def grpc_target(text: str) -> str:
    """argparse type: a gRPC target, host:port with a port from 1 to 65535, or one of gRPC's own forms
    (GRPC_TARGET_SCHEMES). gRPC itself took what it could of anything else: an empty target failed in its core with
    an UNKNOWN error that said nothing of the flag, a missing port was 443, port 116087 was 50551 (modulo 65536),
    and http://host:port was a "misformatted domain name" said as a server that is not running."""
    target = text.strip()
    if not target:
        raise argparse.ArgumentTypeError("must name the server, as host:port (e.g. localhost:50051)")
    if target.lower().startswith(GRPC_TARGET_SCHEMES):
        return target
    if "://" in target:
        raise argparse.ArgumentTypeError(f"{target!r} is a URL; {_TARGET_FORM}")
    host, colon, port = target.rpartition(":")
    if not colon or target.endswith("]"):  # "[::1]": an IPv6 address alone
        raise argparse.ArgumentTypeError(f"{target!r} has no port; {_TARGET_FORM}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise argparse.ArgumentTypeError(f"{target!r}: an IPv6 address goes in brackets, as [::1]:50051")
    if not host:
        raise argparse.ArgumentTypeError(f"{target!r} has no host; {_TARGET_FORM}")
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise argparse.ArgumentTypeError(f"{target!r}: the port must be a number from 1 to 65535; {_TARGET_FORM}")
    return target


def tls_flags_problem(tls: bool, tls_ca: Path | None, tls_server_name: str | None) -> str | None:
    """Why these TLS flags cannot go together, or None: a certificate name to expect on a connection without TLS
    was ignored, and the call went out in plain text."""
    if tls_server_name and not (tls or tls_ca is not None):
        return "--tls-server-name names the host in the server's TLS certificate: give it with --tls or --tls-ca"
    return None


def make_channel(
    target: str,
    *,
    tls: bool = False,
    tls_ca: Path | None = None,
    tls_server_name: str | None = None,
    own_connection: bool = False,
) -> grpc.Channel:
    """A channel with retries and round-robin balancing; TLS when `tls` or `tls_ca` is given; with
    `own_connection`, a TCP connection of its own (OWN_CONNECTION), as a separate client process would have."""
    options: list[tuple[str, str | int]] = [
        ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
        ("grpc.enable_retries", 1),
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[1]),
        ("grpc.max_receive_message_length", 32 * 1024 * 1024),
        ("grpc.per_rpc_retry_buffer_size", RETRY_BUFFER_BYTES),
    ]
    if tls_server_name:
        options.append(("grpc.ssl_target_name_override", tls_server_name))
    if own_connection:
        options.append(OWN_CONNECTION)
    if tls or tls_ca is not None:
        return grpc.secure_channel(target, channel_credentials(tls_ca), options=options)
    return grpc.insecure_channel(target, options=options)


def reached_server(e: grpc.RpcError) -> bool:
    """Whether a failed call was answered by the inference server itself: every answer of it, error or not, carries
    the call's request id in its trailing metadata (inference.access_log), which a connection that failed, or a
    proxy without a backend, never does; or cut off by the server as it stopped, which gRPC does without the
    call's metadata."""
    if e.code() == grpc.StatusCode.UNAVAILABLE and (e.details() or "").strip() == _SHUTTING_DOWN:
        return True
    try:
        metadata = e.trailing_metadata() or ()  # the error of a call is also a grpc.Call
    except Exception:
        return False
    return any(key == REQUEST_ID_KEY for key, _ in metadata)


# gRPC's own words for two refusals its library makes before the service's code runs, and for calls still running
# when a stopping server's grace period ends.
_OVER_MESSAGE_LIMIT = re.compile(r"Received message larger than max \((\d+) vs\. (\d+)\)")
_CONCURRENT_CALLS_LIMIT = "Concurrent RPC limit exceeded!"
_SHUTTING_DOWN = "Cancelling all calls"


def said_for_a_person(code: grpc.StatusCode, details: str) -> str:
    """A failed call's message, for the client and the REST gateway: gRPC's own terse words (a request over the
    service's message limit, more calls at once than it takes, calls cut off by a server that stopped) said with
    what to do; the service's own messages, which say it already, as they are."""
    if code == grpc.StatusCode.UNAVAILABLE and details.strip() == _SHUTTING_DOWN:
        return "the inference service stopped (a restart or an update) before the call finished; try again in a moment"
    if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return details
    over = _OVER_MESSAGE_LIMIT.search(details)
    if over:
        sent, limit = (int(n) for n in over.groups())
        return (
            f"the request is {sent:,} bytes, larger than the {limit:,} the inference service takes in one "
            "message; the limit is the service's --max-message-bytes. Send a smaller picture (crop it to the "
            "digit, or save it as PNG or JPEG at a lower resolution), or fewer pictures in one batch"
        )
    if details.strip() == _CONCURRENT_CALLS_LIMIT:
        return (
            "the inference service is answering as many calls at once as it takes (its --max-concurrent-rpcs); "
            "try again in a moment"
        )
    return details


def answers_now(channel: grpc.Channel, timeout: float = 2.0) -> bool:
    """Whether a server answers on `channel` now, asked with a health check: it does not wait for a connection
    (SERVICE_CONFIG), so it fails at once with UNAVAILABLE while there is none, and it needs no token. Any answer
    counts, an error included (a server without the health service answers UNIMPLEMENTED); no answer within
    `timeout` counts too, as a server too busy to answer is still there."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    except grpc.RpcError as e:
        return e.code() != grpc.StatusCode.UNAVAILABLE or reached_server(e)
    return True


def describe_rpc_error(e: grpc.RpcError, target: str, *, token_sent: bool = False, went_away: bool = False) -> str:
    """A failed call said for a person. `token_sent`: the call carried a bearer token (so a refusal means it is the
    wrong one, not that one is missing); `went_away`: the server had answered this client before and no longer
    answers (answers_now), so a deadline the call spent waiting for a connection is said as that."""
    code, details = e.code(), e.details() or ""
    # The server's own UNAVAILABLE (no model can be served yet) says what to do; only a call that never reached it
    # is about reaching it. Guessing from the words failed: a model's load error can say "Failed to load".
    if code == grpc.StatusCode.UNAVAILABLE and not reached_server(e):
        said = details.lower()
        if "wrong_version_number" in said:  # a TLS hello answered in plain HTTP/2
            return (
                f"the inference server at {target} does not use TLS ({details}); leave out --tls and --tls-ca, "
                "or start the server with --tls-cert and --tls-key."
            )
        if "hostname verification" in said:  # TLS worked up to the name: the certificate is for another host
            return (
                f"the inference server at {target} has a TLS certificate that does not name the host this client "
                f"expected ({details}); pass --tls-server-name NAME, NAME being a name in the server's certificate."
            )
        if "handshake failed" in said:  # it answered, but TLS failed: the server runs, this end is wrong
            return (
                f"the TLS handshake with the inference server at {target} failed ({details}). Pass --tls-ca with "
                "the CA certificate that signed the server's, and --tls-server-name if the name in it is not the "
                "target's host."
            )
        # A server that speaks TLS closes a plain connection without a word.
        tls_hint = " If it uses TLS, pass --tls-ca (or --tls)." if "socket closed" in said else ""
        return (
            f"cannot reach the inference server at {target} ({details}). Is it running? "
            f"Start it with `python -m inference`, or point --target / {settings.ENV_GRPC_TARGET} at it.{tls_hint}"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and went_away and not reached_server(e):
        return (
            f"the inference server at {target} went away (stopped, or restarting) and was not back within --timeout; "
            "start it again, or raise --timeout to wait longer for a restart"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the server at {target} did not answer in time (raise --timeout): {details}"
    if code == grpc.StatusCode.UNAUTHENTICATED and token_sent:
        return (
            f"the server at {target} refused the token sent with --token or {settings.ENV_AUTH_TOKEN} ({details}); "
            "pass the token the server was started with (its --auth-token)"
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"the server refused the call: {details}. Pass --token or set {settings.ENV_AUTH_TOKEN}."
    # The inference server answers every call of its API; a gRPC server without it (the health-only port, another
    # service) answers them "Method not found!" without the call's request id.
    if code == grpc.StatusCode.UNIMPLEMENTED and not reached_server(e):
        return (
            f"the server at {target} does not serve the mnist inference API ({details}). Is it the health-only port "
            "(the server's --health-address)? The service's own port is the one given to its --address "
            f"({settings.DEFAULT_GRPC_PORT} by default)."
        )
    return f"{code.name}: {said_for_a_person(code, details)}"
