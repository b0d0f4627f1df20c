"""Container health check of the web service: GET /healthz (or /readyz) and exit 0 (healthy) or 1, with one line.

    python -m inference.web.probe [--target localhost:8080] [--require-ready]
    python -m inference.web.probe --target localhost:6006 --path /     (TensorBoard's, in docker-compose.yml)

Without --require-ready only the gateway itself must answer, so its container is not restarted while the gRPC
service waits for a first model or restarts; with it, the service behind it must be SERVING too.
(The image has no curl: this is the web service's counterpart of inference.health_probe, and the image's
other HTTP server, TensorBoard, is checked with it too.)
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import urllib.error
import urllib.request

from shared import settings
from shared.cli import ArgumentParser, HelpFormatter, positive_seconds

# The target is this container's own server: asked directly, never through $http_proxy (urlopen's default), which
# a proxied environment sets for the outside world; through it the probe said a gateway that answered unhealthy.
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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
        "--path",
        type=url_path,
        default=None,
        help="ask this path instead (any 2xx answer is healthy), e.g. / for TensorBoard (default: /healthz, or "
        "/readyz with --require-ready)",
    )
    parser.add_argument(
        "--timeout", type=positive_seconds, default=3.0, metavar="SECONDS", help="give up after this long"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.path is not None and args.require_ready:
        parser.error("--path and --require-ready ask two paths: give one")
    path = args.path if args.path is not None else "/readyz" if args.require_ready else "/healthz"
    url = f"http://{args.target}{path}"
    try:
        with NO_PROXY.open(url, timeout=args.timeout) as response:
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
    except http.client.InvalidURL as e:  # a --target that is not host:port
        print(f"unhealthy: {url}: --target {args.target!r} is not host:port ({e})")
        return 2
    return 1


def url_path(text: str) -> str:
    """A path of this server, starting with '/' (argparse type)."""
    if not text.startswith("/") or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} must be a path starting with '/', without spaces, e.g. /healthz")
    return text


if __name__ == "__main__":
    sys.exit(main())
