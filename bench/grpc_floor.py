"""The floor under every call's latency: a unary gRPC call to a Python server that does nothing but answer.

    python -m bench.grpc_floor      # serves on a free loopback port, prints the port, until stopped

bench.bench_inference starts it as its own process (as the service runs, so client and server do not share a GIL)
and times calls of the Predict request's own bytes, sent back unchanged: the same message sizes, gRPC's Python
server and a thread pool like the service's, no interceptor, no servicer, no work. What Predict's latency has
above this is the service's; what is under it no Python service on this machine can go below.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc

METHOD = "/bench.Floor/Echo"
REPO_ROOT = Path(__file__).resolve().parent.parent


def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def serve(max_workers: int = 16) -> None:
    """Serve METHOD on a free loopback port; print the port on its own line once listening; run until killed."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    service, _, method = METHOD.lstrip("/").partition("/")
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {method: grpc.unary_unary_rpc_method_handler(echo)}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def start() -> tuple[subprocess.Popen, int]:
    """Start `python -m bench.grpc_floor` and wait for its port: (process, port). The caller stops the process."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.grpc_floor"], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None  # stdout=PIPE
    line = process.stdout.readline()
    if not line.strip().isdigit():
        process.kill()
        raise SystemExit(f"the echo server did not start (it printed {line!r})")
    return process, int(line)


if __name__ == "__main__":
    serve()
