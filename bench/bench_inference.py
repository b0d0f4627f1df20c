"""Benchmark the inference service over loopback gRPC, as a client sees it.

    python -m bench.bench_inference                       # random-init model, the server's defaults, 5 s per phase
    python -m bench.bench_inference --duration 1          # a smoke run of a few seconds
    python -m bench.bench_inference --artifacts-dir artifacts   # the model the trainer published
    python -m bench.bench_inference --backend torch --workers 1 # other settings

Starts `python -m inference` as its own process on a free port (so server and client do not share a GIL, as
in production), publishes a model into a temporary artifacts folder unless --artifacts-dir is given, then
measures:

  0. The network alone, as the server runs it (same backend, --torch-threads intra-op threads, normalization
     included), on batches of --batch-size: images/s one call at a time (one core at the default of one thread),
     and with as many calls at once as fill every core (cores / --torch-threads). This is the ceiling the
     service's throughput is compared with.
  1. Predict latency at concurrency 1 (a PNG of a real MNIST test digit): p50, p99. Beside it, what the call
     costs without the work (a standard health check, same server and channel), what any gRPC call costs here
     (the request's bytes sent back by a server that does nothing, bench/grpc_floor.py) and the work without the
     call (the servicer's Predict called in this process, no gRPC).
  2. Predict throughput with --concurrency clients, one image per call.
  3. PredictBatch throughput with --concurrency clients, --batch-size images per call, and its share of (0).
  4. Evaluate wall time: the 10,000 test images on the first call (reads MNIST) and again (the model's output
     is kept, only scoring runs), then the 12,000 validation images on the warm server (the network runs).

Targets on a 2-core machine with the default settings: PredictBatch(64) with 8 clients >= 50 % of the network-only
throughput of one core and >= 5,000 images/s; Predict p50 <= 1 ms and p99 <= 3 ms; Evaluate warm <= 0.5 s.
The client runs on the same cores as the server, so the figures include its cost too.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared import settings
from shared.api.mnist.v1 import inference_pb2 as pb
from shared.api.mnist.v1 import inference_pb2_grpc
from shared.cli import ArgumentParser, non_negative_int, positive_int, seconds_at_least

from bench import grpc_floor
from bench.machine import describe_machine
from inference.channel import OWN_CONNECTION
from testkit.server_process import digit_pngs, publish_random_model, start_server, stop_server

REPO_ROOT = Path(__file__).resolve().parent.parent
# Shorter phases measured nothing: a phase over before its first call returned divided by zero images.
MIN_DURATION = 0.1


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_inference",
        description="Benchmark the gRPC inference service.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--artifacts-dir",
        type=Path,
        default=None,
        help="serve the model published here; default: a random-init compact model in a temp folder",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=settings.data_dir(), help=f"MNIST files (env {settings.ENV_DATA_DIR})"
    )
    parser.add_argument(
        "--duration",
        type=seconds_at_least(MIN_DURATION),
        default=5.0,
        metavar="SECONDS",
        help=f"length of each phase, at least {MIN_DURATION:g}",
    )
    parser.add_argument(
        "--concurrency", type=positive_int, default=8, help="concurrent clients in the throughput phases"
    )
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per PredictBatch call")
    parser.add_argument(
        "--torch-threads",
        type=positive_int,
        default=1,
        help="intra-op threads per call, passed to the server; the network-alone baseline runs with as many, so "
        "the service's share of its throughput compares like with like",
    )
    parser.add_argument("--max-workers", type=positive_int, default=16, help="passed to the server")
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=0,
        help="server processes sharing the port (--workers); 0: the server's default for this machine",
    )
    parser.add_argument(
        "--backend",
        choices=("onnxruntime", "torch"),
        default=None,
        help=f"passed to the server (default: {settings.ENV_INFERENCE_BACKEND}, else the server's default)",
    )
    parser.add_argument("--skip-evaluate", action="store_true", help="leave out the Evaluate phase")
    return parser


def network_only(
    artifacts: Path, data_dir: Path, backend: str, batch_size: int, threads: int, intra_op: int, duration: float
) -> float:
    """Images/s of the served model's forward pass alone (normalization included), as the server computes it, on
    batches of real MNIST digits, from `threads` threads at once, each forward pass with `intra_op` threads (the
    server's --torch-threads; the onnxruntime backend takes torch's number when the model is loaded)."""
    import torch

    from shared.checkpoint import read_manifest
    from shared.data import load_mnist
    from shared.settings import Paths

    from inference.model_store import load_served_model

    torch.set_num_threads(intra_op)
    models = Paths(artifacts).models
    served = load_served_model(models, read_manifest(models), backend)
    batch = load_mnist(data_dir, download=False).test_images[:batch_size]  # (B, 28, 28) uint8
    for _ in range(20):
        served.log_probs(batch)
    images, _, seconds = run_clients(threads, duration, lambda i: (served.log_probs(batch), len(batch))[1])
    return images / seconds


class _InProcessContext:
    """What the servicer's Predict asks of a grpc.ServicerContext, for calling it without gRPC."""

    def is_active(self) -> bool:
        return True

    def abort(self, code, details):
        raise SystemExit(f"Predict failed in process: {code.name}: {details}")


