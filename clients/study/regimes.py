"""Training-set sizes of the study: a patient-level, class-stratified subset of the train split.

The low-data subset is drawn once (from `subset_seed`), not per seed: the generator of a regime
is trained on exactly that subset, and every seed's classifiers then train on the same real
clips (the seeds vary initialisation, batches and which synthetic clips are drawn).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.data import layout

FULL = "full"
LOW = "low"


@dataclass(frozen=True)
class Regime:
    """One training-set size.

    Attributes:
        name: "low" or "full".
        fraction: Share of each class's training patients.
        file_names: The regime's training clips (sorted).
        patients: Patients per class.
    """

    name: str
    fraction: float
    file_names: tuple[str, ...]
    patients: dict[str, int]


def patient_of(item: layout.Item) -> str:
    """A clip's patient (the split unit); a dataset without one counts each clip as a patient."""
    return str(item.extra.get("patient") or item.file_name)


def select_regime(
    train: layout.Dataset, name: str, fraction: float, seed: int, min_patients: int = 2
) -> Regime:
    """Keep `fraction` of each class's training patients (at least `min_patients`, or all)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"regime fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    patients: dict[str, int] = {}
    for cls, items in train.by_class().items():
        ids = sorted({patient_of(i) for i in items})
        n = min(len(ids), max(min_patients, round(len(ids) * fraction)))
        picked = [ids[i] for i in sorted(rng.permutation(len(ids))[:n])]
        chosen.update(picked)
        patients[cls] = n
    files = tuple(sorted(i.file_name for i in train if patient_of(i) in chosen))
    return Regime(name, fraction, files, patients)
