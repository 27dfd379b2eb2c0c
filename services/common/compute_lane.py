"""One thread runs a process's tensor work, in the order it was handed in.

PyTorch's CPU kernels run on OpenMP, and libgomp gives every thread that starts a parallel
region a worker team of its own. A service whose gRPC handlers prepare and decode on their
own threads while another thread steps the UNet keeps several teams on the same cores: the
sampler's denoising step measured 1.25-1.4x the time of the same step in a process where
one thread did all the work (`benchmarks.serving`). Work handed to `run_on_lane` runs on one
long-lived thread instead, so the process has one team; the calling thread waits for it.

A task already on the lane runs inline (a step may call a model that also uses the lane),
and a task's exception reaches its caller unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class ComputeLane:
    def __init__(self, name: str = "compute-lane") -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=self._enter)
        self._thread_id: int | None = None

    def _enter(self) -> None:
        self._thread_id = threading.get_ident()

    def on_lane(self) -> bool:
        return threading.get_ident() == self._thread_id

    def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        if self.on_lane():
            return fn(*args, **kwargs)
        return self._executor.submit(fn, *args, **kwargs).result()


# The process's lane: every caller shares it, which is the point.
LANE = ComputeLane()
run_on_lane = LANE.run
