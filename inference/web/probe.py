"""Container health check of the web service: GET /healthz (or /readyz) and exit 0 (healthy) or 1, with one line.

    python -m inference.web.probe [--target localhost:8080] [--require-ready]

Without --require-ready only the gateway itself must answer, so its container is not restarted while the gRPC
service waits for a first model or restarts; with it, the service behind it must be SERVING too.
(The image has no curl: this is the web service's counterpart of inference.health_probe.)
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

from shared import settings
from shared.cli import ArgumentParser, HelpFormatter, positive_seconds


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m inference.web.probe", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    parser.add_argument("--target", default=f"localhost:{settings.DEFAULT_WEB_PORT}", help="the web service, host:port")
    parser.add_argument(
        "--require-ready",
        action="store_true",
        help="healthy only when the gRPC service behind it is SERVING (GET /readyz)",
    )
    parser.add_argument(
        "--timeout", type=positive_seconds, default=3.0, metavar="SECONDS", help="give up after this long"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    url = f"http://{args.target}/{'readyz' if args.require_ready else 'healthz'}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            print(f"healthy: {url} answered {response.status}")
            return 0
    except urllib.error.HTTPError as e:  # 503 from /readyz: the body says why
        try:
            reason = json.load(e)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            reason = e.reason
        print(f"unhealthy: {url} answered {e.code}: {reason}")
    except (urllib.error.URLError, OSError) as e:
        print(f"unhealthy: {url}: {getattr(e, 'reason', e)}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
