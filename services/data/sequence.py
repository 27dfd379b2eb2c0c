"""`FrameSequence`: what every ingest reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class FrameSequence:
    """One ingested sequence.

    Attributes:
        frames: float32 (T, H, W); HU for CT, stored values otherwise.
        modality: `ct`, `mr` or `us`.
        value_range: nominal (low, high) of the stored encoding when known (8-bit: 0-255).
        part: which sequence of a multi-sequence source (`""`, `z012`, `t001`, `series2`).
        fps: source frame rate when the container records one.
        patient_key: identifying key (DICOM PatientID) used only to derive a pseudonym; never
            written, logged or shown in `repr`.
    """

    frames: np.ndarray
    modality: str
    value_range: tuple[float, float] | None = None
    part: str = ""
    fps: float | None = None
    patient_key: str = field(default="", repr=False)
