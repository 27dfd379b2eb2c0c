"""Dense motion fields of a grey clip: codec motion vectors (the reference) or Farneback flow.

Convention shared by both methods (and by the reference's saved `<clip>.npy`):

- the field is float32 `(T-1, 2, H, W)`; field `k` is the motion from frame `k` to frame `k+1`;
- channel 0 is horizontal (x, positive to the right), channel 1 vertical (y, positive down), in
  pixels per frame;
- the value at pixel `p` is the displacement `dst - src` of the content that lands on `p` in
  frame `k+1` (the field is indexed in the coordinates of the later frame). Content translating
  by `(dx, dy)` px per frame gives `(dx, dy)` everywhere it is visible in both frames.

**Codec** (`codec_motion_field`, the reference method): the clip is encoded with libx264 with
only P-frames after frame 0 and one reference frame (`services.data.video.encode_h264`), and the
encoder's motion vectors are read back with motion-vector-extractor. FFmpeg exports, per
inter-coded block, `source = -1` (past reference), the block size `w x h`, its centre `dst` and
`motion_xy / motion_scale` pointing from `dst` to the matching `src` in the previous frame; the
stored value is `source * motion_xy / motion_scale = dst - src`, as in the reference. Unlike the
reference (which wrote the value at the block centre pixel only, leaving the rest zero), each
vector fills its whole `w x h` block by default, so the field is dense per block;
`fill="centre"` reproduces the reference's sparse field. Intra-coded blocks in a
P-frame carry no vector and stay zero (`MotionResult.coverage` says how much is covered).
Frame 0 is the I-frame, has no vectors and is dropped.

**Optical flow** (`optical_flow_motion_field`): OpenCV Farneback, computed from frame `k+1` back
to frame `k` and negated, so that it is indexed like the codec field. It is a fallback that is
used **only when asked for** (`extract_motion(..., method="optical_flow")`): when the codec path
yields no vector at all for a clip that moves, `codec_motion_field` raises `NoMotionVectors`
instead of switching method silently; the caller decides whether to retry with optical flow.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from mvextractor.videocap import VideoCap

from genaug.errors import FailedPrecondition, InvalidArgument
from services.data.video import temporary_h264, validate_frames

logger = logging.getLogger(__name__)

Method = Literal["codec", "optical_flow"]
METHODS: tuple[str, ...] = ("codec", "optical_flow")
Fill = Literal["block", "centre"]
FILLS: tuple[str, ...] = ("block", "centre")

# A clip "moves" when consecutive frames differ by more than this mean absolute grey level.
MOVING_MEAN_ABS_DIFF = 1.0

# Farneback parameters: 4 pyramid levels reach motions of a few tens of pixels; window 15
# averages out ultrasound speckle; poly_n 5 / sigma 1.1 are OpenCV's recommended pair.
_FARNEBACK = {
    "pyr_scale": 0.5,
    "levels": 4,
    "winsize": 15,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.1,
    "flags": 0,
}


class NoMotionVectors(FailedPrecondition):
    """The codec path produced no motion vector for a moving clip.

    Maps to FAILED_PRECONDITION: the request itself is valid, but this method cannot serve it.
    The caller may retry explicitly with `method="optical_flow"`.
    """


@dataclass(frozen=True)
class MotionResult:
    """What `extract_motion` returns.

    Attributes:
        motion_field: float32 `(T-1, 2, H, W)`, channel 0 = x, field `k` = motion `k -> k+1`.
        method_used: `"codec"` or `"optical_flow"`; always the method that was asked for.
        num_vectors: codec motion vectors read from the P-frames (`None` for optical flow).
        frames_without_vectors: field indices `k` whose P-frame gave no vector (all zero field).
        coverage: fraction of field pixels covered by a codec block (1.0 for optical flow).
    """

    motion_field: np.ndarray
    method_used: str
    num_vectors: int | None
    frames_without_vectors: tuple[int, ...]
    coverage: float


def is_moving(frames: np.ndarray, threshold: float = MOVING_MEAN_ABS_DIFF) -> bool:
    """True when some pair of consecutive frames differs by more than `threshold` on average."""
    diffs = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2))
    return bool((diffs > threshold).any())


def _read_motion_vectors(path: str | os.PathLike) -> list[tuple[str, np.ndarray]]:
    """Returns `(frame_type, mvs int32 (N, 10))` per decoded frame, in display order."""
    cap = VideoCap()
    try:
        if not cap.open(os.fspath(path)):
            raise RuntimeError(f"motion-vector-extractor could not open {path}")
        cap.set_decode_frames(False)
        out = []
        while True:
            ret, _frame, mvs, frame_type = cap.read()
            if not ret:
                break
            out.append((str(frame_type), np.asarray(mvs, dtype=np.int64).reshape(-1, 10)))
        return out
    finally:
        cap.release()


def paint_blocks(
    mvs: np.ndarray, height: int, width: int, fill: Fill = "block"
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterises exported motion vectors into a field of `source * motion_xy / motion_scale`.

    With `fill="block"` each vector fills its block: `w x h` pixels centred on
    `(dst_x, dst_y)`, i.e. columns `[dst_x - w // 2, dst_x - w // 2 + w)`, clipped to the frame.
    With `fill="centre"` only the pixel `(dst_y, dst_x)` (clipped to the frame) is set, as the
    reference script did.

    Args:
        mvs: int `(N, 10)` rows `source, w, h, src_x, src_y, dst_x, dst_y, motion_x, motion_y,
            motion_scale` (motion-vector-extractor / FFmpeg `AVMotionVector`).
        height: frame height.
        width: frame width.
        fill: `"block"` (dense per block) or `"centre"` (reference, one pixel per block).

    Returns:
        `(field, covered)`: float32 `(2, height, width)` and bool `(height, width)`.
    """
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    mvs = np.asarray(mvs, dtype=np.int64).reshape(-1, 10)
    mvs = mvs[(mvs[:, 9] > 0) & (mvs[:, 1] > 0) & (mvs[:, 2] > 0)]
    field = np.zeros((2, height, width), np.float32)
    covered = np.zeros((height, width), bool)
    if len(mvs) == 0:
        return field, covered
    values = np.stack(
        [
            mvs[:, 0] * mvs[:, 7] / mvs[:, 9],
            mvs[:, 0] * mvs[:, 8] / mvs[:, 9],
            np.ones(len(mvs)),
        ]
    ).astype(np.float32)
    if fill == "centre":
        # Later rows overwrite earlier ones at the same pixel, as numpy fancy assignment does.
        cx, cy = np.clip(mvs[:, 5], 0, width - 1), np.clip(mvs[:, 6], 0, height - 1)
        field[:, cy, cx] = values[:2]
        covered[cy, cx] = True
        return field, covered
    bw, bh = mvs[:, 1], mvs[:, 2]
    x0, y0 = mvs[:, 5] - bw // 2, mvs[:, 6] - bh // 2
    # Paint on a grid of g x g cells, g = the largest step that divides every block size and
    # origin (4 for H.264 partitions), so each block is a few vectorised assignments.
    base_x, base_y = min(0, int(x0.min())), min(0, int(y0.min()))
    x0, y0 = x0 - base_x, y0 - base_y
    g = int(np.gcd.reduce(np.concatenate([bw, bh, x0, y0])))
    rows = -(-max(int((y0 + bh).max()), height - base_y) // g)
    cols = -(-max(int((x0 + bw).max()), width - base_x) // g)
    cells = np.zeros((3, rows, cols), np.float32)
    cy, cx, ch, cw = y0 // g, x0 // g, bh // g, bw // g
    for size_h, size_w in set(zip(ch.tolist(), cw.tolist(), strict=True)):
        sel = (ch == size_h) & (cw == size_w)
        sy, sx, sv = cy[sel], cx[sel], values[:, sel]
        for dy in range(size_h):
            for dx in range(size_w):
                cells[:, sy + dy, sx + dx] = sv
    dense = cells.repeat(g, axis=1).repeat(g, axis=2)
    dense = dense[:, -base_y : -base_y + height, -base_x : -base_x + width]
    field[:] = dense[:2]
    covered[:] = dense[2] > 0
    return field, covered


def _codec_motion(
    frames: np.ndarray, tmp_dir: str | os.PathLike | None, fill: Fill
) -> MotionResult:
    num_frames, height, width = frames.shape
    with temporary_h264(frames, tmp_dir=tmp_dir) as path:
        decoded = _read_motion_vectors(path)
    types = [frame_type for frame_type, _ in decoded]
    if len(decoded) != num_frames:
        raise RuntimeError(f"encoded {num_frames} frames but read back {len(decoded)}")
    if types[0] != "I" or "B" in types:
        raise RuntimeError(f"unexpected frame types from the encoder: {''.join(types)}")
    field = np.zeros((num_frames - 1, 2, height, width), np.float32)
    covered = 0
    num_vectors = 0
    empty: list[int] = []
    for k, (_, mvs) in enumerate(decoded[1:]):
        # Painting clips to H x W, which also crops the even-side padding of the stream.
        field[k], mask = paint_blocks(mvs, height, width, fill)
        covered += int(mask.sum())
        num_vectors += len(mvs)
        if len(mvs) == 0:
            empty.append(k)
    return MotionResult(
        motion_field=field,
        method_used="codec",
        num_vectors=num_vectors,
        frames_without_vectors=tuple(empty),
        coverage=covered / field[:, 0].size,
    )


def codec_motion_field(
    frames: np.ndarray, *, tmp_dir: str | os.PathLike | None = None, fill: Fill = "block"
) -> np.ndarray:
    """Motion field from the H.264 encoder's motion vectors (the reference method).

    Args:
        frames: uint8 `(T, H, W)`, `T >= 2`.
        tmp_dir: where the temporary `.mp4` is written (always deleted); default system temp.
        fill: `"block"` (default, dense per block) or `"centre"` (the reference's sparse field:
            one pixel per block, the rest zero; what the official checkpoints were trained on).

    Returns:
        float32 `(T-1, 2, H, W)`, see the module docstring for the convention.

    Raises:
        InvalidArgument: bad `frames`.
        NoMotionVectors: no vector at all although the clip moves.
    """
    return extract_motion(frames, "codec", tmp_dir=tmp_dir, fill=fill).motion_field


def optical_flow_motion_field(frames: np.ndarray) -> np.ndarray:
    """Motion field from OpenCV Farneback flow; same shape and convention as the codec field.

    Args:
        frames: uint8 `(T, H, W)`, `T >= 2`.

    Returns:
        float32 `(T-1, 2, H, W)`.
    """
    frames = validate_frames(frames)
    num_frames, height, width = frames.shape
    field = np.empty((num_frames - 1, 2, height, width), np.float32)
    for k in range(num_frames - 1):
        # Flow from k+1 back to k: content at p in frame k+1 came from p + back(p), so the
        # displacement k -> k+1 indexed at p (the codec convention) is -back(p).
        back = cv2.calcOpticalFlowFarneback(frames[k + 1], frames[k], None, **_FARNEBACK)
        field[k] = -back.transpose(2, 0, 1)
    return field


def extract_motion(
    frames: np.ndarray,
    method: Method = "codec",
    *,
    tmp_dir: str | os.PathLike | None = None,
    fill: Fill = "block",
) -> MotionResult:
    """Computes the motion field with the requested method; never switches method by itself.

    Args:
        frames: uint8 `(T, H, W)`, `T >= 2`.
        method: `"codec"` (reference, default) or `"optical_flow"` (explicit fallback).
        tmp_dir: directory for the codec path's temporary file.
        fill: codec path only, `"block"` or `"centre"` (see `codec_motion_field`).

    Returns:
        `MotionResult`; `method_used == method`.

    Raises:
        InvalidArgument: bad `frames`, unknown `method` or `fill`.
        NoMotionVectors: codec path, no vector at all for a moving clip. A P-frame without
            vectors among others is not an error: it is listed in `frames_without_vectors`.
    """
    if method not in METHODS:
        raise InvalidArgument("method", f"{method!r} is not one of {', '.join(METHODS)}")
    if fill not in FILLS:
        raise InvalidArgument("fill", f"{fill!r} is not one of {', '.join(FILLS)}")
    frames = validate_frames(frames)
    if method == "optical_flow":
        field = optical_flow_motion_field(frames)
        return MotionResult(field, "optical_flow", None, (), 1.0)
    result = _codec_motion(frames, tmp_dir, fill)
    if result.num_vectors == 0 and is_moving(frames):
        raise NoMotionVectors(
            "the codec produced no motion vector for a moving clip; "
            'request method="optical_flow" explicitly to use optical flow'
        )
    if result.frames_without_vectors:
        logger.warning(
            "codec motion: P-frame(s) without vectors for fields %s (left at zero)",
            list(result.frames_without_vectors),
        )
    return result
