"""`FrameSequence`: what every ingest reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TEXT_RISKS = ("none", "cropped", "possible")
"""How likely a sequence's pixels carry burned-in text (patient names, dates, settings):
`none` (CT/MR/NIfTI/slices with no annotation flag), `cropped` (ultrasound cropped and masked to
its regions), `possible` (ultrasound or flagged DICOM without usable regions, videos)."""


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
        modality_source: how `modality` was decided (shown per item in the prepare summary).
        text_risk: one of `TEXT_RISKS`.
        notes: what the reader did to the pixels or could not do (no identifying values).
    """

    frames: np.ndarray
    modality: str
    value_range: tuple[float, float] | None = None
    part: str = ""
    fps: float | None = None
    patient_key: str = field(default="", repr=False)
    modality_source: str = ""
    text_risk: str = "none"
    notes: list[str] = field(default_factory=list)
