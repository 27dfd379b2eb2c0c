"""Motion field extraction: sign and accuracy on known translations, input checks, temp files."""

from __future__ import annotations

import io

import av
import cv2
import numpy as np
import pytest

from genaug.errors import InvalidArgument
from services.data import video
from services.data.video import decode_video, encode_h264_bytes
from services.models.motion import field as motion
from services.models.motion.field import (
    MotionResult,
    NoMotionVectors,
    codec_motion_field,
    extract_motion,
    optical_flow_motion_field,
    paint_blocks,
)

TRANSLATIONS = [(2, 1), (-3, 2), (1, -2), (0, 3)]


def translating_texture(
    height: int, width: int, num_frames: int, dx: int, dy: int, seed: int = 0
) -> np.ndarray:
    """Smoothed noise whose content moves by (dx, dy) px per frame (positive = right / down)."""
    rng = np.random.default_rng(seed)
    margin = (abs(dx) + abs(dy)) * num_frames + 8
    noise = rng.random((height + 2 * margin, width + 2 * margin)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 1.5)
    noise = (noise - noise.min()) / (noise.max() - noise.min()) * 255
    crops = [
        noise[margin - t * dy : margin - t * dy + height, margin - t * dx : margin - t * dx + width]
        for t in range(num_frames)
    ]
    return np.stack(crops).round().astype(np.uint8)


def interior_median(field: np.ndarray, border: int) -> np.ndarray:
    """Median (x, y) over all fields, excluding `border` px where new content enters."""
    inner = field[:, :, border:-border, border:-border]
    return np.median(inner.transpose(1, 0, 2, 3).reshape(2, -1), axis=1)


