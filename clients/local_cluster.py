"""Run services as local processes on loopback: start, wait for SERVING, stop cleanly.

Used by `genaug serve`, `make demo` and the end-to-end tests. It starts `python -m
services.<name>` processes by name and talks to them over gRPC only.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from clients.rpc.channel import ChannelSettings, open_channel
from clients.rpc.health import check
from genaug.ports import DEFAULT_PORTS

logger = logging.getLogger(__name__)


# The sampler talks to these over gRPC; LocalCluster passes it their addresses.
SAMPLER_DEPENDENCIES = {
    "condition_encoder": "--encoder-target",
    "motion_extractor": "--motion-target",
    "vae_codec": "--codec-target",
}


def available_services() -> list[str]:
    """The services this checkout can run."""
    return [n for n in DEFAULT_PORTS if importlib.util.find_spec(f"services.{n}.__main__")]


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def replica_threads(replicas: int, cores: int | None = None) -> int | None:
    """Threads per sampler replica when several share this machine (None: leave the default)."""
    if replicas < 2 or os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, (cores or os.cpu_count() or 1) // replicas)


@dataclass
class ServiceProcess:
    name: str  # unique in the cluster: the service, or "sampler-2" for a further replica
    port: int
    metrics_port: int
    log_path: Path
    process: subprocess.Popen | None = None
    extra_args: list[str] = field(default_factory=list)
    module: str = ""  # the service it runs (`services.<module>`; default: its name)
    env: dict[str, str] = field(default_factory=dict)  # set in its environment

    def __post_init__(self) -> None:
        self.module = self.module or self.name

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class LocalCluster:
    """Start services as child processes; a context manager that always stops them.

    Args:
        services: names to start (default: every available service).
        model_dir: model repository passed to every service (default: the bundled one).
        log_dir: where each service's log goes.
        fixed_ports: use the default ports (else free ports are picked).
        extra_args: per-service extra command-line flags.
        sampler_replicas: sampler processes to start ("sampler", then "sampler-2", ...: each
            on ports of its own, with the sampler's extra flags and wiring). Replicas on one
            machine split its cores: each gets OMP_NUM_THREADS = cores // replicas (unless
            OMP_NUM_THREADS is set already), since OpenMP teams that together want more threads
            than there are cores spin against each other and every step slows several-fold.
    """

    def __init__(
        self,
        services: list[str] | None = None,
        model_dir: Path | None = None,
        log_dir: Path = Path("runs/logs"),
        fixed_ports: bool = False,
        extra_args: dict[str, list[str]] | None = None,
        host: str = "127.0.0.1",
        sampler_replicas: int = 1,
    ):
        names = services or available_services()
        unknown = [n for n in names if n not in DEFAULT_PORTS]
        if unknown:
            raise ValueError(f"unknown services {unknown}; known: {sorted(DEFAULT_PORTS)}")
        if sampler_replicas < 1 or (sampler_replicas > 1 and "sampler" not in names):
            raise ValueError("sampler_replicas must be >= 1, and > 1 only with the sampler")
        if sampler_replicas > 1 and fixed_ports:
            raise ValueError("sampler replicas need free ports (fixed_ports=False)")
        self.model_dir = model_dir
        self.host = host
        log_dir.mkdir(parents=True, exist_ok=True)
        extra_args = extra_args or {}
        self.services: dict[str, ServiceProcess] = {}
        replicas = [f"sampler-{k}" for k in range(2, sampler_replicas + 1)]
        split = replica_threads(sampler_replicas)
        for name in [*names, *replicas]:
            module = name.partition("-")[0]
            port, metrics_port = DEFAULT_PORTS[module]
            if not fixed_ports:
                port, metrics_port = _free_port(host), _free_port(host)
            self.services[name] = ServiceProcess(
                name,
                port,
                metrics_port,
                log_dir / f"{name}.log",
                extra_args=extra_args.get(module, []),
                module=module,
                env={"OMP_NUM_THREADS": str(split)} if split and module == "sampler" else {},
            )

    def targets(self) -> dict[str, str]:
        return {name: s.target for name, s in self.services.items()}

    def sampler_targets(self) -> list[str]:
        """Every sampler replica's address, the first one first."""
        return [s.target for s in self.services.values() if s.module == "sampler"]

    def pids(self) -> dict[str, int]:
        """Process id of every service running now, by name."""
        return {
            name: s.process.pid
            for name, s in self.services.items()
            if s.process is not None and s.process.poll() is None
        }

    def _wiring(self, module: str) -> list[str]:
        """Flags that point a service at the others it calls (only the sampler calls others)."""
        if module != "sampler":
            return []
        args = []
        for dependency, flag in SAMPLER_DEPENDENCIES.items():
            if dependency in self.services:
                args += [flag, self.services[dependency].target]
        return args

    def _launch(self, service: ServiceProcess, log_mode: str = "w") -> None:
        command = [
            sys.executable,
            "-m",
            f"services.{service.module}",
            "--host",
            self.host,
            "--port",
            str(service.port),
            "--metrics-port",
            str(service.metrics_port),
            *self._wiring(service.module),
            *service.extra_args,
        ]
        if self.model_dir is not None:
            command += ["--model-dir", str(self.model_dir)]
        log = open(service.log_path, log_mode)  # noqa: SIM115 - owned by the child process
        service.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **service.env},
            start_new_session=True,
        )
        log.close()
        logger.info("started %s (pid %d) on %s", service.name, service.process.pid, service.target)

    def start(self, timeout: float = 300.0) -> None:
        for service in self.services.values():
            self._launch(service)
        self.wait_until_serving(timeout)

    def restart(self, name: str, timeout: float = 300.0) -> None:
        """Start `name` again on the same ports once its process has exited (a crash, a
        drain); its log continues in the same file."""
        service = self.services[name]
        if service.process is not None and service.process.poll() is None:
            raise RuntimeError(f"{name} is still running (pid {service.process.pid})")
        self._launch(service, log_mode="a")
        self.wait_until_serving(timeout, [name])

    def wait_until_serving(self, timeout: float, names: list[str] | None = None) -> None:
        end = time.monotonic() + timeout
        for service in (self.services[n] for n in names or self.services):
            with open_channel(service.target, ChannelSettings(retry_attempts=1)) as channel:
                while True:
                    if service.process.poll() is not None:
                        raise RuntimeError(
                            f"{service.name} exited with code {service.process.returncode} "
                            f"before it was ready; last log lines:\n{service.log_tail()}"
                        )
                    if check(channel, service.module, timeout=1.0) == "SERVING":
                        logger.info("%s is SERVING on %s", service.name, service.target)
                        break
                    if time.monotonic() > end:
                        raise TimeoutError(
                            f"{service.name} not SERVING after {timeout:.0f}s; "
                            f"last log lines:\n{service.log_tail()}"
                        )
                    time.sleep(0.2)

    def stop(self, timeout: float = 60.0) -> dict[str, int | None]:
        """SIGTERM every service (graceful drain), then SIGKILL whatever is left."""
        for service in self.services.values():
            if service.process is not None and service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        end = time.monotonic() + timeout
        codes = {}
        for service in self.services.values():
            if service.process is None:
                continue
            try:
                codes[service.name] = service.process.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in time; killing it", service.name)
                service.process.kill()
                codes[service.name] = service.process.wait()
        return codes

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
