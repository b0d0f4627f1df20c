"""Fixtures for the reliability tests: a server with small limits. The inference tests' helpers are in
tests/inference/helpers.py; `serve` and `digit_pngs` come from tests/conftest.py."""

from __future__ import annotations

import pytest

from tests.inference.helpers import publish, start_server
from tests.reliability.helpers import SMALL_LIMITS


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory, mnist_dir):
    """One server per module, serving "v1", with SMALL_LIMITS."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    publish(artifacts, "v1", seed=1)
    running = start_server(artifacts, mnist_dir, **SMALL_LIMITS)
    assert running.server.store.current is not None
    yield running
    running.channel.close()
    running.server.stop(grace=0)
