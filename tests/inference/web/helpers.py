"""Helpers for the web service's tests: the gateway on a free port, in a thread of this process, and an HTTP
client small enough to read (the standard library's http.client: real sockets, nothing mocked). The fixtures
built on them are in conftest.py."""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self):
        return json.loads(self.body)


def multipart(files: list[tuple[str, bytes]], content_type: str = "application/octet-stream") -> tuple[bytes, str]:
    """A multipart/form-data body with one file part per (field name, bytes): (body, Content-Type header)."""
    boundary = uuid.uuid4().hex
    parts = []
    for index, (field, data) in enumerate(files):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="image{index}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _answer(connection: http.client.HTTPConnection) -> Answer:
    response = connection.getresponse()
    return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())


def fetch(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None) -> Answer:
    """One request to an absolute http:// URL (a page's or a schema's, resolved as a browser resolves them)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.netloc, timeout=60)
    try:
        connection.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body, headers or {})
        return _answer(connection)
    finally:
        connection.close()


@dataclass
class Web:
    """A running gateway: its port, and its thread's uvicorn server."""

    port: int
    server: object  # uvicorn.Server
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 60
    ) -> Answer:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            return _answer(connection)
        finally:
            connection.close()

    def post_repeating(self, path: str, body: bytes, headers: list[tuple[str, str]]) -> Answer:
        """A PNG POST whose `headers` may name one header twice, which a dict of headers cannot."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.putrequest("POST", path)
            for name, value in [("Content-Type", "image/png"), ("Content-Length", str(len(body))), *headers]:
                connection.putheader(name, value)
            connection.endheaders(body)
            return _answer(connection)
        finally:
            connection.close()

    def get(self, path: str, **kwargs) -> Answer:
        return self.request("GET", path, **kwargs)

    def post(
        self, path: str, body: bytes = b"", content_type: str = "image/png", headers: dict | None = None, **kwargs
    ) -> Answer:
        return self.request(
            "POST", path, body=body, headers={"Content-Type": content_type, **(headers or {})}, **kwargs
        )

    def post_files(self, path: str, files: list[tuple[str, bytes]], headers: dict | None = None) -> Answer:
        body, content_type = multipart(files)
        return self.post(path, body, content_type, headers)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        assert not self.thread.is_alive(), "the web server did not stop"


def start_web(serving: dict | None = None, **options) -> Web:
    """The gateway (inference.web.app) served by uvicorn on a free loopback port, in a thread of this process, with
    the connection limits and timeouts `python -m inference.web` has (inference.web.serving), or `serving`'s
    (serving.uvicorn_settings(header_seconds=1), ...). `options` are WebOptions'."""
    import uvicorn

    from inference.web.app import WebOptions, create_app
    from inference.web.serving import uvicorn_settings

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        create_app(WebOptions(**options)),
        log_level="warning",
        lifespan="on",
        **(serving if serving is not None else uvicorn_settings()),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="web", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the web server did not start")
        time.sleep(0.01)
    return Web(sock.getsockname()[1], server, thread)


class PrefixProxy:
    """A reverse proxy serving the gateway at `prefix` (as https://host/mnist/ does in front of it): it takes the
    prefix off what it forwards, and answers a request outside it 404, as the host's other sites would; those
    paths are kept in `outside`.

        with PrefixProxy(gateway.port, "/mnist") as proxy:
            browser.get(proxy.url + "/mnist/")
    """

    HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "host", "content-length"})

    def __init__(self, gateway_port: int, prefix: str) -> None:
        self.outside: list[str] = []
        proxy = self

        class Forward(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet: the test says what went wrong
                pass

            def forward(self) -> None:
                if not self.path.startswith(prefix + "/"):
                    proxy.outside.append(f"{self.command} {self.path}")
                    self.send_error(404)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in PrefixProxy.HOP_BY_HOP}
                connection = http.client.HTTPConnection("127.0.0.1", gateway_port, timeout=60)
                try:
                    connection.request(self.command, self.path[len(prefix) :], body=body, headers=headers)
                    answer = _answer(connection)
                finally:
                    connection.close()
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    if name not in PrefixProxy.HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(answer.body)

            do_GET = do_POST = do_HEAD = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="prefix-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> PrefixProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def decode_data_url(url: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix), url[:40]
    return base64.b64decode(url[len(prefix) :])


def assert_error(answer, status: int, code: str, *words: str) -> str:
    """The answer is the JSON error shape with this status and gRPC code, and its message says `words`."""
    assert answer.status == status, (answer.status, answer.body[:500])
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert error["status"] == status and error["code"] == code, error
    for word in words:
        assert word in error["message"], error["message"]
    return error["message"]
