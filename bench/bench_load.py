"""Bounded load test: many clients for a while, a new model published every few seconds, nothing may fail.

    python -m bench.bench_load                                   # 16 clients, 60 s, a new model every 10 s
    python -m bench.bench_load --duration 5 --publish-every 2    # a smoke run of a few seconds
    python -m bench.bench_load --slow-readers 16 --duration 20   # beside 16 clients reading a slow number

Starts `python -m inference` as its own process on a free loopback port with a temporary artifacts folder,
publishes a random-init compact model, then runs --clients client threads, each on its own channel from
inference.channel.make_channel with a TCP connection of its own (as separate client processes would have),
calling Predict in a loop with one real MNIST test digit (every --batch-every-th call is a PredictBatch of
--batch-size digits instead). Meanwhile a new model with a distinct version is published every --publish-every
seconds with shared.checkpoint.publish_model, so the server hot-swaps under load, and the server's resident memory
(RSS, psutil) is sampled twice a second. With --slow-readers N, N more clients loop ReadNumber on a picture made to
be slow to read (a zigzag across 1024 x 762, about a second each): the Predict clients must not fail beside them;
the readers' refusals (RESOURCE_EXHAUSTED past the server's --max-concurrent-readings) are counted, not failures.

Reports throughput, p50/p99/max latency per method, the slowest one-second window, how long each new model took
to reach the clients, and RSS at start (after warm-up), peak and end. Exits 1 if any call failed, a published
model never reached the clients, or RSS grew by more than --max-rss-growth-mib from start to end.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import psutil

from shared import settings
from shared.api.mnist.v1 import inference_pb2 as pb
from shared.api.mnist.v1 import inference_pb2_grpc
from shared.cli import float_between, non_negative_int, non_negative_seconds, positive_int, positive_seconds

from bench.machine import describe_machine
from inference.channel import make_channel
from testkit.server_process import digit_pngs, start_server, stop_server

REPO_ROOT = Path(__file__).resolve().parent.parent


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_load",
        description="Load-test the gRPC inference service while models are published.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--duration", type=positive_seconds, default=60.0, metavar="SECONDS", help="length of the load phase"
    )
    parser.add_argument(
        "--warmup",
        type=non_negative_seconds,
        default=3.0,
        metavar="SECONDS",
        help="full load before the measured phase (allocator arenas, caches); RSS start is after it",
    )
    parser.add_argument(
        "--clients", type=positive_int, default=16, help="concurrent clients, one channel and TCP connection each"
    )
    parser.add_argument(
        "--publish-every",
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="publish a new model this often during the load phase",
    )
    parser.add_argument(
        "--batch-every",
        type=non_negative_int,
        default=10,
        help="every N-th call of a client is a PredictBatch (0: Predict only)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per PredictBatch")
    parser.add_argument("--model-width", type=positive_int, default=16, help="width of the compact models published")
    parser.add_argument(
        "--max-rss-growth-mib",
        type=float_between(0, math.inf),
        default=64.0,
        help="fail if the server's RSS grows more than this from start (after warm-up) to end",
    )
    parser.add_argument(
        "--timeout", type=positive_seconds, default=30.0, metavar="SECONDS", help="deadline of each call"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=settings.data_dir(), help=f"MNIST files (env {settings.ENV_DATA_DIR})"
    )
    parser.add_argument(
        "--slow-readers",
        type=non_negative_int,
        default=0,
        help="more clients, each looping ReadNumber on a picture made to be slow to read",
    )
    parser.add_argument(
        "--server-args",
        default="",
        help="extra flags for the server, given as --server-args='--max-concurrent-readings 16'",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return parser


def publish(models: Path, version: str, seed: int, width: int) -> None:
    import torch

    from shared.checkpoint import publish_model
    from shared.data import MNIST_MEAN, MNIST_STD
    from shared.model import build_model

    torch.manual_seed(seed)
    model = build_model("compact", width=width)
    publish_model(
        models,
        version=version,
        model_payload={
            "arch": "compact",
            "arch_kwargs": {"width": width},
            "model": model.state_dict(),
            "normalization": {"mean": MNIST_MEAN, "std": MNIST_STD},
            "metrics": {},
            "run_name": "bench-load",
            "epoch": seed,
        },
    )


class Client(threading.Thread):
    """One client: calls in a loop on its own channel and connection; records (end time, method, latency, version)
    or a failure."""

    def __init__(self, index: int, target: str, images: list[bytes], args, start: threading.Barrier) -> None:
        super().__init__(name=f"client-{index}", daemon=True)
        self.channel = make_channel(target, own_connection=True)
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)
        self.single = pb.PredictRequest(image=images[index % len(images)])
        self.batch = pb.PredictBatchRequest(images=[images[(index + i) % len(images)] for i in range(args.batch_size)])
        self.args = args
        self.start_barrier = start
        self.halt = threading.Event()
        self.calls: list[tuple[float, str, float, str]] = []
        self.failures: list[str] = []

    def call_once(self, n: int) -> None:
        batch = self.args.batch_every and n % self.args.batch_every == self.args.batch_every - 1
        t0 = time.perf_counter()
        try:
            if batch:
                response = self.stub.PredictBatch(self.batch, timeout=self.args.timeout)
                if any(r.WhichOneof("result") != "prediction" for r in response.results):
                    raise ValueError("a digit of the batch was not predicted")
            else:
                response = self.stub.Predict(self.single, timeout=self.args.timeout)
        except (grpc.RpcError, ValueError) as e:
            detail = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.RpcError) else str(e)
            self.failures.append(f"{'PredictBatch' if batch else 'Predict'}: {detail}")
            return
        t1 = time.perf_counter()
        self.calls.append((t1, "PredictBatch" if batch else "Predict", t1 - t0, response.model_version))

    def run(self) -> None:
        self.start_barrier.wait()
        n = 0
        while not self.halt.is_set():
            self.call_once(n)
            n += 1


class SlowReader(threading.Thread):
    """A client looping ReadNumber on a picture made to be slow to read: counts each answer's status code."""

    def __init__(self, index: int, target: str, picture: bytes, args, start: threading.Barrier) -> None:
        super().__init__(name=f"reader-{index}", daemon=True)
        self.channel = make_channel(target, own_connection=True)
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)
        self.request = pb.ReadNumberRequest(image=picture)
        self.timeout = args.timeout
        self.start_barrier = start
        self.halt = threading.Event()
        self.answers: list[tuple[float, str]] = []  # (end time, status code)

    def run(self) -> None:
        self.start_barrier.wait()
        while not self.halt.is_set():
            try:
                self.stub.ReadNumber(self.request, timeout=self.timeout)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            self.answers.append((time.perf_counter(), code))


