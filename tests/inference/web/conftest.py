"""Fixtures for the web service's tests: the gateway on a free port in front of a real gRPC server, and an HTTP
client small enough to read (helpers.py: the standard library's http.client, real sockets, nothing mocked)."""

from __future__ import annotations

import pytest

from tests.inference.helpers import Running
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
def backend(module_server) -> Running:
    """The gRPC server the gateway stands in front of: tests/inference's module server (model "v1", small limits,
    so tests can exceed them)."""
    return module_server


@pytest.fixture(scope="module")
def gateway(backend) -> Web:
    """One gateway per module in front of `backend`."""
    w = start_web(target=backend.target, timeout=10)
    yield w
    w.stop()