def servicer_alone(
    artifacts: Path, data_dir: Path, backend: str, image: bytes, intra_op: int, duration: float
) -> np.ndarray:
    """Latencies (ms) of the servicer's Predict called in this process, no gRPC: decoding, the pipeline, the
    network and the response, as one server thread does them (with the server's `intra_op` threads)."""
    import torch

    from inference.options import ServerOptions
    from inference.server import create_server

    torch.set_num_threads(intra_op)
    server, _ = create_server("127.0.0.1:0", ServerOptions(artifacts_dir=artifacts, data_dir=data_dir, backend=backend))
    try:
        server.store.poll_once()  # loads the served model; the server is never started
        request, context = pb.PredictRequest(image=image), _InProcessContext()
        return latencies(lambda: server.servicer.Predict(request, context), duration)
    finally:
        server.stop(grace=0)


def floor_latencies(message: bytes, duration: float) -> np.ndarray:
    """Latencies (ms) of unary calls sending `message` to a Python gRPC server in its own process that sends it
    back and does nothing else (bench.grpc_floor): what any call costs here before a service does anything."""
    process, port = grpc_floor.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(grpc_floor.METHOD)
            return latencies(lambda: call(message, timeout=10), duration)
    finally:
        process.kill()
        process.wait()


def latencies(call, duration: float, warm_up: int = 50) -> np.ndarray:
    """Milliseconds of each `call()`, one after the other for `duration` s, after `warm_up` calls."""
    for _ in range(warm_up):  # connections, allocator, first-call paths
        call()
    out = []
    deadline = time.perf_counter() + duration
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    if not out:
        raise SystemExit(f"no call finished in {duration:g} s; give a longer --duration")
    return np.array(out) * 1e3


def percentiles(ms: np.ndarray) -> str:
    return f"p50 {np.percentile(ms, 50):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms"