def slow_picture() -> bytes:
    import cv2

    from testkit.memory import zigzag

    return cv2.imencode(".png", zigzag(1024, 762, 15))[1].tobytes()


def echo_warnings(line: str) -> None:
    if " WARNING " in line or " ERROR " in line:
        sys.stderr.write(f"server: {line}")


def rss_sampler(process: psutil.Process, samples: list[tuple[float, int]], halt: threading.Event) -> None:
    while not halt.wait(0.5):
        try:
            samples.append((time.perf_counter(), process.memory_info().rss))
        except psutil.Error:
            return


def slowest_second(times: list[float], began: float, elapsed: float) -> int | None:
    """The fewest calls that ended in one whole second of the phase (calls end at `times`); None when the phase
    held no whole second. A second with no answer at all (a stall) counts as 0, not as missing."""
    whole = int(elapsed)
    if whole == 0:
        return None
    per_second = Counter(int(t - began) for t in times if 0 <= t - began < whole)
    return min(per_second.get(s, 0) for s in range(whole))


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1e3, q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    header = describe_machine()
    mib = 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        models = Path(tmp) / "artifacts" / "models"
        published: list[tuple[str, float]] = []  # (version, time published)
        publish(models, "load-000", 0, args.model_width)
        published.append(("load-000", time.perf_counter()))
        # Once it listens, its warnings and errors are echoed: a skipped model would show up there.
        server, port = start_server(
            Path(tmp) / "artifacts",
            args.data_dir,
            [
                "--torch-threads",
                "1",
                "--max-workers",
                str(max(16, args.clients)),
                "--poll-interval",
                "0.5",
                *args.server_args.split(),
            ],
            on_log_line=echo_warnings,
        )
        server_process = psutil.Process(server.pid)
        target = f"127.0.0.1:{port}"
        images = digit_pngs(args.data_dir, 64)
        barrier = threading.Barrier(args.clients + args.slow_readers + 1)
        clients = [Client(i, target, images, args, barrier) for i in range(args.clients)]
        picture = slow_picture() if args.slow_readers else b""
        readers = [SlowReader(i, target, picture, args, barrier) for i in range(args.slow_readers)]
        samples: list[tuple[float, int]] = []
        halt_sampler = threading.Event()
        try:
            for client in [*clients, *readers]:
                client.start()
            barrier.wait()
            time.sleep(args.warmup)  # connections, allocator arenas, first-call paths; any failure here counts too
            began = time.perf_counter()
            rss_start = server_process.memory_info().rss
            sampler = threading.Thread(target=rss_sampler, args=(server_process, samples, halt_sampler), daemon=True)
            sampler.start()
            next_publish = began + args.publish_every
            end = began + args.duration
            while True:
                now = time.perf_counter()
                if now >= end:
                    break
                if now >= next_publish:
                    version = f"load-{len(published):03d}"
                    publish(models, version, len(published), args.model_width)
                    published.append((version, time.perf_counter()))
                    next_publish += args.publish_every
                time.sleep(min(0.05, max(0.0, min(next_publish, end) - time.perf_counter())))
            for client in [*clients, *readers]:
                client.halt.set()
            for client in clients:
                client.join(args.timeout + 10)
            elapsed = time.perf_counter() - began
            for reader in readers:
                reader.join(args.timeout + 10)
            halt_sampler.set()
            sampler.join(5)
            rss_end = server_process.memory_info().rss
        finally:
            for client in [*clients, *readers]:
                client.halt.set()
                client.channel.close()
            stop_server(server)

    calls = [c for client in clients for c in client.calls if c[0] >= began]  # the measured phase
    failures = [f for client in clients for f in client.failures]
    by_method: dict[str, list[float]] = {}
    for _, method, latency, _ in calls:
        by_method.setdefault(method, []).append(latency)
    images_done = sum(args.batch_size if method == "PredictBatch" else 1 for _, method, _, _ in calls)
    slowest = slowest_second([t for t, _, _, _ in calls], began, elapsed)
    # How long each model took to reach the clients: first answer by it after its publication.
    first_answer = {}
    for t, _, _, version in sorted(calls):
        first_answer.setdefault(version, t)
    reach = {v: first_answer[v] - t for v, t in published[1:] if v in first_answer}
    missing = [v for v, t in published[1:] if v not in first_answer and began + elapsed - t > 3.0]
    rss_peak = max([rss_start, rss_end] + [rss for _, rss in samples])
    growth_mib = (rss_end - rss_start) / mib
    # The readings answered in the measured phase, as the calls above (a reading under way at its end is not).
    read_codes = Counter(code for r in readers for t, code in r.answers if began <= t <= began + elapsed)
    # A reading may be refused (too many at once, the decode budget busy); anything else is a failure.
    read_failures = {code: n for code, n in read_codes.items() if code not in ("OK", "RESOURCE_EXHAUSTED")}

    figures = {
        "machine": header,
        "clients": args.clients,
        "duration_s": round(elapsed, 2),
        "publish_every_s": args.publish_every,
        "models_published_during_load": len(published) - 1,
        "calls": len(calls),
        "failed_calls": len(failures),
        "calls_per_s": round(len(calls) / elapsed, 1),
        "images_per_s": round(images_done / elapsed, 1),
        "slowest_second_calls": slowest,
        "latency_ms": {
            m: {
                "p50": round(percentile_ms(v, 50), 2),
                "p99": round(percentile_ms(v, 99), 2),
                "max": round(max(v) * 1e3, 2),
                "calls": len(v),
            }
            for m, v in sorted(by_method.items())
        },
        "all_calls_latency_ms": {
            "p50": round(percentile_ms([c[2] for c in calls], 50), 2),
            "p99": round(percentile_ms([c[2] for c in calls], 99), 2),
        },
        "slow_readers": args.slow_readers,
        "slow_read_codes": dict(read_codes),
        "model_reach_s": {v: round(s, 2) for v, s in reach.items()},
        "models_never_served": missing,
        "rss_mib": {
            "start": round(rss_start / mib, 1),
            "peak": round(rss_peak / mib, 1),
            "end": round(rss_end / mib, 1),
            "growth": round(growth_mib, 1),
            "threshold": args.max_rss_growth_mib,
            "timeline": [[round(t - began, 1), round(rss / mib, 1)] for t, rss in samples[::4]],
        },
    }

    print(f"load benchmark: {header}")
    print(
        f"  {args.clients} clients for {elapsed:.1f} s; {len(published) - 1} models published during the load "
        f"(every {args.publish_every:g} s), compact width {args.model_width}"
    )
    print(
        f"  calls        {len(calls):,} ok, {len(failures)} failed; {len(calls) / elapsed:,.0f} calls/s, "
        f"{images_done / elapsed:,.0f} images/s; slowest 1-s window "
        + ("n/a (no whole second measured)" if slowest is None else f"{slowest} calls")
    )
    for method, values in sorted(by_method.items()):
        print(
            f"  {method:<12} p50 {percentile_ms(values, 50):7.2f} ms  p99 {percentile_ms(values, 99):7.2f} ms  "
            f"max {max(values) * 1e3:7.1f} ms  ({len(values):,} calls)"
        )
    if readers:
        print(
            f"  slow readers {args.slow_readers} beside them, ReadNumber answers: "
            + ", ".join(f"{n:,} {code}" for code, n in read_codes.most_common())
        )
    if reach:
        print(
            f"  new models reached clients in {min(reach.values()):.2f}..{max(reach.values()):.2f} s "
            f"({len(reach)} of {len(published) - 1})"
        )
    print(
        f"  server RSS   start {rss_start / mib:.1f} MiB (after warm-up), peak {rss_peak / mib:.1f} MiB, "
        f"end {rss_end / mib:.1f} MiB: {growth_mib:+.1f} MiB (threshold {args.max_rss_growth_mib:g} MiB)"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")

    problems = []
    if not calls:  # nothing measured is no pass
        problems.append("no call finished in the measured phase")
    if failures:
        counts = Counter(failures)
        problems.append(f"{len(failures)} call(s) failed: " + "; ".join(f"{n} x {f}" for f, n in counts.most_common(3)))
    if read_failures:
        problems.append(f"slow readings failed otherwise than refused: {read_failures}")
    if missing:
        problems.append(f"published but never served: {', '.join(missing)}")
    if growth_mib > args.max_rss_growth_mib:
        problems.append(f"server RSS grew {growth_mib:.1f} MiB > {args.max_rss_growth_mib:g} MiB")
    for problem in problems:
        print(f"FAIL: {problem}")
    if not problems:
        print("PASS: no failed call, every model served, memory flat")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
