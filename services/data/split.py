"""Patient-level train/test split, stratified by class, reproducible from a seed.

All clips of one patient land on one side. Each patient is stratified under its majority
class (ties: the alphabetically first). Per class, `round(n * test_fraction)` patients go to
test, at least one when the class has two or more patients and the fraction is positive, and
never all of them, so every class keeps a training patient.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np

from genaug.errors import InvalidArgument


def patient_classes(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Map each patient to its majority class from (patient, class) pairs, one per clip."""
    counts: dict[str, Counter[str]] = {}
    for patient, cls in pairs:
        counts.setdefault(patient, Counter())[cls] += 1
    return {
        patient: min(counter, key=lambda c: (-counter[c], c))
        for patient, counter in sorted(counts.items())
    }


def split_patients(
    classes: Mapping[str, str], test_fraction: float = 0.2, seed: int = 33
) -> dict[str, str]:
    """Assign every patient to `train` or `test`.

    Args:
        classes: patient -> class (see `patient_classes`).
        test_fraction: share of each class's patients sent to test, in [0, 1).
        seed: RNG seed (the reference used random_state 33 for MosMed's 8:2 split).

    Returns:
        patient -> "train" | "test".
    """
    if not 0.0 <= test_fraction < 1.0:
        raise InvalidArgument("test_fraction", "must be in [0, 1)")
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[str]] = {}
    for patient, cls in sorted(classes.items()):
        by_class.setdefault(cls, []).append(patient)
    assignment: dict[str, str] = {}
    for cls in sorted(by_class):
        patients = by_class[cls]
        order = rng.permutation(len(patients))
        n_test = round(len(patients) * test_fraction)
        if test_fraction > 0 and len(patients) >= 2:
            n_test = max(1, n_test)
        n_test = min(n_test, len(patients) - 1)
        for rank, index in enumerate(order):
            assignment[patients[index]] = "test" if rank < n_test else "train"
    return assignment


def keep_every_class_in_train(
    pairs: Iterable[tuple[str, str]], assignment: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """Move test patients to train until every class has a training clip.

    The split stratifies each patient under its majority class, so a class that is only ever
    a minority (every patient holding it has more clips of another class) can land wholly in
    test, and augmentation, which reads the training split, would then drop it without a word.

    Args:
        pairs: (patient, class) pairs, one per clip.
        assignment: patient -> "train" | "test" (from `split_patients`).

    Returns:
        (the corrected assignment, the classes that needed it, in order).
    """
    clips: dict[str, Counter[str]] = {}
    for patient, cls in pairs:
        clips.setdefault(cls, Counter())[patient] += 1
    fixed = dict(assignment)
    moved: list[str] = []
    for cls in sorted(clips):
        if any(fixed[p] == "train" for p in clips[cls]):
            continue
        patient = min(clips[cls], key=lambda p: (-clips[cls][p], p))
        fixed[patient] = "train"
        moved.append(cls)
    return fixed, moved
