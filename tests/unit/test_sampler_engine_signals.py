"""The engine's queue-depth signal and its shutdown (stop admitting, hand back), no gRPC."""

from __future__ import annotations

import threading
import time

import pytest

from genaug.errors import ResourceExhausted, Unavailable
from services.sampler.engine import ContinuousBatchingEngine
from services.sampler.jobs import Failed, Priority, Progress
from tests.unit.test_ldm_pipeline import request
from tests.unit.test_sampler_engine import CountingSampler, outcome, sample, submit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def depth() -> float:
    return sample("genaug_sampler_queue_depth", priority="interactive")


def test_a_request_still_fetching_its_conditions_counts_as_waiting():
    engine = ContinuousBatchingEngine(CountingSampler(), max_batch_size=1, max_queue=1)
    fetched = threading.Event()

    def slow_conditions():
        assert fetched.wait(30)
        return request(num_inference_steps=2)

    try:
        jobs = []
        submitter = threading.Thread(
            target=lambda: jobs.append(
                engine.submit("slow", "slow", slow_conditions, Priority.INTERACTIVE, None)
            )
        )
        submitter.start()
        end = time.monotonic() + 10
        while engine.snapshot()["queued_interactive"] == 0:
            assert time.monotonic() < end
            time.sleep(0.01)
        assert depth() == 1  # admitted, not yet queued: the autoscaler sees it
        with pytest.raises(ResourceExhausted):  # and it takes its place in the bound
            submit(engine, "over", num_inference_steps=2)
        fetched.set()
        submitter.join(30)
        outcome(jobs[0])
        assert depth() == 0 and engine.snapshot() == {
            "running": 0,
            "queued_interactive": 0,
            "queued_batch": 0,
        }
    finally:
        fetched.set()
        engine.close()


def test_stop_admitting_refuses_new_ids_then_close_hands_back_running_and_queued_work():
    engine = ContinuousBatchingEngine(CountingSampler(step_delay=0.02), max_batch_size=1)
    try:
        running = submit(engine, "running", num_inference_steps=500)
        events = running.subscribe()
        while not isinstance(events.get(timeout=60), Progress):
            pass
        queued = submit(engine, "queued", num_inference_steps=500)
        clips = sample("genaug_sampler_clips_total", priority="interactive")
        handed_back = sample("genaug_sampler_ended_total", reason="Unavailable")
        engine.stop_admitting()
        with pytest.raises(Unavailable, match="draining"):
            submit(engine, "new", num_inference_steps=2)
        assert submit(engine, "running", num_inference_steps=500) is running  # a retry joins
        began = time.monotonic()
        engine.close()
        assert time.monotonic() - began < 5  # at most one step, not the 500
        for job in (running, queued):
            event, _ = outcome(job, timeout=5)
            assert isinstance(event, Failed) and isinstance(event.error, Unavailable)
        assert sample("genaug_sampler_ended_total", reason="Unavailable") == handed_back + 2
        assert sample("genaug_sampler_clips_total", priority="interactive") == clips
        assert depth() == 0
    finally:
        engine.close()
