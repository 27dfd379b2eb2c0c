"""Runtime settings shared by every service: one dataclass, each field a flag and a GENAUG_*
environment variable (`genaug.config`; flags win over the environment).

Model hyperparameters live in JSON configs next to the weights; this module is only about how a
process serves (address, ports, threads, limits, security, shutdown). A new setting is one field
of `ServerConfig`: its flag and its variable follow from the field's name.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from genaug.config import add_flags, resolve, setting
from genaug.ports import DEFAULT_PORTS
from genaug.wire import DEFAULT_MAX_MESSAGE_BYTES
from services.common.memory import MAX_THRESHOLD_MIB

ENV_PREFIX = "GENAUG_"
# Bundled small models (the embedded default) live in the repository's model repository.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "deploy" / "model-repository"


@dataclass
class ServerConfig:
    """How one service process serves. Every field but `service` and `extra` has a flag
    (`--max-message-bytes`) and a GENAUG_* env var (`GENAUG_MAX_MESSAGE_BYTES`)."""

    service: str = setting(cli=False)
    host: str = setting(
        "127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 in containers)"
    )
    port: int = setting(0, help="gRPC port, 0 picks a free one (default {default})")
    metrics_port: int | None = setting(
        None, help="Prometheus /metrics HTTP port, -1 disables (default {default})"
    )
    workers: int = setting(8, help="gRPC worker threads (default 8)")
    model_dir: Path = setting(
        DEFAULT_MODEL_DIR, help="model repository with weights (default: the bundled one)"
    )
    max_message_bytes: int = setting(
        DEFAULT_MAX_MESSAGE_BYTES,
        help="max gRPC send/receive message size (default 64 MiB + 64 KiB)",
    )
    grace_seconds: float = setting(
        30.0, help="on SIGTERM, time in-flight requests get to finish (default 30)"
    )
    drain_seconds: float = setting(
        2.0,
        help="on SIGTERM, time NOT_SERVING is reported before the server stops accepting "
        "calls, so probes and balancers move away (default 2)",
    )
    max_connection_age_s: float = setting(
        300.0,
        help="send GOAWAY after a connection is this old (+-10%% jitter), so clients reconnect "
        "and re-resolve and new replicas get work; 0 disables (default 300)",
    )
    max_connection_age_grace_s: float = setting(
        600.0,
        help="calls in flight on an aged connection get this long to finish before it is "
        "closed (default 600, the batch client's per-generation deadline)",
    )
    auth_token: str | None = setting(
        None, help="require 'authorization: Bearer <token>' (health is exempt)"
    )
    auth_token_file: Path | None = setting(None, help="read the bearer token from this file")
    tls_cert: Path | None = setting(None, help="PEM server certificate (enables TLS)")
    tls_key: Path | None = setting(None, help="PEM server key")
    tls_client_ca: Path | None = setting(
        None, help="PEM CA for client certificates (enables mutual TLS)"
    )
    mmap_threshold_mib: float | None = setting(
        None,
        help="heap blocks of at least this many MiB are mmapped and returned to the OS when "
        "freed, so request buffers do not grow RSS under load (at most 32); 0 keeps glibc's "
        "dynamic threshold. Default: 4 on CUDA, where activations are not on the host heap; "
        "0 on CPU, where it costs sampling time (python -m benchmarks.heap)",
    )
    shared_memory: bool = setting(
        True,
        help="offer KServe v2 system shared memory (Triton's extension) to callers on this "
        "host: tensors in /dev/shm objects they register skip gRPC's copies; callers from "
        "other hosts get PERMISSION_DENIED (default on; --no-shared-memory turns it off)",
    )
    device: str = setting("auto", help="torch device: auto (CUDA when present), cpu, cuda, cuda:N")
    log_level: str = setting("INFO", help="default INFO")
    extra: dict = setting({}, cli=False)

    def __post_init__(self) -> None:
        if self.metrics_port is not None and self.metrics_port < 0:
            self.metrics_port = None  # -1 disables /metrics
        threshold = self.mmap_threshold_mib
        if threshold is not None and not 0 <= threshold <= MAX_THRESHOLD_MIB:
            raise ValueError(f"mmap_threshold_mib: {threshold} is not in [0, {MAX_THRESHOLD_MIB}]")
        if self.auth_token_file is not None:  # the file wins over a token given directly
            self.auth_token = Path(self.auth_token_file).read_text().strip()
        self.auth_token = self.auth_token or None


def service_defaults(service: str) -> dict[str, object]:
    """The defaults that differ per service: its name and its ports (`genaug.ports`)."""
    grpc_port, metrics_port = DEFAULT_PORTS[service]
    return {"service": service, "port": grpc_port, "metrics_port": metrics_port}


def base_parser(service: str) -> argparse.ArgumentParser:
    """The flags every service accepts; a service adds its own with `parents=[...]`."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("serving (each flag also reads GENAUG_<FLAG> from the environment)")
    add_flags(g, ServerConfig, defaults=service_defaults(service))
    p.set_defaults(service=service)
    return p


def config_from_args(
    args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> ServerConfig:
    """The flags given, over GENAUG_* variables (`env`, default os.environ), over the
    service's defaults."""
    return resolve(
        ServerConfig,
        args,
        env=env,
        env_prefix=ENV_PREFIX,
        defaults=service_defaults(args.service),
    )
