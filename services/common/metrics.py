"""Prometheus metrics of the RPC layer, declared once, served on a separate HTTP port.

Labels stay low-cardinality: service, method (the RPC's short name), model (KServe v2 model
name or "" for typed RPCs) and code (the gRPC status name).
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

logger = logging.getLogger(__name__)

_LABELS = ("service", "method", "model")

REQUESTS = Counter("genaug_rpc_requests_total", "RPCs received.", _LABELS)
FAILURES = Counter(
    "genaug_rpc_failures_total", "RPCs that ended with a non-OK status.", (*_LABELS, "code")
)
LATENCY = Histogram(
    "genaug_rpc_latency_seconds",
    "RPC handling time, from arrival to the last response message.",
    _LABELS,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
IN_FLIGHT = Gauge("genaug_rpc_in_flight", "RPCs being handled now.", _LABELS)
SERVING = Gauge("genaug_service_serving", "1 while the service reports SERVING.", ("service",))
MODEL_LOAD_SECONDS = Gauge(
    "genaug_model_load_seconds", "Time to load and warm up a model.", ("service", "model")
)


def start_metrics_server(port: int, host: str = "0.0.0.0"):
    """Serve /metrics over HTTP; returns (server, bound port) (the port is useful with 0)."""
    server, _thread = start_http_server(port, addr=host)
    bound = server.server_port
    logger.info("metrics on http://%s:%d/metrics", host, bound)
    return server, bound
