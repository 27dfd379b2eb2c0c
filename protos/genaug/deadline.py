"""The caller's time budget, checked between units of work and handed on to downstream calls."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: the budget itself knows no transport
    import grpc

from genaug.errors import Cancelled, DeadlineExceeded

_NO_DEADLINE = 10**7


class Deadline:
    """Remaining budget of one request.

    Args:
        timeout: seconds from now, or None for no deadline.
        context: the gRPC context; when given, a cancelled or disconnected caller also stops
            the work at the next `check`.
    """

    def __init__(self, timeout: float | None = None, context: grpc.ServicerContext | None = None):
        self._end = None if timeout is None else time.monotonic() + timeout
        self._context = context

    @classmethod
    def from_context(cls, context: grpc.ServicerContext | None) -> Deadline:
        remaining = context.time_remaining() if context is not None else None
        if remaining is not None and remaining > _NO_DEADLINE:
            remaining = None  # grpc reports "no deadline" as a huge number of seconds
        return cls(remaining, context)

    @classmethod
    def none(cls) -> Deadline:
        return cls()

    def remaining(self) -> float | None:
        return None if self._end is None else self._end - time.monotonic()

    def expired(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0

    def check(self, stage: str) -> None:
        """Raise if the caller went away or the budget is spent; call between units of work."""
        # Expiry first: a caller whose deadline passed is also no longer "active".
        if self.expired():
            raise DeadlineExceeded(f"deadline exceeded during {stage}")
        if self._context is not None and not self._context.is_active():
            raise Cancelled(f"caller cancelled during {stage}")

    def downstream_timeout(
        self, margin: float = 0.05, default: float | None = None
    ) -> float | None:
        """Timeout for a call to the next hop: the remaining budget less a safety margin.

        Raises DeadlineExceeded when nothing usable is left, so no doomed call is started.
        """
        left = self.remaining()
        if left is None:
            return default
        budget = left - margin
        if budget <= 0:
            raise DeadlineExceeded("no time left for a downstream call")
        return budget
