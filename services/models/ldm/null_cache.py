"""The unconditional (all-zero input) prior and motion embeddings, kept for reuse.

They are the same for every request of one shape, so the sampler computes each once. The
shapes come from callers (frames, latent size), so the cache is an LRU bounded in bytes: a
sampler that sees many shapes (as hostile fuzzing does: an unbounded dict grew with every new
one) keeps the recent ones, and one that serves a single shape computes it once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch

DEFAULT_MAX_BYTES = 32 << 20


class NullEmbeddingCache:
    """LRU of tensors by key, at most `max_bytes` in all (the newest entry is always kept)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # requests are prepared on many threads

    def get(self, key: Hashable, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The tensor for `key`, built (outside the lock) when not kept."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        value = build()
        with self._lock:
            if key not in self._entries:
                self._entries[key] = value
                self._bytes += value.nbytes
                while self._bytes > self.max_bytes and len(self._entries) > 1:
                    _, old = self._entries.popitem(last=False)
                    self._bytes -= old.nbytes
            return self._entries[key]

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
