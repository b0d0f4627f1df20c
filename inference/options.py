"""What a server process is configured with: ServerOptions, the one place for every server option.

Each field is written once, here, with its default, its help text and (where it has one) its environment variable;
the command line (`add_server_arguments`) and the options a parsed command line gives (`server_options`) are
derived from these fields, so a new option is one new field. Kept free of torch and gRPC, so the command line
(inference/__main__.py), the worker launcher and the local stack can read the defaults without importing the
server.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from shared import settings
from shared.cli import (
    float_between,
    folder,
    non_negative_int,
    non_negative_seconds,
    positive_int,
    positive_seconds,
    seconds_at_least,
)
from shared.decode import DEFAULT_LIMITS

BACKENDS = ("onnxruntime", "torch")
# onnxruntime ran the compact network's batch of 64 in about half of torch's time on the development machines,
# and one image in a fifth (docs/benchmarks.md, "Inference"); models published before ONNX exports existed use torch.
DEFAULT_BACKEND = "onnxruntime"


MAX_MESSAGE_BYTES = 2**31 - 1  # gRPC's channel arguments are C ints: a larger one ended in an OverflowError


def message_bytes(text: str) -> int:
    """argparse type: a gRPC message size limit, 1 to MAX_MESSAGE_BYTES."""
    value = positive_int(text)
    if value > MAX_MESSAGE_BYTES:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_MESSAGE_BYTES:,} (gRPC's limit), got {value:,}")
    return value


# The digit threshold's flag and environment variable: a digit score is in [0, 1].
unit_interval = float_between(0, 1)


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    env: str | None = None,
    cli_default: Callable[[], Any] | None = None,
    **argparse_kwargs: Any,
) -> Any:
    """A ServerOptions field and its command-line flag: `--<name-with-dashes>` unless `flag` names another.
    `env`: the environment variable that sets the flag's default; `cli_default`: the flag's default computed when
    the parser is built (the settings' environment lookups). Other keywords go to argparse's add_argument."""
    metadata = {"cli": dict(help=help, flag=flag, env=env, cli_default=cli_default, kwargs=argparse_kwargs)}
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ServerOptions:
    """Everything create_server needs. The defaults are also the command line's."""

    artifacts_dir: Path = option(
        help="the trainer's artifacts folder; models/LATEST.json is watched",
        type=folder,
        env=settings.ENV_ARTIFACTS_DIR,
        cli_default=settings.artifacts_dir,
    )
    data_dir: Path = option(
        help="MNIST files for Evaluate, read on the first Evaluate call",
        type=folder,
        env=settings.ENV_DATA_DIR,
        cli_default=settings.data_dir,
    )
    download_data: bool = option(
        False, "download MNIST into --data-dir when Evaluate finds it missing", action="store_true"
    )
    poll_interval: float = option(
        1.0, "how often to look for a newly published model", metavar="SECONDS", type=positive_seconds
    )
    # What runs the network (inference/model_store.py).
    backend: str = option(
        DEFAULT_BACKEND,
        "what runs the network: onnxruntime (the published model's ONNX export; models without one use torch) or torch",
        env=settings.ENV_INFERENCE_BACKEND,
        choices=BACKENDS,
    )
    max_workers: int = option(16, "gRPC worker threads (concurrent calls) in each process", type=positive_int)
    # Calls beyond this many at once are refused with RESOURCE_EXHAUSTED instead of queueing without bound. Those
    # beyond --max-workers wait for a thread with their whole request received (inference/capacity.py counts them):
    # 128 let 112 requests of 16 MiB wait, 1.8 GiB past a Kubernetes pod's limit. Twice --max-workers: a call's slot
    # is freed a moment after its answer is sent, so as many clients as threads, each sending its next call on the
    # answer, briefly hold more; at 20, 16 such clients had 27 of 21,961 calls refused in 60 s (bench_load).
    max_concurrent_rpcs: int | None = option(
        32, "calls beyond this many at once get RESOURCE_EXHAUSTED instead of queueing", type=positive_int
    )
    # Clients that resolve a DNS name (dns:///inference:50051, round-robin over the replicas) resolve it again only
    # when a connection ends: without an age limit, a replica added later gets no call from clients connected
    # before it. Past this age a connection is asked to close (GOAWAY): its clients reconnect, resolving the name
    # anew, and new calls go to the new connection while those in flight finish within the grace.
    max_connection_age: float = option(
        300.0,
        "ask each client connection to close after this long, so that clients resolve the service's name again and "
        "spread their calls over replicas added since",
        metavar="SECONDS",
        # gRPC takes whole milliseconds: under 0.0005 s was 0 ms, a GOAWAY on every connection at once, a server
        # that started and answered nothing. A tenth of a second is room for a call; less is no setting to run.
        type=seconds_at_least(0.1),
    )
    max_connection_age_grace: float = option(
        150.0,
        "calls still running on a connection asked to close get this long to finish (an Evaluate may take 120 s)",
        metavar="SECONDS",
        type=positive_seconds,
    )
    max_batch_size: int = option(256, "images per PredictBatch call", type=positive_int)
    max_image_bytes: int = option(DEFAULT_LIMITS.max_bytes, "bytes of one encoded image", type=positive_int)
    max_image_pixels: int = option(
        DEFAULT_LIMITS.max_pixels,
        "decoded width x height of one image (decompression bombs are refused)",
        type=positive_int,
    )
    # A Predict of the largest image (max_image_bytes) fits with room to spare; each worker thread holds at most
    # one request of this size, twice (inference/capacity.py counts it).
    max_message_bytes: int = option(
        settings.DEFAULT_MAX_MESSAGE_BYTES,
        "bytes of one request or response message (at most 2 GiB - 1)",
        type=message_bytes,
    )
    max_concurrent_evaluations: int = option(
        1, "Evaluate calls at once; more get RESOURCE_EXHAUSTED", type=positive_int
    )
    # A ReadNumber can take a second of CPU on a picture made to be slow (a zigzag across 1024 px). Past this many
    # at once the rest are refused at once, as evaluations are, leaving worker threads for Predict and health: 16
    # clients looping on one such picture (as many as --max-workers) kept Predict waiting up to 4.5 s and failed a
    # third of the main port's health checks, and 32 filled --max-concurrent-rpcs so that every other call was
    # refused (stop 62, a review). None: half of --max-workers (with 12 readings at once of 16 threads, Predict's
    # p95 stayed 38 ms).
    max_concurrent_readings: int | None = option(
        None,
        "ReadNumber calls at once in each process; more get RESOURCE_EXHAUSTED at once (default: half of "
        "--max-workers)",
        type=positive_int,
    )
    # Decoded pictures in memory at once across all calls of one process (shared/budget.py), and how long a call
    # waits for room before RESOURCE_EXHAUSTED. The default holds two frames of the largest size the limits
    # allow (40 MP x 4 bytes = 160 MB); it must hold at least one (checked at start-up). What a call does with a
    # picture is held here too while it runs: the 28x28 digit made of it (shared.image_pipeline.pipeline_bytes: at
    # most 28 MiB), the reading of a number (shared.segment.reading_bytes: at most 72 MiB), and the network's
    # forward pass (ServedModel.forward_bytes: 387 KiB an image for the compact network).
    decode_budget_mib: int = option(
        320,
        "decoded pictures, and the work on them (making digits, reading numbers, the network's forward pass), in "
        "memory at once, across all calls of one process; "
        "a call that would exceed it waits, then gets RESOURCE_EXHAUSTED",
        type=positive_int,
    )
    decode_wait: float = option(
        5.0,
        "how long a call waits for room in the decode budget, in all (each picture of a PredictBatch on its own)",
        metavar="SECONDS",
        type=non_negative_seconds,
    )
    # Versions other than the served one kept loaded for calls that pin a model_version.
    # Prediction.is_digit is digit_score >= this; None: the served model's own threshold, chosen by the trainer on
    # its validation split (docs/not-a-digit.md).
    digit_threshold: float | None = option(
        None,
        "a picture is a digit (Prediction.is_digit) when its digit score is at least this, 0..1; default: "
        "the served model's own, chosen by the trainer on its validation split (docs/not-a-digit.md)",
        env=settings.ENV_DIGIT_THRESHOLD,
        type=unit_interval,
        metavar="SCORE",
    )
    pinned_cache_size: int = option(
        3,
        "published versions besides the served one kept loaded for calls that pin a model_version (least "
        "recently used first out)",
        flag="--model-cache-size",
        metavar="N",
        type=non_negative_int,
    )
    # host:port of the Prometheus metrics endpoint (port 0 picks a free one); None: no endpoint. With --workers
    # the parent process serves it and the workers get None (inference.workers).
    metrics_address: str | None = option(
        None,
        f"serve Prometheus metrics over HTTP at http://HOST:PORT/metrics, e.g. "
        f"0.0.0.0:{settings.DEFAULT_METRICS_PORT}; off when not given. With --workers the sum over the processes",
        env=settings.ENV_METRICS_ADDRESS,
        metavar="HOST:PORT",
    )
    # host:port of a plaintext gRPC port that serves only the health service, from threads of its own; None: none
    # (health is then answered on the main port only, behind the inference calls waiting for a worker thread).
    health_address: str | None = option(
        None,
        f"also serve the health service (grpc.health.v1) alone at HOST:PORT, plaintext, from threads of its own, "
        f"e.g. 0.0.0.0:{settings.DEFAULT_HEALTH_PORT}: probes are answered however busy the main port is (every "
        "worker thread taken, --max-concurrent-rpcs reached). Off when not given; with --workers, give a fixed port",
        env=settings.ENV_HEALTH_ADDRESS,
        metavar="HOST:PORT",
    )
    # The flag's default is None rather than the environment's value, so --help never prints the secret;
    # server_options() reads the environment.
    auth_token: str | None = option(
        None,
        f"require metadata 'authorization: Bearer <token>' on every call but health checks (env "
        f"{settings.ENV_AUTH_TOKEN}; prefer the env var: flags show up in `ps`)",
    )
    tls_cert: Path | None = option(
        None, "PEM certificate chain; with --tls-key, serve TLS only", type=Path, env=settings.ENV_TLS_CERT
    )
    tls_key: Path | None = option(None, "PEM private key of --tls-cert", type=Path, env=settings.ENV_TLS_KEY)
    # Several worker processes share one port (inference/workers.py). A single server does not share: a second
    # one started by mistake on a port in use fails instead of silently taking half the traffic. (Two
    # multi-worker services of the same user on one port would share it; run them on different ports.)
    # Not a flag: inference.workers sets it for its workers.
    share_port: bool = False


def _cli_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(ServerOptions) if "cli" in f.metadata]


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per ServerOptions field, with the field's default (or its environment variable's value)."""
    for f in _cli_fields():
        cli = f.metadata["cli"]
        kwargs = dict(cli["kwargs"])
        if cli["cli_default"] is not None:
            default = cli["cli_default"]()
        else:
            default = f.default
            if cli["env"] is not None and "choices" in kwargs:  # argparse checks choices of typed values only
                default = settings.env_choice(cli["env"], cast(str, default), kwargs["choices"])
            elif cli["env"] is not None:
                kind = kwargs.get("type") or (type(f.default) if f.default is not None else str)
                default = settings.env_value(cli["env"], default, kind)
        if kwargs.get("action") is None and "type" not in kwargs and isinstance(f.default, (int, float)):
            kwargs["type"] = type(f.default)
        help_text = cli["help"] + (f" (env {cli['env']})" if cli["env"] else "")
        parser.add_argument(
            cli["flag"] or "--" + f.name.replace("_", "-"), dest=f.name, default=default, help=help_text, **kwargs
        )


def server_options(args: argparse.Namespace, **overrides: Any) -> ServerOptions:
    """The ServerOptions a command line parsed with add_server_arguments gives."""
    values = {f.name: getattr(args, f.name) for f in _cli_fields()}
    if values["auth_token"] is None:
        values["auth_token"] = os.environ.get(settings.ENV_AUTH_TOKEN) or None
    values.update(overrides)
    return ServerOptions(**values)
