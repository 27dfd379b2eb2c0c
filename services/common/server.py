"""The server factory and lifecycle shared by every service.

Start order: bind and start gRPC with health NOT_SERVING (so probes answer during a slow load),
load and warm up every model, then report SERVING. On SIGTERM: NOT_SERVING and components stop
admitting new work, keep answering for `drain_seconds` so balancers move away, stop accepting
calls (GOAWAY), give in-flight calls up to `grace_seconds`; shortly before that runs out,
components hand back what is unfinished (UNAVAILABLE: the caller retries elsewhere); exit 0.

Threads: calls run on `workers` threads, except health and reflection, which have small pools
of their own, and methods a service names in `TypedService.method_threads` (streams that mostly
wait, one per queued request), so neither probes nor queued work ever wait unseen behind busy
workers. Connections are recycled after `max_connection_age_s` (GOAWAY; calls in flight get
`max_connection_age_grace_s`), so clients re-resolve and balance onto new replicas.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from genaug.compute_lane import run_on_lane
from genaug.wire import DEFAULT_CHUNK_BYTES
from services.common import kserve, metrics
from services.common.config import ServerConfig
from services.common.interceptors import (
    BearerTokenInterceptor,
    CallStartHooks,
    LoadingGate,
    ObservabilityInterceptor,
    ThreadPoolRouter,
)
from services.common.model import Model
from services.common.shared_memory import SharedMemoryRegistry
from services.common.tls import server_credentials

logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
MIN_MESSAGE_BYTES = DEFAULT_CHUNK_BYTES + (64 << 10)
# Check is answered in microseconds; two threads keep it prompt while the other one is busy.
HEALTH_THREADS = 2
# Each Watch holds a thread while it is open; watchers beyond these wait, Check does not.
HEALTH_WATCH_THREADS = 4
# A reflection session (grpcurl, Postman) holds its thread while it is open.
REFLECTION_THREADS = 2


class Component(Protocol):
    """Something loaded and warmed up before SERVING that is not an inference model."""

    def load(self) -> None: ...

    def warmup(self) -> None: ...


@runtime_checkable
class Drains(Protocol):
    """A component with work in flight that shutdown must settle (the sampler's engine)."""

    def stop_admitting(self) -> None:
        """Shutdown began: refuse new work (UNAVAILABLE), keep the work already admitted."""

    def hand_back(self) -> None:
        """The grace period is nearly over: end unfinished work with UNAVAILABLE now."""


@dataclass
class TypedService:
    """A typed genaug.v1 servicer and how to register it (`add_XServicer_to_server`).

    `method_threads` gives methods whose calls mostly wait (e.g. {"Generate": 72}) a thread
    pool of that size of their own, off the `workers`. A `register` with a true
    `takes_shared_memory` attribute (`registration.with_chunk_streams`) is also given the
    server's shared-memory registry (None when it is off). `call_started` gives methods a
    hook called as each of their calls starts, before its request is read (`CallStartHooks`).
    """

    name: str
    servicer: object
    register: Callable[[object, grpc.Server], None]
    method_threads: dict[str, int] = field(default_factory=dict)
    call_started: dict[str, Callable[[], None]] = field(default_factory=dict)


def connection_age_options(age_s: float, grace_s: float) -> list[tuple[str, int]]:
    # gRPC connections are long-lived: without a maximum age a replica added by the autoscaler
    # gets no work from clients already connected. GOAWAY makes them reconnect and re-resolve.
    if age_s <= 0:
        return []
    return [
        ("grpc.max_connection_age_ms", max(1, round(age_s * 1000))),
        ("grpc.max_connection_age_grace_ms", max(0, round(grace_s * 1000))),
    ]


def hand_back_margin(grace: float) -> float:
    """How long before the grace period ends unfinished work is handed back."""
    return min(2.0, grace / 4)


def message_size_options(max_bytes: int) -> list[tuple[str, int]]:
    # gRPC's default receive limit is 4 MiB, far too small for a clip: set both ends explicitly.
    return [
        ("grpc.max_send_message_length", max_bytes),
        ("grpc.max_receive_message_length", max_bytes),
    ]


class ModelServer:
    """One service process: its models over KServe v2, its typed API, health, metrics."""

    def __init__(
        self,
        config: ServerConfig,
        models: Sequence[Model] = (),
        typed_services: Sequence[TypedService] = (),
        on_stop: Callable[[], None] | None = None,
        components: Sequence[Component] = (),
    ):
        self.config = config
        self.models = {m.name: m for m in models}
        self.typed_services = list(typed_services)
        self.components = list(components)
        self._on_stop = on_stop
        self._ready = False
        self._server: grpc.Server | None = None
        self._metrics_server = None
        self._stopping = threading.Event()
        self._loaded = threading.Event()
        self._stopped = threading.Event()
        self._pools: list[futures.ThreadPoolExecutor] = []
        self.port: int | None = None
        self.metrics_port: int | None = None
        # Regions callers on this host register (KServe v2 system shared memory); None: off.
        self.shared_memory = SharedMemoryRegistry() if config.shared_memory else None
        # Blocking Watch (a thread per watcher, on a pool of its own): in grpc_health's
        # non-blocking mode `set` sends to watchers under its lock while a closing watcher
        # waits for that lock on gRPC's serving thread, so a shutdown can deadlock.
        self.health = health.HealthServicer(experimental_non_blocking=False)

    # -- health -------------------------------------------------------------------------------
    def _service_names(self) -> list[str]:
        return ["", self.config.service, kserve.SERVICE_NAME] + [
            s.name for s in self.typed_services
        ]

    def _set_health(self, status) -> None:
        for name in self._service_names():
            self.health.set(name, status)
        metrics.SERVING.labels(self.config.service).set(1 if status == SERVING else 0)

    def is_ready(self) -> bool:
        return self._ready

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, load: bool = True) -> int:
        """Bind, start serving (NOT_SERVING), then load models and report SERVING."""
        cfg = self.config
        if cfg.max_message_bytes < MIN_MESSAGE_BYTES:
            raise ValueError(
                f"--max-message-bytes {cfg.max_message_bytes} is below {MIN_MESSAGE_BYTES}: "
                "one tensor chunk (1 MiB) and its envelope must fit in a message"
            )
        interceptors = [
            ThreadPoolRouter(self._reserved_pools()),
            ObservabilityInterceptor(cfg.service),
        ]
        if cfg.auth_token:
            interceptors.append(BearerTokenInterceptor(cfg.auth_token))
        typed_prefixes = [f"/{typed.name}/" for typed in self.typed_services]
        interceptors.append(LoadingGate(cfg.service, typed_prefixes, self._loaded.is_set))
        hooks = {
            f"/{typed.name}/{method}": hook
            for typed in self.typed_services
            for method, hook in typed.call_started.items()
        }
        if hooks:
            interceptors.append(CallStartHooks(hooks))
        server = grpc.server(
            self._pool("rpc", cfg.workers),
            interceptors=interceptors,
            options=[
                *message_size_options(cfg.max_message_bytes),
                *connection_age_options(cfg.max_connection_age_s, cfg.max_connection_age_grace_s),
                # Accept client keepalive pings on idle long-lived streams.
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        kserve.add_to_server(
            kserve.InferenceServicer(
                f"genaug-{cfg.service}", self.models, self.is_ready, self.shared_memory
            ),
            server,
        )
        for typed in self.typed_services:
            if getattr(typed.register, "takes_shared_memory", False):
                typed.register(typed.servicer, server, self.shared_memory)
            else:
                typed.register(typed.servicer, server)
        reflection.enable_server_reflection(
            [*self._service_names()[2:], health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        address = f"{cfg.host}:{cfg.port}"
        if cfg.tls_cert and cfg.tls_key:
            port = server.add_secure_port(
                address, server_credentials(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
            )
        else:
            port = server.add_insecure_port(address)
        if not port:
            raise OSError(f"could not bind {address}")
        self._set_health(NOT_SERVING)
        server.start()
        self._server, self.port = server, port
        if cfg.metrics_port is not None:
            self._metrics_server, self.metrics_port = metrics.start_metrics_server(
                cfg.metrics_port, cfg.host
            )
        logger.info(
            "%s listening on %s:%d (%s)",
            cfg.service,
            cfg.host,
            port,
            "TLS" if cfg.tls_cert else "plaintext",
        )
        if load:
            self.load_models()
        return port

    def _pool(self, purpose: str, threads: int) -> futures.ThreadPoolExecutor:
        pool = futures.ThreadPoolExecutor(threads, f"{self.config.service}-{purpose}")
        self._pools.append(pool)
        return pool

    def _reserved_pools(self) -> list[tuple[str, futures.ThreadPoolExecutor]]:
        routes = [
            (f"/{health.SERVICE_NAME}/Watch", self._pool("health-watch", HEALTH_WATCH_THREADS)),
            (f"/{health.SERVICE_NAME}/", self._pool("health", HEALTH_THREADS)),
            (f"/{reflection.SERVICE_NAME}/", self._pool("reflection", REFLECTION_THREADS)),
        ]
        for typed in self.typed_services:
            for method, threads in typed.method_threads.items():
                routes.append((f"/{typed.name}/{method}", self._pool(method.lower(), threads)))
        return routes

    def load_models(self) -> None:
        run_on_lane(self._load_models)  # warm-up's tensor work on the thread that serves it

    def _load_models(self) -> None:
        for component in self.components:
            component.load()
            component.warmup()
        for model in self.models.values():
            began = time.perf_counter()
            model.load()
            model.warmup()
            model.ready = True
            seconds = time.perf_counter() - began
            metrics.MODEL_LOAD_SECONDS.labels(self.config.service, model.name).set(seconds)
            logger.info("model %s ready in %.2fs %s", model.name, seconds, model.parameters())
        self._loaded.set()
        self._ready = True
        self._set_health(SERVING)

    def stop(self, grace: float | None = None, drain: float = 0.0) -> None:
        """NOT_SERVING and stop admitting, wait `drain`, stop accepting (GOAWAY), give in-flight
        calls `grace`, handing back what is still unfinished just before it ends."""
        if self._server is None or self._stopping.is_set():
            return
        self._stopping.set()
        self._ready = False
        self._set_health(NOT_SERVING)
        drains = [c for c in self.components if isinstance(c, Drains)]
        for component in drains:
            component.stop_admitting()
        if drain > 0:
            logger.info("draining for %.1fs before stopping", drain)
            time.sleep(drain)
        grace = self.config.grace_seconds if grace is None else grace
        logger.info("stopping; in-flight calls get up to %.1fs", grace)
        stopped = self._server.stop(grace)
        if not stopped.wait(max(0.0, grace - hand_back_margin(grace))):
            if drains:
                logger.info("grace period nearly over: handing back unfinished work")
            for component in drains:
                component.hand_back()
            stopped.wait()
        for pool in self._pools:
            pool.shutdown(wait=False, cancel_futures=True)
        if self.shared_memory is not None:
            self.shared_memory.unregister()  # unmaps what no call still reads
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        if self._on_stop is not None:
            self._on_stop()
        self._stopped.set()
        logger.info("%s stopped", self.config.service)

    def serve_until_signal(self) -> int:
        """Run until SIGTERM/SIGINT, then shut down gracefully; returns the exit code (0)."""
        stop_requested = threading.Event()

        def request_stop(signum, _frame):
            logger.info("received %s", signal.Signals(signum).name)
            stop_requested.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        if self._server is None:
            self.start()
        # Poll: the kernel may deliver the signal to a worker thread (gRPC, torch), and a main
        # thread blocked in an untimed wait would then never run the Python handler.
        while not stop_requested.wait(timeout=0.2):
            pass
        self.stop(drain=self.config.drain_seconds)
        return 0
