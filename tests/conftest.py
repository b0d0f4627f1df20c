"""Fixtures every test package shares: where MNIST is, and the dataset itself loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.settings import ENV_DATA_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI and developers' machines have no internet: the four MNIST files lie beside the checkout.
DEFAULT_TEST_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    path = Path(os.environ.get(ENV_DATA_DIR) or DEFAULT_TEST_DATA_DIR)
    if not any(path.glob("t10k-images-idx3-ubyte*")):
        pytest.fail(f"MNIST not found in {path}; set {ENV_DATA_DIR} to a folder holding the four MNIST files")
    return path


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    from shared.data import load_mnist

    return load_mnist(mnist_dir, download=False)
