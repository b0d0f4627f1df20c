"""Benchmark the inference service over loopback gRPC, as a client sees it.

    python bench/bench_inference.py                       # random-init model, 5 s per phase
    python bench/bench_inference.py --duration 1          # a smoke run of a few seconds
    python bench/bench_inference.py --artifacts-dir artifacts   # the model the trainer published

Starts `python -m inference` as its own process on a free port (so server and client do not share a GIL, as
in production), publishes a model into a temporary artifacts folder unless --artifacts-dir is given, then
measures:

  1. Predict latency at concurrency 1 (a PNG of a real MNIST test digit): p50, p99.
  2. Predict throughput with --concurrency clients, one image per call.
  3. PredictBatch throughput with --concurrency clients, --batch-size images per call.
  4. Evaluate wall time over the 10,000 test images: the first call (reads MNIST) and a warm one.

Targets on a 2-core machine: p50 < 3 ms, p99 < 10 ms; batch throughput >= 2,000 images/s; Evaluate < 5 s.
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

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from shared import settings  # noqa: E402
from shared.api.mnist.v1 import inference_pb2 as pb  # noqa: E402
from shared.api.mnist.v1 import inference_pb2_grpc  # noqa: E402
from bench.machine import describe_machine  # noqa: E402
from bench.server_process import digit_pngs, publish_random_model, start_server, stop_server  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Benchmark the gRPC inference service.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--artifacts-dir", type=Path, default=None,
                        help="serve the model published here; default: a random-init compact model in a temp folder")
    parser.add_argument("--data-dir", type=Path, default=settings.data_dir(),
                        help=f"MNIST files (env {settings.ENV_DATA_DIR})")
    parser.add_argument("--duration", type=float, default=5.0, metavar="SECONDS", help="length of each phase")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients in the throughput phases")
    parser.add_argument("--batch-size", type=int, default=64, help="images per PredictBatch call")
    parser.add_argument("--torch-threads", type=int, default=1, help="passed to the server")
    parser.add_argument("--max-workers", type=int, default=16, help="passed to the server")
    parser.add_argument("--workers", type=int, default=1, help="server processes sharing the port (--workers)")
    parser.add_argument("--skip-evaluate", action="store_true", help="leave out the Evaluate phase")
    return parser




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
        process, port = start_server(artifacts, args.data_dir, [
            "--torch-threads", str(args.torch_threads), "--max-workers", str(args.max_workers),
            "--max-batch-size", str(max(256, args.batch_size))], workers=args.workers)
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            stub = inference_pb2_grpc.InferenceStub(channel)
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
            if not info.serving:
                raise SystemExit(f"no model is served from {artifacts}")
            images = digit_pngs(args.data_dir, max(args.batch_size, 64))
            request = pb.PredictRequest(image=images[0])
            for _ in range(50):  # warm-up: connections, allocator, first-call paths
                stub.Predict(request, timeout=10)

            latencies = []
            deadline = time.perf_counter() + args.duration
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                stub.Predict(request, timeout=10)
                latencies.append(time.perf_counter() - t0)
            ms = np.array(latencies) * 1e3
            rows.append(("Predict latency, concurrency 1", f"p50 {np.percentile(ms, 50):.2f} ms, "
                         f"p99 {np.percentile(ms, 99):.2f} ms", f"{len(ms)} calls, target p50 < 3, p99 < 10"))

            # One connection per client, as separate client processes would have: without a local subchannel
            # pool, channels to one target in one process share a single TCP connection (and so one worker).
            channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
                        for _ in range(args.concurrency)]
            stubs = [inference_pb2_grpc.InferenceStub(c) for c in channels]
            requests = [pb.PredictRequest(image=images[i % len(images)]) for i in range(args.concurrency)]
            n, calls, secs = run_clients(args.concurrency, args.duration,
                                         lambda i: (stubs[i].Predict(requests[i], timeout=10), 1)[1])
            rows.append((f"Predict throughput, {args.concurrency} clients", f"{n / secs:,.0f} images/s",
                         f"{calls} calls"))

            batch = pb.PredictBatchRequest(images=images[: args.batch_size])
            n, calls, secs = run_clients(args.concurrency, args.duration,
                                         lambda i: len(stubs[i].PredictBatch(batch, timeout=30).results))
            rows.append((f"PredictBatch throughput, {args.concurrency} clients x {args.batch_size}",
                         f"{n / secs:,.0f} images/s", f"{calls} calls, target >= 2,000 images/s"))
            for c in channels:
                c.close()

            if not args.skip_evaluate:
                for label in ("first (reads MNIST)", "warm"):
                    t0 = time.perf_counter()
                    response = stub.Evaluate(pb.EvaluateRequest(split=pb.SPLIT_TEST), timeout=300)
                    wall = time.perf_counter() - t0
                    rows.append((f"Evaluate 10k test images, {label}", f"{wall:.2f} s",
                                 f"server {response.seconds:.2f} s, accuracy {response.accuracy:.2%}, target < 5 s"))
            channel.close()
        finally:
            stop_server(process)

    print(f"inference benchmark: {header}")
    print(f"server: {args.workers} process(es), {args.torch_threads} torch thread(s) each")
    print(f"model: {info.version} ({info.arch} {info.arch_kwargs_json}, {info.parameter_count:,} parameters)")
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>{value_width}}  ({note})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
