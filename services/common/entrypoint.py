"""The `python -m services.<name>` entry point shared by every service."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from services.common.config import ServerConfig, base_parser, config_from_args
from services.common.logs import configure_logging
from services.common.memory import default_mmap_threshold_mib, set_mmap_threshold
from services.common.server import ModelServer


def service_main(
    service: str,
    description: str,
    build: Callable[[ServerConfig, argparse.Namespace], ModelServer],
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None,
    argv: list[str] | None = None,
) -> int:
    """Parse the shared flags plus the service's own, build the server, serve until SIGTERM."""
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{service}",
        description=description,
        parents=[base_parser(service)],
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    config = config_from_args(args)
    configure_logging(config.log_level)
    threshold = config.mmap_threshold_mib
    if threshold is None:
        threshold = default_mmap_threshold_mib(config.device)
    set_mmap_threshold(round(threshold * 2**20))  # before any model loads
    return build(config, args).serve_until_signal()


def at_least_zero(kind: Callable):
    """An argparse `type`: `kind(text)`, refused below zero with the value in the message."""

    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    return parse
