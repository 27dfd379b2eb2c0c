"""Which modality a source is, and why: DICOM tags, NIfTI header hints, intensity statistics.

The modality picks the intensity handling (`intensity.normalize`): CT is windowed in Hounsfield
units, MR is clipped to percentiles, everything else (`us`) is shown as stored. Every decision
comes with a short reason that the prepare summary reports per item; `modality` (or a labels
file's `modality` column) overrides it.
"""

from __future__ import annotations

import re

import numpy as np

MODALITIES = ("ct", "mr", "us")
CT_AIR_HU = -900.0
"""CT volumes hold air (about -1000 HU, or padding below it): a 0.5th percentile above this is
not a CT in Hounsfield units (nibabel's MR `anatomical.nii` has minimum -610, 1st pct 1205)."""
CT_MAX_HU = 4000.0
_SAMPLES = 1_000_000  # voxels the statistics look at (evenly strided)

_DICOM_TAGS = {"CT": "ct", "MR": "mr", "US": "us"}
_CT_WORDS = re.compile(r"(?<![A-Za-z])(CT|HU|hounsfield)(?![A-Za-z])", re.IGNORECASE)
_MR_WORDS = re.compile(
    r"(?<![A-Za-z])(MRI?|T1w?|T2w?|FLAIR|DWI|BOLD|fMRI|TE=\d|TR=\d)(?![A-Za-z])", re.IGNORECASE
)


def dicom_modality(tag: str) -> tuple[str, str]:
    """(modality, reason) from a DICOM Modality value; other modalities are shown as stored."""
    tag = (tag or "").strip().upper()
    if tag in _DICOM_TAGS:
        return _DICOM_TAGS[tag], f"DICOM Modality {tag}"
    return "us", f"DICOM Modality {tag or '(none)'}: shown as stored"


def header_hint(texts: list[str]) -> str | None:
    """`ct` or `mr` when free-text header fields name exactly one of them, else None."""
    text = " ".join(t for t in texts if t)
    ct, mr = bool(_CT_WORDS.search(text)), bool(_MR_WORDS.search(text))
    if ct != mr:
        return "ct" if ct else "mr"
    return None


def nifti_modality(header_texts: list[str], data: np.ndarray) -> tuple[str, str]:
    """(modality, reason) of a NIfTI volume: its header's words, else its intensities.

    Args:
        header_texts: the free-text fields (`descrip`, `aux_file`, `intent_name`).
        data: the voxels (any shape), NaN-free.
    """
    hint = header_hint(header_texts)
    if hint is not None:
        return hint, f"NIfTI header names {hint.upper()}"
    flat = data.reshape(-1)
    flat = flat[:: max(1, flat.size // _SAMPLES)]
    low, high = (float(v) for v in np.percentile(flat, [0.5, 99.5]))
    spread = f"NIfTI 0.5-99.5th percentiles {low:.0f}..{high:.0f}"
    if low <= CT_AIR_HU and high <= CT_MAX_HU:
        return "ct", f"{spread}: Hounsfield units with air"
    return "mr", f"{spread}: not Hounsfield units"
