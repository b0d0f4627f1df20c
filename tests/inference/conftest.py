"""Fixtures for the inference tests: published models, a real server on a free port, and a channel to it."""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from shared.checkpoint import Manifest, publish_model
from shared.data import MNIST_MEAN, MNIST_STD
from shared.model import build_model
from shared.settings import Paths

# Small enough that evaluating 10,000 images takes a fraction of a second on two busy cores.
TEST_ARCH = "compact"
TEST_ARCH_KWARGS = {"width": 8}


def model_payload(seed: int, *, arch_kwargs: dict | None = None) -> dict:
    """A published-model payload with seeded random weights, as the trainer would publish it."""
    torch.manual_seed(seed)
    kwargs = dict(TEST_ARCH_KWARGS if arch_kwargs is None else arch_kwargs)
    model = build_model(TEST_ARCH, **kwargs)
    # Random BatchNorm statistics too, so different seeds give visibly different predictions.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return {
        "arch": TEST_ARCH,
        "arch_kwargs": kwargs,
        "model": model.state_dict(),
        "normalization": {"mean": MNIST_MEAN, "std": MNIST_STD},
        "metrics": {"val_accuracy": 0.1 + seed / 1000, "test_accuracy": 0.1},
        "split_seed": 0,
        "run_name": f"test-run-{seed}",
        "epoch": seed,
    }


def publish(artifacts: Path, version: str, seed: int = 0, **kwargs) -> Manifest:
    return publish_model(Paths(artifacts).models, version=version, model_payload=model_payload(seed, **kwargs))


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def hold_calls(monkeypatch, module, name: str, timeout: float = 10.0) -> tuple[threading.Event, threading.Event]:
    """Make each call to `module.name` wait, for this test: (entered, release).

    `entered` is set as soon as a call arrives; the call then waits for `release` (at most `timeout` s) and goes on
    to the real function.
    """
    entered, release = threading.Event(), threading.Event()
    real = getattr(module, name)

    def held(*args, **kwargs):
        entered.set()
        release.wait(timeout)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, held)
    return entered, release


def wait_until(condition, timeout: float = 10.0) -> bool:
    """Poll `condition` until it is true (True) or `timeout` s have passed (its last value)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@dataclass
class Running:
    """A started server and a channel to it."""

    server: object  # inference.server.InferenceServer
    port: int
    channel: grpc.Channel
    artifacts: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def stub(self):
        from shared.api.mnist.v1 import inference_pb2_grpc

        return inference_pb2_grpc.InferenceStub(self.channel)

    @property
    def health(self):
        from grpc_health.v1 import health_pb2_grpc

        return health_pb2_grpc.HealthStub(self.channel)


def model_info(running: Running):
    from shared.api.mnist.v1 import inference_pb2 as pb

    return running.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)


def health_status(running: Running, service: str = "") -> int:
    from grpc_health.v1 import health_pb2

    return running.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def start_server(artifacts: Path, data_dir: Path, *, channel_credentials=None, **overrides) -> Running:
    from inference.options import ServerOptions
    from inference.server import create_server

    options = dict(artifacts_dir=artifacts, data_dir=data_dir, poll_interval=0.05, max_workers=8)
    options.update(overrides)
    server, port = create_server("127.0.0.1:0", ServerOptions(**options))
    server.start()
    target = f"127.0.0.1:{port}"
    if channel_credentials is not None:
        channel = grpc.secure_channel(f"localhost:{port}", channel_credentials)
    else:
        channel = grpc.insecure_channel(target)
    return Running(server, port, channel, artifacts)


@pytest.fixture
def serve(tmp_path, mnist_dir):
    """Start servers on free ports; all are stopped at the end of the test."""
    running: list[Running] = []

    def _start(artifacts: Path | None = None, **overrides) -> Running:
        r = start_server(artifacts or tmp_path / "artifacts", mnist_dir, **overrides)
        running.append(r)
        return r

    yield _start
    for r in running:
        r.channel.close()
        r.server.stop(grace=0)


@pytest.fixture(scope="module")
def module_server(tmp_path_factory, mnist_dir):
    """One server per test module, serving model "v1" (seed 1), with small limits so tests can exceed them."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    publish(artifacts, "v1", seed=1)
    r = start_server(artifacts, mnist_dir, max_batch_size=16, max_image_bytes=200_000,
                     max_image_pixels=4_000_000, max_message_bytes=1_000_000)
    assert r.server.store.current is not None and r.server.store.current.version == "v1"
    yield r
    r.channel.close()
    r.server.stop(grace=0)


@pytest.fixture(scope="session")
def digit_pngs(mnist) -> list[tuple[int, bytes, np.ndarray]]:
    """(label, PNG bytes, 28x28 array) of the first 32 MNIST test digits."""
    return [(int(mnist.test_labels[i]), png_bytes(mnist.test_images[i].numpy()), mnist.test_images[i].numpy())
            for i in range(32)]


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key (PEM), made with `cryptography`:
    no external tool, so the TLS tests run (never skip) wherever the dev dependencies are installed."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
