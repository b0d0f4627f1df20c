"""Benchmark the web page in a real browser: how fast it loads, and how fast a finished stroke shows its answer.

    python -m bench.bench_web --artifacts-dir ~/.cache/mnist-stack/test-models/<hash>   # a trained model
    python -m bench.bench_web                                   # a random-init model: timings only
    python -m bench.bench_web --artifacts-dir DIR --screenshot docs/web.png             # also redraws the figure

Runs what a user's machine runs, each as its own process on this machine: `python -m inference` (gRPC, a free
port), `python -m inference.web` in front of it (a free port), and headless chromium driven by selenium
(Debian's chromium and chromium-driver). Measures:

  1. Page load: HTML, JS and CSS bytes, and the time from navigation start to the load event (Navigation Timing),
     cold (browser cache disabled) and warm (revalidated, 304s), over --loads loads each.
  2. Stroke to answer: --digits MNIST test digits drawn on the canvas as mouse strokes (testkit/web_browser.py);
     for each finished stroke the page records performance.now() from pointerup to the animation frame that
     shows its prediction (window.mnist.strokeLatencies): p50, p90, max. With a trained model, also how many
     drawn digits were read right.
  3. Baselines, in the same run, for the PNGs the page sent: gRPC Predict called directly, and the REST call from
     Python (gateway + gRPC), so the browser's own share is visible.

Targets on a 2-core machine: page load < 300 ms with HTML + JS + CSS <= 60 kB; stroke to answer p50 < 50 ms.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from shared import settings
from shared.cli import positive_int, whole_number

from bench.machine import describe_machine
from testkit.server_process import publish_random_model, start_server, stop_server

REPO_ROOT = Path(__file__).resolve().parent.parent

STATIC = REPO_ROOT / "inference" / "web" / "static"


def digit_class(text: str) -> int:
    """argparse type: a digit, 0 to 9 (another number has no MNIST test image to draw)."""
    value = whole_number(text)
    if not 0 <= value <= 9:
        raise argparse.ArgumentTypeError(f"must be a digit from 0 to 9, got {value}")
    return value


def first_of_class(labels: np.ndarray, digit: int) -> int:
    """Index of the first test image of `digit`, or a clear error where there is none (a test set cut short)."""
    found = np.flatnonzero(labels == digit)
    if not len(found):
        raise SystemExit(f"no MNIST test image of the digit {digit} to draw for the screenshot")
    return int(found[0])


def stroke_summary(strokes: list[float], digits: int) -> str | None:
    """The stroke-to-answer line of the report, or None when the page recorded no stroke's latency (max of
    nothing has no figure to give)."""
    if not strokes:
        return None
    return (
        f"finished stroke -> prediction on screen ({len(strokes)} strokes, {digits} digits): "
        f"p50 {percentile(strokes, 50):.1f} ms, p90 {percentile(strokes, 90):.1f} ms, "
        f"max {max(strokes):.1f} ms (target p50 < 50 ms)"
    )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_web",
        description="Benchmark the web page in headless chromium.",
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
    parser.add_argument("--loads", type=positive_int, default=20, help="page loads, cold and warm each")
    parser.add_argument("--digits", type=positive_int, default=30, help="MNIST test digits drawn on the canvas")
    parser.add_argument("--screenshot", type=Path, default=None, help="save a screenshot of the page here (PNG)")
    parser.add_argument(
        "--screenshot-digits",
        type=digit_class,
        nargs=2,
        default=(2, 5),
        metavar=("DESKTOP", "PHONE"),
        help="the digit drawn for each screenshot (the first MNIST test image of that class)",
    )
    parser.add_argument(
        "--phone-screenshot",
        type=Path,
        default=None,
        help="save a screenshot of the page on a phone-sized screen here (PNG)",
    )
    return parser


def start_web(grpc_port: int) -> tuple[subprocess.Popen, int]:
    """`python -m inference.web` on a free port in front of the gRPC server: (process, port)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inference.web",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--target",
            f"127.0.0.1:{grpc_port}",
            "--no-access-log",
        ],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            raise SystemExit("the web server exited:\n" + "".join(lines))
        lines.append(line)
        match = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
        if match:
            threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()  # keep draining
            return process, int(match.group(1))
    process.kill()
    raise SystemExit("the web server did not start:\n" + "".join(lines))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def page_loads(driver, url: str, count: int, *, cold: bool) -> list[float]:
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": cold})
    times = []
    for _ in range(count):
        driver.get(url)
        times.append(
            driver.execute_script(
                "const n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd - n.startTime;"
            )
        )
    driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": False})
    return times


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from shared.api.mnist.v1 import inference_pb2 as pb
    from shared.data import load_mnist

    from testkit.waiting import wait_until
    from testkit.web_browser import (
        browser_missing,
        digit_strokes,
        draw,
        shown_digit,
        start_chromium,
        stop_chromium,
        wait_settled,
    )

    missing = browser_missing()
    if missing:
        raise SystemExit(missing)
    print(describe_machine())
    mnist = load_mnist(args.data_dir, download=False)
    sizes = {p.name: p.stat().st_size for p in sorted(STATIC.iterdir()) if p.suffix in (".html", ".js", ".css")}
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = args.artifacts_dir
        if artifacts is None:
            artifacts = Path(tmp) / "artifacts"
            publish_random_model(artifacts)
            print("model: random-init (timings only; pass --artifacts-dir for a trained model)")
        server, grpc_port = start_server(artifacts, args.data_dir, [])
        web, web_port = start_web(grpc_port)
        url = f"http://127.0.0.1:{web_port}/"
        driver = start_chromium(width=1280, height=800)
        try:
            # 1. Page load, after one load to start the browser's own machinery.
            driver.get(url)
            cold = page_loads(driver, url, args.loads, cold=True)
            warm = page_loads(driver, url, args.loads, cold=False)

            # 2. Strokes to answers.
            wait_until(lambda: driver.find_element("id", "model-version").text, timeout=30)
            driver.execute_script("window.mnist.strokeLatencies.length = 0")
            labels = mnist.test_labels.numpy()
            right, canvases = 0, []
            for i in range(args.digits):
                if driver.find_element("id", "clear").is_enabled():
                    driver.find_element("id", "clear").click()
                draw(driver, digit_strokes(mnist.test_images[i].numpy()), kind="mouse")
                wait_settled(driver)
                right += shown_digit(driver) == int(labels[i])
                data_url = driver.execute_script("return window.mnist.drawing()")  # the PNG the page sent
                canvases.append(base64.b64decode(data_url.split(",", 1)[1]))
            strokes = driver.execute_script("return window.mnist.strokeLatencies")

            if args.screenshot:
                show = first_of_class(labels, args.screenshot_digits[0])
                driver.find_element("id", "clear").click()
                draw(driver, digit_strokes(mnist.test_images[show].numpy()), kind="mouse")
                wait_settled(driver)
                args.screenshot.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(args.screenshot))
                print(f"screenshot saved to {args.screenshot}")
        finally:
            stop_chromium(driver)
        if args.phone_screenshot:
            phone = start_chromium(phone=True)
            try:
                phone.get(url)
                wait_until(lambda: phone.find_element("id", "model-version").text, timeout=30)
                show = first_of_class(labels, args.screenshot_digits[1])
                draw(phone, digit_strokes(mnist.test_images[show].numpy()), kind="touch")
                wait_settled(phone)
                args.phone_screenshot.parent.mkdir(parents=True, exist_ok=True)
                phone.save_screenshot(str(args.phone_screenshot))
                print(f"phone screenshot saved to {args.phone_screenshot}")
            finally:
                stop_chromium(phone)

        # 3. Baselines for the PNGs the page sent: gRPC directly, and REST from Python.
        import grpc

        from shared.api.mnist.v1 import inference_pb2_grpc

        grpc_ms, rest_ms = [], []
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            connection = http.client.HTTPConnection("127.0.0.1", web_port, timeout=30)
            for _ in range(3):
                for png in canvases:
                    started = time.perf_counter()
                    stub.Predict(pb.PredictRequest(image=png, return_model_input=True), timeout=10)
                    grpc_ms.append((time.perf_counter() - started) * 1e3)
                    started = time.perf_counter()
                    connection.request("POST", "/v1/predict", body=png, headers={"Content-Type": "image/png"})
                    response = connection.getresponse()
                    response.read()
                    assert response.status == 200, response.status
                    rest_ms.append((time.perf_counter() - started) * 1e3)
            connection.close()
        stop_server(web)
        stop_server(server)

    total = sum(sizes.values())
    print()
    print(
        f"page: {', '.join(f'{n} {b:,} B' for n, b in sizes.items())}; together {total:,} B "
        f"({total / 1000:.1f} kB; target <= 60 kB)"
    )
    print(
        f"page load, cold cache ({len(cold)} loads): p50 {percentile(cold, 50):.1f} ms, "
        f"p90 {percentile(cold, 90):.1f} ms, max {max(cold):.1f} ms (target < 300 ms)"
    )
    print(
        f"page load, warm cache ({len(warm)} loads): p50 {percentile(warm, 50):.1f} ms, "
        f"p90 {percentile(warm, 90):.1f} ms, max {max(warm):.1f} ms"
    )
    stroke_line = stroke_summary(strokes, args.digits)
    print(
        stroke_line
        or f"finished stroke -> prediction on screen: NO LATENCY RECORDED for the {args.digits} digits drawn "
        "(the page's window.mnist.strokeLatencies stayed empty: did its predictions show?)"
    )
    print(
        f"  baseline, the PNGs the page sent, measured after the browser closed ({len(grpc_ms)} calls each): "
        "gRPC Predict p50 "
        f"{percentile(grpc_ms, 50):.1f} ms; REST /v1/predict from Python p50 {percentile(rest_ms, 50):.1f} ms"
    )
    print(f"drawn digits read right: {right} of {args.digits}")
    return 0 if stroke_line else 1


if __name__ == "__main__":
    sys.exit(main())