def run_clients(concurrency: int, duration: float, call) -> tuple[int, int, float]:
    """Run `call()` (returns images done) from `concurrency` threads for `duration` s: (images, calls, seconds)."""
    counts = [0] * concurrency
    calls = [0] * concurrency
    errors: list[BaseException] = []
    start = threading.Barrier(concurrency + 1)
    stop = threading.Event()

    def worker(i: int) -> None:
        start.wait()
        try:
            while not stop.is_set():
                counts[i] += call(i)
                calls[i] += 1
        except BaseException as e:  # reported below; a failed call invalidates the figure
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise SystemExit(f"{len(errors)} call(s) failed, e.g. {errors[0]!r}")
    if not sum(counts):  # the phase ended before any thread began a call: a rate of 0 would divide by zero later
        raise SystemExit(f"no call finished in {duration:g} s; give a longer --duration")
    return sum(counts), sum(calls), elapsed


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    rows: list[tuple[str, str, str]] = []
    header = describe_machine()
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = args.artifacts_dir
        if artifacts is None:
            artifacts = Path(tmp) / "artifacts"
            publish_random_model(artifacts)
        from shared.resources import usable_cpus

        from inference.capacity import machine_worker_count, server_memory_mib
        from inference.options import ServerOptions, add_server_arguments

        cpus = usable_cpus()
        # The backend the server runs, as its own parser chooses it (the flag, else its environment variable, else
        # its default), passed to it explicitly: the network-alone baseline must be measured on the same one.
        server_parser = ArgumentParser()
        add_server_arguments(server_parser)
        backend = args.backend or server_parser.parse_args([]).backend
        # The server's own choice for --workers 0, computed here because the benchmark waits for each worker.
        defaults = ServerOptions(artifacts_dir=artifacts, data_dir=args.data_dir)
        per_process = server_memory_mib(defaults)
        workers = args.workers or machine_worker_count(per_process)[0]
        # The baseline with the server's intra-op threads: one call at a time (one core at the default of one
        # thread), and as many calls at once as fill the cores with that many threads each.
        threads = args.torch_threads
        at_once = max(1, cpus // threads)
        one_core = network_only(artifacts, args.data_dir, backend, args.batch_size, 1, threads, args.duration)
        all_cores = network_only(artifacts, args.data_dir, backend, args.batch_size, at_once, threads, args.duration)
        one_label = "1 core" if threads == 1 else f"one call at a time, {threads} intra-op threads"
        rows.append(
            (
                f"network only ({backend}, batches of {args.batch_size}), {one_label}",
                f"{one_core:,.0f} images/s",
                f"{1e3 / one_core:.3f} ms per image",
            )
        )
        all_label = (
            f"{cpus} cores (one thread each)"
            if threads == 1
            else f"{at_once} calls at once x {threads} intra-op threads, {cpus} cores"
        )
        rows.append((f"network only, {all_label}", f"{all_cores:,.0f} images/s", ""))
        server_flags = [
            "--torch-threads",
            str(args.torch_threads),
            "--max-workers",
            str(args.max_workers),
            "--max-batch-size",
            str(max(256, args.batch_size)),
        ]
        server_flags += ["--backend", backend]
        process, port = start_server(artifacts, args.data_dir, server_flags, workers=workers)
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            stub = inference_pb2_grpc.InferenceStub(channel)
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
            if not info.serving:
                raise SystemExit(f"no model is served from {artifacts}")
            images = digit_pngs(args.data_dir, max(args.batch_size, 64))
            request = pb.PredictRequest(image=images[0])
            ms = latencies(lambda: stub.Predict(request, timeout=10), args.duration)
            rows.append(
                ("Predict latency, concurrency 1", percentiles(ms), f"{len(ms)} calls, target p50 <= 1, p99 <= 3")
            )
            # What the call costs without the work: the standard health check on the same server and channel,
            # through the same interceptors (access log, metrics, token check). Predict's p50 less this is the work.
            health = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest(service=pb.DESCRIPTOR.services_by_name["Inference"].full_name)
            ms = latencies(lambda: health.Check(check, timeout=10), args.duration / 2)
            rows.append(("  a health check (the gRPC call alone)", percentiles(ms), f"{len(ms)} calls"))
            ms = floor_latencies(request.SerializeToString(), args.duration / 2)
            rows.append(("  an echo of its bytes (gRPC's own floor)", percentiles(ms), f"{len(ms)} calls, no work"))
            ms = servicer_alone(artifacts, args.data_dir, backend, images[0], threads, args.duration / 2)
            rows.append(("  the servicer's Predict alone, in process", percentiles(ms), f"{len(ms)} calls, no gRPC"))

            # One connection per client, as separate client processes would have (inference/channel.py OWN_CONNECTION).
            channels = [
                grpc.insecure_channel(f"127.0.0.1:{port}", options=[OWN_CONNECTION]) for _ in range(args.concurrency)
            ]
            stubs = [inference_pb2_grpc.InferenceStub(c) for c in channels]
            requests = [pb.PredictRequest(image=images[i % len(images)]) for i in range(args.concurrency)]
            n, calls, secs = run_clients(
                args.concurrency, args.duration, lambda i: (stubs[i].Predict(requests[i], timeout=10), 1)[1]
            )
            rows.append(
                (f"Predict throughput, {args.concurrency} clients", f"{n / secs:,.0f} images/s", f"{calls} calls")
            )

            batch = pb.PredictBatchRequest(images=images[: args.batch_size])
            n, calls, secs = run_clients(
                args.concurrency, args.duration, lambda i: len(stubs[i].PredictBatch(batch, timeout=30).results)
            )
            batch_rate = n / secs
            rows.append(
                (
                    f"PredictBatch throughput, {args.concurrency} clients x {args.batch_size}",
                    f"{batch_rate:,.0f} images/s",
                    f"{calls} calls; {batch_rate / one_core:.0%} of the network alone "
                    f"{'on 1 core' if threads == 1 else 'one call at a time'}, "
                    f"{batch_rate / all_cores:.0%} of it on {cpus}; target >= 50 % of 1 core and >= 5,000",
                )
            )
            for c in channels:
                c.close()

            if not args.skip_evaluate:
                # The test split twice: the second call finds the model's output kept (a published model never
                # changes) and only scores it. Then the validation split, on the now warm server, whose output is
                # not kept yet: the network runs, which is what evaluating a newly published model costs.
                evaluations = (
                    ("first (reads MNIST)", pb.SPLIT_TEST),
                    ("again (the output is kept)", pb.SPLIT_TEST),
                    ("warm, the network runs (validation split)", pb.SPLIT_VALIDATION),
                )
                for label, split in evaluations:
                    t0 = time.perf_counter()
                    response = stub.Evaluate(pb.EvaluateRequest(split=split), timeout=300)
                    wall = time.perf_counter() - t0
                    images = sum(row.support for row in response.per_class)
                    rows.append(
                        (
                            f"Evaluate, {label}",
                            f"{wall:.2f} s",
                            f"{images:,} images, {wall / images * 10_000:.2f} s per 10,000; server "
                            f"{response.seconds:.2f} s, accuracy {response.accuracy:.2%}"
                            f"{'; target <= 0.5 s per 10,000 warm' if split == pb.SPLIT_VALIDATION else ''}",
                        )
                    )
            channel.close()
        finally:
            stop_server(process)

    print(f"inference benchmark: {header}")
    print(
        f"server: {workers} process(es){' (its default here)' if not args.workers else ''}, {backend} backend, "
        f"{args.torch_threads} intra-op thread(s) each"
    )
    print(f"model: {info.version} ({info.arch} {info.arch_kwargs_json}, {info.parameter_count:,} parameters)")
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>{value_width}}  ({note})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
