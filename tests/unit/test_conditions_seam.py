"""The one seam for reference conditions: file layout and schema, cache precedence, precompute
(resumable), the gRPC source's timeouts, and the augment job's `ReferenceConditions` on top."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from clients import conditions as conditions_cli
from clients.augment.manifest import state_dir
from clients.augment.references import ReferenceConditions
from clients.rpc.conditions import GrpcConditions
from genaug.errors import InvalidArgument
from services.data import layout
from services.data.conditions import (
    KINDS,
    CachedConditions,
    condition_paths,
    load_motion,
    load_prior,
    precompute,
    save_motion,
    save_prior,
)
from tests.unit.augment_support import NAME, TEST, TRAIN, tiny_dataset

CLIP = "tr-a0_s00.avi"


def _motion(frames: np.ndarray, value: float = 1.0):
    t, h, w = frames.shape
    field = np.full((t - 1, 2, h, w), value, np.float32)
    trajectories = np.arange(t * 4 * 9 * 3, dtype=np.int64).reshape(t * 4, 9, 3)
    return field, trajectories, np.ones((t * 4, 9), bool)


class CountingSource:
    """A `ConditionSource` that records what it was asked; its results depend on the frames."""

    def __init__(self, kinds=KINDS):
        self.kinds = tuple(kinds)
        self.calls: list[str] = []

    def prior(self, frames):
        self.calls.append("prior")
        return np.full((256, 64, 64), frames[0].mean(), np.float32)

    def motion(self, frames):
        self.calls.append("motion")
        return _motion(frames, float(frames.mean()))


class FrameReader:
    def __init__(self, frames):
        self.frames, self.reads = frames, 0

    def __call__(self):
        self.reads += 1
        return self.frames


@pytest.fixture
def frames():
    return np.random.default_rng(0).integers(0, 255, (4, 8, 8), np.uint8)


# --- one layout, one schema ----------------------------------------------------------------


def test_one_layout_and_schema_round_trip(tmp_path, frames):
    paths = condition_paths(tmp_path, "DS", "dir/clip_7.avi")
    assert paths.motion_field == tmp_path / "DS_motion_field" / "clip_7.npy"
    assert paths.trajectory == tmp_path / "DS_motion_field_trajectory" / "clip_7.npz"
    assert paths.prior == tmp_path / "DS_data_emb" / "clip_7.npy"
    assert not paths.has("motion") and not paths.has("prior")
    motion = _motion(frames)
    save_motion(paths, *motion)
    save_prior(paths, np.ones((256, 64, 64), np.float64))
    assert paths.has("motion") and paths.has("prior")
    for saved, loaded in zip(motion, load_motion(paths), strict=True):
        np.testing.assert_array_equal(saved, loaded)
        assert saved.dtype == loaded.dtype
    with np.load(paths.trajectory, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["trajectories", "trajectory_mask"]
    assert load_prior(paths).dtype == np.float32  # the schema's dtype, whatever was passed
    assert not [p for p in tmp_path.rglob(".*")], "temporary files left behind"
    paths.trajectory.unlink()
    assert not paths.has("motion")  # a field without its trajectories is not motion
    with pytest.raises(InvalidArgument) as info:
        paths.has("text")
    assert info.value.field == "kind"


def test_condition_files_are_never_unpickled(tmp_path):
    paths = condition_paths(tmp_path, "DS", "clip.avi")
    paths.prior.parent.mkdir(parents=True)
    np.save(paths.prior, np.array([{"x": 1}], dtype=object))  # numpy pickles object arrays
    with pytest.raises(ValueError, match="pickle"):
        load_prior(paths)


# --- cache precedence ------------------------------------------------------------------------


def test_dataset_then_cache_then_source_which_is_stored_in_the_cache(tmp_path, frames):
    dataset, cache = tmp_path / "data", tmp_path / "cache"
    source = CountingSource()
    files = CachedConditions("DS", [("dataset", dataset), ("cache", cache)], source, store=cache)
    read = FrameReader(frames)

    prior, where = files.prior(CLIP, read)
    motion, motion_where = files.motion(CLIP, read)
    assert (where, motion_where) == ("source", "source")
    assert source.calls == ["prior", "motion"] and read.reads == 2
    assert condition_paths(cache, "DS", CLIP).has("prior")
    assert condition_paths(cache, "DS", CLIP).has("motion")
    assert not dataset.exists(), "computed conditions go to the cache, not the dataset"

    again, where = files.prior(CLIP, read)
    again_motion, motion_where = files.motion(CLIP, read)
    assert (where, motion_where) == ("cache", "cache")
    assert source.calls == ["prior", "motion"] and read.reads == 2  # nothing asked or read
    np.testing.assert_array_equal(again, prior)
    for a, b in zip(again_motion, motion, strict=True):
        np.testing.assert_array_equal(a, b)

    # The dataset's own files win over the cache.
    in_dataset = condition_paths(dataset, "DS", CLIP)
    save_prior(in_dataset, np.zeros((256, 64, 64), np.float32))
    save_motion(in_dataset, *_motion(frames, -5.0))
    value, where = files.prior(CLIP, read)
    (field, _, _), motion_where = files.motion(CLIP, read)
    assert (where, motion_where) == ("dataset", "dataset")
    assert not value.any() and (field == -5.0).all()
    assert source.calls == ["prior", "motion"] and read.reads == 2


def test_a_kind_the_source_cannot_compute_is_missing_without_reading_frames(tmp_path, frames):
    source = CountingSource(kinds=["motion"])
    files = CachedConditions("DS", [("cache", tmp_path)], source, store=tmp_path)
    read = FrameReader(frames)
    assert files.prior(CLIP, read) == (None, None)
    assert CachedConditions("DS", [("cache", tmp_path)]).motion(CLIP, read) == (None, None)
    assert source.calls == [] and read.reads == 0
    assert not tmp_path.joinpath("DS_data_emb").exists()


# --- precompute: the files of a dataset ------------------------------------------------------


def test_precompute_is_resumable_and_overwrites_on_request(tmp_path):
    root = tiny_dataset(tmp_path)
    clips = sum(TRAIN.values()) + sum(TEST.values())
    source = CountingSource()
    counts = precompute(root, NAME, ["train", "test"], list(KINDS), source, progress=False)
    assert counts == {"computed": clips, "skipped": 0}
    assert source.calls.count("prior") == source.calls.count("motion") == clips
    items = [i for split in ("train", "test") for i in layout.load_dataset(root, NAME, split)]
    for item in items:
        paths = condition_paths(root, NAME, item.file_name)
        assert paths.has("prior") and paths.has("motion")
        expected = float(layout.read_clip(item.path)[0].mean())
        assert (load_prior(paths) == np.float32(expected)).all()  # this clip's own frames

    # Resumable: only the clip that lost a file is computed again, only for that kind.
    condition_paths(root, NAME, items[2].file_name).trajectory.unlink()
    source.calls.clear()
    counts = precompute(root, NAME, ["train", "test"], list(KINDS), source, workers=2)
    assert counts == {"computed": 1, "skipped": clips - 1}
    assert source.calls == ["motion"]

    source.calls.clear()
    counts = precompute(root, NAME, ["test"], ["prior"], source, overwrite=True, limit=2)
    assert counts == {"computed": 2, "skipped": 0} and source.calls == ["prior", "prior"]


def test_precompute_refuses_kinds_its_source_cannot_compute(tmp_path):
    root = tiny_dataset(tmp_path)
    with pytest.raises(InvalidArgument) as info:
        precompute(root, NAME, ["train"], ["motion", "prior"], CountingSource(kinds=["motion"]))
    assert info.value.field == "kinds" and "prior" in str(info.value)
    assert not (root / f"{NAME}_motion_field").exists()


def test_the_cli_over_grpc_needs_the_service_of_each_kind(tmp_path):
    parser = argparse.ArgumentParser()
    conditions_cli.add_arguments(parser)
    args = parser.parse_args(
        ["--dataset-root", str(tmp_path), "--name", NAME, "--encoder-target", "127.0.0.1:1"]
    )
    with pytest.raises(ValueError, match="--motion-target is needed"):
        conditions_cli.run(args)


# --- the gRPC source -------------------------------------------------------------------------


class FakeEncoder:
    def __init__(self):
        self.calls = []

    def image_prior(self, frames, timeout=None):
        self.calls.append((frames.shape, timeout))
        return np.full((len(frames), 256, 64, 64), frames[0].mean(), np.float32)


class FakeMotion:
    def __init__(self):
        self.calls = []

    def extract(self, frames, method="codec", timeout=None):
        self.calls.append((method, timeout))
        field, trajectories, mask = _motion(frames, float(frames.mean()))
        return SimpleNamespace(motion_field=field, trajectories=trajectories, trajectory_mask=mask)


def test_grpc_source_asks_each_call_for_its_timeout(frames):
    encoder, motion = FakeEncoder(), FakeMotion()
    remaining = iter([30.0, 12.5])
    source = GrpcConditions(encoder, motion, "optical_flow", timeout=lambda: next(remaining))
    assert set(source.kinds) == {"prior", "motion"}
    assert source.prior(frames).shape == (256, 64, 64)
    field, _, _ = source.motion(frames)
    assert field.shape == (3, 2, 8, 8)
    assert encoder.calls == [((1, 8, 8), 30.0)]  # only the first frame is encoded
    assert motion.calls == [("optical_flow", 12.5)]
    GrpcConditions(encoder, timeout=7.0).prior(frames)
    assert encoder.calls[-1][1] == 7.0


def test_grpc_source_without_a_service_offers_nothing_for_its_kind(frames):
    source = GrpcConditions(motion=FakeMotion())
    assert set(source.kinds) == {"motion"}
    with pytest.raises(ValueError, match="condition encoder"):
        source.prior(frames)
    assert set(GrpcConditions().kinds) == set()


# --- the augment job's references ------------------------------------------------------------


def _references(root, out, encoder=None, motion=None, kinds=("prior", "motion", "text")):
    return ReferenceConditions(root, NAME, out, list(kinds), {CLIP: "A clip 0"}, encoder, motion)


def test_references_report_where_each_kind_came_from_and_send_the_same_bytes(tmp_path):
    root = tiny_dataset(tmp_path / "data")
    out = tmp_path / "out"
    encoder, motion = FakeEncoder(), FakeMotion()

    first = _references(root, out, encoder, motion)
    message = first(CLIP)
    assert first.sources == {"prior": "encoder", "motion": "motion-extractor"}
    assert not message.HasField("reference_frames") and message.text == "A clip 0"
    assert len(encoder.calls) == len(motion.calls) == 1
    cache = condition_paths(state_dir(out) / "conditions", NAME, CLIP)
    assert cache.has("prior") and cache.has("motion")  # the dataset's layout, in the cache
    assert first(CLIP) is message and len(encoder.calls) == 1  # memoised

    # A re-run (no services now) reads the cache and sends byte-identical conditions.
    second = _references(root, out)
    assert second(CLIP).SerializeToString() == message.SerializeToString()
    assert second.sources == {"prior": "cache", "motion": "cache"}

    # Precomputed dataset files come first, with the same content: the same bytes again.
    dataset = condition_paths(root, NAME, CLIP)
    save_prior(dataset, load_prior(cache))
    save_motion(dataset, *load_motion(cache))
    third = _references(root, out)
    assert third(CLIP).SerializeToString() == message.SerializeToString()
    assert third.sources == {"prior": "dataset", "motion": "dataset"}


def test_references_without_files_or_services_leave_it_to_the_sampler(tmp_path):
    root = tiny_dataset(tmp_path / "data")
    references = _references(root, tmp_path / "out", encoder=FakeEncoder())
    message = references(CLIP)
    assert references.sources == {"prior": "encoder", "motion": "sampler"}
    assert message.HasField("image_prior") and message.HasField("reference_frames")
    assert not message.HasField("motion_field")
    text_only = _references(root, tmp_path / "out2", kinds=["text"])(CLIP)
    assert not text_only.HasField("reference_frames") and not text_only.HasField("image_prior")
    assert not Path(state_dir(tmp_path / "out2")).exists()
