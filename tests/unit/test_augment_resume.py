"""Exactly-once and resumable: crashes at every phase, then a re-run equals an uninterrupted one."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from clients.augment import job as job_module
from clients.augment import output
from clients.augment.job import run_job
from clients.augment.manifest import (
    Manifest,
    check_job,
    manifest_path,
    pool_path,
    read_records,
    save_pool,
    state_dir,
)
from clients.augment.report import summary_lines
from clients.rpc.filter import ClassBand
from services.data import layout
from services.data.conditions import condition_paths
from tests.unit.augment_support import (
    NAME,
    Crash,
    FakeFilter,
    FakePool,
    FakeSampler,
    PoolFilter,
    data_tree,
    options,
    tiny_dataset,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(root, tmp_path_factory):
    """An uninterrupted run: its output tree and the sampler's calls."""
    out = tmp_path_factory.mktemp("reference")
    sampler = FakeSampler()
    result = run_job(options(root, out), FakePool(sampler), FakeFilter())
    return data_tree(out), sampler, result


def _all_files(out):
    return [p for p in out.rglob("*") if p.is_file()]


def _assert_clean(out):
    leftovers = [p for p in _all_files(out) if ".tmp-" in p.name]
    assert not leftovers, leftovers


def test_uninterrupted_run_writes_kept_clips_with_metadata(root, reference):
    tree, sampler, result = reference
    assert set(sampler.completed.values()) == {1} and len(sampler.completed) == 12
    kept = [v for v in result.verdicts.values() if v["keep"]]
    rejected = [v for v in result.verdicts.values() if not v["keep"]]
    assert kept and rejected and all(v["reasons"] for v in rejected)
    dataset = layout.load_dataset(result.options.out, NAME, "train")
    assert len(dataset) == len(kept) == len(tree) - 1  # the clips + train_metadata.jsonl
    for item in dataset:
        assert item.extra["synthetic"] is True
        assert item.extra["source_clip"].startswith("tr-")
        assert {"seed", "cross_entropy", "vae_seq"} <= item.extra.keys()
        assert layout.read_clip(item.path).shape == (8, 16, 16)


@pytest.mark.parametrize("crash_after", [0, 1, 5, 11])
def test_crash_during_generation_then_resume(root, reference, tmp_path, crash_after):
    out = tmp_path / "out"
    first = FakeSampler(crash_after=crash_after)
    with pytest.raises(job_module.JobFailed):
        run_job(options(root, out), FakePool(first), FakeFilter())
    # A pool file torn by a kill mid-write, and one renamed but not yet in the manifest.
    pool = state_dir(out) / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    (pool / ".A-tr-a0_s00-66.npz.tmp-4242-dead").write_bytes(b"torn")
    second = FakeSampler()
    run_job(options(root, out), FakePool(second), FakeFilter())
    assert data_tree(out) == reference[0]
    calls = first.completed + second.completed
    assert set(calls.values()) == {1} and len(calls) == 12  # each item generated once
    _assert_clean(out)


def test_adopts_a_pool_file_whose_manifest_line_was_lost(root, reference, tmp_path):
    out = tmp_path / "out"
    plan = job_module.plan_job(options(root, out))
    donor = FakeSampler()
    first = plan.items[0]
    check_job(out, plan.job)
    clip = donor.generate(
        first.class_id, _text_conditions(plan, first), seed=first.seed, request_id="x"
    )
    save_pool(pool_path(out, first.id), clip.latents, clip.frames)
    sampler = FakeSampler()
    run_job(options(root, out), FakePool(sampler), FakeFilter())
    assert len(sampler.completed) == 11  # the adopted item is not generated again
    assert data_tree(out) == reference[0]


def _text_conditions(plan, item):
    from clients.rpc.sampler import conditions_message

    return conditions_message(text=plan.texts[item.source_clip])