def avi_bytes(frames: np.ndarray) -> bytes:
    """Lossless FFV1 grey in an AVI container, as a client might send."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="avi") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "gray"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="gray")))
        container.mux(stream.encode(None))
    return buffer.getvalue()


# --- accuracy and sign ---------------------------------------------------------------------


@pytest.mark.parametrize(("dx", "dy"), TRANSLATIONS)
def test_codec_field_follows_translation(dx: int, dy: int, tmp_path) -> None:
    frames = translating_texture(64, 64, 8, dx, dy)
    result = extract_motion(frames, "codec", tmp_dir=tmp_path)
    assert isinstance(result, MotionResult)
    assert result.method_used == "codec"
    assert result.motion_field.shape == (7, 2, 64, 64)
    assert result.motion_field.dtype == np.float32
    assert result.num_vectors > 0 and result.frames_without_vectors == ()
    # One macroblock (16 px) around the frame covers the strip where new content enters.
    np.testing.assert_allclose(interior_median(result.motion_field, 16), [dx, dy], atol=0.5)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("dx", "dy"), TRANSLATIONS)
def test_optical_flow_field_follows_translation(dx: int, dy: int) -> None:
    frames = translating_texture(64, 64, 8, dx, dy)
    result = extract_motion(frames, "optical_flow")
    assert result.method_used == "optical_flow"
    assert result.motion_field.shape == (7, 2, 64, 64)
    assert result.motion_field.dtype == np.float32
    # Farneback is sub-pixel here (measured error < 1e-3 px on this texture); the same 0.5 px
    # tolerance as the codec path is kept, as flow on real speckle is much noisier.
    np.testing.assert_allclose(interior_median(result.motion_field, 16), [dx, dy], atol=0.5)


def test_codec_and_flow_agree_and_match_wrappers() -> None:
    frames = translating_texture(64, 64, 4, 2, -1)
    codec = codec_motion_field(frames)
    flow = optical_flow_motion_field(frames)
    np.testing.assert_array_equal(codec, extract_motion(frames).motion_field)
    np.testing.assert_allclose(interior_median(codec - flow, 16), [0, 0], atol=0.5)


def test_odd_sizes_are_padded_for_yuv420_and_cropped_back() -> None:
    frames = translating_texture(47, 61, 4, 2, 1)
    field = codec_motion_field(frames)
    assert field.shape == (3, 2, 47, 61)
    np.testing.assert_allclose(np.median(field[:, :, 16:32, 16:48], axis=(0, 2, 3)), [2, 1])


def test_static_clip_gives_a_zero_field() -> None:
    frames = np.repeat(translating_texture(64, 64, 1, 0, 0), 3, axis=0)
    result = extract_motion(frames)
    assert result.num_vectors > 0  # skipped blocks still export a zero vector
    assert not result.motion_field.any()


def test_paint_blocks_fills_whole_blocks_with_dst_minus_src() -> None:
    # source, w, h, src_x, src_y, dst_x, dst_y, motion_x, motion_y, motion_scale
    mvs = np.array(
        [
            [-1, 16, 16, 6, 9, 8, 8, -8, 4, 4],  # src = dst + (-2, +1): content moved (+2, -1)
            [-1, 8, 8, 20, 4, 20, 4, 0, 0, 4],  # zero motion, 8x8 at x 16..24, y 0..8
            [-1, 16, 16, 30, 28, 24, 24, 12, 16, 2],  # clipped at the 20x28 frame edge
        ]
    )
    field, covered = paint_blocks(mvs, 20, 28)
    np.testing.assert_array_equal(
        field[:, :16, :16], np.broadcast_to([[[2.0]], [[-1.0]]], (2, 16, 16))
    )
    assert not field[:, :8, 16:24].any() and covered[:8, 16:24].all()
    np.testing.assert_array_equal(
        field[:, 16:20, 16:28], np.broadcast_to([[[-6.0]], [[-8.0]]], (2, 4, 12))
    )
    assert not covered[8:16, 16:28].any()
    assert covered.sum() == 16 * 16 + 8 * 8 + 4 * 12


def test_centre_fill_reproduces_the_reference_sparse_field() -> None:
    mvs = np.array([[-1, 16, 16, 6, 9, 8, 8, -8, 4, 4], [-1, 8, 8, 40, 4, 36, 4, 16, 0, 4]])
    field, covered = paint_blocks(mvs, 20, 30, fill="centre")
    assert covered.sum() == 2 and covered[8, 8] and covered[4, 29]  # dst_x 36 clipped to 29
    assert tuple(field[:, 8, 8]) == (2.0, -1.0) and tuple(field[:, 4, 29]) == (-4.0, 0.0)
    frames = translating_texture(64, 64, 4, 2, 1)
    sparse = extract_motion(frames, fill="centre")
    dense = extract_motion(frames)
    assert sparse.coverage < 0.02 < 0.99 < dense.coverage
    assert (sparse.motion_field[:, :, 24, 24] == dense.motion_field[:, :, 24, 24]).all()
    with pytest.raises(InvalidArgument) as info:
        extract_motion(frames, fill="pixel")
    assert info.value.field == "fill"


# --- no silent fallback ----------------------------------------------------------------------


def test_codec_without_vectors_on_moving_clip_raises(monkeypatch) -> None:
    frames = translating_texture(64, 64, 4, 3, 0)
    empty = np.zeros((0, 10), np.int64)
    monkeypatch.setattr(
        motion, "_read_motion_vectors", lambda path: [("I", empty)] + [("P", empty)] * 3
    )
    with pytest.raises(NoMotionVectors, match="optical_flow"):
        extract_motion(frames, "codec")


def test_codec_without_vectors_on_static_clip_reports(monkeypatch) -> None:
    frames = np.full((3, 32, 32), 128, np.uint8)
    empty = np.zeros((0, 10), np.int64)
    monkeypatch.setattr(
        motion, "_read_motion_vectors", lambda path: [("I", empty)] * 1 + [("P", empty)] * 2
    )
    result = extract_motion(frames, "codec")
    assert result.method_used == "codec"
    assert result.frames_without_vectors == (0, 1) and result.coverage == 0.0


def test_unknown_method_is_rejected() -> None:
    with pytest.raises(InvalidArgument) as info:
        extract_motion(np.zeros((2, 32, 32), np.uint8), "farneback")
    assert info.value.field == "method"


# --- decoding and bad input --------------------------------------------------------------------


def test_decode_reads_avi_and_mp4() -> None:
    frames = translating_texture(48, 64, 5, 1, 1)
    np.testing.assert_array_equal(decode_video(avi_bytes(frames)), frames)
    decoded = decode_video(encode_h264_bytes(frames))
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - frames).mean() < 2  # crf 10: near-lossless


@pytest.mark.parametrize(
    "data",
    [b"", b"not a video at all" * 50, b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(300)],
    ids=["empty", "garbage", "broken-avi-header"],
)
def test_corrupt_bytes_are_invalid_argument(data: bytes) -> None:
    with pytest.raises(InvalidArgument) as info:
        decode_video(data)
    assert info.value.field == "encoded_video"


def test_truncated_mp4_is_invalid_argument() -> None:
    data = encode_h264_bytes(translating_texture(32, 32, 4, 1, 0))
    with pytest.raises(InvalidArgument) as info:
        decode_video(data[: len(data) // 2])
    assert info.value.field == "encoded_video"


def test_decoded_clip_limits() -> None:
    with pytest.raises(InvalidArgument) as info:
        decode_video(avi_bytes(np.zeros((1, 32, 32), np.uint8)))
    assert info.value.field == "frames"
    with pytest.raises(InvalidArgument) as info:
        decode_video(avi_bytes(np.zeros((3, 8, 32), np.uint8)))
    assert info.value.field == "frames.shape"


@pytest.mark.parametrize(
    ("frames", "field"),
    [
        (np.zeros((1, 32, 32), np.uint8), "frames"),
        (np.zeros((0, 32, 32), np.uint8), "frames"),
        ([[[0] * 32] * 32] * 2, "frames"),
        (np.zeros((2, 32, 32), np.float32), "frames.dtype"),
        (np.zeros((2, 32, 32), np.uint16), "frames.dtype"),
        (np.zeros((2, 32, 32, 3), np.uint8), "frames.shape"),
        (np.zeros((2, 8, 32), np.uint8), "frames.shape"),
        (np.zeros((2, 32, 5000), np.uint8), "frames.shape"),
        (np.zeros((10_001, 16, 16), np.uint8), "frames.shape"),
        (np.zeros((5, 4096, 4096), np.uint8), "frames.shape"),
    ],
    ids=[
        "1-frame",
        "0-frame",
        "list",
        "float32",
        "uint16",
        "rgb",
        "tiny",
        "huge-side",
        "too-many-frames",
        "too-many-pixels",
    ],
)
@pytest.mark.parametrize("method", ["codec", "optical_flow"])
def test_bad_frames_are_invalid_argument(frames, field: str, method: str, tmp_path) -> None:
    with pytest.raises(InvalidArgument) as info:
        extract_motion(frames, method, tmp_dir=tmp_path)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert list(tmp_path.iterdir()) == []


# --- temporary files -------------------------------------------------------------------------


def test_temp_file_removed_when_reading_fails(monkeypatch, tmp_path) -> None:
    seen = []

    def fail(path):
        seen.append(path)
        assert path.exists() and path.parent == tmp_path
        raise RuntimeError("boom")

    monkeypatch.setattr(motion, "_read_motion_vectors", fail)
    with pytest.raises(RuntimeError, match="boom"):
        codec_motion_field(translating_texture(32, 32, 3, 1, 0), tmp_dir=tmp_path)
    assert seen and list(tmp_path.iterdir()) == []


def test_temp_file_removed_when_encoding_fails(monkeypatch, tmp_path) -> None:
    def fail(frames, path, **kwargs):
        path.write_bytes(b"partial")
        raise RuntimeError("encoder failed")

    monkeypatch.setattr(video, "encode_h264", fail)
    with pytest.raises(RuntimeError, match="encoder failed"):
        codec_motion_field(translating_texture(32, 32, 3, 1, 0), tmp_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
