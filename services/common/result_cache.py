"""Finished results kept for request-id replay, bounded in entries and in bytes.

A retry with a known request id replays the cached result instead of computing again, so the
cache must outlive a client's retry window; but a decoded clip can weigh megabytes, so a bound
on entries alone does not bound memory. Least recently used entries leave first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")

DEFAULT_MAX_ENTRIES = 256
DEFAULT_MAX_BYTES = 256 << 20


class ResultCache(Generic[V]):
    """An LRU map of request id -> finished value within `max_entries` and `max_bytes`.

    Sizes are measured again at every insertion, not only when a value is added: the sampler's
    servicer memoises the decoded result message on a job after the job was cached, so a
    value can grow while it sits here. A value larger than `max_bytes` on its own is not kept.

    Args:
        max_entries: most values kept.
        max_bytes: most bytes kept, as `size_of` counts them.
        size_of: the bytes a value holds; called under this cache's lock at every insertion
            for every value, so it must be cheap (it may take the value's own lock).
    """

    def __init__(
        self,
        size_of: Callable[[V], int],
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ):
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("max_entries and max_bytes must be >= 0")
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._size_of = size_of
        self._values: OrderedDict[str, V] = OrderedDict()
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> V | None:
        """The value for `key` (now the most recently used), or None."""
        with self._lock:
            value = self._values.get(key)
            if value is not None:
                self._values.move_to_end(key)
            return value

    def put(self, key: str, value: V) -> None:
        """Keep `value` as the most recently used, then evict down to both bounds."""
        with self._lock:
            self._values[key] = value
            self._values.move_to_end(key)
            for k, v in self._values.items():
                self._sizes[k] = int(self._size_of(v))
            total = sum(self._sizes.values())
            while self._values and (len(self._values) > self.max_entries or total > self.max_bytes):
                evicted, _ = self._values.popitem(last=False)
                total -= self._sizes.pop(evicted)

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._values

    @property
    def nbytes(self) -> int:
        """Bytes held, as last measured."""
        with self._lock:
            return sum(self._sizes[k] for k in self._values)

    def measure(self) -> int:
        """Bytes held now (values may have grown since they were put)."""
        with self._lock:
            return sum(int(self._size_of(v)) for v in self._values.values())
