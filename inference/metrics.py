"""Prometheus metrics for the inference service (prometheus_client), served on an HTTP port of their own.

    grpc_server_started_total{grpc_type, grpc_service, grpc_method}               calls begun
    grpc_server_handled_total{grpc_type, grpc_service, grpc_method, grpc_code}    calls finished, by status code
    grpc_server_handling_seconds{grpc_type, grpc_service, grpc_method}            latency histogram
    grpc_server_in_flight{grpc_service, grpc_method}                              calls running now
    mnist_images_predicted_total                   images that got a prediction
    mnist_images_rejected_total{reason}            images refused (REJECTION_REASONS)
    mnist_evaluations_total{split}                 Evaluate runs that finished
    mnist_calls_refused_total{limit}               calls refused at once by a cap: readings, evaluations
    mnist_model_info{version, arch, sha256}        1 for the served model (an info metric)
    mnist_model_loads_total{source, outcome}       model loads: source latest|pinned, outcome ok|failed
    mnist_model_swaps_total                        newly published models swapped in
    mnist_model_skips_total{reason}                published models skipped (inference.model_store.SKIP_REASONS)
    mnist_decode_memory_bytes                      decode-budget memory in use (decoding, working, forward passes)
    mnist_calls_queued                             calls accepted and waiting for a free worker thread
    mnist_call_queue_seconds                       histogram: how long each call waited for a worker thread

The call metrics use go-grpc-prometheus's names and labels, which existing gRPC dashboards and alerts read.

With `--workers N` every process records into files in one folder (prometheus_client's multiprocess mode,
PROMETHEUS_MULTIPROC_DIR, set by inference.workers before the workers start), and the parent process serves
the sum: counters and histograms add up, `grpc_server_in_flight`, queued calls and decode memory add up over live
processes,
and `mnist_model_info` is 1 for every version some live worker serves (two during a swap).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from inference.access_log import CallRecord
from inference.model_store import SKIP_REASONS, ModelEvents, ServedModel

log = logging.getLogger(__name__)

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds. Predict takes milliseconds, PredictBatch up to a second, Evaluate a few seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REJECTION_REASONS = (
    "empty",
    "too_many_bytes",
    "too_many_pixels",
    "not_an_image",
    "damaged",
    "transparent",
    "blank",
    "other",
)
# (words in an ImageRejected message, reason), first match wins; the messages are shared/decode.py's and
# shared/normalize.py's. tests/inference/test_metrics.py checks that every kind of bad image of the reliability
# table gets a reason other than "other", so a reworded message cannot silently fall through.
_REJECTION_WORDS = (
    ("empty image", "empty"),
    ("bytes; the limit", "too_many_bytes"),
    ("pixels; the limit", "too_many_pixels"),
    ("decompression bomb", "too_many_pixels"),
    ("far more than a picture carries", "too_many_bytes"),  # a PNG's metadata inflating past its limit
    ("not a picture in a format", "not_an_image"),
    ("are not accepted", "not_an_image"),
    ("header is damaged", "damaged"),
    ("could not be decoded", "damaged"),
    ("file is cut short", "damaged"),
    ("fully transparent", "transparent"),
    ("no ink", "blank"),
    ("no digit found", "blank"),
    ("has no pixels", "blank"),
)
SAMPLE_INTERVAL = 1.0  # seconds between readings of a callable gauge in multiprocess mode


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROCESS_ENV))


def rejection_reason(error: BaseException) -> str:
    """The REJECTION_REASONS word for an ImageRejected: its `reason` attribute if it has one, else its message's."""
    reason = getattr(error, "reason", None)
    if isinstance(reason, str) and reason:
        return reason
    message = str(error)
    return next((reason for words, reason in _REJECTION_WORDS if words in message), "other")


