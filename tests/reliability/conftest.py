"""Fixtures for the reliability tests: the inference tests' servers and helpers, plus a server with small limits."""

from __future__ import annotations

import pytest

# Re-exported so pytest finds them here too; defined once, in tests/inference/conftest.py.
from tests.inference.conftest import digit_pngs, model_payload, png_bytes, publish, serve, start_server  # noqa: F401

# Small limits, so every one of them can be exceeded cheaply (the defaults are 10 MiB, 40 MP, 256, 16 MiB).
SMALL_LIMITS = dict(max_batch_size=16, max_image_bytes=200_000, max_image_pixels=4_000_000,
                    max_message_bytes=1_000_000)


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
