"""Fixtures for the reliability tests: a server with small limits, and the bad pictures of
tests/reliability/image_kinds.py built once. The inference tests' helpers are in tests/inference/helpers.py;
`serve` and `digit_pngs` come from tests/conftest.py."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from tests.inference.helpers import publish, start_server
from tests.reliability.helpers import SMALL_LIMITS
from tests.reliability.image_kinds import IMAGE_KINDS


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


@pytest.fixture(scope="module")
def digit(mnist) -> np.ndarray:
    return mnist.test_images[0].numpy()  # a 7


@pytest.fixture(scope="module")
def built(digit):
    """Each kind's bytes, built once."""
    return {name: kind.build(digit) for name, kind in IMAGE_KINDS.items()}


@pytest.fixture
def log(caplog):
    caplog.set_level(logging.INFO)
    return caplog
