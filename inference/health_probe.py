"""Container health check: ask the server's grpc.health.v1 service and exit 0 (healthy) or 1, with one line.

    python -m inference.health_probe [--target localhost:50051] [--require-serving]

Without --require-serving any answer counts (the process is up, perhaps still waiting for a first model), so
a container is not restarted while the trainer has not published yet; with it, only SERVING does.
"""

from __future__ import annotations

import argparse
import os
import sys

# As the client: gRPC's own log lines (a failed TLS handshake) before the probe's one line; set only when run first.
if "grpc" not in sys.modules:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared import settings
from shared.api.mnist.v1 import inference_pb2
from shared.cli import ArgumentParser, HelpFormatter, positive_seconds

from inference.channel import describe_rpc_error, grpc_target, make_channel, reached_server, tls_flags_problem
from inference.security import ca_certificates_file

# What --service may name: the whole server (""), the API's services, liveness (inference/server.py sets each).
HEALTH_SERVICES = (
    "",
    *(service.full_name for service in inference_pb2.DESCRIPTOR.services_by_name.values()),
    settings.LIVENESS_SERVICE,
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m inference.health_probe", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--target",
        type=grpc_target,
        default=settings.env_value(settings.ENV_GRPC_TARGET, settings.DEFAULT_GRPC_TARGET, grpc_target),
        help=f"server address (env {settings.ENV_GRPC_TARGET})",
    )
    parser.add_argument("--service", default="", help="service to ask about; '' is the whole server")
    parser.add_argument("--require-serving", action="store_true", help="healthy only when the status is SERVING")
    parser.add_argument(
        "--timeout", type=positive_seconds, default=3.0, metavar="SECONDS", help="give up after this long"
    )
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    parser.add_argument(
        "--tls-ca",
        type=ca_certificates_file,
        default=settings.env_value(settings.ENV_TLS_CA, None, ca_certificates_file),
        help=f"use TLS, trusting this PEM CA certificate (env {settings.ENV_TLS_CA})",
    )
    parser.add_argument("--tls-server-name", default=None, help="expected name in the server's certificate")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if (problem := tls_flags_problem(args.tls, args.tls_ca, args.tls_server_name)) is not None:
        parser.error(problem)  # --tls-server-name without TLS was ignored without a word
    try:
        with make_channel(
            args.target, tls=args.tls, tls_ca=args.tls_ca, tls_server_name=args.tls_server_name
        ) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout, wait_for_ready=False
            )
    except grpc.RpcError as e:
        # A server not reached is said as the client says it, with the TLS flag to give or leave out: a TLS server
        # closes a plain connection without a word ("Socket closed"), which said nothing of --tls-ca. The probe's
        # other failures are about the health service, not the inference API the client's words are about.
        if e.code() == grpc.StatusCode.UNAVAILABLE and not reached_server(e):
            print(f"unhealthy: {describe_rpc_error(e, args.target)}")
        elif e.code() == grpc.StatusCode.NOT_FOUND:  # the health service says no more than "NOT_FOUND: "
            known = ", ".join(repr(name) for name in HEALTH_SERVICES)
            print(f"unhealthy: {args.target}: NOT_FOUND: no health status for service {args.service!r}; ask {known}")
        else:
            print(f"unhealthy: {args.target}: {e.code().name}: {e.details()}")
        return 1
    except OSError as e:  # --tls-ca unreadable
        print(f"unhealthy: {e}")
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    healthy = response.status == health_pb2.HealthCheckResponse.SERVING or not args.require_serving
    print(f"{'healthy' if healthy else 'unhealthy'}: {args.target} {args.service or 'server'} is {status}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
