"""Settings read from the environment, one place for every default the services share.

Each service's command-line flags take their defaults from here, so `docker-compose.yml`, the local stack
script and a bare `python -m trainer` agree without repeating a value. tests/deploy/test_compose.py checks that the
compose file uses these names and defaults.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Environment variables, by name. The compose file and the local stack script set these.
ENV_DATA_DIR = "MNIST_DATA_DIR"
ENV_ARTIFACTS_DIR = "MNIST_ARTIFACTS_DIR"
ENV_GRPC_ADDRESS = "MNIST_GRPC_ADDRESS"
ENV_GRPC_TARGET = "MNIST_GRPC_TARGET"
ENV_GRPC_HEALTH_TARGET = "MNIST_GRPC_HEALTH_TARGET"
ENV_INFERENCE_WORKERS = "MNIST_INFERENCE_WORKERS"
ENV_INFERENCE_BACKEND = "MNIST_INFERENCE_BACKEND"
ENV_DIGIT_THRESHOLD = "MNIST_DIGIT_THRESHOLD"
ENV_LOG_FORMAT = "MNIST_LOG_FORMAT"
ENV_METRICS_ADDRESS = "MNIST_METRICS_ADDRESS"
ENV_HEALTH_ADDRESS = "MNIST_HEALTH_ADDRESS"
ENV_TENSORBOARD_PORT = "MNIST_TENSORBOARD_PORT"
ENV_WEB_HOST = "MNIST_WEB_HOST"
ENV_WEB_PORT = "MNIST_WEB_PORT"
ENV_WEB_ALLOWED_HOSTS = "MNIST_WEB_ALLOWED_HOSTS"
ENV_AUTH_TOKEN = "MNIST_AUTH_TOKEN"
ENV_TLS_CERT = "MNIST_TLS_CERT"
ENV_TLS_KEY = "MNIST_TLS_KEY"
ENV_TLS_CA = "MNIST_TLS_CA"
ENV_EPOCHS = "MNIST_EPOCHS"
ENV_PRESET = "MNIST_PRESET"
ENV_DEVICE = "MNIST_DEVICE"
ENV_SEED = "MNIST_SEED"

DEFAULT_ARTIFACTS_DIR = "artifacts"
DEFAULT_GRPC_PORT = 50051
DEFAULT_GRPC_ADDRESS = f"[::]:{DEFAULT_GRPC_PORT}"
DEFAULT_GRPC_TARGET = f"localhost:{DEFAULT_GRPC_PORT}"
DEFAULT_TENSORBOARD_PORT = 6006
# The largest gRPC message the inference service takes by default (its --max-message-bytes); clients keep a request
# up to this size until the call is answered, so that it can be sent again (inference/channel.py).
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# The web page and REST API (python -m inference.web): loopback unless told otherwise, as it has no TLS of its own.
DEFAULT_WEB_HOST = "127.0.0.1"
DEFAULT_WEB_PORT = 8080
# The Prometheus metrics port where deployments turn metrics on (compose, Kubernetes, the local stack): the port
# OpenTelemetry's Prometheus exporters use, free of Prometheus' own 9090 and node_exporter's 9100. A bare
# `python -m inference` serves no metrics unless asked (--metrics-address / MNIST_METRICS_ADDRESS): several servers
# on one machine, as tests and benchmarks start them, would otherwise fight over one fixed port.
DEFAULT_METRICS_PORT = 9464
# The health service's own port where deployments probe it (Kubernetes): health checks answered by threads of
# their own, so a server busy with inference calls still answers its liveness probe. Off for a bare
# `python -m inference` (--health-address / MNIST_HEALTH_ADDRESS), as metrics are, for the same reason.
DEFAULT_HEALTH_PORT = 50052
# The grpc.health.v1 "service" that is SERVING for as long as the server answers, model or not: what a liveness
# probe asks (Kubernetes' native gRPC probe). "" (the whole server) and the API's own name (mnist.v1.Inference) are
# NOT_SERVING until a model is loaded: readiness.
LIVENESS_SERVICE = "liveness"


def default_data_dir() -> Path:
    """Where MNIST is read from, or downloaded to when it is missing: the user's cache folder, else (no HOME and
    no passwd entry, as for an arbitrary user id in a container) the temporary folder."""
    cache = os.environ.get("XDG_CACHE_HOME")
    if not cache:
        try:
            cache = str(Path.home() / ".cache")
        except RuntimeError:  # "Could not determine home directory": it stopped every command, --help included
            cache = tempfile.gettempdir()
    return Path(cache) / "mnist-stack" / "mnist"


def env_str(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


class InvalidEnv:
    """A flag's default read from an environment variable whose value the flag's type refuses. A parser keeps it as
    the default instead of ending the program while it is being built, so `--help` still works (and shows it);
    shared.cli.ArgumentParser refuses it after parsing, unless the flag was typed and replaced it."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __str__(self) -> str:  # what --help shows as the default
        return f"unusable, {self.message}"


def env_value(name: str, default: Any, kind: Callable[[str], Any], what: str = "a valid value") -> Any:
    """The environment variable `name` converted by `kind`, or `default` when it is unset or blank; a value `kind`
    refuses gives an InvalidEnv whose message says which variable is wrong and what it must be."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return kind(value)
    except ValueError:
        return InvalidEnv(f"environment variable {name}={value!r} must be {what}")
    except argparse.ArgumentTypeError as e:  # a checked argparse type's own message says what it must be
        return InvalidEnv(f"environment variable {name}={value!r}: {e}")


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str | InvalidEnv:
    """The environment variable `name` if it is one of `choices` (argparse checks only typed values against them),
    `default` when it is unset or blank."""
    value = env_str(name, default)
    if value not in choices:
        return InvalidEnv(f"environment variable {name}={value!r} must be one of: {', '.join(choices)}")
    return value


def env_int(name: str, default: int) -> int | InvalidEnv:
    return env_value(name, default, int, "a whole number")


@dataclass(frozen=True)
class Paths:
    """The artifacts folder's layout, shared by trainer (writer), inference (reader) and TensorBoard.

    artifacts/
      runs/<run-name>/            one training run: TensorBoard event files, plus
        checkpoints/last.pt       the latest epoch (for --resume)
        checkpoints/best.pt       the best epoch by validation accuracy
      models/
        <version>.pt              published models, never rewritten once there
        LATEST.json               manifest naming the newest published model (renamed into place atomically)
      cache/                      pictures a run drew, for the next run that draws the same (trainer/picture_cache.py)
    """

    root: Path

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def latest_manifest(self) -> Path:
        return self.models / "LATEST.json"

    def run_dir(self, run_name: str) -> Path:
        return self.runs / run_name


def user_path(text: str) -> Path:
    """`text` as a path with "~" expanded: a quoted "~/x" (an .env file, compose) made a folder named "~" in the
    working directory. ArgumentTypeError for a home no one can find (~nosuchuser, or ~ with no HOME and no passwd
    entry, as in a container), where Path.expanduser's RuntimeError stopped even --help."""
    try:
        return Path(text).expanduser()
    except RuntimeError:
        home = text.split("/", 1)[0]
        raise argparse.ArgumentTypeError(f"{home}: no such home folder here; give the folder's whole path") from None


def artifacts_dir() -> Path | InvalidEnv:
    return env_value(ENV_ARTIFACTS_DIR, Path(DEFAULT_ARTIFACTS_DIR), user_path)


def data_dir() -> Path | InvalidEnv:
    # The default only when needed: it may look for HOME.
    return env_value(ENV_DATA_DIR, None, user_path) or default_data_dir()
