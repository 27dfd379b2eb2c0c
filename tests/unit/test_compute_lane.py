"""The compute lane: one thread runs a process's tensor work, callers wait for it."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.common.compute_lane import LANE, ComputeLane
from services.sampler.engine import ContinuousBatchingEngine
from services.sampler.jobs import Finished, Priority
from tests.unit.test_ldm_pipeline import request
from tests.unit.test_sampler_engine import CountingSampler, outcome

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_work_from_many_threads_runs_on_one_thread_in_order():
    lane = ComputeLane("test-lane")
    ran: list[tuple[int, int]] = []

    def work(n: int) -> int:
        ran.append((n, threading.get_ident()))
        return n * n

    with ThreadPoolExecutor(8) as callers:
        results = list(callers.map(lambda n: lane.run(work, n), range(40)))
    assert results == [n * n for n in range(40)]
    assert len({thread for _, thread in ran}) == 1
    assert ran[0][1] != threading.get_ident()


def test_work_on_the_lane_runs_inline_and_errors_reach_the_caller():
    lane = ComputeLane("test-lane")
    # Nested use would deadlock a one-thread executor; on the lane it runs in place.
    assert lane.run(lambda: lane.run(lambda: lane.on_lane())) is True
    assert not lane.on_lane()
    with pytest.raises(ValueError, match="bad shape"):
        lane.run(lambda: (_ for _ in ()).throw(ValueError("bad shape")))
    assert lane.run(lambda: 7) == 7  # the lane survives a failed task


class ThreadRecordingSampler(CountingSampler):
    def __init__(self):
        super().__init__()
        self.threads: set[str] = set()

    def _record(self):
        assert LANE.on_lane()
        self.threads.add(threading.current_thread().name)

    def prepare(self, req):
        self._record()
        return super().prepare(req)

    def step(self, states):
        self._record()
        return super().step(states)

    def finish(self, state):
        self._record()
        return super().finish(state)


def test_the_engine_prepares_steps_and_finishes_on_the_lane():
    sampler = ThreadRecordingSampler()
    engine = ContinuousBatchingEngine(sampler, max_batch_size=2)
    try:
        with ThreadPoolExecutor(3) as callers:
            jobs = list(
                callers.map(
                    lambda i: engine.submit(
                        f"lane-{i}", f"lane-{i}",
                        lambda: request(seed=i, num_inference_steps=3),
                        Priority.BATCH, None,
                    ),
                    range(3),
                )
            )  # fmt: skip
        assert all(isinstance(outcome(job)[0], Finished) for job in jobs)
        assert len(sampler.threads) == 1 and next(iter(sampler.threads)).startswith("compute-lane")
    finally:
        engine.close()