class ServiceMetrics(ModelEvents):
    """Every metric of one server process, in `registry` (one per server, so servers in one process, as in the
    tests, count apart). In multiprocess mode the values also go to the shared folder, whatever the registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.multiprocess = multiprocess_mode()
        r = self.registry
        call = ("grpc_type", "grpc_service", "grpc_method")
        self.started = Counter("grpc_server_started_total", "RPCs started on the server.", call, registry=r)
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*call, "grpc_code"),
            registry=r,
        )
        self.latency = Histogram(
            "grpc_server_handling_seconds",
            "Time to handle an RPC, until its status.",
            call,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "grpc_server_in_flight",
            "RPCs running now.",
            ("grpc_service", "grpc_method"),
            multiprocess_mode="livesum",
            registry=r,
        )
        self.images_predicted = Counter("mnist_images_predicted_total", "Images that got a prediction.", registry=r)
        self.images_rejected = Counter(
            "mnist_images_rejected_total", "Images refused, by reason.", ("reason",), registry=r
        )
        self.evaluations = Counter(
            "mnist_evaluations_total", "Evaluate runs that finished, by split.", ("split",), registry=r
        )
        self.calls_refused = Counter(
            "mnist_calls_refused_total",
            "Calls refused at once by a cap on calls of their kind (--max-concurrent-readings, -evaluations).",
            ("limit",),
            registry=r,
        )
        self.model_info = Gauge(
            "mnist_model_info",
            "1 for the model version this server serves.",
            ("version", "arch", "sha256"),
            multiprocess_mode="livemax",
            registry=r,
        )
        self.model_loads = Counter(
            "mnist_model_loads_total",
            "Model loads, by source (latest, pinned) and outcome.",
            ("source", "outcome"),
            registry=r,
        )
        self.model_swaps = Counter("mnist_model_swaps_total", "Newly published models swapped in.", registry=r)
        self.model_skips = Counter(
            "mnist_model_skips_total", "Published models skipped, by reason.", ("reason",), registry=r
        )
        self.decode_memory = Gauge(
            "mnist_decode_memory_bytes",
            "Decode-budget memory in use: pictures decoding and worked on, numbers being read, forward passes.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.calls_queued = Gauge(
            "mnist_calls_queued",
            "Calls accepted and waiting for a free worker thread (every one of --max-workers busy).",
            multiprocess_mode="livesum",
            registry=r,
        )
        # Not labelled by method: the wait is measured in the thread pool, which sees tasks, not methods. It also
        # counts the calls whose caller left while they waited, which no other call metric sees.
        self.queue_wait = Histogram(
            "mnist_call_queue_seconds",
            "Time calls waited for a free worker thread, from gRPC accepting them to a thread starting them.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Every label value known in advance starts at 0, so rate() and alerts work before the first event.
        for reason in REJECTION_REASONS:
            self.images_rejected.labels(reason)
        for reason in SKIP_REASONS:
            self.model_skips.labels(reason)
        for source in ("latest", "pinned"):
            for outcome in ("ok", "failed"):
                self.model_loads.labels(source, outcome)
        self._samplers: list[threading.Event] = []
        self._children: dict[tuple[str, str], tuple[Counter, Gauge, Histogram]] = {}  # (service, method)
        self._handled: dict[tuple[str, str, str], Counter] = {}  # (service, method, code)

    # The access log's hooks (inference.access_log.AccessLogInterceptor): every call, health checks included.
    def call_started(self, record: CallRecord) -> None:
        started, in_flight, _ = self._call_children(record.service, record.method)
        started.inc()
        in_flight.inc()

    def call_finished(self, record: CallRecord, code: grpc.StatusCode, seconds: float) -> None:
        _, in_flight, latency = self._call_children(record.service, record.method)
        in_flight.dec()
        self._handled_child(record.service, record.method, code.name).inc()
        latency.observe(seconds)

    # prometheus_client's labels() validates and locks on every call: five of them were a quarter of the access
    # log's time per call. A label set's child never changes (call metrics are never removed), so each is looked
    # up once; two threads looking up the same one at once get the same child from labels().
    def _call_children(self, service: str, method: str) -> tuple[Counter, Gauge, Histogram]:
        children = self._children.get((service, method))
        if children is None:
            children = self._children[(service, method)] = (
                self.started.labels("unary", service, method),
                self.in_flight.labels(service, method),
                self.latency.labels("unary", service, method),
            )
        return children

    def _handled_child(self, service: str, method: str, code: str) -> Counter:
        child = self._handled.get((service, method, code))
        if child is None:
            child = self._handled[(service, method, code)] = self.handled.labels("unary", service, method, code)
        return child

    # The server's thread pool's (inference.server.QueueCountingExecutor): +1 when a call is handed to it, -1 when
    # a thread starts it. grpc_server_in_flight counts from there on: the two together are the calls accepted.
    def call_queued(self, change: int) -> None:
        self.calls_queued.inc(change)

    # ... and, as a thread takes a call, the seconds it waited. grpc_server_handling_seconds starts after that.
    def call_waited(self, seconds: float) -> None:
        self.queue_wait.observe(seconds)

    # The servicer's.
    def predicted(self, images: int) -> None:
        self.images_predicted.inc(images)

    def rejected(self, error: BaseException) -> None:
        self.images_rejected.labels(rejection_reason(error)).inc()

    def evaluated(self, split: str) -> None:
        self.evaluations.labels(split).inc()

    def refused(self, limit: str) -> None:
        """A call refused by the cap named `limit` (readings, evaluations): an operator sees whether it is too low."""
        self.calls_refused.labels(limit).inc()

    # The model store's (ModelEvents).
    def loaded(self, source: str, ok: bool) -> None:
        self.model_loads.labels(source, "ok" if ok else "failed").inc()

    def swapped(self, served: ServedModel, previous: ServedModel | None) -> None:
        self.model_swaps.inc()
        if previous is not None:
            old = (previous.version, previous.arch, previous.sha256)
            if self.multiprocess:  # removal is not implemented there: 0 says "no longer served"
                self.model_info.labels(*old).set(0)
            else:
                self.model_info.remove(*old)
        self.model_info.labels(served.version, served.arch, served.sha256).set(1)

    def skipped(self, reason: str) -> None:
        self.model_skips.labels(reason).inc()

    def decode_memory_from(self, read: Callable[[], float]) -> None:
        """Report `read()` (bytes of decoding memory in use) as mnist_decode_memory_bytes.

        One process: read at every scrape. Several: each worker writes its reading every SAMPLE_INTERVAL seconds,
        since the process that answers the scrape cannot call into the others.
        """
        if not self.multiprocess:
            self.decode_memory.set_function(read)
            return
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(SAMPLE_INTERVAL):
                try:
                    self.decode_memory.set(read())
                except Exception:  # a metric must never take the server down
                    log.exception("reading decode memory for the metrics failed")

        self._samplers.append(stop)
        threading.Thread(target=sample, name="metrics-sampler", daemon=True).start()

    def close(self) -> None:
        for stop in self._samplers:
            stop.set()


class MetricsEndpoint:
    """prometheus_client's HTTP server, started on `address` (host:port; port 0 picks a free one)."""

    def __init__(self, address: str, registry: CollectorRegistry) -> None:
        from inference.workers import split_address

        host, port = split_address(address)
        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port: int = self._httpd.server_port
        self.host = host
        log.info("metrics on http://%s:%d/metrics", f"[{host}]" if ":" in host else host, self.port)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def multiprocess_registry(path: str) -> CollectorRegistry:
    """A registry that reads what every worker process wrote into `path` (the parent's, with --workers)."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return registry
