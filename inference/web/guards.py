"""ASGI middleware that guards every response of the gateway: the Host header it answers, and the headers
each response carries. Plain ASGI, no FastAPI: the local stack's launcher reads the default hosts from here.

DNS rebinding: a page of evil.example whose name is made to resolve to 127.0.0.1 reaches a gateway on the
visitor's own machine as its *own* origin, so the browser lets it read the answers and POST JSON (an Evaluate
included), although no CORS is allowed here. Its requests still say `Host: evil.example`, so a gateway that
answers only the names it is reached by refuses them (`--allowed-hosts`; a loopback-only gateway allows only
localhost, 127.0.0.1, [::1] and the address it is bound to by default). The probes are exempt: Kubernetes'
httpGet probes send the pod's IP.
"""

from __future__ import annotations

import ipaddress
import json
import socket

import grpc

from inference.web import errors

ANY_HOST = "*"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# The usual spellings of addresses --host may name that only this machine can reach (is_loopback decides for any).
LOOPBACK_BINDS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
LIVENESS_PATH = "/healthz"  # answered whatever the load (serving.HeaderDeadlineProtocol)
READINESS_PATH = "/readyz"
PROBE_PATHS = frozenset({LIVENESS_PATH, READINESS_PATH})
# On every response. The page's own files add their content security policy (app.PAGE_SECURITY_HEADERS); /docs
# loads Swagger UI from a CDN, so it gets these alone: nothing may frame it and press its buttons.
COMMON_HEADERS = {
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
}
# API answers are made for one caller at one moment: no cache keeps them. The probes' too (a cached "ready" would
# answer for a gateway that is gone), and the schema's, which changes with each release as the API does.
API_HEADERS = {b"cache-control": b"no-store"}
NOT_CACHED_PATHS = PROBE_PATHS | {"/openapi.json"}


def default_allowed_hosts(bind_host: str) -> tuple[str, ...]:
    """The Host names a gateway listening on `bind_host` answers when --allowed-hosts is not given: the loopback
    names and the address bound when only this machine can reach it, else any (a gateway shown to the network is
    reached by names this process cannot know; name them with --allowed-hosts)."""
    host = bind_host.strip().lower()
    if not is_loopback(host):
        return (ANY_HOST,)
    # The address bound, as a Host header writes it: http://127.0.0.2:8080/ says 'Host: 127.0.0.2:8080'.
    bound = host.removeprefix("[").removesuffix("]")
    bound = f"[{bound}]" if ":" in bound else bound
    return LOOPBACK_HOSTS + ((bound,) if bound not in LOOPBACK_HOSTS else ())


def is_loopback(bind_host: str) -> bool:
    """Whether a gateway listening on `bind_host` (--host) can be reached from this machine only: 'localhost', any
    address of 127.0.0.0/8 ('127.0.0.2', and '127.1' as the socket layer reads it), '::1', and IPv4-mapped ones
    ('::ffff:127.0.0.1'). Only the three names once counted, and a gateway on 127.0.0.2 answered any Host: a
    page of another site, its name made to resolve there, could read its answers (DNS rebinding). A name other
    than localhost is not looked up: it counts as reachable from elsewhere."""
    host = bind_host.strip().lower().removeprefix("[").removesuffix("]").removesuffix(".")
    if host == "localhost":
        return True
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = _legacy_ipv4(host)
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address in the short or numeric forms the socket layer binds and ipaddress refuses ('127.1',
    '2130706433', '0x7f.1'), else None."""
    if not host or not all(c in "0123456789abcdefx." for c in host) or not host[0].isdigit():
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def parse_allowed_hosts(value: str) -> tuple[str, ...]:
    """'localhost, example.com,*.example.com' -> ('localhost', 'example.com', '*.example.com')."""
    hosts = tuple(h.strip().lower() for h in value.split(",") if h.strip())
    if not hosts:
        raise ValueError("name at least one host, or * for any")
    for host in hosts:
        if host != ANY_HOST and ("*" in host[1:] or (host.startswith("*") and not host.startswith("*."))):
            raise ValueError(f"{host!r}: a * stands alone, or begins a name as in *.example.com")
        # The Host header's name is matched without its port (host_name): a name given with one matched nothing,
        # and the gateway refused every request.
        if host_name(host) != host or (host.startswith("[") and not host.endswith("]")):
            raise ValueError(
                f"{host!r}: name the host without a port (as in {host_name(host)!r}); any port is answered"
            )
    # A bare IPv6 address as the Host header writes it, in brackets: '::1' matched no request either.
    return tuple(f"[{host}]" if host.count(":") > 1 and not host.startswith("[") else host for host in hosts)


def host_name(header: str) -> str:
    """The host of a Host header, without its port: 'Example.com:8080' -> 'example.com', '[::1]:80' -> '[::1]'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    for pattern in allowed:
        if pattern == ANY_HOST or host == pattern:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
            return True
    return False


class HostCheck:
    """A request whose Host header names no host of `allowed` gets 400 before anything else is done."""

    def __init__(self, app, allowed: tuple[str, ...]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or ANY_HOST in self.allowed or scope["path"] in PROBE_PATHS:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if host_allowed(host_name(header), self.allowed):
            return await self.app(scope, receive, send)
        message = (
            f"this gateway does not answer the host {header[:100]!r} (it answers {', '.join(self.allowed)}); "
            "open it by one of those names, or add the name to --allowed-hosts (env MNIST_WEB_ALLOWED_HOSTS)"
        )
        body = json.dumps(errors.error_body(400, grpc.StatusCode.INVALID_ARGUMENT, message)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """COMMON_HEADERS on every response, and API_HEADERS on those under /v1/, the probes' and the schema's, where a
    response has none of its own by those names."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        not_cached = scope["path"].startswith("/v1/") or scope["path"] in NOT_CACHED_PATHS
        extra = {**COMMON_HEADERS, **(API_HEADERS if not_cached else {})}

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                added = [(name, value) for name, value in extra.items() if name not in present]
                message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        return await self.app(scope, receive, send_with_headers)
