"""Classification metrics and paired confidence intervals (numpy only).

Every arm is trained with the same seeds, so arm - baseline differences are paired by seed: the
95% interval is Student's t over the per-seed differences, and a paired bootstrap (resampling
seeds, 10,000 draws, fixed seed) is reported next to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

BOOTSTRAP_DRAWS = 10_000
BOOTSTRAP_SEED = 3407


def confusion(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted class."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return matrix


def scores(labels: np.ndarray, predicted: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro-F1 and per-class recall / F1 (a class absent from `labels` is skipped
    in the macro average; a class never predicted has precision 0)."""
    matrix = confusion(labels, predicted, len(classes))
    true = matrix.sum(axis=1)
    pred = matrix.sum(axis=0)
    hits = np.diag(matrix)
    recall = np.where(true > 0, hits / np.maximum(true, 1), np.nan)
    precision = np.where(pred > 0, hits / np.maximum(pred, 1), 0.0)
    f1 = np.where(
        (precision + np.nan_to_num(recall)) > 0,
        2
        * precision
        * np.nan_to_num(recall)
        / np.maximum(precision + np.nan_to_num(recall), 1e-12),
        0.0,
    )
    present = true > 0
    return {
        "accuracy": float(hits.sum() / max(1, matrix.sum())),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "recall": {c: float(recall[i]) for i, c in enumerate(classes) if present[i]},
        "f1": {c: float(f1[i]) for i, c in enumerate(classes) if present[i]},
        "confusion": matrix.tolist(),
        "n": int(matrix.sum()),
    }


@dataclass(frozen=True)
class Interval:
    """Mean of paired differences with a 95% t interval and a paired-bootstrap interval."""

    mean: float
    low: float
    high: float
    boot_low: float
    boot_high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("mean", "low", "high", "boot_low", "boot_high", "n")}


def paired_interval(arm: list[float], baseline: list[float], level: float = 0.95) -> Interval:
    """Interval of mean(arm - baseline) over seeds (same seed order in both lists)."""
    a, b = np.asarray(arm, np.float64), np.asarray(baseline, np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired values need the same non-zero length, got {a.size}, {b.size}")
    diff = a - b
    n = diff.size
    mean = float(diff.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, math.nan, math.nan, n)
    sem = float(diff.std(ddof=1) / math.sqrt(n))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sem
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = diff[rng.integers(0, n, size=(BOOTSTRAP_DRAWS, n))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(mean, mean - half, mean + half, float(low), float(high), n)


def mean_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, t half-width) over seeds."""
    v = np.asarray(values, np.float64)
    if v.size < 2:
        return float(v.mean()) if v.size else math.nan, math.nan
    return float(v.mean()), float(
        stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    )


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, D) (the FID formula,
    here on the study classifier's clip features)."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    root = np.real(root)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))
