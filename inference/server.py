"""Build and run the gRPC server: the Inference service, health checking, reflection, limits, TLS and auth.

`create_server(address, options)` binds (port 0 picks a free port, which tests use) and returns the server
and its port; `serve(...)` runs it until SIGTERM or SIGINT and then shuts down gracefully: health goes
NOT_SERVING first, so probes and load balancers stop sending, then calls in flight get `grace` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
import torch
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared.api.mnist.v1 import inference_pb2
from shared.cli import MAX_COUNT
from shared.decode import largest_decode_cost
from shared.image_pipeline import Limits, MemoryBudget, largest_pipeline_bytes
from shared.segment import largest_reading_bytes
from shared.settings import LIVENESS_SERVICE, Paths
from shared.wakeup import StopRequest

from inference.access_log import AccessLogInterceptor, waited_for_thread
from inference.capacity import give_free_memory_back_soon, return_large_blocks_to_the_system
from inference.evaluation import shared_evaluation_data
from inference.message_limit import ResponseSizeInterceptor
from inference.metrics import MetricsEndpoint, ServiceMetrics
from inference.model_store import ModelStore, ServedModel
from inference.options import ServerOptions
from inference.security import BearerTokenInterceptor, server_credentials
from inference.service import InferenceServicer, ServiceLimits
from inference.versions import is_missing

log = logging.getLogger(__name__)

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name  # "mnist.v1.Inference"


class QueueCountingExecutor(futures.ThreadPoolExecutor):
    """The server's thread pool, telling `on_queue_change` +1 when a task (a call: gRPC hands each one over with
    submit) is queued and -1 when a thread starts it, or it is cancelled before starting, and `on_taken` the
    seconds it waited, on the thread that runs it, just before it runs. gRPC accepts calls up to
    --max-concurrent-rpcs, but runs --max-workers at once: the rest wait here, unseen by every interceptor (gRPC
    runs a call's interceptor chain when the call arrives, its handler only once a thread is free)."""

    def __init__(
        self,
        max_workers: int,
        on_queue_change: Callable[[int], None],
        on_taken: Callable[[float], None] = lambda waited: None,
        thread_name_prefix: str = "",
    ) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self._on_queue_change = on_queue_change
        self._on_taken = on_taken

    def submit(self, fn, /, *args, **kwargs):
        started = threading.Event()  # set once, by whichever of start or cancel comes first
        queued = time.perf_counter()

        def leave_queue() -> None:
            if not started.is_set():
                started.set()
                self._on_queue_change(-1)

        def run():
            leave_queue()
            # Also for a call whose caller left while it waited, which gRPC then drops before any handler runs:
            # the longest waits are the ones that saturation cut off.
            self._on_taken(time.perf_counter() - queued)
            return fn(*args, **kwargs)

        self._on_queue_change(1)
        try:
            future = super().submit(run)
        except BaseException:  # shut down: never queued
            leave_queue()
            raise
        future.add_done_callback(lambda f: leave_queue())  # cancelled before a thread took it (shutdown)
        return future


def check_decode_budget(options: ServerOptions) -> None:
    """The decode budget must hold one picture of the largest size the limits allow, the work of making a digit of
    it and the reading of one number in it (their working memory is held there too), or that picture could never
    be decoded or read: a configuration error, said at start-up rather than to each caller. (The network's forward
    pass depends on the model served; a batch too large for a quarter of the budget runs in passes of fewer images.)"""
    pixels = options.max_image_pixels
    largest = max(largest_decode_cost(pixels), largest_pipeline_bytes(pixels), largest_reading_bytes(pixels))
    if options.decode_budget_mib * 2**20 < largest:
        raise ValueError(
            f"--decode-budget-mib {options.decode_budget_mib} cannot hold one picture of "
            f"--max-image-pixels {options.max_image_pixels:,} (up to {largest / 2**20:,.0f} MiB "
            f"decoded or read as a number): raise the budget or lower the pixel limit"
        )


def configure_torch(threads: int = 1) -> int:
    """Set torch's intra-op threads (0: torch's own default, one per core) and return the number in use.

    One by default: calls run side by side on the gRPC worker threads, each in its own forward pass, and
    torch releases the GIL inside it. An intra-op pool per call on top of that oversubscribes the cores;
    measured on 2 busy cores, a 64-image forward took 5x longer with 2 intra-op threads than with 1.
    Evaluate spreads its chunks over threads itself (inference.evaluation.forward_in_chunks).
    """
    if threads > 0:
        torch.set_num_threads(threads)
    log.info("torch %d intra-op thread(s) per call", torch.get_num_threads())
    return torch.get_num_threads()


class InferenceServer:
    """A started-or-not grpc.Server with its model store and health service, and a graceful stop."""

    def __init__(
        self,
        grpc_server: grpc.Server,
        store: ModelStore,
        health_servicer: health.HealthServicer,
        servicer: InferenceServicer,
        metrics: ServiceMetrics,
        metrics_endpoint: MetricsEndpoint | None = None,
        health_server: tuple[grpc.Server, int] | None = None,
    ) -> None:
        self.grpc_server = grpc_server
        # The health-only server (--health-address) and its bound port, or None.
        self.health_server: grpc.Server | None = health_server[0] if health_server is not None else None
        self.health_port: int | None = health_server[1] if health_server is not None else None
        self.store = store
        self.health = health_servicer
        self.servicer = servicer
        self.metrics = metrics
        self.metrics_endpoint = metrics_endpoint
        self._stopped = threading.Event()

    @property
    def metrics_port(self) -> int | None:
        return self.metrics_endpoint.port if self.metrics_endpoint is not None else None

    def start(self) -> None:
        # Load a model that is already published before the port opens, so the first probe can say SERVING.
        self.store.start()
        self.grpc_server.start()
        if self.health_server is not None:
            self.health_server.start()

    def begin_shutdown(self) -> None:
        """Health goes NOT_SERVING for good (later model swaps do not bring it back)."""
        self.health.enter_graceful_shutdown()

    def stop(self, grace: float | None = 5.0) -> None:
        """NOT_SERVING, refuse new calls, let calls in flight finish within `grace` seconds, then stop."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        served = self.store.current
        log.info(
            "shutting down (model %s): health NOT_SERVING, %s s grace for calls in flight",
            served.version if served else "none",
            grace,
        )
        self.begin_shutdown()
        stopped = self.grpc_server.stop(grace)  # refuses new calls now; returns at once
        self.store.stop()
        stopped.wait()
        self.servicer.stopped.set()  # calls still running past the grace (gRPC cancelled them) stop their work
        if self.health_server is not None:  # after the calls in flight: probes see NOT_SERVING until the end
            self.health_server.stop(None)
        if self.metrics_endpoint is not None:  # last: a final scrape can still see the calls that just finished
            self.metrics_endpoint.stop()
        self.metrics.close()
        log.info("stopped")

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)


def _set_serving(health_servicer: health.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for service in ("", SERVICE_NAME):  # "" is the whole server, as probes ask by default
        health_servicer.set(service, status)


def _parse_then(behaviour, request_type):
    """A handler that parses the raw request itself, so a message that is not valid protobuf is the client's error."""

    def handler(raw: bytes, context: grpc.ServicerContext):
        try:
            request = request_type.FromString(raw)
        except DecodeError as e:
            name = request_type.DESCRIPTOR.full_name
            log.info("%s -> INVALID_ARGUMENT: undecodable request (%s)", behaviour.__name__, e)
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request is not a valid {name} message ({e}); send it with stubs generated from "
                "protos/mnist/v1/inference.proto",
            )
        return behaviour(request, context)

    return handler


