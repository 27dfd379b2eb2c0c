"""One thread runs a process's tensor work, in the order it was handed in.

PyTorch's CPU kernels run on OpenMP, and libgomp gives every thread that starts a parallel
region a worker team of its own. A service whose gRPC handlers prepare and decode on their
own threads while another thread steps the UNet keeps several teams on the same cores: the
sampler's denoising step measured 1.25-1.4x the time of the same step in a process where
one thread did all the work (`benchmarks.serving`). Work handed to the lane runs on one
long-lived thread instead, so the process has one team; the calling thread waits for it.

The lane is also what keeps a CPU to one forward at a time, so a request's wait for it
honours the request's deadline (`run_within`). A task already on the lane runs inline (a step
may call a model that also uses the lane), and a task's exception reaches its caller unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

from genaug.deadline import Deadline
from genaug.errors import Cancelled, DeadlineExceeded

T = TypeVar("T")

# How often a waiting caller looks at its deadline and its caller's connection.
_POLL_S = 0.1


class ComputeLane:
    def __init__(self, name: str = "compute-lane") -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=self._enter)
        self._thread_id: int | None = None

    def _enter(self) -> None:
        self._thread_id = threading.get_ident()

    def on_lane(self) -> bool:
        return threading.get_ident() == self._thread_id

    def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """`fn(*args, **kwargs)` on the lane, however long the wait (loading, warm-up, steps)."""
        if self.on_lane():
            return fn(*args, **kwargs)
        return self._executor.submit(fn, *args, **kwargs).result()

    def run_within(self, deadline: Deadline, stage: str, fn: Callable[..., T], *args) -> T:
        """`fn(*args)` on the lane for a request: if its deadline passes (or its caller goes
        away) before `fn` starts, the task is withdrawn and DEADLINE_EXCEEDED (or CANCELLED)
        raised; once `fn` runs it runs to its end (it checks `deadline` between its own units
        of work). `stage` names the work in the error."""
        deadline.check(stage)
        if self.on_lane():
            return fn(*args)
        future = self._executor.submit(fn, *args)
        while True:
            left = deadline.remaining()
            # `wait`, not `result(timeout)`: DeadlineExceeded from `fn` is a TimeoutError too.
            wait([future], timeout=_POLL_S if left is None else min(max(left, 0), _POLL_S))
            if future.done():
                return future.result()
            if future.running():  # started: it runs to its end, checking `deadline` itself
                wait([future])
                return future.result()
            try:
                deadline.check(stage)
            except (DeadlineExceeded, Cancelled) as error:
                if not future.cancel():  # already running: its result, or its own deadline error
                    return future.result()
                raise type(error)(_waiting(error, stage)) from None


def _waiting(error: Exception, stage: str) -> str:
    what = "deadline exceeded" if isinstance(error, DeadlineExceeded) else "caller cancelled"
    return f"{what} waiting to run {stage}"


# The process's lane: every caller shares it, which is the point.
LANE = ComputeLane()
run_on_lane = LANE.run
