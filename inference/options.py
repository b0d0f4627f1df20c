"""What a server process is configured with: ServerOptions, the one place for every server default.

Kept free of torch and gRPC, so the command line (inference/__main__.py), the worker launcher and the local
stack can read the defaults without importing the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.decode import DEFAULT_LIMITS

BACKENDS = ("onnxruntime", "torch")
# onnxruntime ran the compact network's batch of 64 in about half of torch's time on the development machines,
# and one image in a fifth (README, "Inference"); models published before ONNX exports existed use torch.
DEFAULT_BACKEND = "onnxruntime"


@dataclass(frozen=True)
class ServerOptions:
    """Everything create_server needs; the defaults are also the command line's (inference/__main__.py)."""

    artifacts_dir: Path
    data_dir: Path
    download_data: bool = False
    poll_interval: float = 1.0
    backend: str = DEFAULT_BACKEND  # what runs the network: "onnxruntime" or "torch" (inference/model_store.py)
    max_workers: int = 16
    # Calls beyond this many at once are refused with RESOURCE_EXHAUSTED instead of queueing without bound.
    max_concurrent_rpcs: int | None = 128
    max_batch_size: int = 256
    max_image_bytes: int = DEFAULT_LIMITS.max_bytes
    max_image_pixels: int = DEFAULT_LIMITS.max_pixels
    # A Predict of the largest image (max_image_bytes) fits with room to spare; each worker thread holds at most
    # one request of this size, twice (inference/capacity.py counts it).
    max_message_bytes: int = 16 * 1024 * 1024
    max_concurrent_evaluations: int = 1
    # Decoded pictures in memory at once across all calls of one process (shared/budget.py), and how long a call
    # waits for room before RESOURCE_EXHAUSTED. The default holds two frames of the largest size the limits
    # allow (40 MP x 4 bytes = 160 MB); it must hold at least one (checked at start-up).
    decode_budget_mib: int = 320
    decode_wait: float = 5.0
    # Versions other than the served one kept loaded for calls that pin a model_version.
    pinned_cache_size: int = 3
    # host:port of the Prometheus metrics endpoint (port 0 picks a free one); None: no endpoint. With --workers
    # the parent process serves it and the workers get None (inference.workers).
    metrics_address: str | None = None
    auth_token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Several worker processes share one port (inference/workers.py). A single server does not share: a second
    # one started by mistake on a port in use fails instead of silently taking half the traffic. (Two
    # multi-worker services of the same user on one port would share it; run them on different ports.)
    share_port: bool = False
    # Prediction.is_digit is digit_score >= this; None: the served model's own threshold, chosen by the trainer on
    # its validation split (docs/not-a-digit.md).
    digit_threshold: float | None = None
