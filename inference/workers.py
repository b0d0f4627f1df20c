"""Several server processes on one port, for throughput on a multi-core machine.

Python runs one thread at a time per process (the GIL), and most of a Predict is Python: decoding and the image
pipeline. Threads therefore cannot use a second core; processes can. Following grpc/grpc's
examples/python/multiprocessing, the parent reserves the port with SO_REUSEPORT (bound, never listening) and
starts `workers` fresh interpreters, each a complete server (its own model store, health and limits) bound to
the same port with SO_REUSEPORT; the kernel spreads new connections over them. The parent forwards SIGTERM and
SIGINT and exits when they have stopped; if one worker dies, it stops the others and exits non-zero, so a
supervisor (compose's `restart: unless-stopped`) restarts the whole service.

With metrics on, the workers record them into files in one temporary folder (prometheus_client's multiprocess
mode) and the parent serves their sum on the metrics port: one scrape target per service, however many workers.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from shared.wakeup import StopRequest

from inference.options import ServerOptions

log = logging.getLogger(__name__)


def split_address(address: str) -> tuple[str, int]:
    """'[::]:50051' -> ('::', 50051); 'localhost:0' -> ('localhost', 0)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {address!r} is not host:port")
    if int(port) > 65535:  # gRPC would take it modulo 65536: a port the clients and probes do not expect
        raise ValueError(f"port {port} of {address!r} is not a port number (0 to 65535; 0 picks a free one)")
    return host.strip("[]"), int(port)


