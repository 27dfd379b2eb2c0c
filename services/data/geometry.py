"""Resize keeping the aspect ratio, then pad to a centred square (reference: 256 x 256)."""

from __future__ import annotations

import cv2
import numpy as np

from genaug.errors import InvalidArgument

DEFAULT_SIZE = 256
MAX_SIZE = 1024
"""Largest output side: an 8-frame I420 clip of 1024 px is 12.6 MB (8192 px would be 805 MB),
and the generators work at 64-256 px."""
UPSCALE_WARNING = 2.0
"""Enlarging a source's longer side by more than this is reported per item."""


def check_size(size: int, field: str = "size") -> int:
    """Require an even output side in [16, MAX_SIZE] (even: I420 clips need it)."""
    if not isinstance(size, int) or size < 16 or size > MAX_SIZE or size % 2:
        raise InvalidArgument(field, f"must be an even integer in [16, {MAX_SIZE}]")
    return size


def fit_square(frames: np.ndarray, size: int = DEFAULT_SIZE, fill: float = 0.0) -> np.ndarray:
    """Scale (T, H, W) frames so the longer side is `size`, then pad to `size` x `size`.

    Shrinking uses area interpolation (no aliasing); enlarging uses bilinear (no overshoot
    outside the input range). Padding is split evenly, the odd pixel going to the bottom/right.

    Args:
        frames: (T, H, W) float32 or uint8.
        size: output side in pixels.
        fill: value of the padding.

    Returns:
        (T, size, size) array of the input dtype.
    """
    check_size(size)
    if frames.ndim != 3:
        raise InvalidArgument("frames.shape", "must be (T, H, W)")
    _, height, width = frames.shape
    scale = size / max(height, width)
    new_h = min(size, max(1, round(height * scale)))
    new_w = min(size, max(1, round(width * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out = np.full((frames.shape[0], size, size), fill, dtype=frames.dtype)
    for index, frame in enumerate(frames):
        if (new_h, new_w) != (height, width):
            frame = cv2.resize(frame, (new_w, new_h), interpolation=interpolation)
        out[index, top : top + new_h, left : left + new_w] = frame
    return out
