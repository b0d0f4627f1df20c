"""Run the stack without Docker: the trainer, the inference service, the web page and TensorBoard as local processes.

    python -m scripts.local_stack [--epochs N] [--tensorboard-port 6007] [--skip trainer] ...   (repository root)
    (or `make stack` / `scripts/stack.sh`, from any folder, which first create the virtual environment if needed)

The same four commands as docker-compose.yml, with the same settings (the MNIST_* environment variables of
shared/settings.py) and the same ports; tests/deploy/test_compose.py checks that the two agree. Like
`docker compose up`:
  - every line a service prints is prefixed with its name (`trainer     | epoch 1/15 ...`);
  - the trainer is a one-shot job: when it exits 0 the others keep running;
  - inference, the web page and TensorBoard are restarted when they fail (compose's `restart: unless-stopped`), a
    few times, and if they keep failing the stack stops with exit status 1 (once the trainer, if it is still
    running, has finished: its run is not cut off for another service);
  - Ctrl-C (SIGINT) or SIGTERM is passed on to every service, which gets --stop-timeout seconds to finish
    before it is killed; a second Ctrl-C kills at once.

One difference, on purpose: compose publishes gRPC on 127.0.0.1 only, so locally the server binds
localhost:50051 rather than every interface, unless MNIST_GRPC_ADDRESS says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from shared import settings
from shared.cli import (
    ArgumentParser,
    HelpFormatter,
    folder,
    non_empty,
    non_negative_int,
    non_negative_seconds,
    port_number,
    positive_int,
)
from shared.wakeup import Wakeup

from inference.web.guards import LOOPBACK_BINDS, default_allowed_hosts
from inference.workers import bind_error, join_address, split_address

ROOT = Path(__file__).resolve().parent.parent

# docker-compose.yml's default memory limit of the inference container (tests/deploy checks the two agree).
COMPOSE_INFERENCE_MEMORY = "3g"

SERVICE_NAMES = ("trainer", "inference", "web", "tensorboard")
SUPERVISOR_NAME = "stack"


@dataclass(frozen=True)
class Service:
    """One process to run: `argv` with the stack's environment plus `env`."""

    name: str
    argv: list[str]
    # compose's `restart: unless-stopped` (of which a reboot has no local counterpart); the trainer's is "no": it is
    # a job that ends.
    restart_on_failure: bool = False
    env: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------------------
