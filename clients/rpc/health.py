"""Waiting for a service to report SERVING on grpc.health.v1."""

from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(channel: grpc.Channel, service: str = "", timeout: float = 2.0) -> str:
    """The health status name ("SERVING", "NOT_SERVING", ...) or "UNREACHABLE"."""
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError:
        return "UNREACHABLE"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def wait_until_serving(
    channel: grpc.Channel, service: str = "", timeout: float = 120.0, interval: float = 0.2
) -> None:
    """Block until `service` reports SERVING; TimeoutError after `timeout` seconds."""
    end = time.monotonic() + timeout
    status = "UNREACHABLE"
    while time.monotonic() < end:
        status = check(channel, service, timeout=min(2.0, interval * 5))
        if status == "SERVING":
            return
        time.sleep(interval)
    raise TimeoutError(f"service {service!r} still {status} after {timeout:.0f}s")
