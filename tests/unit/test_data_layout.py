"""The seed layout's reader and writer: clip round trips, atomic writes, metadata lines."""

from __future__ import annotations

import json

import av
import cv2
import numpy as np
import pytest

from genaug.errors import InvalidArgument, NotFound
from services.data import layout


def _frames(t: int = 8, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, size, size), dtype=np.uint8)


def test_clip_round_trip_is_near_lossless_and_stable(tmp_path):
    frames = _frames()
    path = layout.write_clip(tmp_path / "a_s00.avi", frames)
    back = layout.read_clip(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames).max() <= 1  # BT.601 limited-range quantisation
    again = layout.read_clip(layout.write_clip(tmp_path / "b_s00.avi", back))
    np.testing.assert_array_equal(again, back)  # a second round trip is exact
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.codec_tag == "I420"
        assert float(stream.average_rate) == layout.CLIP_FPS
    # Other tools (OpenCV) see grey replicated to three channels.
    capture = cv2.VideoCapture(str(path))
    ok, bgr = capture.read()
    capture.release()
    assert ok and (bgr[..., 0] == bgr[..., 1]).all() and (bgr[..., 1] == bgr[..., 2]).all()
    assert np.abs(bgr[..., 0].astype(int) - frames[0]).max() <= 1


def test_slice_round_trip_is_exact(tmp_path):
    frame = _frames(1)[0]
    path = layout.write_slice(tmp_path / "v_slice00.png", frame)
    np.testing.assert_array_equal(layout.read_slice(path), frame)


def test_failed_clip_write_leaves_nothing(tmp_path, monkeypatch):
    original = av.VideoFrame.from_ndarray
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return original(*args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", flaky)
    with pytest.raises(RuntimeError):
        layout.write_clip(tmp_path / "x_s00.avi", _frames())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("frames", "field"),
    [
        (np.zeros((1, 32, 32), np.uint8), "frames.shape"),  # a 1-frame clip
        (np.zeros((4, 31, 32), np.uint8), "frames.shape"),  # odd size (4:2:0)
        (np.zeros((4, 32, 32), np.float32), "frames.dtype"),
        (np.zeros((2, 8194, 2), np.uint8), "frames.shape"),  # absurd size
    ],
)
def test_write_clip_rejects_bad_frames(tmp_path, frames, field):
    with pytest.raises(InvalidArgument) as info:
        layout.write_clip(tmp_path / "x.avi", frames)
    assert info.value.field == field
    assert list(tmp_path.iterdir()) == []


def test_read_clip_errors(tmp_path):
    with pytest.raises(NotFound):
        layout.read_clip(tmp_path / "missing.avi")
    corrupt = tmp_path / "corrupt.avi"
    corrupt.write_bytes(b"RIFF" + np.random.default_rng(1).bytes(4000))
    with pytest.raises(InvalidArgument) as info:
        layout.read_clip(corrupt)
    assert info.value.field == "clip"
    one = tmp_path / "one.avi"
    writer = cv2.VideoWriter(str(one), cv2.VideoWriter_fourcc(*"I420"), 2.5, (32, 32))
    writer.write(np.zeros((32, 32, 3), np.uint8))
    writer.release()
    with pytest.raises(InvalidArgument, match="1 frame"):
        layout.read_clip(one)
    outside = layout.write_clip(tmp_path / "outside.avi", _frames(2))
    (tmp_path / "root").mkdir()
    with pytest.raises(InvalidArgument, match="outside the dataset root"):
        layout.read_clip(outside, root=tmp_path / "root")


def test_metadata_append_is_line_atomic_and_repairs_a_torn_line(tmp_path):
    meta = tmp_path / "DS_volume" / "train_metadata.jsonl"
    layout.append_metadata(meta, {"file_name": "a_s00.avi", "cls": "A", "text": "t", "seed": 1})
    with open(meta, "ab") as handle:  # a crash in the middle of a line
        handle.write(b'{"file_name": "b_s00.avi", "cl')
    assert [r["file_name"] for r in layout.read_metadata(meta)] == ["a_s00.avi"]
    layout.append_metadata(meta, {"file_name": "c_s00.avi", "cls": "B"})
    lines = meta.read_text().splitlines()
    assert [json.loads(line)["file_name"] for line in lines] == ["a_s00.avi", "c_s00.avi"]
    with pytest.raises(InvalidArgument) as info:
        layout.append_metadata(meta, {"file_name": "../x.avi", "cls": "A"})
    assert info.value.field == "record.file_name"


def test_load_dataset_resolves_items_inside_the_folder(tmp_path):
    folder = layout.dataset_dir(tmp_path, "DS", "volume")
    layout.write_clip(folder / "v_s00.avi", _frames(2))
    layout.write_metadata(
        layout.metadata_path(tmp_path, "DS", "train"),
        [{"file_name": "v_s00.avi", "cls": 1, "text": "hello", "patient": "pt-1"}],
    )
    dataset = layout.load_dataset(tmp_path, "DS", "train")
    assert len(dataset) == 1 and dataset.classes == ["1"]
    item = dataset[0]
    assert item.path == (folder / "v_s00.avi").resolve() and item.text == "hello"
    assert item.extra == {"patient": "pt-1"}
    assert layout.read_clip(item.path).shape == (2, 32, 32)
    # A metadata line that points outside the dataset folder is refused.
    (tmp_path / "secret.avi").write_bytes(b"x")
    meta = layout.metadata_path(tmp_path, "DS", "test")
    meta.write_text(json.dumps({"file_name": "../secret.avi", "cls": "A"}) + "\n")
    with pytest.raises(InvalidArgument) as info:
        layout.load_dataset(tmp_path, "DS", "test")
    assert info.value.field == "test_metadata.jsonl:1.file_name"
    with pytest.raises(NotFound):
        layout.load_dataset(tmp_path, "Nope", "train")
    with pytest.raises(InvalidArgument):
        layout.load_dataset(tmp_path, "../DS", "train")
