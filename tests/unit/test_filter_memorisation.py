"""The filter's memorisation level and reference bands, on numbers only."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.filter import memorisation, reference_band
from services.filter.pool import Band, ClipScores, PoolOptions, Verdict, judge_pool
from services.models.clip_distance import distances, nearest, signature


def test_signatures_are_area_downsampled_and_distances_are_rms():
    clip = np.zeros((2, 1, 64, 64), np.float32)
    clip[:, :, :32] = 1.0
    s = signature(clip)
    assert s.shape == (2 * 32 * 32,) and s.dtype == np.float32
    assert np.allclose(s.reshape(2, 32, 32)[:, :16], 1) and np.allclose(
        s.reshape(2, 32, 32)[:, 16:], 0
    )
    assert signature(np.zeros((3, 16, 24), np.float32)).shape == (3 * 16 * 24,)  # small: as is
    a, b = np.zeros((1, 4)), np.full((2, 4), 0.5)
    b[1] = [1, 1, 0, 0]
    assert distances(a, b) == pytest.approx(np.array([[0.5, math.sqrt(0.5)]]))
    d, index = nearest(b, np.stack([a[0], b[1]]))
    assert index.tolist() == [0, 1] and d[1] == pytest.approx(0, abs=1e-7)


def test_threshold_uses_other_patients_only():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 50))
    refs = np.concatenate([base, base + 0.01])  # each patient has two near-identical clips
    cases = ["a", "b", "c", "a", "b", "c"]
    other = memorisation.other_case_nearest(refs, cases)
    assert other.min() > 0.5  # the patient's own twin never counts
    threshold = memorisation.calibrate(refs, cases, 0.01)
    assert threshold == pytest.approx(np.quantile(other, 0.01))
    with pytest.raises(ValueError, match="at least 2 cases"):
        memorisation.calibrate(refs, ["a"] * 6, 0.01)
    with pytest.raises(ValueError, match="quantile"):
        memorisation.calibrate(refs, cases, 0.0)


def test_the_level_rejects_only_kept_clips_below_the_threshold():
    verdicts = [
        Verdict("x", True, 0.1, 90.0),
        Verdict("y", True, 0.1, 90.0),
        Verdict("z", False, 3.0, 90.0, reasons=["semantic: ..."], rejected_by="semantic"),
    ]
    rejected = memorisation.apply_level(
        verdicts, np.array([0.01, 0.5, 0.01]), ["r1", "r2", "r3"], 0.1
    )
    assert rejected == 1
    assert not verdicts[0].keep and verdicts[0].rejected_by == "memorisation"
    assert (
        verdicts[0].reasons[0] == "memorisation: 0.0100 from training clip r1 (< threshold 0.1000)"
    )
    assert verdicts[1].keep and verdicts[2].rejected_by == "semantic"


def test_reference_bands_are_quantiles_of_each_class():
    values = [80, 82, 84, 86, 88, 95, 96]
    labels = [0, 0, 0, 0, 0, 1, 1]
    bands = reference_band.reference_bands(values, labels, 0.25)
    assert bands[0] == Band(82.0, 86.0, True) and bands[1] == Band(95.25, 95.75, True)
    with pytest.raises(ValueError):
        reference_band.reference_bands(values, labels, 0.5)


def _clip(clip_id, label, vae_seq):
    return ClipScores(clip_id, clip_id, 0.1, vae_seq, np.eye(2, 4, dtype=np.float32), label)


def test_the_pool_judges_each_class_against_its_given_band():
    clips = [_clip("a", 0, 85), _clip("b", 0, 99), _clip("c", 1, 99), _clip("d", 2, 10)]
    given = ((0, Band(80, 90, True)), (1, Band(95, 100, True)))
    result = judge_pool(clips, PoolOptions(band_scope="reference", reference_bands=given))
    keep = {v.clip_id: v.keep for v in result.verdicts}
    assert keep == {"a": True, "b": False, "c": True, "d": True}
    assert "above class 0 band [80.0, 90.0]" in result.verdicts[1].reasons[0]
    assert not result.class_bands[2].applied
    assert result.verdicts[3].reasons == ["note: no reference band for class 2"]
