"""The sampler's idempotency cache is bounded in bytes as well as entries."""

from __future__ import annotations

import pytest
import torch

from genaug.v1 import sampler_pb2 as pb
from services.common.result_cache import ResultCache
from services.sampler.engine import ContinuousBatchingEngine
from services.sampler.jobs import Finished
from tests.unit.test_sampler_engine import CountingSampler, outcome, submit


def test_byte_bound_evicts_the_least_recently_used():
    cache = ResultCache(len, max_entries=100, max_bytes=10)
    cache.put("a", b"xxxx")
    cache.put("b", b"xxxx")
    assert cache.get("a") == b"xxxx"  # now the most recently used
    cache.put("c", b"xxxx")  # 12 bytes: the oldest, b, goes
    assert "b" not in cache and "a" in cache and "c" in cache
    assert cache.nbytes == 8 and len(cache) == 2


def test_entry_bound_still_applies():
    cache = ResultCache(len, max_entries=2, max_bytes=1 << 20)
    for key in "abc":
        cache.put(key, b"x")
    assert "a" not in cache and len(cache) == 2


def test_values_that_grew_after_insertion_count_at_the_next_insertion():
    cache = ResultCache(len, max_entries=100, max_bytes=10)
    grows = bytearray(b"x")
    cache.put("grows", grows)
    grows.extend(b"x" * 8)  # as the servicer memoising a decoded result on a cached job
    cache.put("new", b"xx")
    assert "grows" not in cache and cache.nbytes == 2


def test_a_value_larger_than_the_bound_is_not_kept():
    cache = ResultCache(len, max_entries=100, max_bytes=10)
    cache.put("small", b"x")
    cache.put("huge", b"x" * 11)
    assert "huge" not in cache and "small" not in cache and cache.nbytes == 0
    with pytest.raises(ValueError):
        ResultCache(len, max_bytes=-1)


@pytest.mark.usefixtures("one_torch_thread")
def test_engine_replays_within_the_byte_bound_and_recomputes_beyond_it():
    probe = ContinuousBatchingEngine(CountingSampler())
    try:
        first = submit(probe, "probe", seed=1)
        assert isinstance(outcome(first)[0], Finished)
        assert first.state is None  # its request's tensors are not kept with the result
        one_job = first.nbytes()
    finally:
        probe.close()
    # A decoded result memoised on the job counts too.
    first.memo["result"] = pb.GenerateResult(seconds=1.0)
    first.memo["result"].latents.data = b"\0" * 1000
    assert first.nbytes() >= one_job + 1000

    sampler = CountingSampler()
    engine = ContinuousBatchingEngine(sampler, completed_cache_bytes=int(one_job * 1.5))
    try:
        for rid in ("old", "new"):
            assert isinstance(outcome(submit(engine, rid, seed=2))[0], Finished)
        assert sampler.prepared == 2
        # "new" is replayed from the cache; "old" did not fit beside it and is computed again.
        assert isinstance(outcome(submit(engine, "new", seed=2))[0], Finished)
        assert sampler.prepared == 2
        assert isinstance(outcome(submit(engine, "old", seed=2))[0], Finished)
        assert sampler.prepared == 3
    finally:
        engine.close()


def test_the_sampler_flags_set_both_bounds_of_the_engines_cache():
    import argparse
    from types import SimpleNamespace

    from services.sampler.__main__ import SamplerRuntime, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--result-cache-entries", "7", "--result-cache-mib", "1.5"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--result-cache-mib", "-1"])
    backend = SimpleNamespace(
        router=CountingSampler(), warmup=lambda: None, refresh=list, device=torch.device("cpu")
    )
    bounds = (args.result_cache_entries, int(args.result_cache_mib * 2**20))
    runtime = SamplerRuntime(backend, SimpleNamespace(engine=None), 2, 4, bounds)
    runtime.warmup()
    try:
        assert runtime.engine._done.max_entries == 7
        assert runtime.engine._done.max_bytes == 3 << 19
        assert runtime.engine.interactive_alone  # --interactive-alone auto, on a CPU
    finally:
        runtime.stop()


def test_the_gauge_reports_what_the_engine_cache_holds_now():
    from prometheus_client import REGISTRY

    engine = ContinuousBatchingEngine(CountingSampler(), max_batch_size=2)
    try:
        done, _ = outcome(submit(engine, "r1"))
        assert isinstance(done, Finished)
        value = REGISTRY.get_sample_value("genaug_sampler_result_cache_bytes")
        assert value == engine._done.measure() > 0
    finally:
        engine.close()


def test_measure_sees_values_that_grew_after_they_were_put():
    cache = ResultCache(len, max_entries=10, max_bytes=100)
    value = bytearray(b"xx")
    cache.put("a", value)
    value.extend(b"xxxx")  # e.g. a decoded result memoised on a cached job
    assert cache.nbytes == 2 and cache.measure() == 6
