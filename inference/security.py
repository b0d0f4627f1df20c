"""Optional TLS and a shared bearer token, for the server (interceptor, credentials) and the clients.

Kept free of torch so the client and the health probe start fast.
"""

from __future__ import annotations

import argparse
import hmac
from collections.abc import Sequence
from pathlib import Path

import grpc

AUTH_METADATA_KEY = "authorization"
# Probes (Docker, Kubernetes, load balancers) cannot send a token: health checking stays open. It reveals
# only whether the server is serving.
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)


def is_metadata_value(text: str) -> bool:
    """Whether `text` can be sent as a gRPC metadata value: printable ASCII only (anything else fails the call)."""
    return all(" " <= ch <= "~" for ch in text)


def checked_token(token: str, flag: str) -> str:
    """A service's token as configured, its surrounding whitespace removed: one read from a file (a Kubernetes or
    Docker secret) often ends in a newline, which no client can send, and every call was refused as "wrong token".
    SystemExit, saying why, for an empty token or one no client can send (not printable ASCII)."""
    token = token.strip()
    if not token:
        raise SystemExit(f"{flag} is empty")
    if not is_metadata_value(token):
        raise SystemExit(
            f"{flag} holds a character that is not printable ASCII (a tab, a newline inside it, a letter with an "
            "accent); clients cannot send it: choose a token of letters, digits and punctuation"
        )
    return token


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return ((AUTH_METADATA_KEY, f"Bearer {token}"),) if token else ()


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that fails with UNAUTHENTICATED before reading the request."""

    def abort(request_or_iterator, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


def canonical_authorization(value: str) -> str:
    """An Authorization value with its scheme spelt 'Bearer' however it was cased ('bearer x' -> 'Bearer x'):
    schemes are case-insensitive (RFC 7235). Any other value is returned as it is."""
    scheme, space, rest = value.partition(" ")
    return f"Bearer {rest}" if space and scheme.lower() == "bearer" else value


def one_authorization(values: Sequence[str]) -> str:
    """The one Authorization value a caller sent, its scheme spelt 'Bearer' ('' when none was sent). ValueError
    for more than one: which would count is a guess (gRPC keeps them all and a dict keeps the last, HTTP
    frameworks give the first), so a good token and a bad one passed or failed by their order."""
    if len(values) > 1:
        raise ValueError(f"{len(values)} authorization values were sent")
    return canonical_authorization(values[0]) if values else ""


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Lets a call through only with metadata `authorization: Bearer <token>`; health checks are exempt."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("an empty auth token would let everyone in")
        if not is_metadata_value(token):
            raise ValueError(
                "the auth token holds a character no client can send in gRPC metadata (not printable ASCII)"
            )
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        handler = continuation(handler_call_details)
        if handler is None or method.startswith(UNAUTHENTICATED_PREFIXES):
            return handler
        metadata = handler_call_details.invocation_metadata or ()
        try:
            supplied = one_authorization([value for key, value in metadata if key == AUTH_METADATA_KEY])
        except ValueError as e:
            return _deny(handler, f"{e}: send metadata 'authorization: Bearer <token>' once")
        # Constant-time comparison: the time taken does not tell an attacker how much of a guess was right.
        if hmac.compare_digest(supplied.encode(), self._expected):
            return handler
        reason = "no authorization metadata" if not supplied else "wrong token"
        return _deny(handler, f"{reason}: send metadata 'authorization: Bearer <token>' (mnist-client --token)")


def server_credentials(cert_file: Path, key_file: Path) -> grpc.ServerCredentials:
    """TLS credentials from a PEM certificate chain and its private key."""
    return grpc.ssl_server_credentials([(Path(key_file).read_bytes(), Path(cert_file).read_bytes())])


def ca_certificates_file(text: str) -> Path:
    """argparse type of --tls-ca: a file of PEM certificates. Read here, so that a file that cannot be read, or one
    of something else, is said at start: gRPC took any bytes, and every call then failed as "cannot reach"."""
    path = Path(text)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise argparse.ArgumentTypeError(f"{text}: no such file") from None
    except OSError as e:
        raise argparse.ArgumentTypeError(f"{text}: cannot be read ({e.strerror or e})") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise argparse.ArgumentTypeError(
            f"{text}: not a PEM file of certificates (it has no -----BEGIN CERTIFICATE----- line)"
        )
    return path


def channel_credentials(ca_file: Path | None) -> grpc.ChannelCredentials:
    """TLS credentials trusting `ca_file` (PEM), or the system's roots when None."""
    return grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes() if ca_file else None)
