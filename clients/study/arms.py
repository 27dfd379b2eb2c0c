"""The study's arms and how each one's synthetic clips are drawn.

Every arm trains the same classifier on the regime's real clips; they differ in what is added:

| arm | added to the real clips |
|---|---|
| a-real | nothing |
| b-conventional | nothing; batches augmented (flips, intensity, temporal jitter, crops) |
| c-unfiltered | N synthetic clips per class from the whole pool |
| d-filtered | N per class among the clips the reference's filter keeps |
| e-class-band | N per class, filter with the per-class K-means band |
| e-real-band | N per class, filter with bands from the real clips' own VAE-Seq |
| f-memorisation | as e-real-band plus the memorisation level (only when asked for) |

N is the same for every synthetic arm and class: the fewest clips any included filter keeps of
any class (optionally capped), so arms differ in which clips they get, not how many, and the
synthetic part is class-balanced. An arm whose filter keeps fewer than 2 clips of a class is
not trained (the report says so) rather than shrinking every arm to nothing. Each seed draws
its own N per class (seeded by seed and arm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    filter: str | None = None  # the synthesis.FILTERS entry; None: no synthetic clips
    synthetic: bool = False
    augment: bool = False


ARMS = (
    Arm("a-real", "(a) real only"),
    Arm("b-conventional", "(b) real + conventional augmentation", augment=True),
    Arm("c-unfiltered", "(c) real + unfiltered synthetic", synthetic=True),
    Arm("d-filtered", "(d) real + filtered synthetic (reference filter)", "reference", True),
    Arm("e-class-band", "(e) filtered, per-class K-means band", "class-band", True),
    Arm("e-real-band", "(e) filtered, band from the real clips' VAE-Seq", "real-band", True),
    Arm(
        "f-memorisation",
        "(f) as e-real-band + memorisation level",
        "real-band+memorisation",
        True,
    ),
)
MIN_PER_CLASS = 2
DEFAULT_ARMS = tuple(a.name for a in ARMS if a.name != "f-memorisation")
BASELINE = "a-real"


def arms_named(names: list[str] | tuple[str, ...]) -> list[Arm]:
    known = {a.name: a for a in ARMS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown arms {unknown}; known: {sorted(known)}")
    if BASELINE not in names:
        raise ValueError(f"the arms must include the baseline {BASELINE}")
    return [known[n] for n in names]


def eligible(arm: Arm, ids: list[str], labels: np.ndarray, filters: dict) -> dict[int, list[str]]:
    """Class id -> the pool ids this arm may draw from (sorted)."""
    keep = set(ids)
    if arm.filter is not None:
        keep = {v["id"] for v in filters[arm.filter]["verdicts"] if v["keep"]}
    out: dict[int, list[str]] = {}
    for clip_id, label in zip(ids, labels, strict=True):
        if clip_id in keep:
            out.setdefault(int(label), []).append(clip_id)
    return {label: sorted(v) for label, v in sorted(out.items())}


def synthetic_per_class(
    arms: list[Arm],
    ids: list[str],
    labels: np.ndarray,
    filters: dict,
    num_classes: int,
    cap: int | None = None,
    minimum: int = MIN_PER_CLASS,
) -> tuple[int, dict[str, str]]:
    """(N, skipped arms): N is the fewest eligible clips of any class under any synthetic arm
    (see the docstring). A filter that keeps fewer than `minimum` clips of some class cannot
    make an arm without shrinking every other arm to that: such arms are skipped (name ->
    reason) and N is taken over the others."""
    fewest = {
        arm.name: min(
            len(eligible(arm, ids, labels, filters).get(c, [])) for c in range(num_classes)
        )
        for arm in arms
        if arm.synthetic
    }
    filtered = {arm.name: arm.filter is not None for arm in arms}
    skipped = {
        name: f"{'its filter kept' if filtered[name] else 'the pool has'} {k} clip(s) of some "
        f"class (fewer than {minimum})"
        for name, k in fewest.items()
        if k < minimum
    }
    counts = [k for name, k in fewest.items() if name not in skipped]
    n = min(counts) if counts else 0
    return (min(n, cap) if cap is not None else n), skipped


def draw(arm_index: int, seed: int, pools: dict[int, list[str]], n: int) -> list[str]:
    """N ids per class for one (arm, seed), reproducibly."""
    rng = np.random.default_rng([seed, arm_index, 7])
    chosen = []
    for label in sorted(pools):
        ids = pools[label]
        chosen += [ids[i] for i in sorted(rng.choice(len(ids), size=n, replace=False))]
    return chosen
