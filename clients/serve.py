"""`genaug serve`: start the services as local processes and keep them up until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from clients.local_cluster import LocalCluster, available_services
from genaug.ports import DEFAULT_PORTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--services",
        nargs="+",
        choices=sorted(DEFAULT_PORTS),
        help="which services to start (default: all available)",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="model repository for every service (default: the bundled one)",
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=Path("runs/logs"),
        help="one log file per service (default runs/logs)",
    )
    parser.add_argument(
        "--free-ports",
        action="store_true",
        help="pick free ports instead of the default 50051-50055",
    )


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    cluster = LocalCluster(
        args.services or available_services(),
        args.model_dir,
        args.log_dir,
        fixed_ports=not args.free_ports,
    )
    with cluster:
        for name, target in cluster.targets().items():
            metrics = cluster.services[name].metrics_port
            print(f"{name:<18} grpc {target:<18} metrics http://127.0.0.1:{metrics}/metrics")
        print("all services SERVING; Ctrl-C stops them")
        stop.wait()
        print("stopping...")
    return 0
