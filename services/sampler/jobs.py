"""A generation job and its subscribers: progress fans out to every caller of one request id."""

from __future__ import annotations

import enum
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from genaug.errors import GenaugError


class Priority(enum.IntEnum):
    INTERACTIVE = 0
    BATCH = 1


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    eta_seconds: float
    latents: torch.Tensor | None = None  # (C, F, h, w), only when a preview is due


@dataclass(frozen=True)
class Queued:
    position: int


@dataclass(frozen=True)
class Finished:
    latents: torch.Tensor  # (C, F, h, w) float32 on the CPU
    seconds: float


@dataclass(frozen=True)
class Failed:
    error: GenaugError


Event = Progress | Queued | Finished | Failed


@dataclass(eq=False)
class Job:
    """One request id's generation, shared by every caller that retries with that id."""

    request_id: str
    fingerprint: str
    priority: Priority
    deadline: float | None  # time.monotonic() value, None for no deadline
    preview_every: int = 0
    submitted: float = field(default_factory=time.monotonic)
    # Where its time went (the result's StageSeconds): when it was prepared and queued, and
    # the summed wall time of the denoising steps it took part in.
    queued_at: float | None = None
    stepping_seconds: float = 0.0
    state: object | None = None  # the sampler's state, once prepared
    cancelled: bool = False
    outcome: Finished | Failed | None = None
    # Lets the servicer cache what it built from the outcome (the decoded result message).
    memo: dict = field(default_factory=dict)
    _listeners: list[queue.Queue] = field(default_factory=list)
    _last: Progress | Queued | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _step_times: deque = field(default_factory=lambda: deque(maxlen=16))
    ready: threading.Event = field(default_factory=threading.Event)

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and (now or time.monotonic()) >= self.deadline

    def subscribe(self) -> queue.Queue:
        """A queue of this job's events, starting with the latest progress or its outcome."""
        q: queue.Queue = queue.Queue()
        with self._lock:
            if self.outcome is not None:
                q.put(self.outcome)
            else:
                if self._last is not None:
                    q.put(self._last)
                self._listeners.append(q)
        return q

    def unsubscribe(self, q: queue.Queue) -> int:
        """Remove a subscriber; returns how many remain."""
        with self._lock:
            if q in self._listeners:
                self._listeners.remove(q)
            return len(self._listeners)

    def publish(self, event: Event) -> None:
        with self._lock:
            if self.outcome is not None:
                return
            if isinstance(event, Queued) and self.queued_at is None:
                self.queued_at = time.monotonic()
            if isinstance(event, Finished | Failed):
                self.outcome = event
                self._last = None  # a cached job keeps its outcome, not its last preview
            else:
                self._last = event
            listeners = list(self._listeners)
            if self.outcome is not None:
                self._listeners.clear()
        for q in listeners:
            q.put(event)

    def nbytes(self) -> int:
        """Bytes a finished job holds: its latents and the result messages built from them."""
        latents = self.outcome.latents if isinstance(self.outcome, Finished) else None
        size = 0 if latents is None else latents.numel() * latents.element_size()
        with self._lock:
            memo = list(self.memo.values())
        return size + sum(m.ByteSize() for m in memo if hasattr(m, "ByteSize"))

    def record_step(self, seconds: float) -> None:
        self._step_times.append(seconds)
        self.stepping_seconds += seconds

    def eta(self, remaining_steps: int) -> float:
        if not self._step_times:
            return 0.0
        return remaining_steps * sum(self._step_times) / len(self._step_times)
