"""PyAV helpers: grey I420 AVI encoding and grey decoding of any video PyAV can open.

Clips are stored as the reference stores them: AVI, fourcc I420 (raw planar YUV 4:2:0), grey
replicated to three channels, which in YUV means chroma fixed at 128. We write the YUV planes
ourselves instead of letting OpenCV or swscale convert BGR: OpenCV's I420 writer shifts grey by
a few levels and tints it (measured: grey 128 reads back as BGR (123, 126, 124)), whereas the
explicit BT.601 limited-range mapping below reads back within 1 grey level in both PyAV and
OpenCV, and a second write/read round trip is exact.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction

import av
import av.error
import numpy as np

from genaug.errors import InvalidArgument
from services.data.safety import MAX_FRAMES, MAX_VOXELS, check_dims

logger = logging.getLogger(__name__)

# Full-range grey -> limited-range luma (BT.601: 16..235) and back.
_FULL_TO_LIMITED = np.round(16.0 + np.arange(256) * (219.0 / 255.0)).astype(np.uint8)
_LIMITED_TO_FULL = np.clip(np.round((np.arange(256) - 16.0) * (255.0 / 219.0)), 0, 255).astype(
    np.uint8
)
# 8-bit formats whose first plane is the luma (or grey) plane.
_Y_PLANE_FORMATS = frozenset(
    {
        "gray",
        "yuv420p",
        "yuvj420p",
        "yuv422p",
        "yuvj422p",
        "yuv444p",
        "yuvj444p",
        "yuv410p",
        "yuv411p",
        "yuv440p",
        "yuvj440p",
        "nv12",
        "nv21",
    }
)
_JPEG_RANGE = 2  # AVCOL_RANGE_JPEG: full-range YUV


def rgb_to_luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of an (..., 3) RGB array, as float32 in the input's units."""
    rgb = rgb.astype(np.float32, copy=False)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def frame_to_grey(frame: av.VideoFrame) -> np.ndarray:
    """Return one decoded frame as uint8 (H, W) full-range grey.

    Planar YUV and grey frames use the Y plane directly (expanded from limited range unless
    the stream says full range); anything else (RGB, palette, high bit depth) is converted to
    RGB by swscale and reduced to BT.601 luma.
    """
    name = frame.format.name
    if name in _Y_PLANE_FORMATS:
        plane = frame.planes[0]
        y = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        y = y[: frame.height, : frame.width]
        if name == "gray" or name.startswith("yuvj") or frame.color_range == _JPEG_RANGE:
            return y.copy()
        return _LIMITED_TO_FULL[y]
    luma = rgb_to_luma(frame.to_ndarray(format="rgb24"))
    return np.clip(np.round(luma), 0, 255).astype(np.uint8)


def decode_grey(path: str | os.PathLike, field: str) -> tuple[np.ndarray, float | None]:
    """Decode every frame of a video file to grey.

    Args:
        path: an existing video file (AVI, MP4, ...).
        field: the field named in errors.

    Returns:
        (frames uint8 (T, H, W), frames per second or None when the container has no rate).

    Raises:
        InvalidArgument: the file cannot be decoded, has no video stream, no frames, frames of
            different sizes, or absurd dimensions.
    """
    frames: list[np.ndarray] = []
    try:
        with av.open(os.fspath(path), mode="r") as container:
            if not container.streams.video:
                raise InvalidArgument(field, "the file has no video stream")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            check_dims(int(stream.frames or 0), ctx.height or 1, ctx.width or 1, field, 0)
            fps = float(stream.average_rate) if stream.average_rate else None
            for frame in container.decode(stream):
                grey = frame_to_grey(frame)
                if frames and grey.shape != frames[0].shape:
                    raise InvalidArgument(field, "frames change size mid-stream")
                frames.append(grey)
                if len(frames) > MAX_FRAMES or len(frames) * grey.size > MAX_VOXELS:
                    check_dims(len(frames), *grey.shape, field)
    except av.error.FFmpegError as exc:
        raise InvalidArgument(field, f"cannot decode video ({type(exc).__name__})") from None
    if not frames:
        raise InvalidArgument(field, "the video has no decodable frames")
    return np.stack(frames), fps


def encode_i420_avi(path: str | os.PathLike, frames: np.ndarray, fps: float) -> None:
    """Write uint8 grey frames (T, H, W) as an I420 AVI (raw YUV 4:2:0, chroma 128).

    H and W must be even (4:2:0 chroma). The caller owns atomicity (see `layout.write_clip`).
    """
    t, h, w = frames.shape
    chroma = np.full((h // 2, w), 128, dtype=np.uint8)  # U then V planes, (h/4, w) each
    rate = Fraction(fps).limit_denominator(1000)
    with av.open(os.fspath(path), mode="w", format="avi") as container:
        stream = container.add_stream("rawvideo", rate=rate)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        stream.codec_context.codec_tag = "I420"
        for index in range(t):
            planes = np.concatenate([_FULL_TO_LIMITED[frames[index]], chroma], axis=0)
            video_frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
