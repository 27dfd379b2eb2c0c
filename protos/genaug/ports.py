"""Default ports of the five services, defined once.

The launcher, each service's `--port`/`--metrics-port` defaults, the batch client's default
targets, the Helm chart's values and the Dockerfiles all take them from here (or, outside
Python, are checked against this table by the tests).
"""

from __future__ import annotations

from typing import NamedTuple


class Ports(NamedTuple):
    grpc: int
    metrics: int


DEFAULT_PORTS: dict[str, Ports] = {
    "condition_encoder": Ports(50051, 9051),
    "vae_codec": Ports(50052, 9052),
    "sampler": Ports(50053, 9053),
    "filter": Ports(50054, 9054),
    "motion_extractor": Ports(50055, 9055),
}
SERVICES: tuple[str, ...] = tuple(DEFAULT_PORTS)


def default_target(service: str, host: str = "127.0.0.1") -> str:
    """`host:port` of a service at its default gRPC port."""
    return f"{host}:{DEFAULT_PORTS[service].grpc}"
