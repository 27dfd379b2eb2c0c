"""Runtime settings shared by every service: flags with env-var mirrors and documented defaults.

Model hyperparameters live in JSON configs next to the weights; this module is only about how a
process serves (address, ports, threads, limits, security, shutdown).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from genaug.wire import DEFAULT_MAX_MESSAGE_BYTES

ENV_PREFIX = "GENAUG_"
# Bundled small models (the embedded default) live in the repository's model repository.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "deploy" / "model-repository"


@dataclass
class ServerConfig:
    """How one service process serves. Every field has a flag and a GENAUG_* env var."""

    service: str
    host: str = "127.0.0.1"
    port: int = 0
    metrics_port: int | None = None
    workers: int = 8
    model_dir: Path = DEFAULT_MODEL_DIR
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    grace_seconds: float = 30.0
    drain_seconds: float = 2.0
    max_connection_age_s: float = 300.0
    max_connection_age_grace_s: float = 600.0
    auth_token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    device: str = "auto"
    log_level: str = "INFO"
    extra: dict = field(default_factory=dict)


def _env(name: str, default):
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"), default)


def base_parser(
    service: str, default_port: int, default_metrics_port: int
) -> argparse.ArgumentParser:
    """The flags every service accepts; a service adds its own with `parents=[...]`."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("serving (each flag also reads GENAUG_<FLAG> from the environment)")
    g.add_argument(
        "--host",
        default=_env("host", "127.0.0.1"),
        help="address to bind (default 127.0.0.1; 0.0.0.0 in containers)",
    )
    g.add_argument(
        "--port",
        type=int,
        default=int(_env("port", default_port)),
        help=f"gRPC port, 0 picks a free one (default {default_port})",
    )
    g.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("metrics_port", default_metrics_port)),
        help=f"Prometheus /metrics HTTP port, -1 disables (default {default_metrics_port})",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=int(_env("workers", 8)),
        help="gRPC worker threads (default 8)",
    )
    g.add_argument(
        "--model-dir",
        type=Path,
        default=Path(_env("model_dir", DEFAULT_MODEL_DIR)),
        help="model repository with weights (default: the bundled one)",
    )
    g.add_argument(
        "--max-message-bytes",
        type=int,
        default=int(_env("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES)),
        help="max gRPC send/receive message size (default 64 MiB + 64 KiB)",
    )
    g.add_argument(
        "--grace-seconds",
        type=float,
        default=float(_env("grace_seconds", 30.0)),
        help="on SIGTERM, time in-flight requests get to finish (default 30)",
    )
    g.add_argument(
        "--drain-seconds",
        type=float,
        default=float(_env("drain_seconds", 2.0)),
        help="on SIGTERM, time NOT_SERVING is reported before the server stops "
        "accepting calls, so probes and balancers move away (default 2)",
    )
    g.add_argument(
        "--max-connection-age-s",
        type=float,
        default=float(_env("max_connection_age_s", 300.0)),
        help="send GOAWAY after a connection is this old (+-10%% jitter), so clients reconnect "
        "and re-resolve and new replicas get work; 0 disables (default 300)",
    )
    g.add_argument(
        "--max-connection-age-grace-s",
        type=float,
        default=float(_env("max_connection_age_grace_s", 600.0)),
        help="calls in flight on an aged connection get this long to finish before it is "
        "closed (default 600, the batch client's per-generation deadline)",
    )
    g.add_argument(
        "--auth-token",
        default=_env("auth_token", None),
        help="require 'authorization: Bearer <token>' (health is exempt)",
    )
    g.add_argument(
        "--auth-token-file",
        type=Path,
        default=_env("auth_token_file", None),
        help="read the bearer token from this file",
    )
    g.add_argument(
        "--tls-cert",
        type=Path,
        default=_env("tls_cert", None),
        help="PEM server certificate (enables TLS)",
    )
    g.add_argument("--tls-key", type=Path, default=_env("tls_key", None), help="PEM server key")
    g.add_argument(
        "--tls-client-ca",
        type=Path,
        default=_env("tls_client_ca", None),
        help="PEM CA for client certificates (enables mutual TLS)",
    )
    g.add_argument(
        "--device",
        default=_env("device", "auto"),
        help="torch device: auto (CUDA when present), cpu, cuda, cuda:N",
    )
    g.add_argument("--log-level", default=_env("log_level", "INFO"), help="default INFO")
    p.set_defaults(service=service)
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    token = args.auth_token
    if args.auth_token_file:
        token = Path(args.auth_token_file).read_text().strip()
    return ServerConfig(
        service=args.service,
        host=args.host,
        port=args.port,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port,
        workers=args.workers,
        model_dir=Path(args.model_dir),
        max_message_bytes=args.max_message_bytes,
        grace_seconds=args.grace_seconds,
        drain_seconds=args.drain_seconds,
        max_connection_age_s=args.max_connection_age_s,
        max_connection_age_grace_s=args.max_connection_age_grace_s,
        auth_token=token or None,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        device=args.device,
        log_level=args.log_level,
    )
