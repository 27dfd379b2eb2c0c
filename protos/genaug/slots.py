"""Bounding concurrent model compute: on a CPU, parallel forwards only thrash its cores."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from genaug.deadline import Deadline
from genaug.errors import DeadlineExceeded


class ComputeSlots:
    """At most `count` computations at once; waiting for a slot respects the caller's deadline."""

    def __init__(self, count: int = 1):
        if count < 1:
            raise ValueError("count must be >= 1")
        self._semaphore = threading.BoundedSemaphore(count)

    @contextlib.contextmanager
    def turn(self, deadline: Deadline, stage: str) -> Iterator[None]:
        """Hold a slot for the body; DEADLINE_EXCEEDED (or CANCELLED) instead of waiting in vain."""
        deadline.check(stage)
        left = deadline.remaining()
        if not self._semaphore.acquire(timeout=None if left is None else max(left, 0)):
            raise DeadlineExceeded(f"deadline exceeded waiting to run {stage}")
        try:
            yield
        finally:
            self._semaphore.release()