def add_inference_service(servicer: InferenceServicer, server: grpc.Server) -> None:
    """inference_pb2_grpc.add_InferenceServicer_to_server, but bytes that are no valid request message get
    INVALID_ARGUMENT: the generated code makes them INTERNAL ("a bug") and logs a traceback for each."""
    handlers = {}
    for method in inference_pb2.DESCRIPTOR.services_by_name["Inference"].methods:
        request_type = getattr(inference_pb2, method.input_type.name)
        response_type = getattr(inference_pb2, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _parse_then(getattr(servicer, method.name), request_type),
            request_deserializer=None,  # the raw bytes reach _parse_then
            response_serializer=response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def create_server(address: str, options: ServerOptions) -> tuple[InferenceServer, int]:
    """Build the server and bind `address` (host:port; port 0 picks one). Returns (server, bound port)."""
    if (options.tls_cert is None) != (options.tls_key is None):
        raise ValueError("TLS needs both a certificate and a key (--tls-cert and --tls-key)")
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    _set_serving(health_servicer, False)
    health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)

    def on_swap(served: ServedModel) -> None:
        _set_serving(health_servicer, True)

    metrics = ServiceMetrics()
    store = ModelStore(
        Paths(Path(options.artifacts_dir)).models,
        poll_interval=options.poll_interval,
        backend=options.backend,
        on_swap=on_swap,
        events=metrics,
        pinned_cache_size=options.pinned_cache_size,
    )
    check_decode_budget(options)
    limits = ServiceLimits(
        image=Limits(max_bytes=options.max_image_bytes, max_pixels=options.max_image_pixels),
        decode_budget=MemoryBudget(
            options.decode_budget_mib * 2**20, options.decode_wait, after_surge=give_free_memory_back_soon
        ),
        max_batch_size=options.max_batch_size,
        max_message_bytes=options.max_message_bytes,
        max_concurrent_evaluations=options.max_concurrent_evaluations,
        max_concurrent_readings=options.max_concurrent_readings or max(1, options.max_workers // 2),
    )
    metrics.decode_memory_from(lambda: limits.decode_budget.in_use)
    servicer = InferenceServicer(
        store,
        shared_evaluation_data(str(options.data_dir), options.download_data),
        limits,
        metrics,
        digit_threshold=options.digit_threshold,
    )

    # The access log is outermost, so it also records (and counts) calls the token check refuses.
    interceptors: list[grpc.ServerInterceptor] = [
        AccessLogInterceptor(observers=(metrics.call_finished,), on_start=(metrics.call_started,))
    ]
    if options.auth_token:
        interceptors.append(BearerTokenInterceptor(options.auth_token))
    interceptors.append(ResponseSizeInterceptor(options.max_message_bytes))

    def thread_taken(waited: float) -> None:
        metrics.call_waited(waited)
        waited_for_thread(waited)

    grpc_options = [
        # Larger requests fail with RESOURCE_EXHAUSTED before the server reads them into memory.
        ("grpc.max_receive_message_length", options.max_message_bytes),
        ("grpc.max_send_message_length", options.max_message_bytes),
        ("grpc.so_reuseport", 1 if options.share_port else 0),
        # In milliseconds, a C int: a longer age (past 24 days) is as good as none.
        ("grpc.max_connection_age_ms", min(round(options.max_connection_age * 1000), MAX_COUNT)),
        ("grpc.max_connection_age_grace_ms", min(round(options.max_connection_age_grace * 1000), MAX_COUNT)),
    ]
    server = grpc.server(
        QueueCountingExecutor(
            options.max_workers, metrics.call_queued, on_taken=thread_taken, thread_name_prefix="grpc-worker"
        ),
        interceptors=interceptors,
        options=grpc_options,
        maximum_concurrent_rpcs=options.max_concurrent_rpcs,
    )
    add_inference_service(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    credentials = None
    if options.tls_cert is not None and options.tls_key is not None:
        credentials = server_credentials(options.tls_cert, options.tls_key)
    port = bind(server, address, credentials, "cannot listen on")
    health_server = None
    if options.health_address:
        try:
            health_server = health_only_server(options.health_address, health_servicer, options.share_port)
        except OSError:
            server.stop(None)
            raise
    endpoint = None
    if options.metrics_address:
        try:
            endpoint = MetricsEndpoint(options.metrics_address, metrics.registry)
        except OSError as e:
            server.stop(None)
            if health_server is not None:
                health_server[0].stop(None)
            raise OSError(f"cannot serve metrics on {options.metrics_address}: {e}") from e
    return InferenceServer(server, store, health_servicer, servicer, metrics, endpoint, health_server), port


# The health-only server's threads and calls: a probe is a few microseconds of work, and probes come a few a
# second at most (Kubernetes' three probes, a compose healthcheck, a load balancer's).
HEALTH_THREADS = 2
HEALTH_MAX_CONCURRENT_RPCS = 32


def health_only_server(
    address: str, health_servicer: health.HealthServicer, share_port: bool
) -> tuple[grpc.Server, int]:
    """A plaintext gRPC server at `address` with the health service alone, on threads of its own: (server, port).

    The main server's worker threads are shared by every call, health checks included, first come first served,
    and its --max-concurrent-rpcs refuses any call past the limit. Under a burst of slow calls (60 ReadNumbers of
    0.4 s on 2 cores) a liveness probe on the main port waited past its 5 s timeout, and past 128 calls in flight it
    was refused: Kubernetes would restart a pod for being busy, and every call in flight with it. Plaintext, as
    Kubernetes' gRPC probes speak no TLS; it answers health only, which --auth-token exempts anyway."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=HEALTH_THREADS, thread_name_prefix="grpc-health"),
        options=[("grpc.so_reuseport", 1 if share_port else 0)],
        maximum_concurrent_rpcs=HEALTH_MAX_CONCURRENT_RPCS,
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server, bind(server, address, None, "cannot serve health checks on")


def bind(server: grpc.Server, address: str, credentials: grpc.ServerCredentials | None, failing: str) -> int:
    """Add the port `address` to `server` (TLS with `credentials`); the port bound, or OSError saying `failing`
    and the address. gRPC says so by returning 0, or (newer releases) by raising RuntimeError."""
    try:
        port = (
            server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
        )
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"{failing} {address} (in use, or not an address of this machine?)")
    return port


def serve(address: str, options: ServerOptions, *, grace: float = 5.0) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    return_large_blocks_to_the_system()  # a process that serves: its memory goes back down after big pictures
    server, port = create_server(address, options)
    stop = StopRequest(lambda name: log.info("received %s", name))
    server.start()
    host = address.rsplit(":", 1)[0]
    log.info(
        "listening on %s:%d (%s%s%s, %s backend), watching %s every %.1f s; %s",
        host,
        port,
        "TLS" if options.tls_cert else "plaintext",
        ", token required" if options.auth_token else "",
        f", health checks also on port {server.health_port}" if server.health_port is not None else "",
        options.backend,
        server.store.models_dir,
        options.poll_interval,
        f"serving model {server.store.current.version}"
        if server.store.current
        else "NOT_SERVING until the trainer publishes a model",
    )
    if is_missing(server.store.models_dir):
        log.warning(
            "%s does not exist (yet): the trainer makes it when it publishes; if a trained model should be there, "
            "--artifacts-dir names the wrong folder (give the folder that holds models/, not models/ itself)",
            server.store.models_dir,
        )
    stop.wait()
    server.stop(grace)