def test_crash_during_filtering_refilters_once_and_not_after(root, reference, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(Crash):
        run_job(options(root, out), FakePool(FakeSampler()), FakeFilter(crash=True))
    sampler, filter_ = FakeSampler(), FakeFilter()
    run_job(options(root, out), FakePool(sampler), filter_)
    assert not sampler.completed and filter_.calls == 1
    assert data_tree(out) == reference[0]
    again = FakeFilter()
    run_job(options(root, out), FakePool(FakeSampler()), again)
    assert again.calls == 0  # verdicts come from the manifest
    assert data_tree(out) == reference[0]


def test_crash_while_writing_clips_then_resume_writes_each_once(
    root, reference, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    real_write = layout.write_clip
    written = []

    def crashing_write(path, frames, *args, **kwargs):
        if len(written) == 2:
            raise Crash()
        written.append(path.name)
        return real_write(path, frames, *args, **kwargs)

    monkeypatch.setattr(output.layout, "write_clip", crashing_write)
    with pytest.raises(Crash):
        run_job(options(root, out), FakePool(FakeSampler()), FakeFilter())
    monkeypatch.setattr(output.layout, "write_clip", real_write)
    run_job(options(root, out), FakePool(FakeSampler()), FakeFilter())
    assert data_tree(out) == reference[0]
    records = read_records(manifest_path(out, 0, 1))
    written_ids = [r["id"] for r in records if r["event"] == "written"]
    assert len(written_ids) == len(set(written_ids))
    names = [r["file_name"] for r in layout.read_metadata(layout.metadata_path(out, NAME, "train"))]
    assert len(names) == len(set(names))


def test_sharded_runs_into_one_folder_equal_a_single_run(root, reference, tmp_path):
    out = tmp_path / "sharded"
    for index in (1, 0):
        run_job(
            options(root, out, shard_index=index, shard_count=2),
            FakePool(FakeSampler()),
            FakeFilter(),
        )
    # Per-clip filtering: the verdicts do not depend on the pool, so the sets are equal.
    assert data_tree(out) == reference[0]


def test_shards_filter_the_whole_job_pool_once_like_a_single_run(root, tmp_path):
    single = tmp_path / "single"
    run_job(options(root, single), FakePool(FakeSampler()), PoolFilter())
    out = tmp_path / "sharded"
    first = run_job(
        options(root, out, shard_index=1, shard_count=2), FakePool(FakeSampler()), PoolFilter()
    )
    assert first.waiting_for > 0
    assert not layout.dataset_dir(out, NAME).exists()  # nothing written before the pool is whole
    last = run_job(
        options(root, out, shard_index=0, shard_count=2), FakePool(FakeSampler()), PoolFilter()
    )
    assert last.waiting_for == 0
    assert data_tree(out) == data_tree(single)
    # The shard that completed the pool wrote every kept clip, and its `done` event says so.
    kept = len(layout.read_metadata(layout.metadata_path(out, NAME, "train")))
    done = [r for r in read_records(manifest_path(out, 0, 2)) if r["event"] == "done"]
    assert kept > 0 and done[-1]["kept"] == kept
    # A re-run of the first shard uses the recorded verdicts and writes nothing twice.
    run_job(options(root, out, shard_index=1, shard_count=2), FakePool(FakeSampler()), PoolFilter())
    assert data_tree(out) == data_tree(single)
    names = [r["file_name"] for r in layout.read_metadata(layout.metadata_path(out, NAME, "train"))]
    assert len(names) == len(set(names))


def test_a_different_job_in_the_same_folder_is_refused(root, reference, tmp_path):
    out = tmp_path / "out"
    run_job(options(root, out), FakePool(FakeSampler()), FakeFilter())
    with pytest.raises(ValueError, match="steps"):
        run_job(options(root, out, steps=3), FakePool(FakeSampler()), FakeFilter())


def test_manifest_ignores_and_cuts_a_torn_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    manifest = Manifest(path)
    manifest.append({"event": "generated", "id": "a"})
    with open(path, "ab") as handle:
        handle.write(b'{"event": "generated", "id": "b"')  # killed mid-write
    assert [r["id"] for r in read_records(path)] == ["a"]
    manifest.append({"event": "generated", "id": "c"})
    assert [r["id"] for r in read_records(path)] == ["a", "c"]
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_atomic_pool_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "pool" / "x.npz"

    def failing_savez(handle, **arrays):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError):
        save_pool(path, np.zeros((2, 4, 1, 1), np.float32), np.zeros((2, 1, 8, 8), np.float32))
    assert list(path.parent.iterdir()) == []


def test_stale_temporaries_of_other_shards_are_kept(tmp_path):
    out = tmp_path / "out"
    pool = state_dir(out) / "pool"
    pool.mkdir(parents=True)
    mine = pool / ".A-x-66.npz.tmp-1-aa"
    theirs = pool / ".B-y-66.npz.tmp-2-bb"
    mine.write_bytes(b"")
    theirs.write_bytes(b"")
    assert output.remove_stale_temporaries(out, NAME, ["A-x-66.npz"]) == 1
    assert not mine.exists() and theirs.exists()


def test_a_killed_runs_condition_cache_temporaries_are_removed(tmp_path):
    out = tmp_path / "out"
    cached = condition_paths(state_dir(out) / "conditions", NAME, "x_s00.avi")
    temporaries = []
    for path in cached.files():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp-1-aa")
        temporary.write_bytes(b"")
        temporaries.append(temporary)
    finals = sorted({path.name for path in cached.files()})
    assert output.remove_stale_temporaries(out, NAME, finals) == 3
    assert not any(t.exists() for t in temporaries)


def test_relative_paths_reference_frames_and_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_dataset(Path("data"))
    sampler = FakeSampler()
    seen = []
    real_generate = sampler.generate

    def spy(class_id, conditions, **kwargs):
        seen.append(conditions.HasField("reference_frames"))
        return real_generate(class_id, conditions, **kwargs)

    sampler.generate = spy
    kinds = ["prior", "motion", "text"]
    o = options(Path("data"), Path("out"), conditions=kinds, report=True, save_npy=True)
    result = run_job(o, FakePool(sampler), FakeFilter())
    assert seen and all(seen)  # no precomputed conditions, no services: the sampler fetches
    assert result.report_path == Path("out/report/index.html")
    html = result.report_path.read_text()
    assert "Real vs synthetic" in html and "te-" not in html
    assert (Path("out/report/contact_sheet.png")).stat().st_size > 0
    for item in layout.load_dataset("out", NAME, "train"):
        npy = np.load(item.path.with_name(item.extra["npy_file"]), allow_pickle=False)
        assert npy.shape == (8, 1, 16, 16) and npy.dtype == np.float32


class _BandFilter(FakeFilter):
    """FakeFilter that reports per-class bands when asked to fit them (class 2 gets none)."""

    NOTE = "note: sequential band of class 2 not applied: 2 distinct vae_seq value(s) in the class"

    def filter_pool(self, clips, **kwargs):
        clips = list(clips)
        self.kwargs = kwargs
        result = super().filter_pool(clips, **kwargs)
        if kwargs.get("band_scope") != "class":
            return result
        bands = tuple(
            ClassBand(2, -math.inf, math.inf, False, self.NOTE)
            if label == 2
            else ClassBand(label, 40.0 + label, 60.0 + label, True)
            for label in sorted({c.label for c in clips})
        )
        return dataclasses.replace(result, vae_seq_low=45.0, vae_seq_high=55.0, class_bands=bands)


def _filtered_event(out):
    return next(r for r in read_records(manifest_path(out, 0, 1)) if r["event"] == "filtered")


def test_per_class_bands_are_asked_for_recorded_and_reported(root, tmp_path):
    out = tmp_path / "out"
    filter_ = _BandFilter()
    result = run_job(options(root, out, report=True), FakePool(FakeSampler()), filter_)
    assert filter_.kwargs["band_scope"] == "class"  # the default of `genaug augment`
    expected = [
        {"label": 0, "low": 40.0, "high": 60.0, "applied": True, "note": ""},
        {"label": 1, "low": 41.0, "high": 61.0, "applied": True, "note": ""},
        {"label": 2, "low": None, "high": None, "applied": False, "note": _BandFilter.NOTE},
    ]
    assert result.class_bands == expected and result.band == [45.0, 55.0]
    event = _filtered_event(out)
    assert event["class_bands"] == expected and event["band"] == [45.0, 55.0]
    job = json.loads((state_dir(out) / "job.json").read_text())
    assert job["filter"]["sequential_band"] == "class"

    lines = summary_lines(result)
    per_class = "  VAE-Seq keep band per class: A [40.00, 60.00], B [41.00, 61.00], C not applied"
    assert per_class in lines
    assert "  VAE-Seq pool-wide band [45.00, 55.00] (reported only)" in lines
    html = result.report_path.read_text()
    assert "VAE-Seq keep band per class" in html and "pool-wide band, reported only" in html
    assert "<tr><td>B</td><td>1</td><td>41.00</td><td>61.00</td><td>yes</td>" in html
    assert "<tr><td>C</td><td>2</td><td>-inf/+inf</td><td>-inf/+inf</td><td>no</td>" in html
    assert "not applied: 2 distinct" in html

    # The band scope is part of the job: the other one in the same folder is refused.
    with pytest.raises(ValueError, match="changed: filter"):
        run_job(options(root, out, sequential_band="pool"), FakePool(FakeSampler()), filter_)


def test_pool_scope_asks_for_the_reference_band_and_reports_it_alone(root, tmp_path):
    out = tmp_path / "out"
    filter_ = _BandFilter()
    o = options(root, out, report=True, sequential_band="pool")
    result = run_job(o, FakePool(FakeSampler()), filter_)
    assert filter_.kwargs["band_scope"] == "pool"
    assert result.class_bands == [] and _filtered_event(out)["class_bands"] == []
    assert not any("per class" in line for line in summary_lines(result))
    html = result.report_path.read_text()
    assert "<p>VAE-Seq keep band: [-inf/+inf, -inf/+inf]</p>" in html
    assert "per class" not in html


def test_a_job_recorded_before_per_class_bands_still_loads(root, tmp_path):
    out = tmp_path / "out"
    o = options(root, out, sequential_band="pool")
    first = run_job(o, FakePool(FakeSampler()), FakeFilter())
    # Rewrite the state as it was written before the option existed: no `sequential_band` in
    # job.json, no `class_bands` in the filtered event.
    job_path = state_dir(out) / "job.json"
    job = json.loads(job_path.read_text())
    del job["filter"]["sequential_band"]
    job_path.write_text(json.dumps(job, indent=2, sort_keys=True) + "\n")
    path = manifest_path(out, 0, 1)
    records = read_records(path)
    for record in records:
        record.pop("class_bands", None)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))

    again = FakeFilter()
    result = run_job(
        options(root, out, sequential_band="pool", report=True), FakePool(FakeSampler()), again
    )
    assert again.calls == 0 and result.verdicts == first.verdicts  # the recorded verdicts
    assert result.class_bands == [] and result.band == [None, None]
    assert "<p>VAE-Seq keep band: [" in result.report_path.read_text()
    # Such a job ran with the pool-wide band: the new default (class) is a different job.
    with pytest.raises(ValueError, match="changed: filter"):
        run_job(options(root, out), FakePool(FakeSampler()), FakeFilter())
