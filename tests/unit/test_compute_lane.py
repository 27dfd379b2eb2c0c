"""The compute lane: one thread runs a process's tensor work, callers wait for it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from genaug.compute_lane import LANE, ComputeLane
from genaug.deadline import Deadline
from genaug.errors import DeadlineExceeded
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


def test_a_request_waiting_for_a_busy_lane_gives_up_at_its_deadline_and_is_not_run_later():
    lane = ComputeLane("test-lane")
    release, ran = threading.Event(), []
    busy = ThreadPoolExecutor(1).submit(lane.run, release.wait, 5)  # the lane is busy
    try:
        began = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="waiting to run image prior"):
            lane.run_within(Deadline(0.2), "image prior", lambda: ran.append("late"))
        assert time.monotonic() - began < 1.0  # not the 5 s the lane stays busy
    finally:
        release.set()
    assert busy.result() is True
    assert lane.run(lambda: 1) == 1 and ran == []  # withdrawn: it never ran afterwards


def test_a_request_that_started_runs_to_its_end_and_its_own_errors_reach_the_caller():
    lane = ComputeLane("test-lane")

    def slow() -> str:
        time.sleep(0.4)  # past the deadline: a started task is not abandoned half-way
        return "done"

    assert lane.run_within(Deadline(0.1), "decode", slow) == "done"
    with pytest.raises(DeadlineExceeded, match="deadline exceeded during decode"):
        lane.run_within(Deadline(0), "decode", slow)  # spent before it starts: never submitted

    def fails() -> None:
        raise DeadlineExceeded("no time left for a downstream call")

    # A TimeoutError from the task itself is its result, not a wait that timed out.
    with pytest.raises(DeadlineExceeded, match="downstream call"):
        lane.run_within(Deadline(None), "decode", fails)
