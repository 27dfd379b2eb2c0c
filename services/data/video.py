"""Grey clips in and out of encoded video: the one PyAV decoder of ingest and the motion service.

Decoding (`decode_grey`, from a path or from bytes): every frame PyAV can decode becomes uint8
full-range grey with one conversion. Planar YUV and grey frames give their Y plane, expanded
from limited range (BT.601: 16..235) unless the stream says full range; anything else (RGB,
palette, high bit depth) is converted to RGB by swscale and reduced to BT.601 luma. Measured on
the bundled Phantom clips and on pydicom's echo cine (as I420, rgb24, H.264 and MJPEG files),
swscale's own `gray` conversion gives the same pixels within 1 grey level; the explicit mapping
is kept because it is the exact inverse of the writer below (a second write/read is exact).

One size guard for every decode (`safety.check_dims`: sides, frames, voxels), checked frame by
frame so an oversized stream is rejected before it is all in memory; a consumer with a smaller
budget passes its own `check` (the motion service's `check_dimensions`), applied the same way.

Writing:
- `encode_i420_avi`: the seed layout's clips, as the reference stores them: AVI, fourcc I420
  (raw planar YUV 4:2:0), grey as limited-range luma with chroma fixed at 128. We write the
  planes ourselves: OpenCV's I420 writer shifts grey by a few levels and tints it (grey 128
  reads back as BGR (123, 126, 124)), whereas this reads back within 1 level in PyAV and OpenCV.
- `encode_h264` / `temporary_h264`: H.264 in MP4 with libx264 and **no B-frames**, one reference
  frame and a single I-frame, so that frame `t > 0` is a P-frame predicted from frame `t - 1`
  only: its motion vectors are exactly the motion from `t - 1` to `t` (what
  `services.models.motion.field.codec_motion_field` reads back).

The motion service's clip checks raise `InvalidArgument(field, message)`: `encoded_video`
(empty, corrupt, no video stream), `frames` (not an array, fewer than 2 frames), `frames.dtype`
(not uint8), `frames.shape` (not 3-D, sides outside [MIN_SIDE, MAX_SIDE], more than
MAX_FRAMES frames or more than MAX_TOTAL_PIXELS pixels in all).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np

from genaug.errors import InvalidArgument
from services.data.safety import check_dims

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- grey conversion

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
    """Return one decoded frame as uint8 (H, W) full-range grey (see the module docstring)."""
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


# ---------------------------------------------------------------------------- decoding

ClipCheck = Callable[[int, int, int], None]
"""`check(frames, height, width)`: raises InvalidArgument when a clip of that size is refused."""


def _open_input(source: str | os.PathLike | bytes | bytearray | memoryview, field: str):
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise InvalidArgument(field, "is empty")
        return io.BytesIO(bytes(source))
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    raise InvalidArgument(field, f"expected a path or bytes, got {type(source).__name__}")


def decode_grey(
    source: str | os.PathLike | bytes | bytearray | memoryview,
    field: str = "source",
    *,
    check: ClipCheck | None = None,
) -> tuple[np.ndarray, float | None]:
    """Decode every frame of the first video stream of a file (or of its bytes) to grey.

    Args:
        source: a video file path, or the bytes of one (AVI, MP4, MKV, ...).
        field: the field named in errors.
        check: an extra size check applied before each frame is kept (the caller's budget),
            on top of the decoder's own guard (`safety.check_dims`).

    Returns:
        (frames uint8 (T, H, W), frames per second or None when the container has no rate).

    Raises:
        InvalidArgument: naming `field` when the input cannot be decoded, has no video stream,
            no frames or frames of different sizes; the guard's or `check`'s field otherwise.
    """
    target = _open_input(source, field)
    frames: list[np.ndarray] = []
    try:
        with av.open(target, mode="r") as container:
            if not container.streams.video:
                raise InvalidArgument(field, "has no video stream")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            check_dims(int(stream.frames or 0), ctx.height or 1, ctx.width or 1, field, 0)
            fps = float(stream.average_rate) if stream.average_rate else None
            for frame in container.decode(stream):
                size = (frame.height, frame.width)
                if frames and size != frames[0].shape:
                    first = frames[0].shape
                    raise InvalidArgument(
                        field,
                        f"frame {len(frames)} is {size[0]}x{size[1]}, "
                        f"frame 0 is {first[0]}x{first[1]}",
                    )
                check_dims(len(frames) + 1, *size, field)
                if check is not None:
                    check(len(frames) + 1, *size)
                frames.append(frame_to_grey(frame))
    except (av.error.FFmpegError, EOFError) as exc:
        raise InvalidArgument(field, f"cannot decode the video ({type(exc).__name__})") from None
    if not frames:
        raise InvalidArgument(field, "the video has no decodable frames")
    return np.stack(frames), fps


# ---------------------------------------------------------------------------- motion clips

MIN_SIDE = 16
MAX_SIDE = 4096
MAX_FRAMES = 10_000
# 64 Mi pixels (64 MiB of uint8 frames): the float32 motion field is 8x that.
MAX_TOTAL_PIXELS = 1 << 26


def check_dimensions(num_frames: int, height: int, width: int) -> None:
    """Rejects clip sizes outside the motion service's limits.

    Raises:
        InvalidArgument: `frames` for fewer than 2 frames, `frames.shape` for anything else.
    """
    if num_frames < 2:
        raise InvalidArgument("frames", f"{num_frames} frame(s); at least 2 are needed")
    if num_frames > MAX_FRAMES:
        raise InvalidArgument("frames.shape", f"{num_frames} frames; at most {MAX_FRAMES}")
    for name, side in (("height", height), ("width", width)):
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise InvalidArgument(
                "frames.shape", f"{name} {side} is outside [{MIN_SIDE}, {MAX_SIDE}]"
            )
    if num_frames * height * width > MAX_TOTAL_PIXELS:
        raise InvalidArgument(
            "frames.shape",
            f"{num_frames}x{height}x{width} is {num_frames * height * width} pixels; "
            f"at most {MAX_TOTAL_PIXELS}",
        )


def validate_frames(frames: object) -> np.ndarray:
    """Checks a grey clip and returns it as a C-contiguous uint8 array `(T, H, W)`.

    Args:
        frames: the clip; must be a numpy uint8 array of shape `(T, H, W)` with `T >= 2`.

    Raises:
        InvalidArgument: naming `frames`, `frames.dtype` or `frames.shape`.
    """
    if not isinstance(frames, np.ndarray):
        raise InvalidArgument("frames", f"expected a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise InvalidArgument("frames.dtype", f"expected uint8 grey levels, got {frames.dtype}")
    if frames.ndim != 3:
        raise InvalidArgument("frames.shape", f"expected (T, H, W), got {frames.shape}")
    check_dimensions(*frames.shape)
    return np.ascontiguousarray(frames)


def decode_video(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Decodes an encoded clip sent to the motion service into grey frames.

    `decode_grey` with the service's limits checked frame by frame (an oversized clip is
    rejected without decoding or holding all of it).

    Args:
        data: the encoded file (container + stream), e.g. the bytes of an `.avi` or `.mp4`.

    Returns:
        uint8 array `(T, H, W)`, `T >= 2`.

    Raises:
        InvalidArgument: `encoded_video` when the bytes are empty, not a video or corrupt,
            `frames` / `frames.shape` when the decoded clip is outside the limits.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidArgument("encoded_video", f"expected bytes, got {type(data).__name__}")
    # Frame counts below 2 are judged once the stream has ended, not on its first frame.
    frames, _ = decode_grey(
        data, "encoded_video", check=lambda t, h, w: check_dimensions(max(2, t), h, w)
    )
    return validate_frames(frames)


# ---------------------------------------------------------------------------- writing

# Constant quality: crf 10 keeps fine texture, so the encoder's motion search sees the real motion
# rather than quantisation noise. 2.5 fps mirrors the reference re-encode (it changes nothing in
# the motion search). Tuned x264 parameters:
#   bframes=0          only I/P frames (B-frames would carry bidirectional vectors)
#   ref=1              P-frames predict from frame t-1 only, never t-2 (the vector's `source` field
#                      does not say which past frame it points to)
#   keyint=infinite, scenecut=0   no I-frame after frame 0 (an I-frame has no vectors)
#   me=umh, merange=32 exhaustive-ish search up to 32 px per frame (hex/16 misses large motion)
#   threads=1          deterministic and polite on shared CPUs; a 256x256 clip is a few ms
DEFAULT_CRF = 10
DEFAULT_PRESET = "medium"
_FPS = Fraction(5, 2)
_X264_PARAMS = "bframes=0:ref=1:keyint=infinite:scenecut=0:me=umh:merange=32:threads=1"


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


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """Edge-replicates one row / column where needed: yuv420p needs even sides."""
    _, height, width = frames.shape
    pad_h, pad_w = height % 2, width % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w)), mode="edge")
    return frames


def encode_h264(
    frames: np.ndarray,
    file: str | os.PathLike | io.BytesIO,
    *,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
) -> None:
    """Writes grey frames as an H.264 MP4 with only I/P frames (see the module docstring).

    Odd sides are padded by edge replication to even ones (yuv420p), so the stream is
    `(H + H % 2) x (W + W % 2)`; whoever reads it crops back to `H x W`.

    Args:
        frames: uint8 `(T, H, W)` (validated).
        file: output path or seekable binary file object.
        crf: x264 constant rate factor (lower = higher quality).
        preset: x264 preset.
    """
    frames = _pad_even(validate_frames(frames))
    _, height, width = frames.shape
    with av.open(file, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=_FPS)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.options = {
            "crf": str(crf),
            "preset": preset,
            "bf": "0",
            "x264-params": _X264_PARAMS,
        }
        for image in frames:
            frame = av.VideoFrame.from_ndarray(image, format="gray")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def encode_h264_bytes(frames: np.ndarray, **kwargs: object) -> bytes:
    """`encode_h264` into memory; returns the MP4 file's bytes (e.g. for `decode_video`)."""
    buffer = io.BytesIO()
    encode_h264(frames, buffer, **kwargs)
    return buffer.getvalue()


@contextlib.contextmanager
def temporary_h264(
    frames: np.ndarray, *, tmp_dir: str | os.PathLike | None = None, **kwargs: object
) -> Iterator[Path]:
    """Encodes `frames` with `encode_h264` into a temporary `.mp4` and yields its path.

    The file is removed on exit, whether the body or the encoder raised or not.

    Args:
        frames: uint8 `(T, H, W)`.
        tmp_dir: directory of the temporary file (default: `tempfile.gettempdir()`).
        **kwargs: passed to `encode_h264` (`crf`, `preset`).
    """
    frames = validate_frames(frames)
    fd, name = tempfile.mkstemp(prefix="genaug-mv-", suffix=".mp4", dir=tmp_dir)
    os.close(fd)
    path = Path(name)
    try:
        encode_h264(frames, path, **kwargs)
        yield path
    finally:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError:
            logger.warning("could not remove temporary video %s", path, exc_info=True)
