"""The continuous-batching engine on a real tiny sequence LDM (no gRPC)."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from prometheus_client import REGISTRY

from genaug.errors import Cancelled, DeadlineExceeded, InvalidArgument, ResourceExhausted
from services.sampler.engine import ContinuousBatchingEngine
from services.sampler.jobs import Failed, Finished, Priority, Progress
from tests.unit.test_ldm_pipeline import request, sampler

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class CountingSampler:
    """The real sampler, counting prepares and slowing steps down to make timing visible."""

    def __init__(self, step_delay: float = 0.0):
        self.inner = sampler()
        self.prepared = 0
        self.step_delay = step_delay

    def prepare(self, req):
        self.prepared += 1
        return self.inner.prepare(req)

    def step(self, states):
        time.sleep(self.step_delay)
        return self.inner.step(states)

    def finish(self, state):
        return self.inner.finish(state)


def outcome(job, timeout=120.0):
    events = job.subscribe()
    end = time.monotonic() + timeout
    seen = []
    while time.monotonic() < end:
        event = events.get(timeout=timeout)
        seen.append(event)
        if isinstance(event, Finished | Failed):
            return event, seen
    raise TimeoutError


def submit(engine, rid, priority=Priority.INTERACTIVE, deadline=None, **kw):
    return engine.submit(rid, rid, lambda: request(**kw), priority, deadline)


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_four_concurrent_requests_share_steps():
    engine = ContinuousBatchingEngine(CountingSampler(step_delay=0.01), max_batch_size=4)
    try:
        before_small = sample("genaug_sampler_step_batch_size_bucket", le="3.0")
        before_all = sample("genaug_sampler_step_batch_size_count")
        jobs = [submit(engine, f"c{i}", seed=i, num_inference_steps=12) for i in range(4)]
        results = [outcome(job)[0] for job in jobs]
        assert all(isinstance(r, Finished) for r in results)
        steps = sample("genaug_sampler_step_batch_size_count") - before_all
        small = sample("genaug_sampler_step_batch_size_bucket", le="3.0") - before_small
        # 4 x 12 request-steps ran in far fewer forwards, most of them with all four requests.
        assert steps < 4 * 12 and steps - small >= 6
    finally:
        engine.close()


def test_batched_results_equal_unbatched():
    requests = [dict(seed=s, num_inference_steps=4 + s, guidance_scale=1.0 + s) for s in range(3)]
    results = {}
    for size in (1, 3):
        engine = ContinuousBatchingEngine(CountingSampler(), max_batch_size=size)
        try:
            jobs = [submit(engine, f"r{i}", **kw) for i, kw in enumerate(requests)]
            results[size] = [outcome(job)[0].latents for job in jobs]
        finally:
            engine.close()
    for alone, batched in zip(results[1], results[3], strict=True):
        torch.testing.assert_close(alone, batched, atol=1e-4, rtol=1e-4)


def test_interactive_request_preempts_long_batch_work():
    engine = ContinuousBatchingEngine(CountingSampler(step_delay=0.02), max_batch_size=1)
    try:
        preempted = sample("genaug_sampler_preemptions_total")
        long_job = submit(engine, "long", Priority.BATCH, num_inference_steps=60)
        events = long_job.subscribe()
        while not isinstance(events.get(timeout=60), Progress):
            pass
        finished_at = {}

        def wait(job):
            outcome(job)
            finished_at[job.request_id] = time.monotonic()

        urgent = submit(engine, "urgent", Priority.INTERACTIVE, num_inference_steps=5)
        threads = [threading.Thread(target=wait, args=(j,)) for j in (long_job, urgent)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert finished_at["urgent"] < finished_at["long"]
        assert sample("genaug_sampler_preemptions_total") == preempted + 1
        assert isinstance(long_job.outcome, Finished)  # resumed, not restarted or lost
    finally:
        engine.close()


def test_queue_bound_rejects_with_a_retry_hint():
    engine = ContinuousBatchingEngine(
        CountingSampler(step_delay=0.05), max_batch_size=1, max_queue=1
    )
    try:
        running = submit(engine, "a", num_inference_steps=50)
        time.sleep(0.2)  # "a" is running, the queue is empty
        submit(engine, "b", num_inference_steps=50)
        with pytest.raises(ResourceExhausted) as info:
            submit(engine, "c", num_inference_steps=50)
        assert info.value.retry_after_s and info.value.retry_after_s > 0
        assert engine.cancel("a") and engine.cancel("b")
        assert isinstance(outcome(running)[0].error, Cancelled)
    finally:
        engine.close()


def test_cancel_frees_the_slot_within_one_step():
    engine = ContinuousBatchingEngine(CountingSampler(step_delay=0.02), max_batch_size=1)
    try:
        job = submit(engine, "x", num_inference_steps=200)
        events = job.subscribe()
        while not isinstance(events.get(timeout=60), Progress):
            pass
        assert engine.cancel("x")
        event, seen = outcome(job, timeout=10)
        assert isinstance(event, Failed) and isinstance(event.error, Cancelled)
        assert job.state.step_index < 200
        steps_after = [e for e in seen if isinstance(e, Progress)]
        assert len(steps_after) <= 2
        follow = submit(engine, "y", num_inference_steps=2)
        assert isinstance(outcome(follow)[0], Finished)
        assert not engine.cancel("nope")
    finally:
        engine.close()


def test_same_request_id_is_computed_once():
    counting = CountingSampler()
    engine = ContinuousBatchingEngine(counting, max_batch_size=2)
    try:
        first = submit(engine, "same", num_inference_steps=3)
        second = submit(engine, "same", num_inference_steps=3)
        assert first is second
        result = outcome(first)[0]
        again = submit(engine, "same", num_inference_steps=3)  # after completion: cached
        assert outcome(again)[0] is result
        assert counting.prepared == 1
        with pytest.raises(InvalidArgument, match="request_id"):
            engine.submit("same", "other-fingerprint", request, Priority.INTERACTIVE, None)
    finally:
        engine.close()


def test_deadline_and_bad_requests():
    engine = ContinuousBatchingEngine(CountingSampler(step_delay=0.02), max_batch_size=1)
    try:
        job = submit(engine, "late", deadline=time.monotonic() + 0.3, num_inference_steps=500)
        event, _ = outcome(job, timeout=30)
        assert isinstance(event.error, DeadlineExceeded)
        with pytest.raises(InvalidArgument, match="conditions"):
            submit(engine, "bad", class_label=7)
    finally:
        engine.close()


def test_the_free_heap_is_released_once_after_work_when_idle(monkeypatch):
    from services.sampler import engine as engine_module

    released = []
    monkeypatch.setattr(engine_module, "release_free_heap", lambda: released.append(1) or True)
    engine = ContinuousBatchingEngine(CountingSampler(), max_batch_size=2, idle_release_s=0.2)
    try:
        time.sleep(0.5)
        assert released == []  # no work yet: nothing to give back
        assert isinstance(outcome(submit(engine, "w1"))[0], Finished)
        time.sleep(0.8)
        assert released == [1]  # once, not every 0.2 s of idleness
        with pytest.raises(InvalidArgument):  # refused while preparing: its tensors count too
            engine.submit("bad", "bad", lambda: request(num_frames=0), Priority.BATCH, None)
        time.sleep(0.8)
        assert released == [1, 1]
    finally:
        engine.close()


def test_whole_request_batching_admits_only_into_an_empty_batch():
    """The static-batching baseline: a request queued behind a running batch waits for all
    of it, even with free slots; the continuous engine lets it join at the next step."""
    order = {}
    for admission in ("continuous", "whole-request"):
        engine = ContinuousBatchingEngine(
            CountingSampler(step_delay=0.01), max_batch_size=2, admission=admission
        )
        try:
            long_job = submit(engine, "long", num_inference_steps=30)
            events = long_job.subscribe()
            while not isinstance(events.get(timeout=60), Progress):
                pass
            late = submit(engine, "late", num_inference_steps=3)
            ended = {job.request_id: job.submitted + outcome(job)[0].seconds
                     for job in (late, long_job)}  # fmt: skip
            order[admission] = ended["late"] < ended["long"]
        finally:
            engine.close()
    assert order == {"continuous": True, "whole-request": False}


def test_unknown_admission_is_refused():
    with pytest.raises(ValueError, match="admission"):
        ContinuousBatchingEngine(CountingSampler(), admission="greedy")


class RecordingSampler(CountingSampler):
    """Records which states each step advanced."""

    def __init__(self, step_delay: float = 0.0):
        super().__init__(step_delay)
        self.steps: list[set[int]] = []

    def step(self, states):
        self.steps.append({id(s) for s in states})
        return super().step(states)


def stepping_background_job(engine):
    """A 40-step batch job, returned once it has made a step."""
    background = submit(engine, "background", Priority.BATCH, num_inference_steps=40)
    events = background.subscribe()
    while not isinstance(events.get(timeout=60), Progress):
        pass
    return background


@pytest.mark.parametrize("alone", [True, False])
def test_interactive_requests_step_without_batch_work_when_alone(alone):
    sampler = RecordingSampler(step_delay=0.01)
    engine = ContinuousBatchingEngine(sampler, max_batch_size=4, interactive_alone=alone)
    try:
        background = stepping_background_job(engine)
        urgent = submit(engine, "urgent", Priority.INTERACTIVE, num_inference_steps=4)
        urgent_state = id(urgent.state)
        background_state = id(background.state)
        assert isinstance(outcome(urgent)[0], Finished)
        shared = [s for s in sampler.steps if urgent_state in s and background_state in s]
        assert (len(shared) == 0) is alone
        assert isinstance(outcome(background)[0], Finished)  # resumed after the pause
    finally:
        engine.close()


class PrepareRecordingSampler(RecordingSampler):
    """Also records how many steps had started when each prepare ran (on the lane)."""

    def __init__(self, step_delay: float, prepare_delay: float):
        super().__init__(step_delay)
        self.prepare_delay = prepare_delay
        self.steps_before_prepare: list[int] = []

    def prepare(self, req):
        self.steps_before_prepare.append(len(self.steps))
        time.sleep(self.prepare_delay)  # longer than the scheduler takes between steps
        return super().prepare(req)


def test_a_request_prepared_during_a_step_joins_the_next_step():
    sampler = PrepareRecordingSampler(step_delay=0.05, prepare_delay=0.05)
    engine = ContinuousBatchingEngine(sampler, max_batch_size=4)
    try:
        stepping_background_job(engine)
        joining = submit(engine, "joining", Priority.BATCH, num_inference_steps=3)
        state = id(joining.state)
        assert isinstance(outcome(joining)[0], Finished)
        first = next(i for i, s in enumerate(sampler.steps) if state in s)
        # The batch is decided when the lane is free, so no step starts between this
        # request's prepare and its first step (it used to wait for one more).
        assert first == sampler.steps_before_prepare[-1]
    finally:
        engine.close()


class SeedRecordingSampler(CountingSampler):
    """Records the seeds of the requests each step advanced."""

    def __init__(self):
        super().__init__(step_delay=0.02)
        self.steps: list[set[int]] = []

    def step(self, states):
        self.steps.append({s.request.seed for s in states})
        return super().step(states)


def submit_slowly_prepared(engine, rid, seed, build_s, priority=Priority.BATCH):
    """Submit on a thread whose conditions take `build_s` to gather; returns once the engine
    counts the request as being prepared, with the thread and where its job will be."""
    jobs = {}

    def build():
        time.sleep(build_s)
        return request(seed=seed, num_inference_steps=3)

    thread = threading.Thread(
        target=lambda: jobs.setdefault(rid, engine.submit(rid, rid, build, priority, None))
    )
    thread.start()
    while not engine.snapshot()[f"queued_{priority.name.lower()}"]:
        time.sleep(0.001)
    return thread, jobs


@pytest.mark.parametrize(
    ("admission", "gather_s", "build_s", "first_priority", "together"),
    [
        ("continuous", 5.0, 0.05, Priority.BATCH, True),
        ("whole-request", 5.0, 0.05, Priority.BATCH, True),
        ("continuous", 0.0, 0.05, Priority.BATCH, False),  # gathering off
        ("continuous", 0.05, 2.0, Priority.BATCH, False),  # waits at most gather_s
        ("continuous", 5.0, 0.3, Priority.INTERACTIVE, False),  # interactive work never waits
    ],
)
def test_work_on_an_idle_engine_waits_for_requests_still_being_prepared(
    admission, gather_s, build_s, first_priority, together
):
    sampler = SeedRecordingSampler()
    engine = ContinuousBatchingEngine(
        sampler, max_batch_size=4, admission=admission, gather_s=gather_s
    )
    try:
        thread, jobs = submit_slowly_prepared(engine, "second", 1, build_s)
        first = submit(engine, "first", first_priority, seed=0, num_inference_steps=3)
        thread.join(60)
        assert all(isinstance(outcome(job)[0], Finished) for job in (first, jobs["second"]))
        assert (sampler.steps[0] == {0, 1}) is together
        if together:  # sent together, they also ended together: no step for one alone
            assert sampler.steps == [{0, 1}] * 3
    finally:
        engine.close()


def test_gathering_must_not_be_negative():
    with pytest.raises(ValueError, match="gather_s"):
        ContinuousBatchingEngine(CountingSampler(), gather_s=-1)


def test_an_announced_call_is_waited_for_until_it_submits_or_expires():
    """`announce` (a Generate call whose request is still arriving) counts as on its way."""
    sampler = SeedRecordingSampler()
    engine = ContinuousBatchingEngine(sampler, max_batch_size=4, gather_s=5.0)
    try:
        engine.announce()
        engine.announce()
        first = submit(engine, "first", Priority.BATCH, seed=0, num_inference_steps=3)
        time.sleep(0.1)  # the second call's request is still "arriving"
        second = submit(engine, "second", Priority.BATCH, seed=1, num_inference_steps=3)
        assert all(isinstance(outcome(job)[0], Finished) for job in (first, second))
        assert sampler.steps == [{0, 1}] * 3
    finally:
        engine.close()

    sampler = SeedRecordingSampler()
    engine = ContinuousBatchingEngine(sampler, max_batch_size=4, gather_s=0.2)
    try:
        engine.announce()
        engine.announce()  # a call that never submits (it failed before the engine)
        began = time.monotonic()
        first = submit(engine, "first", Priority.BATCH, seed=0, num_inference_steps=3)
        assert isinstance(outcome(first)[0], Finished)
        assert sampler.steps == [{0}] * 3
        assert time.monotonic() - began < 5  # the announcement expired after gather_s
    finally:
        engine.close()
