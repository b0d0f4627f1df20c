"""The inference service: `python -m inference` (or `mnist-serve`). See `--help` for every flag and default."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import ssl
import sys

# Before NumPy loads: its BLAS (OpenBLAS) would run a thread per core for the image pipeline's small matrix products,
# while calls already run side by side; on two busy cores the fast path's batched fit of the paper took ten times
# longer with them. Worker processes inherit the setting.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from shared import settings
from shared.cli import ArgumentParser, HelpFormatter, non_negative_int, non_negative_seconds
from shared.resources import memory_limit_bytes, usable_cpus

from inference.capacity import check_workers_fit, machine_worker_count, server_memory_mib
from inference.logs import LOG_FORMATS, configure_logging


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    from inference.options import add_server_arguments

    parser = ArgumentParser(
        prog="python -m inference",
        description="Serve handwritten-digit recognition over gRPC (mnist.v1.Inference, health, reflection).",
        formatter_class=HelpFormatter,
        add_help=add_help,
    )
    # How the process runs; what each server is configured with (ServerOptions) comes after, from its fields.
    parser.add_argument(
        "--address",
        default=settings.env_str(settings.ENV_GRPC_ADDRESS, settings.DEFAULT_GRPC_ADDRESS),
        help=f"host:port to listen on; port 0 picks a free one (env {settings.ENV_GRPC_ADDRESS})",
    )
    parser.add_argument(
        "--grace-period",
        type=non_negative_seconds,
        default=5.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long calls in flight may take to finish",
    )
    parser.add_argument(
        "--workers",
        type=non_negative_int,
        default=settings.env_value(settings.ENV_INFERENCE_WORKERS, 0, non_negative_int),
        help=f"server processes sharing the port; 0 chooses one per usable CPU core, as many as the "
        f"memory holds (inference.capacity.default_worker_count), since Python runs one thread "
        f"at a time per process (env {settings.ENV_INFERENCE_WORKERS})",
    )
    parser.add_argument(
        "--torch-threads",
        type=non_negative_int,
        default=1,
        help="intra-op threads per call, in torch and onnxruntime (calls already run in parallel); 0: torch's default",
    )
    add_server_arguments(parser)
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument(
        "--log-format",
        default=settings.env_choice(settings.ENV_LOG_FORMAT, "text", LOG_FORMATS),
        choices=LOG_FORMATS,
        help=f"'text' for people, 'json' for log collectors: one object per line, with the access "
        f"log's fields (method, code, latency_ms, request_id, ...) as keys (env {settings.ENV_LOG_FORMAT})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    from inference.options import server_options
    from inference.security import checked_token
    from inference.server import check_decode_budget, configure_torch, serve

    log = logging.getLogger("inference")
    options = server_options(args)
    if options.auth_token is not None:
        token = checked_token(options.auth_token, f"--auth-token ({settings.ENV_AUTH_TOKEN})")
        options = dataclasses.replace(options, auth_token=token)
    if (options.tls_cert is None) != (options.tls_key is None):
        raise SystemExit("TLS needs both --tls-cert and --tls-key")
    for path in (options.tls_cert, options.tls_key):
        if path is not None and not path.is_file():
            raise SystemExit(f"{path}: no such file")
    if options.tls_cert is not None and options.tls_key is not None:
        try:  # gRPC would only say "failed to bind". No password (gRPC takes none): an encrypted key fails, unasked.
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(options.tls_cert, options.tls_key, password=lambda: b"")
        except (ssl.SSLError, OSError) as e:
            raise SystemExit(
                f"--tls-cert {options.tls_cert} and --tls-key {options.tls_key} are not a PEM certificate chain and "
                f"its private key ({e})"
            ) from None
    try:
        check_decode_budget(options)
        per_process = server_memory_mib(options)
        if args.workers == 0:
            args.workers, cpus, memory = machine_worker_count(per_process)
            log.info(
                "%d worker process(es): %d usable CPU core(s), %s of memory available, up to %d MiB each",
                args.workers,
                cpus,
                f"{memory / 2**30:.1f} GiB" if memory is not None else "an unknown amount",
                per_process,
            )
        check_workers_fit(args.workers, per_process, memory_limit_bytes(), usable_cpus())
    except ValueError as e:
        raise SystemExit(str(e)) from None
    from inference.workers import split_address

    # A malformed address, or a port out of range (which gRPC would take modulo 65536), is a one-line error.
    for flag, address in (
        ("--address", args.address),
        ("--health-address", options.health_address),
        ("--metrics-address", options.metrics_address),
    ):
        try:
            if address:
                split_address(address)
        except ValueError as e:
            raise SystemExit(f"{flag}: {e}") from None
    if args.workers > 1:
        from inference.workers import serve_workers

        try:
            return serve_workers(
                args.address,
                options,
                workers=args.workers,
                grace=args.grace_period,
                torch_threads=args.torch_threads,
                log_level=args.log_level,
                log_format=args.log_format,
            )
        except OSError as e:  # each names its own address: the main, health or metrics port
            log.error("%s", e.strerror or e)
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
