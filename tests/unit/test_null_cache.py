"""The unconditional-embedding cache is an LRU bounded in bytes, shared safely by threads."""

from __future__ import annotations

import threading

import torch

from services.models.ldm.null_cache import NullEmbeddingCache
from tests.unit.test_ldm_pipeline import request, sampler


def _mib(n: float) -> torch.Tensor:
    return torch.zeros(int(n * 2**18))  # float32: n MiB


def test_bounded_in_bytes_least_recently_used_first():
    cache = NullEmbeddingCache(max_bytes=3 << 20)
    for key in "abc":
        cache.get(key, lambda: _mib(1))
    cache.get("a", lambda: _mib(1))  # now the most recent
    cache.get("d", lambda: _mib(1))
    assert len(cache) == 3 and cache.nbytes == 3 << 20
    built = []
    cache.get("b", lambda: built.append("b") or _mib(1))  # "b" left first
    cache.get("a", lambda: built.append("a") or _mib(1))
    assert built == ["b"]


def test_an_entry_above_the_budget_is_kept_alone_and_built_once():
    cache = NullEmbeddingCache(max_bytes=1 << 20)
    cache.get("small", lambda: _mib(0.5))
    big = cache.get("big", lambda: _mib(4))
    assert len(cache) == 1 and cache.get("big", lambda: _mib(99)) is big


def test_concurrent_builders_agree_on_one_tensor():
    cache = NullEmbeddingCache()
    seen = []
    threads = [
        threading.Thread(target=lambda: seen.append(cache.get("k", lambda: _mib(0.1))))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(t) for t in seen}) == 1 and cache.nbytes == _mib(0.1).numel() * 4


def _with_frames(frames: int, seed: int = 0):
    motion = torch.randn(frames - 1, 2, 8, 8, generator=torch.Generator().manual_seed(frames))
    return request(seed, num_frames=frames, motion_field=motion)


def test_many_request_shapes_keep_the_sampler_within_its_budget_and_its_results_exact():
    small = sampler()
    small._null_cache.max_bytes = 64 << 10
    for frames in range(3, 12):
        small.prepare(_with_frames(frames))
    assert small._null_cache.nbytes <= 64 << 10 or len(small._null_cache) == 1
    again = _with_frames(3, seed=4)  # its null motion was evicted: built again
    torch.testing.assert_close(small.generate([again])[0], sampler().generate([again])[0])
