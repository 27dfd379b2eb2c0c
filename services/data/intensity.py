"""Per-modality intensity normalisation to [0, 1], then to uint8 for writing.

- CT: clip Hounsfield units to a window (reference: [-1000, 400]) and scale it to [0, 1].
- MR: clip to the 0.5-99.5 percentiles of the whole sequence (reference, ACDC) and scale.
- Ultrasound and other already-displayable data ("as is"): divide by the source's nominal
  range (0-255 for 8-bit video/PNG/DICOM) when known, else min-max over the sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genaug.errors import InvalidArgument

MODALITIES = ("ct", "mr", "us")


@dataclass(frozen=True)
class IntensityConfig:
    """Normalisation parameters."""

    ct_window: tuple[float, float] = (-1000.0, 400.0)
    mr_percentiles: tuple[float, float] = (0.5, 99.5)

    def validate(self) -> IntensityConfig:
        """Raise InvalidArgument (naming the parameter) for an empty or inverted range."""
        low, high = self.ct_window
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise InvalidArgument("ct_window", "needs LOW < HIGH")
        p_low, p_high = self.mr_percentiles
        if not 0.0 <= p_low < p_high <= 100.0:
            raise InvalidArgument("mr_percentiles", "needs 0 <= LOW < HIGH <= 100")
        return self


def _scale(frames: np.ndarray, low: float, high: float) -> np.ndarray:
    if not high > low:
        return np.zeros_like(frames, dtype=np.float32)
    out = (frames.astype(np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(out, 0.0, 1.0)


def normalize(
    frames: np.ndarray,
    modality: str,
    value_range: tuple[float, float] | None = None,
    config: IntensityConfig | None = None,
) -> np.ndarray:
    """Map raw intensities to float32 [0, 1].

    Args:
        frames: (T, H, W) raw intensities (HU for CT).
        modality: `ct`, `mr` or `us`.
        value_range: nominal (low, high) of the source encoding, used for `us`.
        config: windows and percentiles; defaults to `IntensityConfig()`.

    Returns:
        float32 array of the same shape with values in [0, 1].
    """
    cfg = (config or IntensityConfig()).validate()
    if modality == "ct":
        return _scale(frames, *cfg.ct_window)
    if modality == "mr":
        low, high = np.percentile(frames, cfg.mr_percentiles)
        return _scale(frames, float(low), float(high))
    if modality == "us":
        if value_range is None:
            value_range = (float(frames.min()), float(frames.max()))
        return _scale(frames, *value_range)
    raise InvalidArgument("modality", f"unknown modality {modality!r}; use {MODALITIES}")


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """Round [0, 1] floats to uint8 0-255 (values outside are clipped)."""
    return np.clip(np.round(unit * 255.0), 0, 255).astype(np.uint8)
