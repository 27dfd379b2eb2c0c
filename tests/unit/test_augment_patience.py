"""A call whose service restarts is tried again for a bounded time; other errors at once."""

from __future__ import annotations

import grpc
import pytest

from clients.augment.patience import until_available
from clients.rpc.errors import GenAugError


class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _failing(codes: list[grpc.StatusCode]):
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= len(codes):
            raise GenAugError(codes[len(calls) - 1], "failed to connect to all addresses")
        return "answer"

    return call, calls


def test_unavailable_is_tried_again_with_backoff_until_the_service_answers():
    t = FakeTime()
    call, calls = _failing([grpc.StatusCode.UNAVAILABLE] * 5)
    assert until_available(call, "conditions", sleep=t.sleep, clock=lambda: t.now) == "answer"
    assert len(calls) == 6 and t.slept == [0.5, 1.0, 2.0, 4.0, 5.0]


def test_patience_runs_out_and_the_last_error_is_raised():
    t = FakeTime()
    call, calls = _failing([grpc.StatusCode.UNAVAILABLE] * 100)
    with pytest.raises(GenAugError, match="failed to connect"):
        until_available(call, "x", patience_s=20.0, sleep=t.sleep, clock=lambda: t.now)
    assert t.now <= 20.0 and len(calls) == 1 + len(t.slept)


def test_a_request_error_is_raised_at_once():
    t = FakeTime()
    call, calls = _failing([grpc.StatusCode.INVALID_ARGUMENT])
    with pytest.raises(GenAugError):
        until_available(call, "x", sleep=t.sleep, clock=lambda: t.now)
    assert len(calls) == 1 and t.slept == []
