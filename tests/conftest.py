"""Fixtures every test package shares: where MNIST is, and the dataset itself loaded once per session; real
inference servers on free ports and MNIST digits as PNG files (the inference and reliability tests)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from shared.settings import ENV_DATA_DIR, default_data_dir

if TYPE_CHECKING:
    import numpy as np

    from tests.inference.helpers import Running

REPO_ROOT = Path(__file__).resolve().parents[1]
# CI and developers' machines have no internet: the four MNIST files lie beside the checkout.
DEFAULT_TEST_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"

# In CI (CI=true) a skipped test, or a skipped file, fails: testkit/ci_skips.py.
pytest_plugins = ["testkit.ci_skips"]


def mnist_dir_candidates() -> list[Path]:
    """Where the tests look for MNIST, in order: MNIST_DATA_DIR if set (and then only there); else the copy beside
    the checkout (CI's, read-only), then the folder `make stack` downloads into (shared.settings.default_data_dir):
    a newcomer's `make test` after `make stack` failed for want of MNIST_DATA_DIR."""
    if os.environ.get(ENV_DATA_DIR):
        return [Path(os.environ[ENV_DATA_DIR])]
    return [DEFAULT_TEST_DATA_DIR, default_data_dir()]


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    candidates = mnist_dir_candidates()
    for path in candidates:
        if any(path.glob("t10k-images-idx3-ubyte*")):
            return path
    looked = " or ".join(str(p) for p in candidates)
    pytest.fail(
        f"MNIST not found in {looked}; run `make stack` once (it downloads MNIST), or set {ENV_DATA_DIR} to a "
        "folder holding the four MNIST files"
    )


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    from shared.data import load_mnist

    return load_mnist(mnist_dir, download=False)


@pytest.fixture
def serve(tmp_path, mnist_dir):
    """Start servers on free ports; all are stopped at the end of the test."""
    from tests.inference.helpers import start_server

    running: list[Running] = []

    def _start(artifacts: Path | None = None, **overrides) -> Running:
        r = start_server(artifacts or tmp_path / "artifacts", mnist_dir, **overrides)
        running.append(r)
        return r

    yield _start
    for r in running:
        r.channel.close()
        r.server.stop(grace=0)


@pytest.fixture(scope="session")
def digit_pngs(mnist) -> list[tuple[int, bytes, np.ndarray]]:
    """(label, PNG bytes, 28x28 array) of the first 32 MNIST test digits."""
    from tests.inference.helpers import png_bytes

    return [
        (int(mnist.test_labels[i]), png_bytes(mnist.test_images[i].numpy()), mnist.test_images[i].numpy())
        for i in range(32)
    ]


# The default network, really trained (not a stand-in), for the tests that need a model that reads digits well:
# accuracy on users' drawings through the gRPC service. Ten epochs of the default take about two minutes on two
# cores, so the result is kept in a cache keyed by the code that decides it: a change to the trainer, the
# networks, the data, the checkpoint format or the library versions trains afresh. All of shared/ counts, not a
# list of the modules the trainer imports today: the negatives go through the users' pipeline, and a module left
# off a list would let a change to it pass against a model trained before it.
TRAINED_EPOCHS = 10
_TRAINING_CODE = ("trainer/*.py", "shared/*.py")


@pytest.fixture(scope="session")
def trained_artifacts(mnist_dir) -> Path:
    """An artifacts folder holding a published, fully trained default model (models/LATEST.json)."""
    import fcntl
    import shutil

    from shared.checkpoint import CheckpointError, read_manifest, read_published_model, read_published_onnx
    from shared.settings import Paths

    from testkit.cache import cache_root, code_hash
    from trainer.__main__ import main as trainer_main
    from trainer.run_folder import last_checkpoint

    root = cache_root() / "test-models" / code_hash(_TRAINING_CODE, extra=str(TRAINED_EPOCHS))
    root.parent.mkdir(parents=True, exist_ok=True)
    # One session at a time checks and trains this entry: a second (another checkout's run beside this one) waits
    # and then finds the model published, where its own trainer would have stopped on the run folder's lock.
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            manifest = read_manifest(root / "models")
            if manifest is not None:
                read_published_model(root / "models", manifest)
                read_published_onnx(root / "models", manifest)
        except CheckpointError as e:  # a disk that lost writes: train it again rather than fail every run
            print(f"the cached test model in {root} is damaged ({e}); training it again")
            shutil.rmtree(root)
            manifest = None
        if manifest is None:
            # A training cut short (a CI run cancelled) left its checkpoints: continue it, as the trainer asks.
            resume = ["--resume"] if last_checkpoint(Paths(root).run_dir("test-model")).exists() else []
            code = trainer_main(
                [
                    *resume,
                    "--data-dir",
                    str(mnist_dir),
                    "--artifacts-dir",
                    str(root),
                    "--no-download",
                    "--device",
                    "cpu",
                    "--epochs",
                    str(TRAINED_EPOCHS),
                    "--run-name",
                    "test-model",
                ]
            )
            assert code == 0, "training the test model failed"
    return root


@pytest.fixture(scope="session")
def trained_version(trained_artifacts) -> str:
    """The version the trained test model is published as ("test-model-e<best epoch>")."""
    from shared.checkpoint import read_manifest

    manifest = read_manifest(trained_artifacts / "models")
    assert manifest is not None
    return manifest.version
