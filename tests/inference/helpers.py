"""Helpers for the inference tests (and the reliability, web, trainer and deploy tests that reuse them):
published models with seeded random weights, a real server on a free port and a channel to it, and small
tools. The fixtures built on them are in conftest.py (tests/conftest.py for serve and digit_pngs)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import torch

from shared.checkpoint import Manifest, publish_model
from shared.data import MNIST_MEAN, MNIST_STD
from shared.model import build_model
from shared.settings import Paths

from testkit.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]

__all__ = [
    "BATCH_CONCURRENCY",
    "TEST_ARCH",
    "TEST_ARCH_KWARGS",
    "Running",
    "health_status",
    "hold_calls",
    "in_flight",
    "model_info",
    "model_payload",
    "png_bytes",
    "predict_batches",
    "publish",
    "start_server",
    "wait_until",
]

# PredictBatch calls the tests that send thousands of pictures keep in flight at once. The in-process server
# answers them in two threads, and the pipeline's OpenCV and NumPy work runs outside the GIL, so both cores work:
# 1,536 drawn pictures took 16.6 s instead of 26-28 s one call at a time (three at once: no faster).
BATCH_CONCURRENCY = 2

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


def start_workers(
    tmp_path: Path, mnist_dir: Path, workers: int = 2, extra_env: dict[str, str] | None = None, metrics: bool = False
) -> tuple[subprocess.Popen, int, list[str], int | None]:
    """`python -m inference --workers N` on a free port, serving model "w": (process, gRPC port, log lines so far,
    metrics port when `metrics`). Waits until every worker (and the metrics endpoint) says it listens."""
    artifacts = tmp_path / "artifacts"
    publish(artifacts, "w", seed=1)
    env = {**os.environ, "MNIST_ARTIFACTS_DIR": str(artifacts), "MNIST_DATA_DIR": str(mnist_dir), **(extra_env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "inference", "--address", "127.0.0.1:0", "--workers", str(workers)],
        cwd=REPO_ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    ports: list[int] = []
    metrics_port = None
    deadline = time.monotonic() + 120
    while (len(ports) < workers or (metrics and metrics_port is None)) and time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        if match := re.search(r"\[worker \d\] inference\.server: listening on 127\.0\.0\.1:(\d+)", line):
            ports.append(int(match.group(1)))
        if match := re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", line):
            metrics_port = int(match.group(1))
    if len(ports) != workers or len(set(ports)) != 1 or (metrics and metrics_port is None):
        process.kill()
        process.wait()
        raise AssertionError("the workers did not all start:\n" + "".join(lines))
    return process, ports[0], lines, metrics_port


def in_flight(call, items: list) -> list:
    """`call(item)` of every item, in order, BATCH_CONCURRENCY calls at a time."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(BATCH_CONCURRENCY) as pool:
        return list(pool.map(call, items))


def predict_batches(stub, pictures: list[bytes], batch_size: int = 128) -> list:
    """Every picture's PredictBatch result (a pb.BatchResult), in order: `batch_size` a call, BATCH_CONCURRENCY
    calls in flight."""
    from shared.api.mnist.v1 import inference_pb2 as pb

    def call(batch: list[bytes]) -> list:
        return list(stub.PredictBatch(pb.PredictBatchRequest(images=batch), timeout=60).results)

    batches = [pictures[start : start + batch_size] for start in range(0, len(pictures), batch_size)]
    return [result for results in in_flight(call, batches) for result in results]


def cycles_left_by(calls: dict, ours: tuple[str, ...] = ("/inference/", "/shared/")) -> list[str]:
    """Run each of `calls` ({name: (call() -> what it said, a part of what it must say)}), then say what they left
    in reference cycles: the exceptions, gRPC futures, and frames of files whose path holds one of `ours` that the
    collector found unreachable. Empty when the calls left no cycle. Run each call once before (a first call may
    build what is kept for good)."""
    import gc
    import types

    gc.collect()
    # From here on, whatever a collection finds unreachable stays in gc.garbage to be looked at: a cycle that a
    # call's thread still held at one collection is found at a later one, not freed unseen.
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for name, (call, answer) in calls.items():
            said = call()
            assert answer in (said or ""), f"{name}: answered {said!r}"
        kept: list[str] = []
        for _ in range(3):  # the server's threads let go of a call a moment after its client has the answer
            time.sleep(0.5)
            gc.collect()
            kept += [
                o.f_code.co_name if isinstance(o, types.FrameType) else repr(o)[:80]
                for o in gc.garbage
                if isinstance(o, (BaseException, grpc.Future))
                or (isinstance(o, types.FrameType) and any(part in o.f_code.co_filename for part in ours))
            ]
            gc.garbage.clear()
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return kept
