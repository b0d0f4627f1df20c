"""The inference service: `python -m inference` (or `mnist-serve`). See `--help` for every flag and default."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

# Before NumPy loads: its BLAS (OpenBLAS) would run a thread per core for the image pipeline's small matrix products,
# while calls already run side by side; on two busy cores the fast path's batched fit of the paper took ten times
# longer with them. Worker processes inherit the setting.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from shared import settings  # noqa: E402 - after the environment above
from shared.cli import HelpFormatter  # noqa: E402
from shared.resources import memory_limit_bytes, usable_cpus, usable_memory_bytes  # noqa: E402

from inference.capacity import check_workers_fit, default_worker_count, process_memory_mib  # noqa: E402
from inference.logs import LOG_FORMATS, configure_logging  # noqa: E402
from inference.security import ENV_AUTH_TOKEN, ENV_TLS_CERT, ENV_TLS_KEY  # noqa: E402


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    from inference.model_store import BACKENDS
    from inference.options import ServerOptions

    defaults = ServerOptions(artifacts_dir=Path(), data_dir=Path())  # one place for the defaults
    parser = argparse.ArgumentParser(
        prog="python -m inference",
        description="Serve handwritten-digit recognition over gRPC (mnist.v1.Inference, health, reflection).",
        formatter_class=HelpFormatter,
        add_help=add_help,
    )
    parser.add_argument("--address", default=settings.env_str(settings.ENV_GRPC_ADDRESS, settings.DEFAULT_GRPC_ADDRESS),
                        help=f"host:port to listen on; port 0 picks a free one (env {settings.ENV_GRPC_ADDRESS})")
    parser.add_argument("--artifacts-dir", type=Path, default=settings.artifacts_dir(),
                        help=f"the trainer's artifacts folder; models/LATEST.json is watched "
                             f"(env {settings.ENV_ARTIFACTS_DIR})")
    parser.add_argument("--data-dir", type=Path, default=settings.data_dir(),
                        help=f"MNIST files for Evaluate, read on the first Evaluate call (env {settings.ENV_DATA_DIR})")
    parser.add_argument("--download-data", action="store_true",
                        help="download MNIST into --data-dir when Evaluate finds it missing")
    parser.add_argument("--poll-interval", type=float, default=defaults.poll_interval, metavar="SECONDS",
                        help="how often to look for a newly published model")
    parser.add_argument("--grace-period", type=float, default=5.0, metavar="SECONDS",
                        help="on SIGTERM/SIGINT, how long calls in flight may take to finish")
    parser.add_argument("--workers", type=int, default=settings.env_int(settings.ENV_INFERENCE_WORKERS, 0),
                        help=f"server processes sharing the port; 0 chooses one per usable CPU core, as many as the "
                             f"memory holds (inference.workers.default_worker_count), since Python runs one thread "
                             f"at a time per process (env {settings.ENV_INFERENCE_WORKERS})")
    backend_env = settings.env_str(settings.ENV_INFERENCE_BACKEND, defaults.backend)
    if backend_env not in BACKENDS:  # argparse checks `choices` against typed values only
        raise SystemExit(f"environment variable {settings.ENV_INFERENCE_BACKEND}={backend_env!r} must be one of: "
                         f"{', '.join(BACKENDS)}")
    parser.add_argument("--backend", choices=BACKENDS,
                        default=backend_env,
                        help=f"what runs the network: onnxruntime (the published model's ONNX export; models "
                             f"without one use torch) or torch (env {settings.ENV_INFERENCE_BACKEND})")
    parser.add_argument("--digit-threshold", type=unit_interval,
                        default=_env_unit_interval(settings.ENV_DIGIT_THRESHOLD), metavar="SCORE",
                        help=f"a picture is a digit (Prediction.is_digit) when its digit score is at least this, "
                             f"0..1; default: the served model's own, chosen by the trainer on its validation split "
                             f"to flag at most 1%% of real digits (docs/not-a-digit.md) "
                             f"(env {settings.ENV_DIGIT_THRESHOLD})")
    parser.add_argument("--max-workers", type=int, default=defaults.max_workers,
                        help="gRPC worker threads (concurrent calls) in each process")
    parser.add_argument("--max-concurrent-rpcs", type=int, default=defaults.max_concurrent_rpcs,
                        help="calls beyond this many at once get RESOURCE_EXHAUSTED instead of queueing")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads per call (calls already run in parallel); 0: torch's default")
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size,
                        help="images per PredictBatch call")
    parser.add_argument("--max-image-bytes", type=int, default=defaults.max_image_bytes,
                        help="bytes of one encoded image")
    parser.add_argument("--max-image-pixels", type=int, default=defaults.max_image_pixels,
                        help="decoded width x height of one image (decompression bombs are refused)")
    parser.add_argument("--max-message-bytes", type=int, default=defaults.max_message_bytes,
                        help="bytes of one request or response message")
    parser.add_argument("--decode-budget-mib", type=int, default=defaults.decode_budget_mib,
                        help="decoded pictures in memory at once, across all calls of one process; a call that "
                             "would exceed it waits, then gets RESOURCE_EXHAUSTED")
    parser.add_argument("--decode-wait", type=float, default=defaults.decode_wait, metavar="SECONDS",
                        help="how long a call waits for room in the decode budget")
    parser.add_argument("--max-concurrent-evaluations", type=int, default=defaults.max_concurrent_evaluations,
                        help="Evaluate calls at once; more get RESOURCE_EXHAUSTED")
    parser.add_argument("--model-cache-size", type=int, default=defaults.pinned_cache_size, metavar="N",
                        help="published versions besides the served one kept loaded for calls that pin a "
                             "model_version (least recently used first out)")
    parser.add_argument("--metrics-address", default=settings.env_str(settings.ENV_METRICS_ADDRESS, "") or None,
                        metavar="HOST:PORT",
                        help=f"serve Prometheus metrics over HTTP at http://HOST:PORT/metrics, e.g. "
                             f"0.0.0.0:{settings.DEFAULT_METRICS_PORT}; off when not given. With --workers the sum "
                             f"over the processes (env {settings.ENV_METRICS_ADDRESS})")
    parser.add_argument("--tls-cert", type=Path, default=os.environ.get(ENV_TLS_CERT) or None,
                        help=f"PEM certificate chain; with --tls-key, serve TLS only (env {ENV_TLS_CERT})")
    parser.add_argument("--tls-key", type=Path, default=os.environ.get(ENV_TLS_KEY) or None,
                        help=f"PEM private key of --tls-cert (env {ENV_TLS_KEY})")
    # Default None rather than the env var's value, so --help never prints the secret; main() reads the env.
    parser.add_argument("--auth-token", default=None,
                        help=f"require metadata 'authorization: Bearer <token>' on every call but health checks "
                             f"(env {ENV_AUTH_TOKEN}; prefer the env var: flags show up in `ps`)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("--log-format", default=settings.env_str(settings.ENV_LOG_FORMAT, "text"), choices=LOG_FORMATS,
                        help=f"'text' for people, 'json' for log collectors: one object per line, with the access "
                             f"log's fields (method, code, latency_ms, request_id, ...) as keys (env {settings.ENV_LOG_FORMAT})")
    return parser


def unit_interval(text: str) -> float:
    """A number in [0, 1] (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 0 to 1")
    return value


def _env_unit_interval(name: str) -> float | None:
    text = os.environ.get(name) or None
    if text is None:
        return None
    try:
        return unit_interval(text)
    except argparse.ArgumentTypeError as e:
        raise SystemExit(f"environment variable {name}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.auth_token is None:
        args.auth_token = os.environ.get(ENV_AUTH_TOKEN) or None
    configure_logging(args.log_level, args.log_format)
    from inference.options import ServerOptions
    from inference.server import check_decode_budget, configure_torch, serve

    log = logging.getLogger("inference")
    if args.auth_token is not None and not args.auth_token.strip():
        raise SystemExit("--auth-token is empty")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("TLS needs both --tls-cert and --tls-key")
    for path in (args.tls_cert, args.tls_key):
        if path is not None and not path.is_file():
            raise SystemExit(f"{path}: no such file")
    options = ServerOptions(
        artifacts_dir=args.artifacts_dir,
        data_dir=args.data_dir,
        download_data=args.download_data,
        poll_interval=args.poll_interval,
        backend=args.backend,
        max_workers=args.max_workers,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        max_batch_size=args.max_batch_size,
        max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels,
        max_message_bytes=args.max_message_bytes,
        max_concurrent_evaluations=args.max_concurrent_evaluations,
        decode_budget_mib=args.decode_budget_mib,
        decode_wait=args.decode_wait,
        pinned_cache_size=args.model_cache_size,
        metrics_address=args.metrics_address,
        auth_token=args.auth_token,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        digit_threshold=args.digit_threshold,
    )
    if args.workers < 0:
        raise SystemExit("--workers must be at least 1 (or 0: one per CPU core, as memory allows)")
    try:
        check_decode_budget(options)
        per_process = process_memory_mib(options.decode_budget_mib, options.max_workers, options.max_message_bytes)
        if args.workers == 0:
            cpus, memory = usable_cpus(), usable_memory_bytes()
            args.workers = default_worker_count(cpus, memory, per_process)
            log.info("%d worker process(es): %d usable CPU core(s), %s of memory available, up to %d MiB each",
                     args.workers, cpus, f"{memory / 2**30:.1f} GiB" if memory is not None else "an unknown amount",
                     per_process)
        check_workers_fit(args.workers, per_process, memory_limit_bytes())
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if args.model_cache_size < 0:
        raise SystemExit("--model-cache-size must be 0 or more")
    if args.metrics_address:
        from inference.workers import split_address

        try:
            split_address(args.metrics_address)
        except ValueError as e:
            raise SystemExit(f"--metrics-address: {e}") from None
    if args.workers > 1:
        from inference.workers import serve_workers

        try:
            return serve_workers(args.address, options, workers=args.workers, grace=args.grace_period,
                                 torch_threads=args.torch_threads, log_level=args.log_level,
                                 log_format=args.log_format)
        except OSError as e:
            log.error("cannot listen on %s: %s", args.address, e)
            return 1
    # One process: torch is configured here; with --workers, each worker process configures its own.
    configure_torch(args.torch_threads)
    try:
        serve(args.address, options, grace=args.grace_period)
    except OSError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
