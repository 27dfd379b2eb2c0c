"""When an augment job computes its references' conditions: all before sampling where their
services share the sampler's machine, else overlapped with sampling; and what a failure does."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from types import SimpleNamespace

import grpc
import pytest

from clients.augment import job as job_module
from clients.augment.job import run_job
from clients.augment.replicas import JobFailed
from clients.augment.schedule import conditions_first, fetch_conditions
from clients.augment.spans import Spans
from clients.rpc.errors import GenAugError
from clients.rpc.sampler import conditions_message
from tests.unit.augment_support import FakeFilter, FakePool, FakeSampler, options, tiny_dataset


def _options(schedule="auto", encoder=None, motion=None, sampler=("127.0.0.1:50053",), kinds=()):
    return SimpleNamespace(
        conditions_schedule=schedule,
        encoder=encoder,
        motion=motion,
        sampler=list(sampler),
        conditions=list(kinds) or ["prior", "motion", "text"],
    )


def test_auto_puts_conditions_first_when_a_service_computing_them_shares_a_sampler_machine():
    assert conditions_first(_options(encoder="127.0.0.1:50051"))
    assert conditions_first(_options(motion="localhost:50055"))
    # One sampler replica on this machine is enough for the two to contend.
    assert conditions_first(_options(encoder="127.0.0.1:1", sampler=["10.0.0.9:1", "[::1]:2"]))


def test_auto_overlaps_them_when_the_services_have_cores_of_their_own():
    assert not conditions_first(_options(encoder="encoder.genaug.svc:50051"))
    assert not conditions_first(_options(encoder="127.0.0.1:1", sampler=["sampler.svc:1"]))
    # No service computes them: the dataset's files, or the sampler fetches them itself.
    assert not conditions_first(_options())
    # The encoder is local, but the job conditions on text only: nothing to compute.
    assert not conditions_first(_options(encoder="127.0.0.1:1", kinds=["text"]))


def test_an_explicit_schedule_is_followed_wherever_the_services_are():
    assert conditions_first(_options("first", encoder="encoder.svc:1", sampler=["s.svc:1"]))
    assert not conditions_first(_options("overlapped", encoder="127.0.0.1:1"))


def _items(*clips):
    return [SimpleNamespace(source_clip=clip) for clip in clips]


def test_each_distinct_reference_is_fetched_once_and_progress_reaches_the_total():
    asked, progress = [], []

    def conditions(clip):
        asked.append(clip)
        return conditions_message(text=clip)

    spans = Spans()
    count = fetch_conditions(
        _items("a", "b", "a", "c", "b"), conditions, 2, spans, lambda d, t: progress.append((d, t))
    )
    assert count == 3 and sorted(asked) == ["a", "b", "c"]
    assert sorted(progress) == [(1, 3), (2, 3), (3, 3)]
    assert spans.as_dict(1.0, 0)["stages"]["conditions"]["count"] == 3


def test_a_failed_reference_fails_the_phase_naming_it_and_nothing_after_it_starts():
    asked = []

    def conditions(clip):
        asked.append(clip)
        if clip == "b":
            raise GenAugError(grpc.StatusCode.INVALID_ARGUMENT, "frames: empty")
        return conditions_message(text=clip)

    with pytest.raises(JobFailed, match=r"conditions of b: .*frames: empty"):
        fetch_conditions(_items("a", "b", "c", "d"), conditions, 1, Spans())
    assert asked == ["a", "b"]


def test_an_unexpected_error_is_a_job_failure_naming_the_reference():
    def conditions(clip):
        raise OSError("unreadable clip")

    with pytest.raises(JobFailed, match=r"conditions of a: OSError: unreadable clip"):
        fetch_conditions(_items("a"), conditions, 1, Spans())


class _Recording:
    """The job's `ReferenceConditions`, recording when each reference is asked for."""

    def __init__(self, events: list):
        self.events, self.sources, self._lock = events, {}, threading.Lock()

    def __call__(self, clip):
        with self._lock:
            self.events.append(("conditions", clip))
        return conditions_message(text=clip)


class _RecordingSampler(FakeSampler):
    def __init__(self, events: list):
        super().__init__()
        self.events = events

    def generate(self, class_id, conditions, **kwargs):
        self.events.append(("generate", conditions.text))
        return super().generate(class_id, conditions, **kwargs)


def _job(tmp_path, monkeypatch, **overrides):
    events: list = []

    @contextmanager
    def references(shard):
        yield _Recording(events)

    monkeypatch.setattr(job_module, "open_references", references)
    root = tiny_dataset(tmp_path / "data")
    o = options(root, tmp_path / "out", concurrency=2, **overrides)
    result = run_job(o, FakePool(_RecordingSampler(events)), FakeFilter())
    return result, events


def test_a_job_with_a_local_encoder_has_every_reference_before_its_first_generation(
    tmp_path, monkeypatch
):
    result, events = _job(
        tmp_path, monkeypatch, conditions=["prior", "text"], encoder="127.0.0.1:50051"
    )
    first_generation = next(i for i, (what, _) in enumerate(events) if what == "generate")
    references = {clip for what, clip in events if what == "conditions"}
    fetched_first = events[: len(references)]  # then each generation looks its own up again
    assert {what for what, _ in fetched_first} == {"conditions"}
    assert {clip for _, clip in fetched_first} == references
    assert first_generation > len(references)
    assert result.generated_now == 12
    assert result.timings["phases"]["conditions"] > 0
    assert result.timings["share_of_wall"]["conditions"] > 0


def test_a_job_overlapped_asks_for_conditions_as_each_clip_goes_out(tmp_path, monkeypatch):
    result, events = _job(tmp_path, monkeypatch, conditions_schedule="overlapped")
    assert events[0][0] == "conditions" and events[1][0] in ("conditions", "generate")
    kinds = [what for what, _ in events]
    assert kinds.count("generate") == 12 and "generate" in kinds[: len(kinds) // 2]
    assert "conditions" not in result.timings["phases"]
