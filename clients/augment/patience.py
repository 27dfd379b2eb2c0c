"""Riding out a restart: a call whose service is down is tried again for a bounded time.

The condition encoder, the motion extractor and the filter run as one replica each in a small
deployment; when one restarts (a crash, a rollout), the job's calls to it fail with
UNAVAILABLE for the seconds it takes to come back and load its models, longer than gRPC's own
retries (at most 5 attempts within about 2 s) wait. These calls are idempotent, so the job
tries again with backoff until the service answers or its patience runs out; any other error
is the request's and is raised at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

from clients.rpc.errors import GenAugError

logger = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_PATIENCE_S = 60.0


def until_available(
    call: Callable[[], T],
    what: str,
    patience_s: float = DEFAULT_PATIENCE_S,
    backoff: float = 0.5,
    max_backoff: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """`call()`, again after UNAVAILABLE with backoff for up to `patience_s` seconds."""
    give_up = clock() + patience_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except GenAugError as error:
            delay = min(max_backoff, backoff * 2 ** (attempt - 1))
            if error.code != grpc.StatusCode.UNAVAILABLE or clock() + delay > give_up:
                raise
            logger.warning(
                "%s: %s; the service may be restarting, trying again in %.1fs (attempt %d)",
                what,
                error,
                delay,
                attempt,
            )
            sleep(delay)
