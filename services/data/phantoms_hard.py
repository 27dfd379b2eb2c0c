"""A benchmark with headroom: harder phantoms and an out-of-domain test set, from the same code.

The bundled Phantom is too easy to measure an augmentation gain (the real-data classifier scores
1.00). This variant renders the same cardiac-cine phantoms (`services.data.phantoms`) with

- subtler class differences: every class's attribute ranges are widened
  (`Difficulty.spread`, 1.2) so the nearest patients of two classes are closer, and can be pulled
  towards NOR's (`Difficulty.separation`; calibration kept 1.0: at 0.85-0.95 the low-data
  real-only macro-F1 fell to 0.45-0.54, below the target);
- larger intra-class variation: more position, size, shape, echo-level and heart-rate jitter,
  and per-patient gain, noise and speckle-grain spread (`IN_DOMAIN_STYLE`);
- one clear minority class: DCM has under a third of the others' patients;
- an out-of-domain dataset `<name>OOD` as from another scanner and protocol: lower gain, finer
  speckle, more noise, a wider field of view and a lower frame rate (fewer frames per beat)
  (`OUT_OF_DOMAIN_STYLE`), other patients (another seed). Nearly all its patients are in its
  test split; no model trains on it.

Deterministic by seed; about 10 s for both datasets. The difficulty was fixed before any
augmentation result was looked at, by the real-only classifier in the low-data regime
(`python -m benchmarks.hard_phantom_calibration`; runs in
`benchmarks/results/hard_phantom_calibration.json`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from services.data import builder
from services.data.phantoms import (
    BUNDLED_CLASS_RANGES,
    ClassRanges,
    PhantomStyle,
    generate_phantom_dataset,
)

HARD_NAME = "PhantomHard"
OOD_SUFFIX = "OOD"
HARD_SEED = 1414
HARD_PATIENTS = {"NOR": 56, "HCM": 56, "DCM": 18}
"""Patients per class of the in-domain dataset (DCM the minority, under 1/3)."""
OOD_PATIENTS = {"NOR": 16, "HCM": 16, "DCM": 8}
HARD_TEST_FRACTION = 0.4
OOD_TEST_FRACTION = 0.95  # every class keeps one (unused) training patient: the split's rule
# Lower bounds that keep the anatomy valid after widening (pixels at 64 px; fractions).
_FLOORS = {"cavity": 4.0, "wall": 1.5, "contraction": 0.03, "asymmetry": 0.0}
_REFERENCE_CLASS = "NOR"

IN_DOMAIN_STYLE = PhantomStyle(
    position_jitter=6.0,
    scale_range=(0.85, 1.15),
    ellipticity_range=(0.8, 1.2),
    myo_level_range=(0.64, 0.84),
    period_range=(8.5, 13.5),
    noise_std=0.015,
    patient_spread={"gain": 0.1, "noise": 0.3, "speckle": 0.15},
)
OUT_OF_DOMAIN_STYLE = replace(
    IN_DOMAIN_STYLE,
    gain=0.75,
    speckle_sigma=1.8,
    noise_std=0.04,
    zoom=0.8,
    period_range=(6.0, 9.0),
)


@dataclass(frozen=True)
class Difficulty:
    """How far apart the classes are.

    Attributes:
        separation: 1 keeps each class's bundled centre; 0 puts every class at NOR's centre.
        spread: Factor on every class range's half-width.
    """

    separation: float = 1.0
    spread: float = 1.2


DEFAULT_DIFFICULTY = Difficulty()


def hard_class_ranges(difficulty: Difficulty = DEFAULT_DIFFICULTY) -> ClassRanges:
    """The bundled class ranges pulled towards NOR's and widened (see `Difficulty`)."""
    reference = BUNDLED_CLASS_RANGES[_REFERENCE_CLASS]
    ranges: ClassRanges = {}
    for cls, attributes in BUNDLED_CLASS_RANGES.items():
        ranges[cls] = {}
        for key, (low, high) in attributes.items():
            anchor = sum(reference[key]) / 2.0
            centre = anchor + difficulty.separation * ((low + high) / 2.0 - anchor)
            half = (high - low) / 2.0 * difficulty.spread
            floor = _FLOORS[key]
            ranges[cls][key] = (max(floor, centre - half), max(floor + 1e-3, centre + half))
    return ranges


def ood_name(name: str = HARD_NAME) -> str:
    """The out-of-domain dataset's name for an in-domain dataset `name`."""
    return f"{name}{OOD_SUFFIX}"


def generate_hard_benchmark(
    root: str | os.PathLike,
    seed: int = HARD_SEED,
    *,
    name: str = HARD_NAME,
    difficulty: Difficulty = DEFAULT_DIFFICULTY,
    patients_per_class: dict[str, int] | None = None,
    ood_patients_per_class: dict[str, int] | None = None,
    size: int = 64,
    progress: bool = False,
) -> dict[str, builder.Summary]:
    """Write `<name>` (train/test) and `<name>OOD` (nearly all test) under `root`.

    Args:
        root: the dataset root.
        seed: benchmark seed (the out-of-domain patients come from `seed + 1`).
        name: in-domain dataset name.
        difficulty: class separation and spread.
        patients_per_class: in-domain patients (default `HARD_PATIENTS`).
        ood_patients_per_class: out-of-domain patients (default `OOD_PATIENTS`).
        size: frame side in pixels.
        progress: show tqdm bars.

    Returns:
        dataset name -> its summary.
    """
    ranges = hard_class_ranges(difficulty)
    variant = f"hard-s{difficulty.separation:g}-w{difficulty.spread:g}"
    common = dict(size=size, class_ranges=ranges, overwrite=True, progress=progress)
    in_domain = generate_phantom_dataset(
        root,
        seed,
        name=name,
        patients_per_class=dict(patients_per_class or HARD_PATIENTS),
        test_fraction=HARD_TEST_FRACTION,
        style=IN_DOMAIN_STYLE,
        variant=variant,
        **common,
    )
    out_of_domain = generate_phantom_dataset(
        root,
        seed + 1,
        name=ood_name(name),
        patients_per_class=dict(ood_patients_per_class or OOD_PATIENTS),
        test_fraction=OOD_TEST_FRACTION,
        style=OUT_OF_DOMAIN_STYLE,
        variant=f"{variant}-ood",
        **common,
    )
    return {name: in_domain, ood_name(name): out_of_domain}
