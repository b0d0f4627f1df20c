"""The inference server as its own process, and real MNIST digits to send it, shared by the benchmarks and tests."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from shared import settings

REPO_ROOT = Path(__file__).resolve().parent.parent


def start_server(
    artifacts: Path,
    data_dir: Path,
    server_args: list[str],
    on_log_line: Callable[[str], None] | None = None,
    startup_timeout: float = 120.0,
    workers: int = 1,
) -> tuple[subprocess.Popen, int]:
    """Start `python -m inference` on a free loopback port serving `artifacts`: (process, port).

    `server_args` are added to the command line. INFO logs loads and failures only, nothing per successful call;
    its "listening on" line gives the port (with `workers` processes, each one's line is awaited). After that, the
    rest of the log is read in the background (so the pipe never fills and blocks the server) and each line is
    passed to `on_log_line`, or dropped if that is None.
    Exits (SystemExit, with the log so far) if the server exits or does not start within `startup_timeout` s.
    """
    env = {**os.environ, settings.ENV_ARTIFACTS_DIR: str(artifacts), settings.ENV_DATA_DIR: str(data_dir)}
    command = [
        sys.executable,
        "-m",
        "inference",
        "--address",
        "127.0.0.1:0",
        "--log-level",
        "INFO",
        "--workers",
        str(workers),
        *server_args,
    ]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    ports: list[int] = []
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            raise SystemExit("the server exited:\n" + "".join(lines))
        lines.append(line)
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if match:
            ports.append(int(match.group(1)))
        if len(ports) == workers:

            def drain() -> None:
                for rest in process.stderr:
                    if on_log_line is not None:
                        on_log_line(rest)

            threading.Thread(target=drain, daemon=True).start()
            return process, ports[0]
    process.kill()
    raise SystemExit(f"the server did not start in {startup_timeout:g} s:\n" + "".join(lines))


def publish_random_model(artifacts: Path) -> str:
    """Publish a random-init default network into `artifacts` (speed and memory do not depend on the weights)."""
    import torch

    from shared.checkpoint import publish_model
    from shared.data import MNIST_MEAN, MNIST_STD
    from shared.model import build_model
    from shared.settings import Paths

    torch.manual_seed(0)
    model = build_model("compact")
    version = "bench-random-init"
    publish_model(
        Paths(artifacts).models,
        version=version,
        model_payload={
            "arch": "compact",
            "arch_kwargs": {},
            "model": model.state_dict(),
            "normalization": {"mean": MNIST_MEAN, "std": MNIST_STD},
            "metrics": {},
            "run_name": "bench",
            "epoch": 0,
        },
    )
    return version


def stop_server(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """Ask the server to stop (SIGTERM); kill it if it has not exited within `timeout` s."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()


def digit_pngs(data_dir: Path, count: int) -> list[bytes]:
    """The first `count` MNIST test digits as PNG files; exits if the MNIST test images are not in `data_dir`."""
    from PIL import Image

    from shared.data import FILES, find_file, read_idx_file

    name, _, _ = FILES["test_images"]
    path = find_file(data_dir, name)
    if path is None:
        raise SystemExit(f"MNIST test images not found in {data_dir}; pass --data-dir")
    out = []
    for image in read_idx_file(path)[:count]:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out
