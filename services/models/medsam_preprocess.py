"""Frame preprocessing for the MedSAM-family image encoders, as the original inference code does it.

- **LiteMedSAM**: replicate the grey frame to 3 channels, resize the longest side to 256
  (OpenCV `INTER_AREA`, aspect kept), min-max normalise the resized image to [0, 1], then zero-pad
  bottom and right to 256x256.
- **MedSAM ViT-B**: replicate to 3 channels, resize to 1024x1024 (bicubic, aspect not kept),
  min-max normalise to [0, 1].

Grey channels are identical, so the work is done on one channel and replicated at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Denominator floor of the min-max normalisation, as in the original (a flat frame maps to 0).
_MIN_RANGE = 1e-8


@dataclass(frozen=True)
class PriorPreprocessing:
    """How frames are turned into encoder input.

    Attributes:
        size: Side of the square network input.
        keep_aspect: True to resize the longest side to `size` and zero-pad (LiteMedSAM);
            False to resize both sides to `size` (MedSAM).
        interpolation: OpenCV interpolation flag of the resize.
    """

    size: int
    keep_aspect: bool
    interpolation: int


LITEMEDSAM_PREPROCESSING = PriorPreprocessing(256, keep_aspect=True, interpolation=cv2.INTER_AREA)
MEDSAM_PREPROCESSING = PriorPreprocessing(1024, keep_aspect=False, interpolation=cv2.INTER_CUBIC)


def check_frames(frames: np.ndarray) -> np.ndarray:
    """Validates grey frames and returns them as (N, H, W).

    Args:
        frames: (N, H, W) or a single (H, W) frame; uint8, or float in any finite range.

    Returns:
        The frames with a leading batch axis.

    Raises:
        ValueError: Wrong rank, empty, non-numeric or non-finite frames.
    """
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3:
        raise ValueError(f"frames: expected (N, H, W) grey frames, got shape {frames.shape}")
    if 0 in frames.shape:
        raise ValueError(f"frames: empty array of shape {frames.shape}")
    if frames.dtype != np.uint8 and not np.issubdtype(frames.dtype, np.floating):
        if not np.issubdtype(frames.dtype, np.integer):
            raise ValueError(f"frames: expected uint8 or float, got {frames.dtype}")
        frames = frames.astype(np.float32)
    if frames.dtype != np.uint8 and not np.isfinite(frames).all():
        raise ValueError("frames: contain NaN or infinity")
    return frames


def _resized_shape(h: int, w: int, spec: PriorPreprocessing) -> tuple[int, int]:
    if not spec.keep_aspect:
        return spec.size, spec.size
    scale = spec.size / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def preprocess_frame(frame: np.ndarray, spec: PriorPreprocessing) -> np.ndarray:
    """Preprocesses one grey frame.

    Args:
        frame: (H, W) uint8 or float.
        spec: The encoder's preprocessing.

    Returns:
        (size, size) float32 in [0, 1] (padding is 0), one channel of the 3-channel input.
    """
    if frame.dtype != np.uint8:
        frame = frame.astype(np.float32, copy=False)
    new_h, new_w = _resized_shape(*frame.shape, spec)
    if (new_h, new_w) != frame.shape:
        frame = cv2.resize(frame, (new_w, new_h), interpolation=spec.interpolation)
    frame = frame.astype(np.float32)
    lo, hi = float(frame.min()), float(frame.max())
    frame = (frame - lo) / max(hi - lo, _MIN_RANGE)
    out = np.zeros((spec.size, spec.size), dtype=np.float32)
    out[:new_h, :new_w] = frame
    return out


def preprocess_frames(frames: np.ndarray, spec: PriorPreprocessing) -> np.ndarray:
    """Preprocesses grey frames into 3-channel encoder input.

    Args:
        frames: (N, H, W) or (H, W); uint8 or float.
        spec: The encoder's preprocessing.

    Returns:
        (N, 3, size, size) float32, the grey channel replicated three times.
    """
    frames = check_frames(frames)
    grey = np.stack([preprocess_frame(f, spec) for f in frames])
    return np.repeat(grey[:, None], 3, axis=1)