def join_address(host: str, port: int) -> str:
    """('::', 50051) -> '[::]:50051', the inverse of split_address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_error(host: str, port: int) -> OSError | None:
    """Why no server could listen on host:port now, or None. A plain bind, without the SO_REUSEPORT that would join
    a running server's port, of every address the name has (localhost is 127.0.0.1 and ::1): one in use is
    enough; one this machine lacks (no IPv6) only if all are. SO_REUSEADDR lets it pass the connections a server
    stopped a moment ago left in TIME_WAIT, as gRPC's own bind does: they are no program listening."""
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as e:
        return e
    errors = []
    for family, socktype, proto, _, sockaddr in addresses:
        try:
            with socket.socket(family, socktype, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(sockaddr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return e
            errors.append(e)
    return errors[0] if errors and len(errors) == len(addresses) else None


@contextlib.contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """Bind (not listen) a socket with SO_REUSEPORT on host:port; yields the port, 0 resolved to a free one.

    OSError, naming the address, when another process listens there: SO_REUSEPORT would have let this server's
    workers join a running server's port, and the two took turns answering the calls (a second `python -m
    inference` started beside `make stack` quietly served half of them with another model)."""
    try:
        family, socktype, proto, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:  # it said "Name or service not known", naming neither the address nor the flag
        raise OSError(f"cannot listen on {join_address(host, port)} ({e.strerror}: not a name of this machine)") from e
    sock = socket.socket(family, socktype, proto)
    try:
        try:
            if port and (refused := bind_error(host, port)) is not None:
                raise refused
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0:
                raise OSError("SO_REUSEPORT is not supported here; run one worker")
            sock.bind(sockaddr)
        except OSError as e:
            if e.errno is None:
                raise
            raise OSError(
                e.errno, f"cannot listen on {join_address(host, port)} (in use, or not an address of this machine?)"
            ) from e
        yield sock.getsockname()[1]
    finally:
        sock.close()


@contextlib.contextmanager
def reserve_address(address: str | None) -> Iterator[str | None]:
    """reserve_port for a host:port (None: nothing to reserve); yields the address with port 0 resolved, so that
    every worker binds the same port rather than a free one each."""
    if address is None:
        yield None
        return
    host, port = split_address(address)
    with reserve_port(host, port) as bound_port:
        yield join_address(host, bound_port)


def _run_worker(
    address: str, options: ServerOptions, grace: float, torch_threads: int, log_level: str, log_format: str, index: int
) -> None:
    """A worker process's main: a fresh interpreter (spawn), so configure logging and torch again."""
    from inference.logs import configure_logging
    from inference.server import configure_torch, serve

    stop_with_parent()
    configure_logging(log_level, log_format, worker=index)

    configure_torch(torch_threads)
    serve(address, options, grace=grace)


def stop_with_parent() -> None:
    """Have the kernel send this process SIGTERM when its parent dies (Linux), so a supervisor that SIGKILLs the
    parent does not leave workers serving on the port; elsewhere the parent's own shutdown stops them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):
        return
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def serve_workers(
    address: str,
    options: ServerOptions,
    *,
    workers: int,
    grace: float,
    torch_threads: int,
    log_level: str,
    log_format: str = "text",
) -> int:
    """Run `workers` server processes on `address` until SIGTERM/SIGINT. Returns the exit status."""
    host, port = split_address(address)
    # spawn, not fork: a forked copy of a process that has started gRPC's or torch's threads can deadlock.
    context = multiprocessing.get_context("spawn")
    stop = StopRequest(lambda name: log.info("received %s; stopping %d workers", name, workers))
    with (
        reserve_port(host, port) as bound_port,
        reserve_address(options.health_address) as health_address,
        _multiprocess_metrics(options.metrics_address) as metrics_dir,
    ):
        shared_address = join_address(host, bound_port)
        # The parent serves the metrics; the workers share the main and the health ports.
        worker_options = replace(options, share_port=True, metrics_address=None, health_address=health_address)
        processes = [
            context.Process(
                target=_run_worker,
                name=f"inference-worker-{i}",
                args=(shared_address, worker_options, grace, torch_threads, log_level, log_format, i),
            )
            for i in range(workers)
        ]
        for process in processes:
            process.start()
        log.info("%d worker processes share %s", workers, shared_address)
        stop.wait(until=lambda: not all(p.is_alive() for p in processes))
        failed = None if stop.received else next(p for p in processes if not p.is_alive())
        if failed is not None:
            log.error("%s exited with code %s; stopping the others", failed.name, failed.exitcode)
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: each worker shuts down gracefully
        for process in processes:
            process.join(grace + 10)
            if process.is_alive():
                process.kill()
                process.join()
            if metrics_dir is not None:
                _mark_dead(process.pid, metrics_dir)
    return 1 if failed is not None else 0


@contextlib.contextmanager
def _multiprocess_metrics(address: str | None) -> Iterator[str | None]:
    """With metrics on: a fresh folder for the workers' metric files, named in the environment they inherit, and
    the parent's endpoint serving their sum; removed at the end. Yields the folder, or None with metrics off."""
    if not address:
        yield None
        return
    from inference.metrics import MULTIPROCESS_ENV, MetricsEndpoint, multiprocess_registry

    remove_abandoned_metrics_folders(tempfile.gettempdir())
    folder, owner = _owned_folder(tempfile.gettempdir())
    previous = os.environ.get(MULTIPROCESS_ENV)
    os.environ[MULTIPROCESS_ENV] = folder  # read by prometheus_client when a spawned worker imports it
    endpoint = None
    try:
        try:
            endpoint = MetricsEndpoint(address, multiprocess_registry(folder))
        except OSError as e:
            raise OSError(f"cannot serve metrics on {address}: {e}") from e
        yield folder
    finally:
        if endpoint is not None:
            endpoint.stop()
        if previous is None:
            os.environ.pop(MULTIPROCESS_ENV, None)
        else:
            os.environ[MULTIPROCESS_ENV] = previous
        shutil.rmtree(folder, ignore_errors=True)
        os.close(owner)


METRICS_PREFIX = "mnist-metrics-"
OWNER_LOCK = ".owner.lock"  # held (flock) by the parent process for as long as its folder is in use


def _owned_folder(parent: str) -> tuple[str, int]:
    """A new metrics folder in `parent`, and the descriptor of its lock, taken: made under another name and
    renamed once locked, so that a sweep (remove_abandoned_metrics_folders) never sees it unlocked."""
    making = tempfile.mkdtemp(prefix="." + METRICS_PREFIX, dir=parent)
    owner = os.open(os.path.join(making, OWNER_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(owner, fcntl.LOCK_EX)
    folder = os.path.join(parent, os.path.basename(making)[1:])
    os.rename(making, folder)
    return folder, owner


def remove_abandoned_metrics_folders(parent: str) -> None:
    """Remove the metrics folders of parents that were killed before their clean-up (SIGKILL, the OOM killer): a
    folder whose lock can be taken has no owner left. A Kubernetes pod's /tmp outlives its container's restarts,
    and each start made a folder of its own."""
    for folder in Path(parent).glob(METRICS_PREFIX + "*"):
        try:
            lock = os.open(folder / OWNER_LOCK, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue  # not a folder of this kind (no lock file): left alone
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its parent is alive
        else:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(lock)


def _mark_dead(pid: int | None, folder: str) -> None:
    """A stopped worker's gauges ("live" modes: calls in flight, decode memory) no longer count."""
    from prometheus_client import multiprocess

    if pid is not None:
        multiprocess.mark_process_dead(pid, folder)
