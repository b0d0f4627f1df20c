"""docker-compose.yml as Compose itself reads it, the Dockerfiles as data, and a compose service as a local process.

What the deploy tests share: the compose model that `docker compose config` renders (the files merged, `!reset`
applied, `${VAR:-default}` substituted, every short form made long), the environment a container gets (image
ENV plus compose's `environment`), and the mapping of a container's volumes and ports onto a temporary folder and
free local ports, so a service's own command can run here without Docker.

Compose v2.24+ is asked, not imitated: one `config` per (files, environment, profiles) in a test session, in a
controlled environment (none of this machine's MNIST_* or COMPOSE_* variables, no .env file) unless a test says
otherwise. Without it the tests that need it skip with the reason, which fails them under CI=true.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared import settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
CPU_OVERRIDE = REPO / "docker-compose.cpu.yml"
DOCKERFILES = {"trainer": REPO / "trainer" / "Dockerfile", "inference": REPO / "inference" / "Dockerfile"}
# Which Dockerfile builds each service's image.
SERVICE_DOCKERFILE = {
    "trainer": "trainer",
    "inference": "inference",
    "web": "inference",
    "tensorboard": "inference",
    "client": "inference",
}
STACK_SERVICES = ("trainer", "inference", "web", "tensorboard")  # what `docker compose up` starts
# A memory limit must exceed a process's estimated peak (inference.capacity) by this much: the estimates are
# measurements of one machine and one build, and a process killed for memory takes every call in flight with it.
MEMORY_HEADROOM = 1.2
_QUANTITY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "": 1}


def k8s_quantity_bytes(quantity: str | int) -> int:
    """A Kubernetes memory quantity ("768Mi", "3Gi", "512M", 1024) in bytes."""
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", str(quantity)).groups()  # type: ignore[union-attr]
    return int(number) * _QUANTITY_UNITS[unit]


# Past a process's own drain: the SIGKILL after compose's stop_grace_period or Kubernetes' terminationGracePeriodSeconds
# must not cut short what the code allows (the store, health and metrics stop after the calls in flight; uvicorn's
# lifespan ends).
SHUTDOWN_MARGIN_S = 5
DOCKER_STOP_GRACE_S = 10  # where a compose service sets no stop_grace_period
_GO_DURATION_UNITS = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def drain_seconds(argv: list[str]) -> float:
    """How long the server that `argv` starts may take after SIGTERM to let its calls in flight end, read from its
    own parser (the code's default, or the flag given): inference's --grace-period; the web gateway's longest gRPC
    deadline (uvicorn waits for the requests in flight, and each ends within its call's deadline: an Evaluate's)."""
    if argv[:3] == ["python", "-m", "inference"]:
        from inference.__main__ import get_args_parser

        return get_args_parser().parse_args(argv[3:]).grace_period
    if argv[:3] == ["python", "-m", "inference.web"]:
        from inference.web.__main__ import get_args_parser as web_args_parser

        args = web_args_parser().parse_args(argv[3:])
        return max(args.timeout, args.evaluate_timeout)
    raise ValueError(f"not a server whose drain is known: {argv}")


def compose_duration_seconds(duration: str) -> float:
    """A duration as `docker compose config` renders it (Go's: "2m10s", "1m30.5s", "500ms"), in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * _GO_DURATION_UNITS[u] for n, u in parts)


# --------------------------------------------------------------------------------------------------------------
# Compose itself

MIN_COMPOSE_VERSION = (2, 24)  # `!reset` in docker-compose.cpu.yml
# All the docker CLI needs from this machine's environment to find its compose plugin; nothing else gets through.
_PASSED_TO_COMPOSE = ("PATH", "HOME", "DOCKER_CONFIG")


@functools.cache
def _compose_or_reason() -> tuple[list[str] | None, str]:
    how = "../shared/tools/docker-engine.sh installs it as the docker CLI plugin"
    if shutil.which("docker") is None:
        return None, f"the docker CLI is not installed; Docker Compose v2 is needed ({how})"
    try:
        result = subprocess.run(["docker", "compose", "version", "--short"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None, "`docker compose version` did not answer within 60 s"
    version = tuple(int(n) for n in re.findall(r"\d+", result.stdout)[:2])
    if result.returncode != 0 or not version:
        return None, f"`docker compose` (Compose v2) is not available ({how}): {result.stderr.strip()}"
    if version < MIN_COMPOSE_VERSION:
        return None, (
            f"Docker Compose {result.stdout.strip()} is too old: {'.'.join(map(str, MIN_COMPOSE_VERSION))}"
            f" or newer reads `!reset` ({how})"
        )
    return ["docker", "compose"], ""


def docker_compose() -> list[str]:
    """`docker compose`, v2.24 or newer; a skip with the reason where there is none (a failure under CI=true)."""
    argv, reason = _compose_or_reason()
    if argv is None:
        pytest.skip(reason)
    return argv


def run_compose(
    *args: str,
    files: tuple[Path, ...] = (COMPOSE_FILE,),
    env: dict[str, str] | None = None,
    project_dir: Path = REPO,
    env_file: Path | None = Path(os.devnull),
    timeout: float = 60,
) -> subprocess.CompletedProcess:
    """`docker compose -f FILE... ARGS` run in `project_dir`, seeing only `env` (and what the CLI needs to run).
    `env_file` replaces the project folder's .env (default: none, so that a developer's .env changes nothing);
    None lets Compose read `project_dir`/.env as it does for a user. No `files`: Compose's own choice (COMPOSE_FILE,
    else docker-compose.yml in `project_dir`)."""
    argv = [*docker_compose(), "--project-directory", str(project_dir)]
    for path in files:
        argv += ["-f", str(path)]
    if env_file is not None:
        argv += ["--env-file", str(env_file)]
    environment = {k: os.environ[k] for k in _PASSED_TO_COMPOSE if k in os.environ}
    return subprocess.run(
        [*argv, *args],
        capture_output=True,
        text=True,
        cwd=project_dir,
        env={**environment, **(env or {})},
        timeout=timeout,
    )


@functools.cache
def _rendered(files: tuple[Path, ...], env: tuple[tuple[str, str], ...], profiles: tuple[str, ...]) -> str:
    profile_args = [a for p in profiles for a in ("--profile", p)]
    result = run_compose(*profile_args, "config", "--format", "json", files=files, env=dict(env))
    assert result.returncode == 0, (
        f"docker compose {' '.join(profile_args)} config rejects "
        f"{', '.join(f.name for f in files)} (environment {dict(env)}):\n{result.stderr}"
    )
    return result.stdout


def load_compose(*files: Path, env: dict[str, str] | None = None, profiles: tuple[str, ...] = ("*",)) -> dict[str, Any]:
    """The compose model of `files` (default docker-compose.yml alone) as `docker compose config` renders it with
    the variables `env` (and no others) and `profiles` enabled (default every one: the client and Prometheus too;
    () gives what a plain `up` starts). Rendered once per session; each call returns a fresh copy."""
    key = (tuple(files) or (COMPOSE_FILE,), tuple(sorted((env or {}).items())), tuple(profiles))
    return json.loads(_rendered(*key))


# --------------------------------------------------------------------------------------------------------------
# Dockerfiles


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip() if len(line.split(None, 1)) > 1 else "")
        for line in logical
    ]


def dockerfile_env(path: Path) -> dict[str, str]:
    """The ENV variables the image's final stage sets (`ENV A=1 B=2` form)."""
    env: dict[str, str] = {}
    for instruction, args in dockerfile_instructions(path):
        if instruction == "FROM":
            env = {}
        elif instruction == "ENV":
            for pair in args.split():
                name, _, value = pair.partition("=")
                env[name] = value
    return env


# --------------------------------------------------------------------------------------------------------------
# A service's container, seen from the host


@dataclass(frozen=True)
class Mount:
    type: str  # "volume" (a named volume) or "bind" (a host path)
    volume: str  # the volume's name, or the host path of a bind mount
    target: str
    read_only: bool


def mounts(service: dict[str, Any]) -> list[Mount]:
    """The service's volumes, from Compose's long form."""
    return [Mount(v["type"], v["source"], v["target"], bool(v.get("read_only"))) for v in service.get("volumes", [])]


@dataclass(frozen=True)
class Port:
    host_ip: str
    host_port: str  # a number, a range, or '' (any free port)
    container_port: int
    protocol: str = "tcp"


def published_ports(service: dict[str, Any]) -> list[Port]:
    """The service's ports, from Compose's long form."""
    return [
        Port(p.get("host_ip", ""), p.get("published", ""), int(p["target"]), p.get("protocol", "tcp"))
        for p in service.get("ports", [])
    ]


def container_environment(model: dict[str, Any], name: str) -> dict[str, str]:
    """What the container's process sees: the image's ENV, then compose's `environment` as Compose rendered it
    (`load_compose(env=...)`): a variable without a value is passed through from that environment when set there
    (Compose fills it in) and left out when not (Compose leaves it null)."""
    service = model["services"][name]
    # An image built elsewhere (prometheus): its ENV sets none of the project's variables.
    env = dockerfile_env(DOCKERFILES[SERVICE_DOCKERFILE[name]]) if name in SERVICE_DOCKERFILE else {}
    env.update({k: str(v) for k, v in (service.get("environment") or {}).items() if v is not None})
    return env


def restarts_a_failed_process(service: dict[str, Any]) -> bool:
    """Whether Docker starts the service's container again when its process exits non-zero, as the local stack's
    `restart_on_failure` does: every policy but "no" (what the rest of each policy does, after exit 0 or when Docker
    starts, has no local counterpart)."""
    return service.get("restart", "no") in ("on-failure", "unless-stopped", "always")


def command(model: dict[str, Any], name: str) -> list[str]:
    service = model["services"][name]
    return [*(service.get("entrypoint") or []), *service["command"]]


@dataclass
class LocalMapping:
    """Where a container's volumes and ports are on this machine."""

    volumes: dict[str, Path]  # compose volume name -> folder
    ports: dict[int, int]  # container port -> local port
    loopback: str = "127.0.0.1"  # what a container's 0.0.0.0 / localhost becomes
    python: str = sys.executable

    def path(self, model: dict[str, Any], name: str, container_path: str) -> str:
        for mount in mounts(model["services"][name]):
            if container_path == mount.target or container_path.startswith(mount.target + "/"):
                host = mount.volume if mount.type == "bind" else str(self.volumes[mount.volume])
                return host + container_path[len(mount.target) :]
        return container_path

    def arg(self, model: dict[str, Any], name: str, arg: str, previous: str | None) -> str:
        m = re.fullmatch(r"(localhost|0\.0\.0\.0|\[::\]|127\.0\.0\.1):(\d+)", arg)
        if m and int(m[2]) in self.ports:
            return f"{self.loopback}:{self.ports[int(m[2])]}"
        # Another service, by the name Docker's DNS answers for it (the web page's dns:///inference:50051).
        m = re.fullmatch(r"(?:dns:///)?([a-z][a-z0-9-]*):(\d+)", arg)
        if m and m[1] in model["services"] and int(m[2]) in self.ports:
            return f"{self.loopback}:{self.ports[int(m[2])]}"
        if previous == "--port" and arg.isdigit() and int(arg) in self.ports:
            return str(self.ports[int(arg)])
        if arg in ("0.0.0.0", "localhost"):
            return self.loopback
        return self.path(model, name, arg)

    def argv(self, model: dict[str, Any], name: str, argv: list[str]) -> list[str]:
        program = {"python": [self.python], "tensorboard": [self.python, "-m", "tensorboard.main"]}[argv[0]]
        mapped = [self.arg(model, name, a, p) for p, a in zip([None, *argv[1:]], argv[1:])]
        return [*program, *mapped]


def local_process(model: dict[str, Any], name: str, mapping: LocalMapping) -> tuple[list[str], dict[str, str]]:
    """The service's command and environment (`model` rendered with the host's variables: `load_compose(env=...)`),
    as a process on this machine: container paths -> `mapping`'s folders, container ports -> its local ports. The
    inference server's address, not set in compose (the settings' default), is made explicit so that it can be
    moved to a free port."""
    argv = mapping.argv(model, name, command(model, name))
    env = {k: mapping.arg(model, name, v, None) for k, v in container_environment(model, name).items()}
    if argv[1:3] == ["-m", "inference"]:
        address = env.get(settings.ENV_GRPC_ADDRESS, settings.DEFAULT_GRPC_ADDRESS)
        env[settings.ENV_GRPC_ADDRESS] = mapping.arg(model, name, address, None)
    return argv, env


def healthcheck_argv(model: dict[str, Any], name: str, mapping: LocalMapping) -> list[str]:
    test = model["services"][name]["healthcheck"]["test"]
    assert test[0] == "CMD", f"{name}: healthcheck should be exec form ['CMD', ...], not {test[0]}"
    return mapping.argv(model, name, test[1:])
