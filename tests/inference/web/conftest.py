"""Fixtures for the web service's tests: the gateway on a free port in front of a real gRPC server, and an HTTP
client small enough to read (helpers.py: the standard library's http.client, real sockets, nothing mocked)."""

from __future__ import annotations

import pytest

from tests.inference.helpers import Running, publish, start_server
from tests.inference.web.helpers import Web, start_web


@pytest.fixture
def web():
    """start_web(target=..., ...) for this test; every gateway started is stopped at the end."""
    started: list[Web] = []

    def _start(**options) -> Web:
        w = start_web(**options)
        started.append(w)
        return w

    yield _start
    for w in started:
        w.stop()


@pytest.fixture(scope="module")
def backend(tmp_path_factory, mnist_dir) -> Running:
    """A gRPC server serving model "v1" (seeded random weights) with small limits, so tests can exceed them."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    publish(artifacts, "v1", seed=1)
    r = start_server(
        artifacts,
        mnist_dir,
        max_batch_size=16,
        max_image_bytes=200_000,
        max_image_pixels=4_000_000,
        max_message_bytes=1_000_000,
    )
    assert r.server.store.current is not None
    yield r
    r.channel.close()
    r.server.stop(grace=0)


@pytest.fixture(scope="module")
def gateway(backend) -> Web:
    """One gateway per module in front of `backend`."""
    w = start_web(target=backend.target, timeout=10)
    yield w
    w.stop()
