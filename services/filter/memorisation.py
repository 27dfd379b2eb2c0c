"""The filter's optional memorisation level: reject synthetic clips that copy a training clip.

A synthetic clip that is closer to one real training clip than real clips of different
patients ever are to each other may reproduce that patient, and leaks them into a training set
meant to be shared. Distances are in pixel space (`services.models.clip_distance`: RMS over
every frame and pixel of <= 32x32 area-downsampled copies, in the clips' [-1, 1] units).

The threshold is calibrated on the references alone (no test data): for each reference, the
distance to the nearest reference of another case (patient); the threshold is the `quantile`
quantile of those distances (default 0.01: closer than 99% of real patients are to their
nearest other patient).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from services.models.clip_distance import distances, nearest, signature

__all__ = ["apply_level", "calibrate", "nearest", "other_case_nearest", "signature"]

DEFAULT_QUANTILE = 0.01
LEVEL = "memorisation"


def other_case_nearest(references: np.ndarray, cases: Sequence[str]) -> np.ndarray:
    """Each reference's distance to the nearest reference of another case (inf if none)."""
    d = distances(references, references)
    same = np.asarray(cases)[:, None] == np.asarray(cases)[None, :]
    d[same] = math.inf
    return d.min(axis=1)


def calibrate(references: np.ndarray, cases: Sequence[str], quantile: float) -> float:
    """The memorisation threshold (see the module docstring).

    Raises:
        ValueError: fewer than two cases among the references, or a quantile outside (0, 1).
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"the memorisation quantile must be in (0, 1), got {quantile}")
    if len(set(cases)) < 2:
        raise ValueError("the memorisation level needs reference clips of at least 2 cases")
    return float(np.quantile(other_case_nearest(references, cases), quantile))


def reason(distance: float, reference_id: str, threshold: float) -> str:
    """The rejection reason of a near-copy."""
    return (
        f"{LEVEL}: {distance:.4f} from training clip {reference_id} (< threshold {threshold:.4f})"
    )


def apply_level(
    verdicts: list,
    nearest_distances: np.ndarray,
    nearest_ids: Sequence[str],
    threshold: float,
) -> int:
    """Reject every still-kept verdict whose nearest reference is closer than `threshold`
    (`pool.Verdict`s, in pool order); returns how many it rejected."""
    rejected = 0
    for verdict, distance, reference_id in zip(
        verdicts, nearest_distances, nearest_ids, strict=True
    ):
        if verdict.keep and distance < threshold:
            verdict.keep, verdict.rejected_by = False, LEVEL
            verdict.reasons.insert(0, reason(float(distance), reference_id, threshold))
            rejected += 1
    return rejected
