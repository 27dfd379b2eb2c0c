"""Pixel-space distances between clips, for memorisation checks (the filter's level and the
study's audit use the same definition).

Each clip is reduced to a signature: every frame area-downsampled to at most `SIGNATURE_SIDE` px
a side (robust to speckle-level noise; 32 KB per 8-frame clip, so tens of thousands of training
clips fit in memory), flattened. The distance of two signatures is the RMS difference over every
frame and pixel, in the clips' own units ([-1, 1] for the filter's clips).
"""

from __future__ import annotations

import cv2
import numpy as np

SIGNATURE_SIDE = 32


def signature(clip: np.ndarray, side: int = SIGNATURE_SIDE) -> np.ndarray:
    """A clip (T, 1, H, W) or (T, H, W) -> flat float32 area-downsampled copy (T*h*w,)."""
    shape = np.shape(clip)
    frames = np.asarray(clip, np.float32).reshape(-1, *shape[-2:])
    h, w = frames.shape[1:]
    scale = min(1.0, side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size != (w, h):
        frames = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
    return frames.reshape(-1)


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """RMS distances (len(a), len(b)) between signatures (N, D) and (M, D)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(squared, 0.0) / a.shape[1])


def nearest(queries: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, (distance, index) of its nearest reference row (RMS distance)."""
    d = distances(queries, references)
    index = d.argmin(axis=1)
    return d[np.arange(len(d)), index], index
