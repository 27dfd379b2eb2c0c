"""Grey clips in and out of encoded video.

`decode_video` turns encoded bytes (any container and codec PyAV reads: AVI, MP4, MKV, ...) into
grey uint8 frames `(T, H, W)`. `encode_h264` / `temporary_h264` write grey frames as H.264 in MP4
with libx264 and **no B-frames**, one reference frame and a single I-frame, so that frame `t > 0`
is a P-frame predicted from frame `t - 1` only: its motion vectors are exactly the motion from
`t - 1` to `t` (what `motion.codec_motion_field` reads back).

Every check on client input raises `InvalidArgument(field, message)`:
`encoded_video` (empty, corrupt, no video stream), `frames` (not an array, fewer than 2 frames),
`frames.dtype` (not uint8), `frames.shape` (not 3-D, sides outside [MIN_SIDE, MAX_SIDE], more than
MAX_FRAMES frames or more than MAX_TOTAL_PIXELS pixels in all).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from genaug.errors import InvalidArgument

logger = logging.getLogger(__name__)

MIN_SIDE = 16
MAX_SIDE = 4096
MAX_FRAMES = 10_000
# 64 Mi pixels (64 MiB of uint8 frames): the float32 motion field is 8x that.
MAX_TOTAL_PIXELS = 1 << 26

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


def check_dimensions(num_frames: int, height: int, width: int) -> None:
    """Rejects clip sizes outside the service limits.

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
    """Decodes an encoded clip into grey frames.

    Only the first video stream is read. Colour input is converted to luma by swscale
    (`format="gray"`). The size limits are checked frame by frame while decoding, so an
    oversized clip is rejected without decoding (or holding) all of it.

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
    if len(data) == 0:
        raise InvalidArgument("encoded_video", "is empty")
    frames: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(bytes(data)), mode="r") as container:
            if not container.streams.video:
                raise InvalidArgument("encoded_video", "contains no video stream")
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                if not frames:
                    size = (frame.height, frame.width)
                elif (frame.height, frame.width) != size:
                    raise InvalidArgument(
                        "encoded_video",
                        f"frame {len(frames)} is {frame.height}x{frame.width}, "
                        f"frame 0 is {size[0]}x{size[1]}",
                    )
                # Sides, frame count and total pixels, before this frame is kept.
                check_dimensions(max(2, len(frames) + 1), *size)
                frames.append(frame.to_ndarray(format="gray"))
    except (av.error.FFmpegError, EOFError) as exc:
        raise InvalidArgument("encoded_video", f"cannot be decoded: {exc}") from None
    if not frames:
        raise InvalidArgument("encoded_video", "no frame could be decoded")
    return validate_frames(np.stack(frames))


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
