"""docker-compose.yml and the Dockerfiles as data, and a compose service as a local process.

What the deploy tests share: reading the compose files the way Compose merges them, the environment a
container gets (image ENV plus compose's `environment`), and the mapping of a container's volumes and ports
onto a temporary folder and free local ports, so a service's own command can run here without Docker.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shared import settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
CPU_OVERRIDE = REPO / "docker-compose.cpu.yml"
DOCKERFILES = {"trainer": REPO / "trainer" / "Dockerfile", "inference": REPO / "inference" / "Dockerfile"}
# Which Dockerfile builds each service's image.
SERVICE_DOCKERFILE = {"trainer": "trainer", "inference": "inference", "web": "inference", "tensorboard": "inference",
                      "client": "inference"}
STACK_SERVICES = ("trainer", "inference", "web", "tensorboard")  # what `docker compose up` starts


# --------------------------------------------------------------------------------------------------------------
# Compose files


class Reset:
    """Compose's `!reset` tag (v2.24+): the attribute is removed from what the earlier files said."""

    def __repr__(self) -> str:
        return "!reset"


class _ComposeLoader(yaml.SafeLoader):
    pass


_ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())


def load_yaml(path: Path) -> dict[str, Any]:
    with open(path) as f:
        return yaml.load(f, Loader=_ComposeLoader)  # noqa: S506 - a SafeLoader with one more tag


# The compose specification's merge rules (https://docs.docker.com/reference/compose-file/merge/): mappings
# merge key by key, sequences append, these few are replaced whole, and `!reset` removes.
_REPLACED = {("services", "*", "command"), ("services", "*", "entrypoint"),
             ("services", "*", "healthcheck", "test")}


def _merge(base: Any, override: Any, path: tuple[str, ...]) -> Any:
    if any(len(p) == len(path) and all(a in ("*", b) for a, b in zip(p, path)) for p in _REPLACED):
        return override
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                merged.pop(key, None)
            elif key in merged:
                merged[key] = _merge(merged[key], value, (*path, key))
            else:
                merged[key] = value
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return base + override
    return override


def load_compose(*files: Path) -> dict[str, Any]:
    """The compose model of `files` (default docker-compose.yml alone), merged in order, `x-` anchors resolved."""
    model: dict[str, Any] = {}
    for path in files or (COMPOSE_FILE,):
        model = _merge(model, load_yaml(path), ())
    return model


_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` (unset or empty) and `${VAR-default}` (unset only)."""

    def value(m: re.Match) -> str:
        name, op, default = m["name"], m["op"], m["default"] or ""
        current = env.get(name)
        if op == ":-" and not current:
            return default
        if op == "-" and current is None:
            return default
        return current or ""

    return _VARIABLE.sub(value, text)


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
    return [(l.split(None, 1)[0].upper(), l.split(None, 1)[1].strip() if len(l.split(None, 1)) > 1 else "")
            for l in logical]


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
    volume: str
    target: str
    read_only: bool


def mounts(service: dict[str, Any]) -> list[Mount]:
    result = []
    for spec in service.get("volumes", []):
        volume, target, *mode = spec.split(":")
        result.append(Mount(volume, target, "ro" in mode))
    return result


@dataclass(frozen=True)
class Port:
    host_ip: str
    host_port: str  # a number, a range, or '' (any free port)
    container_port: int


def published_ports(service: dict[str, Any], env: dict[str, str]) -> list[Port]:
    result = []
    for spec in service.get("ports", []):
        host_ip, host_port, container = interpolate(str(spec), env).rsplit(":", 2)
        result.append(Port(host_ip, host_port, int(container.split("/")[0])))
    return result


def container_environment(model: dict[str, Any], name: str, host_env: dict[str, str]) -> dict[str, str]:
    """What the container's process sees: the image's ENV, then compose's `environment`, where a variable
    without a value is passed through from the host (`host_env`) when set there and left out when not."""
    service = model["services"][name]
    # An image built elsewhere (prometheus): its ENV sets none of the project's variables.
    env = dockerfile_env(DOCKERFILES[SERVICE_DOCKERFILE[name]]) if name in SERVICE_DOCKERFILE else {}
    for key, value in (service.get("environment") or {}).items():
        if value is None:
            if key in host_env:
                env[key] = host_env[key]
        else:
            env[key] = interpolate(str(value), host_env)
    return env


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
                return str(self.volumes[mount.volume]) + container_path[len(mount.target):]
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


def local_process(model: dict[str, Any], name: str, mapping: LocalMapping,
                  host_env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The service's command and environment, as a process on this machine: container paths -> `mapping`'s
    folders, container ports -> its local ports. The inference server's address, not set in compose (the
    settings' default), is made explicit so that it can be moved to a free port."""
    argv = mapping.argv(model, name, command(model, name))
    env = {k: mapping.arg(model, name, v, None) for k, v in container_environment(model, name, host_env).items()}
    if argv[1:3] == ["-m", "inference"]:
        address = env.get(settings.ENV_GRPC_ADDRESS, settings.DEFAULT_GRPC_ADDRESS)
        env[settings.ENV_GRPC_ADDRESS] = mapping.arg(model, name, address, None)
    return argv, env


def healthcheck_argv(model: dict[str, Any], name: str, mapping: LocalMapping) -> list[str]:
    test = model["services"][name]["healthcheck"]["test"]
    assert test[0] == "CMD", f"{name}: healthcheck should be exec form ['CMD', ...], not {test[0]}"
    return mapping.argv(model, name, test[1:])