# The command line, and the services it describes


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m scripts.local_stack",
        description="Run the trainer, the gRPC inference service, the web page and TensorBoard as local "
        "processes (docker-compose.yml without Docker). Ctrl-C stops them all.",
        formatter_class=HelpFormatter,
    )
    s = settings
    parser.add_argument(
        "--artifacts-dir",
        type=folder,
        default=s.artifacts_dir(),
        help=f"runs (TensorBoard logs, checkpoints) and published models [env {s.ENV_ARTIFACTS_DIR}]",
    )
    parser.add_argument(
        "--data-dir",
        type=folder,
        default=s.data_dir(),
        help=f"the MNIST files; the trainer downloads them there when missing [env {s.ENV_DATA_DIR}]",
    )
    parser.add_argument(
        "--grpc-address",
        type=service_address,
        default=s.env_value(s.ENV_GRPC_ADDRESS, f"localhost:{s.DEFAULT_GRPC_PORT}", service_address),
        help=f"where the inference service listens [env {s.ENV_GRPC_ADDRESS}]",
    )
    parser.add_argument(
        "--web-port",
        type=port_number,
        default=s.env_value(s.ENV_WEB_PORT, s.DEFAULT_WEB_PORT, port_number),
        help=f"the web page and REST API's port [env {s.ENV_WEB_PORT}]",
    )
    parser.add_argument(
        "--web-host",
        type=non_empty,
        default=s.env_str(s.ENV_WEB_HOST, "localhost"),
        help=f"the web page's interface; 0.0.0.0 shows it to the network [env {s.ENV_WEB_HOST}]",
    )
    parser.add_argument(
        "--metrics-address",
        type=service_address,
        default=s.env_value(s.ENV_METRICS_ADDRESS, f"localhost:{s.DEFAULT_METRICS_PORT}", service_address),
        help=f"where the inference service serves Prometheus metrics [env {s.ENV_METRICS_ADDRESS}]",
    )
    parser.add_argument(
        "--health-address",
        type=service_address,
        default=s.env_value(s.ENV_HEALTH_ADDRESS, f"localhost:{s.DEFAULT_HEALTH_PORT}", service_address),
        help=f"where the inference service answers health checks, however busy its main port [env "
        f"{s.ENV_HEALTH_ADDRESS}]",
    )
    parser.add_argument(
        "--tensorboard-port",
        type=port_number,
        default=s.env_value(s.ENV_TENSORBOARD_PORT, s.DEFAULT_TENSORBOARD_PORT, port_number),
        help=f"TensorBoard's port [env {s.ENV_TENSORBOARD_PORT}]",
    )
    parser.add_argument(
        "--tensorboard-host", default="localhost", help="TensorBoard's interface; 0.0.0.0 shows it to the network"
    )
    # Training settings: given here they are exported to the services; not given, the environment's (or the
    # trainer's own defaults) apply, so no default is repeated here.
    parser.add_argument(
        "--epochs", type=positive_int, default=None, help=f"[env {s.ENV_EPOCHS}]; default: the preset's"
    )
    parser.add_argument("--preset", default=None, help=f"default or seed [env {s.ENV_PRESET}]")
    parser.add_argument("--device", default=None, help=f"auto, cpu or cuda [env {s.ENV_DEVICE}]")
    parser.add_argument("--seed", type=int, default=None, help=f"[env {s.ENV_SEED}]")
    parser.add_argument(
        "--trainer-args",
        default="",
        metavar="ARGS",
        help='more trainer flags, one string, e.g. "--train-subset 2000" for a smoke run; a lone flag with an '
        "equals sign (--trainer-args=--dry-run), or argparse takes it for one of its own",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=SERVICE_NAMES,
        metavar="SERVICE",
        help=f"do not start this service (repeatable; one of {', '.join(SERVICE_NAMES)}); "
        "--skip trainer serves the models already published",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter that runs the services (the project's virtual environment)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=non_negative_seconds,
        default=10.0,
        metavar="SECONDS",
        help="on Ctrl-C, how long the services get to exit before they are killed",
    )
    parser.add_argument(
        "--max-restarts",
        type=non_negative_int,
        default=3,
        help="restarts of a failing inference, web or TensorBoard before the stack gives up",
    )
    return parser


def service_address(text: str) -> str:
    """argparse type: where a service listens, host:port (port 0: any free one). Given without its host or port (the
    README moves ports by these variables), it was taken, and the server's own check ended the stack in a
    traceback."""
    try:
        split_address(text.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}; give host:port, as localhost:50051 or [::]:50051") from None
    return text.strip()


# Hosts a server listens on every interface by.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


def calling_address(address: str) -> str:
    """The address a local client calls a service listening on `address` by: its own host, or this machine for a
    wildcard (every interface) one. Always 'localhost' before, so a service bound to one interface's address was
    never reached by the web page (503) nor by the client command the stack printed."""
    host, port = split_address(address)
    return join_address("localhost" if host in WILDCARD_HOSTS else host, port)


def stack_environment(args: argparse.Namespace) -> dict[str, str]:
    """The MNIST_* variables every service gets, so they agree on paths and ports."""
    env = {
        settings.ENV_ARTIFACTS_DIR: str(Path(args.artifacts_dir).resolve()),
        settings.ENV_DATA_DIR: str(Path(args.data_dir).resolve()),
        settings.ENV_GRPC_ADDRESS: args.grpc_address,
        # Where the web page finds the inference service, where it listens, and its readiness probe the service's
        # health-only port.
        settings.ENV_GRPC_TARGET: calling_address(args.grpc_address),
        settings.ENV_GRPC_HEALTH_TARGET: calling_address(args.health_address),
        settings.ENV_WEB_PORT: str(args.web_port),
        settings.ENV_METRICS_ADDRESS: args.metrics_address,
        settings.ENV_HEALTH_ADDRESS: args.health_address,
        settings.ENV_TENSORBOARD_PORT: str(args.tensorboard_port),
        # As compose sets it: the names the page is opened by (inference.web.guards: DNS rebinding).
        settings.ENV_WEB_ALLOWED_HOSTS: settings.env_str(
            settings.ENV_WEB_ALLOWED_HOSTS, ",".join(default_allowed_hosts(args.web_host))
        ),
    }
    optional = {
        settings.ENV_EPOCHS: args.epochs,
        settings.ENV_PRESET: args.preset,
        settings.ENV_DEVICE: args.device,
        settings.ENV_SEED: args.seed,
    }
    env.update({name: str(value) for name, value in optional.items() if value is not None})
    return env


def local_services(args: argparse.Namespace) -> list[Service]:
    """docker-compose.yml's four services as local commands (tests/deploy checks that they match)."""
    python = args.python
    runs = settings.Paths(Path(args.artifacts_dir).resolve()).runs
    services = [
        Service("trainer", [python, "-m", "trainer", *shlex.split(args.trainer_args)]),
        Service("inference", [python, "-m", "inference"], restart_on_failure=True),
        Service(
            "web",
            [python, "-m", "inference.web", "--host", args.web_host, "--port", str(args.web_port)],
            restart_on_failure=True,
        ),
        # `python -m tensorboard.main` is the `tensorboard` script of the same interpreter.
        Service(
            "tensorboard",
            [
                python,
                "-m",
                "tensorboard.main",
                "--logdir",
                str(runs),
                "--host",
                args.tensorboard_host,
                "--port",
                str(args.tensorboard_port),
            ],
            restart_on_failure=True,
        ),
    ]
    return [s for s in services if s.name not in args.skip]


# --------------------------------------------------------------------------------------------------------------
# The supervisor


class PrefixedOutput:
    """Writes whole lines as `name | line`, one writer at a time, names padded to one width (as compose does)."""

    def __init__(self, out: TextIO, names: list[str]) -> None:
        self.out = out
        self.width = max(len(n) for n in [*names, SUPERVISOR_NAME])
        self.lock = threading.Lock()

    def line(self, name: str, text: str) -> None:
        with self.lock:
            try:
                self.out.write(f"{name:<{self.width}} | {text}\n")
                self.out.flush()
            except (OSError, ValueError):  # the reader went away (`| head`, a closed terminal: EIO) or it is closed
                pass

    def pump(self, name: str, stream) -> None:
        """Copy a child's output line by line until it closes. `\\r` ends a line too (progress bars)."""
        pending = b""
        while True:
            chunk = stream.read1(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = re.split(rb"\r\n|\r(?!$)|\n", pending)
            for raw in lines:
                self.line(name, raw.rstrip(b"\r").decode("utf-8", "replace"))
        if pending.strip(b"\r"):
            self.line(name, pending.rstrip(b"\r").decode("utf-8", "replace"))


@dataclass
class _Running:
    service: Service
    process: subprocess.Popen | None = None
    pump: threading.Thread | None = None
    started_at: float = 0.0
    restarts: int = 0
    restart_at: float | None = None  # a restart is due then
    exit_code: int | None = None  # set once it has ended for good


class Supervisor:
    """Start services, copy their output with prefixes, restart the failing ones, and stop them all on request.

    `run()` blocks until every service has ended for good or `request_stop()` was called (from a signal
    handler or another thread), and returns the stack's exit status: 0 when nothing failed.
    """

    def __init__(
        self,
        services: list[Service],
        *,
        env: dict[str, str] | None = None,
        base_env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        out: TextIO | None = None,
        stop_timeout: float = 10.0,
        max_restarts: int = 3,
        restart_delay: float = 1.0,
        stable_after: float = 10.0,
    ) -> None:
        self.services = services
        # Each service: `base_env` (default: this process's environment), then `env`, then its own `env`.
        self.env = {**(os.environ if base_env is None else base_env), **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.cwd = cwd
        self.output = PrefixedOutput(out or sys.stdout, [s.name for s in services])
        self.stop_timeout = stop_timeout
        self.max_restarts = max_restarts
        self.restart_delay = restart_delay
        self.stable_after = stable_after  # a run this long resets the restart count (compose's backoff does too)
        self._running = [_Running(s) for s in services]
        self._wake = Wakeup()  # not a threading.Event: request_stop is called from signal handlers (shared.wakeup)
        self._stop_signal: int | None = None
        self._force = False
        self._failed = False
        self._stop_after_jobs = False  # a service gave up while a job ran: stop once the jobs have ended

    # Called from a signal handler or another thread: only flags and a wake-up, never I/O or locks.
    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        if self._stop_signal is None:
            self._stop_signal = signum
        else:
            self._force = True  # asked twice: kill now
        self._wake.send()

    def woken_by_signals(self) -> contextlib.AbstractContextManager[None]:
        """Within it, a signal ends run()'s waits at once, whichever thread it lands on (shared.wakeup): main()'s."""
        return self._wake.on_signals()

    def log(self, text: str) -> None:
        self.output.line(SUPERVISOR_NAME, text)

    def processes(self) -> dict[str, subprocess.Popen]:
        return {r.service.name: r.process for r in self._running if r.process is not None}

    def _start(self, r: _Running) -> None:
        try:
            r.process = subprocess.Popen(
                r.service.argv,
                cwd=self.cwd,
                env={**self.env, **r.service.env},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                # Its own process group: Ctrl-C in the terminal reaches only this supervisor, which then stops
                # each service (and anything it started) in order, instead of all of them racing at once.
                start_new_session=True,
            )
        except OSError as e:
            self.log(f"cannot start {r.service.name} ({shlex.join(r.service.argv)}): {e}")
            # Ended, not due again: a restart that could not start was tried again every 0.1 s, for as long as
            # any other service ran, logging each try. A service the stack keeps running gives up as after its
            # last restart: the stack does not stay up without it.
            r.process, r.restart_at = None, None
            if r.service.restart_on_failure:
                self._give_up(r, 127, "cannot be started")
            else:
                r.exit_code, self._failed = 127, True
            return
        r.started_at = time.monotonic()
        r.restart_at = None
        r.pump = threading.Thread(
            target=self.output.pump, args=(r.service.name, r.process.stdout), name=f"pump-{r.service.name}", daemon=True
        )
        r.pump.start()

    def _reap(self, r: _Running, now: float) -> None:
        """The process has exited: report it, and schedule a restart or record the end."""
        code = r.process.returncode
        r.pump.join(timeout=2)  # print its last lines before saying it exited
        r.process.stdout.close()
        r.process = None
        self.log(f"{r.service.name} exited with code {code}")
        if code == 0 or not r.service.restart_on_failure:
            r.exit_code = code
            if code != 0:
                self._failed = True
            return
        if now - r.started_at >= self.stable_after:
            r.restarts = 0
        if r.restarts >= self.max_restarts:
            self._give_up(r, code, f"failed {r.restarts + 1} times in a row")
            return
        delay = self.restart_delay * 2**r.restarts
        r.restarts += 1
        r.restart_at = now + delay
        self.log(f"restarting {r.service.name} in {delay:g} s (restart {r.restarts} of {self.max_restarts})")

    def _give_up(self, r: _Running, code: int, why: str) -> None:
        """The service `r` ended with `code` and is not started again (`why`): the stack stops, at once or, while
        a job runs, when the jobs end."""
        r.exit_code = code
        self._failed = True
        jobs = self._jobs_running()
        if jobs:
            # A job (the trainer) is not stopped halfway for another service: its run would be lost.
            names = ", ".join(j.service.name for j in jobs)
            self.log(f"{r.service.name} {why}; the stack stops when {names} ends (Ctrl-C stops it now)")
            self._stop_after_jobs = True
        else:
            self.log(f"{r.service.name} {why}; stopping the stack")
            self.request_stop(signal.SIGTERM)

    def _jobs_running(self) -> list[_Running]:
        """The services that end of themselves (the trainer: no restart) and have not ended yet."""
        return [r for r in self._running if not r.service.restart_on_failure and r.exit_code is None]

    def run(self) -> int:
        for r in self._running:
            self._start(r)
        while self._stop_signal is None:
            now = time.monotonic()
            for r in self._running:
                if r.process is not None and r.process.poll() is not None:
                    self._reap(r, now)
                if r.process is None and r.restart_at is not None and now >= r.restart_at and self._stop_signal is None:
                    self._start(r)
            if all(r.exit_code is not None for r in self._running):
                break
            if self._stop_after_jobs and not self._jobs_running():
                self.log("stopping the stack")
                self.request_stop(signal.SIGTERM)
            self._wake.wait(0.1)
        return self._shutdown()

    def _shutdown(self) -> int:
        for r in self._running:  # ended on its own since the last look: report it, no restart now
            if r.process is not None and r.process.poll() is not None and r.exit_code is None:
                r.pump.join(timeout=2)
                r.process.stdout.close()
                r.exit_code = r.process.returncode
                self.log(f"{r.service.name} exited with code {r.exit_code}")
                if r.exit_code != 0:
                    self._failed = True
        alive = [r for r in self._running if r.process is not None and r.exit_code is None]
        if alive:
            signum = self._stop_signal or signal.SIGTERM
            self.log(f"stopping {', '.join(r.service.name for r in alive)} ({signal.Signals(signum).name})")
            for r in alive:
                self._signal(r.process, signum)
            deadline = time.monotonic() + self.stop_timeout
            while any(r.process.poll() is None for r in alive) and time.monotonic() < deadline and not self._force:
                self._wake.wait(0.05)
            for r in alive:
                if r.process.poll() is None:
                    why = "asked twice" if self._force else f"still running after {self.stop_timeout:g} s"
                    self.log(f"killing {r.service.name} ({why})")
                    self._signal(r.process, signal.SIGKILL)
                    self._failed = True
                r.process.wait()
                r.pump.join(timeout=2)
                r.process.stdout.close()
                self.log(f"{r.service.name} stopped (code {r.process.returncode})")
        return 1 if self._failed else 0

    @staticmethod
    def _signal(process: subprocess.Popen, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)  # the service and any process it started


# --------------------------------------------------------------------------------------------------------------


def memory_note(env: Mapping[str, str]) -> str:
    """What the inference service may use, as compose limits its container (inference/capacity.py): the processes
    it will start, as it counts them when MNIST_INFERENCE_WORKERS is unset or 0 (one per core, as memory holds)."""
    from inference.capacity import machine_worker_count, memory_needed_mib, server_memory_mib
    from inference.options import ServerOptions

    defaults = ServerOptions(artifacts_dir=Path(), data_dir=Path())
    each = server_memory_mib(defaults)
    text = (env.get(settings.ENV_INFERENCE_WORKERS) or os.environ.get(settings.ENV_INFERENCE_WORKERS) or "0").strip()
    try:
        workers = int(text)
    except ValueError:  # inference would refuse it at start, restarted until the stack gives up: say so at once
        variable = settings.ENV_INFERENCE_WORKERS
        raise SystemExit(f"environment variable {variable}={text!r} must be a whole number") from None
    if workers == 0:
        workers, _, _ = machine_worker_count(each)
    parent = " and the parent that watches them" if workers > 1 else ""
    return (
        f"inference: up to {memory_needed_mib(workers, each) / 1024:.1f} GiB of memory ({workers} process(es) x "
        f"{each:,} MiB{parent}); compose limits its container to MNIST_INFERENCE_MEMORY (default "
        f"{COMPOSE_INFERENCE_MEMORY})"
    )


def unknown_port(args: argparse.Namespace, names: list[str]) -> str | None:
    """Why the web page could not find the inference service, or None: port 0 (any free one) for the service or its
    health checks is a port the page is never told (it was given localhost:0, refused it, and the stack gave up
    after its restarts)."""
    if "web" not in names or "inference" not in names:
        return None
    for flag, address in (("--grpc-address", args.grpc_address), ("--health-address", args.health_address)):
        if split_address(address)[1] == 0:
            return f"{flag} {address}: port 0 picks a free port the web page is never told; give a port, or --skip web"
    return None


def ports_taken(args: argparse.Namespace, names: list[str]) -> list[str]:
    """One line per port a service of `names` would listen on that cannot be had (another program holds it), with
    the variable that moves it. Checked before anything starts: a TensorBoard that found its port taken failed its
    restarts and stopped the stack, the trainer with it, halfway through its run."""
    wanted = []
    if "inference" in names:
        wanted += [
            ("the gRPC service", args.grpc_address, settings.ENV_GRPC_ADDRESS),
            ("its health checks", args.health_address, settings.ENV_HEALTH_ADDRESS),
            ("its metrics", args.metrics_address, settings.ENV_METRICS_ADDRESS),
        ]
    if "web" in names:
        wanted.append(("the web page", join_address(args.web_host, args.web_port), settings.ENV_WEB_PORT))
    if "tensorboard" in names:
        wanted.append(
            ("TensorBoard", join_address(args.tensorboard_host, args.tensorboard_port), settings.ENV_TENSORBOARD_PORT)
        )
    lines = []
    bound = [split_address(address) for _, address, _ in wanted]  # (host, port): the stack's own
    ports = {port for _, port in bound}
    for index, (what, address, variable) in enumerate(wanted):
        host, port = bound[index]
        if port == 0:
            continue
        # Both on one port of one interface: the second failed its restarts and stopped the stack.
        clash = next((k for k in range(index) if bound[k][1] == port and same_interface(bound[k][0], host)), None)
        if clash is not None:
            problem: OSError | None = OSError(f"{wanted[clash][0]} listens on port {port} too")
        else:
            problem = bind_error(host, port)
        if problem is not None:
            # A name that does not resolve says so with its error number; a bind, in the words of the system.
            reason = str(problem) if isinstance(problem, socket.gaierror) else problem.strerror or str(problem)
            free = free_port_after(host, port, ports)
            ports.add(free)  # suggested once: two taken ports were both told to move to the same free one
            moved = join_address(host, free) if variable.endswith("_ADDRESS") else str(free)
            lines.append(f"{what} cannot listen on {address} ({reason}): set {variable}={moved}, for example")
    return lines


def free_port_after(host: str, port: int, avoid: set[int]) -> int:
    """The first port after `port` that `host` can bind and that is none of the stack's own (`avoid`): the hint
    for a port taken, which named port + 1 (gRPC's 50051 + 1 is the health checks' 50052) even where that was
    taken too. `port` + 1 if none is found within 100."""
    for candidate in range(port + 1, min(port + 101, 65536)):
        if candidate not in avoid and bind_error(host, candidate) is None:
            return candidate
    return port + 1 if port < 65535 else port - 1


def same_interface(one: str, other: str) -> bool:
    """Whether servers bound to hosts `one` and `other` on one port would clash: one of them on every interface,
    or both on the same one (127.0.0.1 and 127.0.0.2 do not)."""
    one, other = one.strip().lower(), other.strip().lower()
    if one in WILDCARD_HOSTS or other in WILDCARD_HOSTS:
        return True
    return one == other or (one in LOOPBACK_BINDS and other in LOOPBACK_BINDS)


def trainer_refusal(args: argparse.Namespace, env: Mapping[str, str]) -> str | None:
    """What the trainer says of its settings (flags, MNIST_* variables, device, MNIST files), asked with
    --check-only before anything starts, or None if it takes them: a mistyped --preset used to start the other
    services, then stop them all when the trainer refused it, its message among their logs."""
    command = [args.python, "-m", "trainer", *shlex.split(args.trainer_args), "--check-only"]
    check = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert check.stdout is not None  # a pipe
    lines = []
    for line in check.stdout:
        lines.append(line.rstrip())
        if line.startswith("downloading"):  # a first run fetches MNIST here: said as it happens, not a silent wait
            print(f"trainer | {line.rstrip()}", file=sys.stderr, flush=True)
    if check.wait() == 0:
        return None
    lines = [line for line in lines if line.strip() and not line.startswith("downloading")]
    # argparse's usage block says nothing the last line does not: the error is the last line.
    return "\n".join(lines[-3:] if not lines or "usage:" not in lines[0] else lines[-1:])


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    services = local_services(args)
    if not services:
        print("nothing to run: every service is skipped", file=sys.stderr)
        return 2
    taken = ports_taken(args, [s.name for s in services])
    if taken:
        print("\n".join(["stack: nothing started:", *taken]), file=sys.stderr)
        return 2
    if (refusal := unknown_port(args, [s.name for s in services])) is not None:
        print(f"stack: nothing started: {refusal}", file=sys.stderr)
        return 2
    env = stack_environment(args)
    if "trainer" in [s.name for s in services] and (refusal := trainer_refusal(args, env)) is not None:
        print(f"stack: nothing started: the trainer refuses its settings:\n{refusal}", file=sys.stderr)
        return 2
    supervisor = Supervisor(services, env=env, cwd=ROOT, stop_timeout=args.stop_timeout, max_restarts=args.max_restarts)

    def on_signal(signum, frame):
        # A hang-up stops the services as `docker stop` would (SIGTERM: the trainer checkpoints, the servers drain);
        # SIGHUP's own default ends a Python server at once.
        supervisor.request_stop(signal.SIGTERM if signum == signal.SIGHUP else signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    # The terminal closed (or the SSH session dropped): only this supervisor gets SIGHUP, as each service runs in
    # its own session. Its default ended the supervisor at once and left every service running, holding its port.
    signal.signal(signal.SIGHUP, on_signal)
    names = [s.name for s in services]
    supervisor.log(f"artifacts: {env[settings.ENV_ARTIFACTS_DIR]}   MNIST: {env[settings.ENV_DATA_DIR]}")
    if "inference" in names:
        supervisor.log(memory_note(env))
        supervisor.log(
            f"gRPC: {args.grpc_address} (NOT_SERVING until a model is published; "
            f"`python -m inference.client --target {calling_address(args.grpc_address)} info`)"
        )
        supervisor.log(f"metrics: http://{calling_address(args.metrics_address)}/metrics")
    if "web" in names:
        page = calling_address(join_address(args.web_host, args.web_port))
        supervisor.log(f"web page and REST API: http://{page}/ (API docs at /docs)")
    if "tensorboard" in names:
        board = calling_address(join_address(args.tensorboard_host, args.tensorboard_port))
        supervisor.log(f"TensorBoard: http://{board}/")
    supervisor.log(f"starting {', '.join(names)}; Ctrl-C stops them")
    with supervisor.woken_by_signals():
        code = supervisor.run()
    supervisor.log("all stopped" if code == 0 else "stopped, with failures (see above)")
    return code


if __name__ == "__main__":
    sys.exit(main())
