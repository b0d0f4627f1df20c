"""A client on inference.channel.make_channel sees no failed call while the server restarts on the same port:
once gracefully (SIGTERM) and once by crashing (SIGKILL of all its processes, calls in flight, as a container's
end or an out-of-memory kill of its group does). A control client on a plain channel
(no waitForReady, no retries), calling at the same time, does see failures: the outages are real.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from shared.api.mnist.v1 import inference_pb2 as pb
from shared.api.mnist.v1 import inference_pb2_grpc

from inference.channel import make_channel
from testkit.ports import free_port
from tests.inference.helpers import publish

REPO_ROOT = Path(__file__).resolve().parents[2]


def start_server_process(artifacts: Path, port: int, mnist_dir: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inference",
            "--address",
            f"127.0.0.1:{port}",
            "--artifacts-dir",
            str(artifacts),
            "--data-dir",
            str(mnist_dir),
            "--torch-threads",
            "1",
            "--max-workers",
            "4",
            "--grace-period",
            "5",
        ],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # its own process group: the parent and its worker processes, to crash together
    )
    lines = []
    for line in process.stderr:
        lines.append(line)
        if re.search(rf"listening on 127\.0\.0\.1:{port}", line):
            threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
            return process
    process.kill()
    raise AssertionError("the server did not start:\n" + "".join(lines))


class ClientLoop(threading.Thread):
    """Predict in a loop; records the version of every answer and every failure."""

    def __init__(self, channel: grpc.Channel, png: bytes, timeout: float) -> None:
        super().__init__(daemon=True)
        self.stub = inference_pb2_grpc.InferenceStub(channel)
        self.request = pb.PredictRequest(image=png)
        self.timeout = timeout
        self.versions: list[str] = []
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.versions.append(self.stub.Predict(self.request, timeout=self.timeout).model_version)
            except grpc.RpcError as e:
                self.failures.append(f"{e.code().name}: {e.details()}")
                time.sleep(0.05)
            time.sleep(0.005)

    def wait_for(self, version: str, more: int = 5, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if version in self.versions and len(self.versions) - self.versions.index(version) >= more:
                return
            time.sleep(0.02)
        raise AssertionError(f"{version} not answered {more} times; got {self.versions[-5:]}, {self.failures[-3:]}")


def test_no_failed_call_across_restarts(tmp_path, mnist_dir, digit_pngs):
    port = free_port()
    for version in ("v1", "v2", "v3"):
        publish(tmp_path / version, version, seed=int(version[1]))
    png = digit_pngs[0][1]

    server = start_server_process(tmp_path / "v1", port, mnist_dir)
    resilient_channel = make_channel(f"127.0.0.1:{port}")
    plain_channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    resilient = [ClientLoop(resilient_channel, png, timeout=120) for _ in range(2)]
    control = ClientLoop(plain_channel, png, timeout=120)
    try:
        for client in (*resilient, control):
            client.start()
        for client in resilient:
            client.wait_for("v1")

        server.send_signal(signal.SIGTERM)  # graceful: calls in flight finish, new ones are refused
        assert server.wait(timeout=60) == 0
        server = start_server_process(tmp_path / "v2", port, mnist_dir)
        for client in resilient:
            client.wait_for("v2")

        # A crash: every process of the service dies at once, calls in flight are cut off. Killing the parent
        # alone would leave its workers draining (they get SIGTERM when it dies) and still listening a moment, so
        # the new server, started at once, refused the port as another server's (CI failed once so).
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=60)
        server = start_server_process(tmp_path / "v3", port, mnist_dir)
        for client in resilient:
            client.wait_for("v3")
    finally:
        for client in (*resilient, control):
            client.halt.set()
        for client in (*resilient, control):
            client.join(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        resilient_channel.close()
        plain_channel.close()

    for client in resilient:
        assert client.failures == []
        seen = [v for i, v in enumerate(client.versions) if i == 0 or client.versions[i - 1] != v]
        assert seen == ["v1", "v2", "v3"]
    assert control.failures, "the control client never failed: the server was never really down"
    print(
        f"restarts: {sum(len(c.versions) for c in resilient)} calls on make_channel, none failed; the plain "
        f"channel's client failed {len(control.failures)} of {len(control.failures) + len(control.versions)}"
    )


def photo_sized_png(digit: np.ndarray) -> bytes:
    """The digit at 640x640, stored uncompressed: 400 KB, more than gRPC keeps of a request by default (256 KiB)."""
    buffer = io.BytesIO()
    Image.fromarray(digit).resize((640, 640), Image.Resampling.BILINEAR).save(buffer, format="PNG", compress_level=0)
    assert len(buffer.getvalue()) > 256 * 1024
    return buffer.getvalue()


@pytest.mark.parametrize("picture", ["a 28x28 PNG", "a 400 KB picture"])
def test_a_call_cut_off_by_a_stopping_server_is_answered_by_the_next_one(
    tmp_path, mnist_dir, digit_pngs, monkeypatch, picture
):
    """Clients' gRPC retries a call cut off by a server that went away (inference.channel's retryPolicy) only while
    none of the call's headers has reached them, and only if it kept the request: the server sent the request id in
    headers as each call began, so every call a crashed server was running failed at its clients (the id now comes
    with the status); and gRPC keeps 256 KiB of a request unless told more, so a photo's call failed so even then.
    Here the call is held in the model until the server stops at once (grace 0, calls cancelled), as in a crash."""
    import inference.service as service
    from inference.options import ServerOptions
    from inference.server import create_server
    from tests.inference.helpers import hold_calls

    for version in ("v1", "v2"):
        publish(tmp_path / version, version, seed=int(version[1]))
    port = free_port()

    def start(version: str):
        server, _ = create_server(
            f"127.0.0.1:{port}", ServerOptions(artifacts_dir=tmp_path / version, data_dir=mnist_dir, poll_interval=0.05)
        )
        server.start()
        return server

    first = start("v1")
    entered, release = hold_calls(monkeypatch, service, "digit_log_probs", timeout=60)
    channel = make_channel(f"127.0.0.1:{port}")
    second = None
    try:
        image = digit_pngs[0][1] if picture == "a 28x28 PNG" else photo_sized_png(digit_pngs[0][2])
        call = inference_pb2_grpc.InferenceStub(channel).Predict.future(pb.PredictRequest(image=image), timeout=60)
        assert entered.wait(30)
        first.stop(grace=0)
        monkeypatch.undo()  # the next server answers at once
        second = start("v2")
        assert call.result().model_version == "v2"
    finally:
        release.set()
        channel.close()
        for server in (first, second):
            if server is not None:
                server.stop(grace=0)
