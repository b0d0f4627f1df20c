"""The web page and REST API: `python -m inference.web` (or `mnist-web`). See `--help` for every flag and default.

A gateway in front of the gRPC service (`python -m inference`): start that first, or point --target at it.
Imports no torch: it starts in about a second and uses a few tens of MB.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from shared import settings
from shared.cli import ArgumentParser, HelpFormatter, non_empty, port_number, positive_seconds
from shared.settings import ENV_AUTH_TOKEN, ENV_TLS_CA

from inference.capacity import WEB_BODY_HOLD_FACTOR
from inference.channel import grpc_target, tls_flags_problem
from inference.logs import LOG_FORMATS, configure_logging
from inference.security import ca_certificates_file, checked_token

if TYPE_CHECKING:
    import uvicorn

    from inference.web.app import WebOptions


def get_args_parser() -> argparse.ArgumentParser:
    from inference.web.app import WebOptions

    defaults = WebOptions()  # one place for the defaults
    s = settings
    parser = ArgumentParser(
        prog="python -m inference.web",
        description="Serve the web page (draw a digit, drop a photo) and the REST API with OpenAPI docs (/docs), "
        "in front of the gRPC inference service.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--host",
        type=non_empty,
        default=s.env_str(s.ENV_WEB_HOST, s.DEFAULT_WEB_HOST),
        help=f"interface to listen on; 0.0.0.0 shows the page to the network [env {s.ENV_WEB_HOST}]",
    )
    parser.add_argument(
        "--port",
        type=port_number,
        default=s.env_value(s.ENV_WEB_PORT, s.DEFAULT_WEB_PORT, port_number),
        help=f"port to listen on; 0 picks a free one [env {s.ENV_WEB_PORT}]",
    )
    parser.add_argument(
        "--allowed-hosts",
        default=s.env_str(s.ENV_WEB_ALLOWED_HOSTS, "") or None,
        metavar="HOSTS",
        help="comma-separated Host names answered (*.example.com for its subdomains, * for any); others get 400, "
        "which stops DNS rebinding (default: localhost,127.0.0.1,[::1] when --host is a loopback address, "
        f"else *) [env {s.ENV_WEB_ALLOWED_HOSTS}]",
    )
    parser.add_argument(
        "--target",
        type=grpc_target,
        # Checked here as the flag is, so that a bad value is refused naming the variable, not a --target never typed.
        default=s.env_value(s.ENV_GRPC_TARGET, s.DEFAULT_GRPC_TARGET, grpc_target),
        help=f"the gRPC inference service; dns:///host:port balances over every address of host "
        f"[env {s.ENV_GRPC_TARGET}]",
    )
    # Default None rather than the env var's value, so --help never prints the secret; main() reads the env.
    parser.add_argument(
        "--token",
        default=None,
        help=f"require 'Authorization: Bearer <token>' of REST callers (the header is passed on to "
        f"the gRPC service, which checks its own token too) [env {ENV_AUTH_TOKEN}; prefer the "
        "env var: flags show up in `ps`]",
    )
    parser.add_argument(
        "--health-target",
        default=s.env_str(s.ENV_GRPC_HEALTH_TARGET, "") or None,
        help="the service's health-only port (its --health-address, plaintext), which GET /readyz asks: answered "
        "however busy the main port is (default: the --target's own health service) "
        f"[env {s.ENV_GRPC_HEALTH_TARGET}]",
    )
    parser.add_argument("--tls", action="store_true", help="call the gRPC service over TLS (system roots)")
    parser.add_argument(
        "--tls-ca",
        type=ca_certificates_file,
        default=s.env_value(ENV_TLS_CA, None, ca_certificates_file),
        help=f"call the gRPC service over TLS, trusting this PEM CA certificate [env {ENV_TLS_CA}]",
    )
    parser.add_argument(
        "--tls-server-name",
        default=None,
        help="expect this name in the service's certificate instead of the target's host",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=defaults.timeout,
        metavar="SECONDS",
        help="deadline of each gRPC call (a call waits this long for a replica that is restarting), counted from "
        "the request's arrival; a request body not all arrived within it gets 408",
    )
    parser.add_argument(
        "--evaluate-timeout",
        type=positive_seconds,
        default=defaults.evaluate_timeout,
        metavar="SECONDS",
        help="deadline of an Evaluate call",
    )
    parser.add_argument(
        "--unreachable-grace",
        type=positive_seconds,
        default=defaults.unreachable_grace,
        metavar="SECONDS",
        help="once no replica of the service could be reached for this long, calls get 503 at once instead of "
        "waiting --timeout for one (shorter outages, a restart, are waited out)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=defaults.max_body_bytes,
        help="largest request body read; larger ones get 413 before they are read "
        "(the gRPC service's own limits apply to what passes)",
    )
    parser.add_argument(
        "--max-inflight-bytes",
        type=int,
        default=defaults.max_inflight_bytes,
        help="bytes of request bodies held at once, all requests together; past it, 429 with Retry-After. Each is "
        f"held about {WEB_BODY_HOLD_FACTOR:g} times over while it is handled: raise the memory limit with it "
        "(inference.capacity)",
    )
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument(
        "--log-format",
        default=s.env_choice(s.ENV_LOG_FORMAT, "text", LOG_FORMATS),
        choices=LOG_FORMATS,
        help=f"'text' for people, 'json' for log collectors [env {s.ENV_LOG_FORMAT}]",
    )
    parser.add_argument("--no-access-log", action="store_true", help="no log line per HTTP request")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if (problem := tls_flags_problem(args.tls, args.tls_ca, args.tls_server_name)) is not None:
        parser.error(problem)
    if args.token is None:
        args.token = os.environ.get(ENV_AUTH_TOKEN) or None
    if args.token is not None:
        args.token = checked_token(args.token, f"--token ({ENV_AUTH_TOKEN})")
    from inference.web.guards import default_allowed_hosts, parse_allowed_hosts

    try:
        allowed_hosts = (
            parse_allowed_hosts(args.allowed_hosts) if args.allowed_hosts else default_allowed_hosts(args.host)
        )
    except ValueError as e:
        raise SystemExit(f"--allowed-hosts ({settings.ENV_WEB_ALLOWED_HOSTS}): {e}") from None
    if args.max_body_bytes < 1:
        raise SystemExit("--max-body-bytes must be at least 1")
    if args.max_inflight_bytes < args.max_body_bytes:
        raise SystemExit("--max-inflight-bytes must be at least --max-body-bytes (one largest body)")
    configure_logging(args.log_level, args.log_format)
    install_log_filters()

    import uvicorn

    from inference.web.app import WebOptions

    options = WebOptions(
        target=args.target,
        health_target=args.health_target,
        token=args.token,
        tls=args.tls,
        tls_ca=args.tls_ca,
        tls_server_name=args.tls_server_name,
        timeout=args.timeout,
        evaluate_timeout=args.evaluate_timeout,
        unreachable_grace=args.unreachable_grace,
        max_body_bytes=args.max_body_bytes,
        max_inflight_bytes=args.max_inflight_bytes,
        allowed_hosts=allowed_hosts,
    )
    server = uvicorn.Server(server_config(args, options))
    # uvicorn handles SIGTERM and SIGINT itself (requests in flight finish), then raises the signal again with the
    # handlers it found installed. These make that a no-op, so that a graceful stop exits 0, as `python -m inference`
    # does, rather than "killed by SIGTERM". It exits 3 when it cannot listen (the port is taken), with the reason.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    server.run()
    return 0


def server_config(args: argparse.Namespace, options: WebOptions) -> uvicorn.Config:
    """uvicorn's settings for the gateway with these flags: the connection limits and timeouts uvicorn leaves open
    by default come from inference.web.serving."""
    import uvicorn

    from inference.web.app import create_app
    from inference.web.serving import uvicorn_settings

    # log_config=None: uvicorn's loggers go through configure_logging's handler, in the chosen format. Its
    # "Uvicorn running on http://host:port" line gives the real port when --port is 0.
    return uvicorn.Config(
        create_app(options),
        host=args.host,
        port=args.port,
        log_config=None,
        log_level=args.log_level.lower(),
        access_log=not args.no_access_log,
        server_header=False,
        **uvicorn_settings(),
    )


def install_log_filters() -> None:
    """asyncio's log of accept() failing for want of file descriptors, bounded (serving.AcceptFailureLog)."""
    from inference.web.serving import AcceptFailureLog

    logging.getLogger("asyncio").addFilter(AcceptFailureLog())


if __name__ == "__main__":
    sys.exit(main())
