"""Channels to the services: TLS, bearer token, message limits, retries, default deadline.

A target that may resolve to several addresses ("dns:///sampler-headless:50053", a Kubernetes
headless Service, or an "ipv4:a:p,b:p" list) is balanced with gRPC's round_robin over all of
them; servers recycle connections (max connection age, GOAWAY), and on reconnecting the channel
re-resolves the name (at most every 30 s, gRPC's default), so replicas added later get work.
"""

from __future__ import annotations

import json
import uuid
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path

import grpc

from genaug.wire import DEFAULT_MAX_MESSAGE_BYTES


@dataclass
class ChannelSettings:
    """How to reach a service.

    Attributes:
        max_message_bytes: send and receive limit; gRPC's 4 MiB default is too small for clips.
        default_timeout: deadline in seconds for calls that do not pass their own.
        retry_attempts: attempts for calls failing with UNAVAILABLE (1 disables retries).
        token: bearer token sent as `authorization: Bearer <token>`.
        ca_cert / client_cert / client_key: PEM files for TLS / mutual TLS.
        load_balancing: gRPC load-balancing policy; None: round_robin for targets that may
            resolve to several addresses ("dns:", "ipv4:", "ipv6:"), pick_first otherwise.
    """

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    default_timeout: float | None = 300.0
    retry_attempts: int = 4
    token: str | None = None
    ca_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    server_name_override: str | None = None
    load_balancing: str | None = None


# Resolver schemes whose targets may stand for several addresses.
BALANCED_SCHEMES = ("dns:", "ipv4:", "ipv6:")


def balancing_for(target: str) -> str | None:
    """The load-balancing policy a target gets by default."""
    return "round_robin" if target.startswith(BALANCED_SCHEMES) else None


def with_load_balancing(settings: ChannelSettings, policy: str | None) -> ChannelSettings:
    """`settings` with `policy` (a copy; unchanged settings when policy is None)."""
    if policy is None:
        return settings
    copy = ChannelSettings(**vars(settings))
    copy.load_balancing = policy
    return copy


def _service_config(attempts: int, load_balancing: str | None = None) -> str:
    # UNAVAILABLE means the call did not reach a handler or the server is draining: retried
    # with backoff. Non-idempotent typed calls (Generate) carry a request id and are
    # de-duplicated by the server, so a retry never computes twice.
    policy = {
        "maxAttempts": max(2, min(attempts, 5)),
        "initialBackoff": "0.1s",
        "maxBackoff": "2s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    config: dict = {"methodConfig": [{"name": [{}], "retryPolicy": policy}]}
    if load_balancing:
        config["loadBalancingConfig"] = [{load_balancing: {}}]
    return json.dumps(config)


_Details = namedtuple(
    "_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
)


class _ClientCallDetails(_Details, grpc.ClientCallDetails):
    pass


class _HeadersInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the bearer token, a request id and the default deadline to every call."""

    def __init__(self, token: str | None, default_timeout: float | None):
        self._token = token
        self._default_timeout = default_timeout

    def _details(self, details):
        metadata = list(details.metadata or ())
        keys = {k for k, _ in metadata}
        if self._token and "authorization" not in keys:
            metadata.append(("authorization", f"Bearer {self._token}"))
        if "x-request-id" not in keys:
            metadata.append(("x-request-id", uuid.uuid4().hex[:16]))
        timeout = details.timeout if details.timeout is not None else self._default_timeout
        return _ClientCallDetails(
            details.method,
            timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


def channel_options(settings: ChannelSettings) -> list[tuple[str, object]]:
    options: list[tuple[str, object]] = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.enable_retries", 1 if settings.retry_attempts > 1 else 0),
        ("grpc.service_config", _service_config(settings.retry_attempts, settings.load_balancing)),
        # Keep long-lived streams (generation progress) alive through idle proxies.
        ("grpc.keepalive_time_ms", 30000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if settings.server_name_override:
        options.append(("grpc.ssl_target_name_override", settings.server_name_override))
    return options


def open_channel(target: str, settings: ChannelSettings | None = None) -> grpc.Channel:
    """A channel to `target` ("host:port", or "dns:///name:port" for client-side balancing)."""
    settings = settings or ChannelSettings()
    if settings.load_balancing is None:
        settings = with_load_balancing(settings, balancing_for(target))
    options = channel_options(settings)
    if settings.ca_cert or settings.client_cert:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(settings.ca_cert).read_bytes() if settings.ca_cert else None,
            private_key=Path(settings.client_key).read_bytes() if settings.client_key else None,
            certificate_chain=(
                Path(settings.client_cert).read_bytes() if settings.client_cert else None
            ),
        )
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    return grpc.intercept_channel(
        channel, _HeadersInterceptor(settings.token, settings.default_timeout)
    )
