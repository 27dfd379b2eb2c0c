"""`onnx_cache.prune_cache`: the ONNX export cache drops entries unused for too long and the
least recently used over its size cap, on real files, while keeping entries in use or used
lately, other processes' files being written, and files it does not own."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from services.models import onnx_cache
from services.models.onnx_cache import CacheLimits, cache_limits, prune_cache

DAY = 86400.0
MIB = 1 << 20
NOW = time.time()


def _entry(cache: Path, name: str, digest: str, age_days: float, mib: float = 1.0) -> Path:
    """A fake cache entry (a graph and its parity record) last used `age_days` ago."""
    graph = cache / f"{name}-{digest * 16}.onnx"
    record = cache / f"{name}-{digest * 16}.parity-2threads.json"
    graph.write_bytes(b"\0" * int(mib * MIB))
    record.write_text('{"diffs": [0.0]}')
    for path in (graph, record):
        _age(path, age_days)
    return graph


def _age(path: Path, days: float) -> None:
    os.utime(path, (NOW - days * DAY, NOW - days * DAY))


def _record(graph: Path) -> Path:
    return graph.with_name(f"{graph.stem}.parity-2threads.json")


def test_entries_unused_for_too_long_are_pruned_fresh_ones_kept(tmp_path):
    old = _entry(tmp_path, "vae_encode", "a", age_days=40)
    older_prior = _entry(tmp_path, "image_prior", "b", age_days=90)
    fresh = _entry(tmp_path, "vae_decode", "c", age_days=2)
    foreign = [tmp_path / "model.onnx", tmp_path / "notes.txt", tmp_path / "vae_encode-x.onnx"]
    for path in foreign:  # not the cache's names: never touched, whatever their age
        path.write_text("mine")
        _age(path, 400)

    pruned = prune_cache(tmp_path, CacheLimits(max_age_days=30, max_mib=0), now=NOW)

    assert set(pruned.removed) == {old, older_prior}
    assert pruned.freed_bytes >= 2 * MIB and pruned.kept_bytes >= MIB
    for gone in (old, older_prior):
        assert not gone.exists() and not _record(gone).exists()
    assert fresh.exists() and _record(fresh).exists()
    assert all(path.exists() for path in foreign)


def test_entries_in_use_are_kept_however_old(tmp_path, monkeypatch):
    kept = _entry(tmp_path, "vae_encode", "a", age_days=100)
    loaded = _entry(tmp_path, "vae_decode", "b", age_days=100)
    monkeypatch.setattr(onnx_cache, "_in_use", set())
    onnx_cache.mark_in_use(loaded)  # as a load in this process does
    lately = _entry(tmp_path, "image_prior", "c", age_days=100)
    os.utime(lately, (NOW - 60, NOW - 60))  # touched by another process's load a minute ago
    gone = _entry(tmp_path, "image_prior", "d", age_days=100)

    pruned = prune_cache(tmp_path, CacheLimits(30, 0), keep=[kept], now=NOW)

    assert pruned.removed == (gone,)
    assert kept.exists() and loaded.exists() and lately.exists() and _record(lately).exists()


def test_the_size_cap_removes_the_least_recently_used_first(tmp_path):
    graphs = [_entry(tmp_path, "vae_encode", d, age_days=5 - i) for i, d in enumerate("abcd")]
    in_grace = _entry(tmp_path, "vae_decode", "e", age_days=0)  # just exported elsewhere

    # 5 entries of 1 MiB (and a few bytes of record) under a 3.1 MiB cap: the two oldest go.
    pruned = prune_cache(tmp_path, CacheLimits(max_age_days=0, max_mib=3.1), now=NOW)

    assert pruned.removed == (graphs[0], graphs[1])
    assert [g.exists() for g in graphs] == [False, False, True, True] and in_grace.exists()
    assert 3 * MIB < pruned.kept_bytes <= 3.1 * MIB

    # Entries in use or used within the grace period stay even over the cap.
    for graph in graphs[2:]:
        os.utime(graph, (NOW - 10, NOW - 10))
    assert prune_cache(tmp_path, CacheLimits(0, max_mib=1), now=NOW).removed == ()
    assert all(g.exists() for g in graphs[2:]) and in_grace.exists()


def test_a_concurrent_writers_temp_file_is_untouched_a_dead_ones_removed(tmp_path):
    stem = f"vae_encode-{'a' * 16}"
    writing = tmp_path / f".{stem}.k2j4h_x.partial.onnx"  # `export_graph`'s mkstemp name
    writing.write_bytes(b"\0" * MIB)
    _age(writing, 0.01)
    recording = tmp_path / f".{stem}.parity-2threads.q9z1.partial"  # `_record_parity`'s
    recording.write_text("{")
    dead = tmp_path / f".vae_decode-{'b' * 16}.zz81.partial.onnx"
    dead.write_bytes(b"\0")
    _age(dead, 3)

    # Neither limit (even a cap of 1 byte) touches a temp file being written.
    pruned = prune_cache(tmp_path, CacheLimits(max_age_days=1e-9, max_mib=1e-6), now=NOW)

    assert pruned.removed == () and writing.exists() and recording.exists()
    assert writing.stat().st_size == MIB
    assert not dead.exists()


def test_an_entry_touched_after_the_scan_is_kept(tmp_path, monkeypatch):
    graph = _entry(tmp_path, "vae_encode", "a", age_days=40)
    scan = onnx_cache._scan

    def scan_then_load(cache_dir, now):  # another process loads it in between
        found = scan(cache_dir, now)
        os.utime(graph)
        return found

    monkeypatch.setattr(onnx_cache, "_scan", scan_then_load)
    assert prune_cache(tmp_path, CacheLimits(30, 0), now=NOW).removed == ()
    assert graph.exists() and _record(graph).exists()


def test_failures_to_prune_are_warnings(tmp_path, monkeypatch, caplog):
    old = _entry(tmp_path, "vae_encode", "a", age_days=40)
    real_unlink = Path.unlink

    def refuse(self, missing_ok=False):
        if self.suffix == ".onnx":
            raise PermissionError(13, "Permission denied")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse)
    with caplog.at_level(logging.WARNING, logger="services.models.onnx_cache"):
        pruned = prune_cache(tmp_path, CacheLimits(30, 0), now=NOW)
        onnx_cache.prune_quietly(tmp_path / "missing", keep=[])  # cannot even list it
    assert pruned.removed == () and old.exists()
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("Permission denied" in m for m in messages)
    assert any("missing" in m for m in messages)


def test_limits_come_from_the_environment(monkeypatch, caplog):
    monkeypatch.delenv(onnx_cache.CACHE_MAX_AGE_ENV, raising=False)
    monkeypatch.delenv(onnx_cache.CACHE_MAX_MIB_ENV, raising=False)
    assert cache_limits() == CacheLimits(30.0, 2048.0)
    monkeypatch.setenv(onnx_cache.CACHE_MAX_AGE_ENV, "7.5")
    monkeypatch.setenv(onnx_cache.CACHE_MAX_MIB_ENV, "0")  # 0: no size cap
    assert cache_limits() == CacheLimits(7.5, 0.0)
    monkeypatch.setenv(onnx_cache.CACHE_MAX_AGE_ENV, "a week")
    monkeypatch.setenv(onnx_cache.CACHE_MAX_MIB_ENV, "-1")
    with caplog.at_level(logging.WARNING, logger="services.models.onnx_cache"):
        assert cache_limits() == CacheLimits(30.0, 2048.0)
    assert sum(onnx_cache.CACHE_MAX_AGE_ENV in r.getMessage() for r in caplog.records) == 1


def test_touch_marks_an_entry_used(tmp_path):
    graph = _entry(tmp_path, "vae_encode", "a", age_days=40)
    assert onnx_cache.touch(graph)
    assert time.time() - graph.stat().st_mtime < 60
    assert not onnx_cache.touch(tmp_path / f"vae_decode-{'f' * 16}.onnx")


def test_no_limits_prune_nothing(tmp_path):
    graph = _entry(tmp_path, "vae_encode", "a", age_days=4000, mib=2)
    assert prune_cache(tmp_path, CacheLimits(0, 0), now=NOW).removed == () and graph.exists()
