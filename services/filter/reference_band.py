"""Sequential bands calibrated on real clips: `BAND_SCOPE_REFERENCE`.

The reference's K-means band keeps the middle of the synthetic pool's own VAE-Seq values, so it
always rejects about half of any pool, good or bad. Here each class's band is what that class's
real training clips show: the [q, 1-q] quantiles of their VAE-Seq (linear interpolation;
q = 0.05 by default), and a synthetic clip is kept when it is as temporally coherent as real
clips of its class are.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.filter.pool import Band

DEFAULT_QUANTILE = 0.05


def reference_bands(
    values: Sequence[float], labels: Sequence[int], quantile: float = DEFAULT_QUANTILE
) -> dict[int, Band]:
    """Label -> band from the reference clips' VAE-Seq `values` (a class with one clip gets
    that value as both ends).

    Raises:
        ValueError: a quantile outside [0, 0.5).
    """
    if not 0.0 <= quantile < 0.5:
        raise ValueError(f"the reference band quantile must be in [0, 0.5), got {quantile}")
    v, y = np.asarray(values, np.float64), np.asarray(labels, np.int64)
    bands: dict[int, Band] = {}
    for label in sorted(set(y.tolist())):
        mine = v[y == label]
        low, high = np.quantile(mine, [quantile, 1.0 - quantile])
        bands[label] = Band(float(low), float(high), True)
    return bands
