"""The filter's pool logic on constructed scores: semantic, sequential band, near-duplicates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.filter import pool
from services.filter.pool import ClipScores, PoolOptions, judge_pool

T, D = 8, 64


def _smooth(rng, cosine: float) -> np.ndarray:
    """Latents rotating by a fixed angle per frame: consecutive-frame cosine `cosine`."""
    q, _ = np.linalg.qr(rng.normal(size=(D, 2)))
    angle = math.acos(cosine) * np.arange(T)[:, None]
    return np.cos(angle) * q[:, 0] + np.sin(angle) * q[:, 1]


def _static(rng) -> np.ndarray:
    return np.repeat(rng.normal(size=(1, D)), T, axis=0)


def _incoherent(rng) -> np.ndarray:
    return rng.normal(size=(T, D))


def _logits(label: int, confident: bool = True) -> np.ndarray:
    """A stand-in classifier output: sure of `label`, or sure of the other class."""
    logits = np.zeros(2)
    logits[label if confident else 1 - label] = 4.0
    return logits


def _clip(clip_id, case_id, latents, label=0, confident=True) -> ClipScores:
    ce = pool.cross_entropy(_logits(label, confident)[None], [label])[0]
    vectors = pool.frame_vectors(latents)
    return ClipScores(clip_id, case_id, float(ce), pool.vae_seq(vectors), vectors)


@pytest.fixture(scope="module")
def pool_clips() -> list[ClipScores]:
    rng = np.random.default_rng(0)
    clips = []
    for case in ("a", "b"):
        for i, cosine in enumerate((0.86, 0.87, 0.88, 0.9, 0.91, 0.93)):
            clips.append(_clip(f"{case}-good{i}", case, _smooth(rng, cosine)))
    clips.append(_clip("a-static", "a", _static(rng)))
    clips.append(_clip("a-noise", "a", _incoherent(rng)))
    clips.append(_clip("b-wrong-class", "b", _smooth(rng, 0.89), label=0, confident=False))
    clips.append(
        ClipScores("a-copy", "a", clips[1].cross_entropy, clips[1].vae_seq, clips[1].vectors)
    )
    return clips


def test_each_bad_clip_is_rejected_by_the_right_level(pool_clips):
    result = judge_pool(pool_clips)
    by_id = {v.clip_id: v for v in result.verdicts}
    assert [v.clip_id for v in result.verdicts] == [c.clip_id for c in pool_clips]
    assert result.band.applied and result.band.low < result.band.high

    static = by_id["a-static"]
    assert not static.keep and static.rejected_by == "sequential"
    assert static.vae_seq == pytest.approx(100.0, abs=1e-4)
    assert static.reasons[0].startswith("sequential: vae_seq 100.0 above band [")
    assert static.reasons[0].endswith("(static)")

    noise = by_id["a-noise"]
    assert not noise.keep and noise.rejected_by == "sequential"
    assert noise.vae_seq < result.band.low and noise.reasons[0].endswith("(incoherent)")
    assert "below band" in noise.reasons[0]

    wrong = by_id["b-wrong-class"]
    assert not wrong.keep and wrong.rejected_by == "semantic"
    mean_b = result.case_mean_cross_entropy["b"]
    assert wrong.cross_entropy > mean_b
    assert wrong.reasons[0] == (
        f"semantic: cross-entropy {wrong.cross_entropy:.3g} > 1.0 x case mean {mean_b:.3g}"
    )

    copy = by_id["a-copy"]
    assert not copy.keep and copy.rejected_by == "duplicate" and copy.duplicate_of == "a-good1"
    assert copy.max_duplicate_similarity == pytest.approx(1.0, abs=1e-6)
    assert copy.reasons == ["duplicate: near-duplicate of a-good1 (cosine 1.000 >= 0.98)"]

    for v in result.verdicts:
        if "good" in v.clip_id:
            assert v.keep and v.reasons == [] and v.rejected_by is None, v
            assert result.band.low <= v.vae_seq <= result.band.high
            assert v.max_duplicate_similarity < 0.98


def test_band_is_the_midpoints_of_the_kmeans_centroids():
    values = [10, 11, 12, 50, 51, 52, 80, 81, 82, 99, 100, 101]
    band = pool.vae_seq_band(values)
    assert band.applied and band.centroids == pytest.approx((11, 51, 81, 100))
    assert (band.low, band.high) == pytest.approx((31.0, 90.5))
    assert not band.contains(12) and band.contains(51) and band.contains(82)
    assert not band.contains(99)


def test_fewer_distinct_values_than_k_leave_the_band_off():
    rng = np.random.default_rng(1)
    latents = _smooth(rng, 0.9)
    clips = [_clip(f"c{i}", "a", latents) for i in range(3)]
    clips += [_clip("s", "a", _static(rng))]
    result = judge_pool(clips, PoolOptions(duplicates=False))
    assert not result.band.applied
    assert (result.band.low, result.band.high) == (-math.inf, math.inf)
    note = "note: sequential band not applied: 2 distinct vae_seq value(s) in the pool, "
    for v in result.verdicts:
        assert v.keep and v.reasons[0].startswith(note), v


def test_a_clip_rejected_earlier_is_no_reference_for_duplicates():
    rng = np.random.default_rng(2)
    latents = _smooth(rng, 0.9)
    first = _clip("first", "a", latents, confident=False)  # semantic reject
    second = _clip("second", "a", latents)
    other_case = _clip("other-case", "b", latents)  # same clip, other case: no comparison
    result = judge_pool([first, second, other_case], PoolOptions(sequential=False))
    keep = {v.clip_id: (v.keep, v.rejected_by) for v in result.verdicts}
    assert keep == {
        "first": (False, "semantic"),
        "second": (True, None),
        "other-case": (True, None),
    }
    assert result.verdicts[1].max_duplicate_similarity == 0.0  # nothing kept before it


def test_duplicate_threshold_is_a_cosine_not_a_percentage():
    rng = np.random.default_rng(3)
    base = _smooth(rng, 0.9)
    near = base + rng.normal(size=base.shape) * 0.01  # cosine ~0.997 per frame
    far = base + rng.normal(size=base.shape) * 0.1  # cosine ~0.8
    clips = [_clip("base", "a", base), _clip("near", "a", near), _clip("far", "a", far)]
    result = judge_pool(clips, PoolOptions(sequential=False))
    by_id = {v.clip_id: v for v in result.verdicts}
    assert by_id["near"].rejected_by == "duplicate" and by_id["near"].duplicate_of == "base"
    assert by_id["far"].keep and by_id["far"].max_duplicate_similarity < 0.98
    loose = judge_pool(clips, PoolOptions(sequential=False, duplicate_threshold=0.5))
    assert [v.keep for v in loose.verdicts] == [True, False, False]


def test_skipped_levels_do_not_reject_but_scores_are_reported(pool_clips):
    result = judge_pool(pool_clips, PoolOptions(semantic=False, sequential=False, duplicates=False))
    assert all(v.keep and v.reasons == [] for v in result.verdicts)
    by_id = {v.clip_id: v for v in result.verdicts}
    assert by_id["a-copy"].max_duplicate_similarity == pytest.approx(1.0, abs=1e-6)
    assert by_id["a-static"].vae_seq == pytest.approx(100.0, abs=1e-4)
    assert result.band.applied  # still fitted and reported


def test_alpha_scales_the_case_mean():
    rng = np.random.default_rng(4)
    clips = [_clip(f"c{i}", "a", _smooth(rng, 0.9)) for i in range(3)]
    clips[0].cross_entropy, clips[1].cross_entropy, clips[2].cross_entropy = 1.0, 2.0, 3.0
    opts = dict(sequential=False, duplicates=False)
    assert [v.keep for v in judge_pool(clips, PoolOptions(**opts)).verdicts] == [True, True, False]
    loose = judge_pool(clips, PoolOptions(alpha=1.5, **opts))
    assert [v.keep for v in loose.verdicts] == [True, True, True]
    assert judge_pool(clips, PoolOptions(alpha=0.4, **opts)).verdicts[0].reasons == [
        "semantic: cross-entropy 1 > 0.4 x case mean 2"
    ]


def test_scores_match_their_definitions():
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]])
    expected = -np.log(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))[[0, 1], [2, 1]]
    np.testing.assert_allclose(pool.cross_entropy(logits, [2, 1]), expected, rtol=1e-12)
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    cos = [1 / math.sqrt(2), 1 / math.sqrt(2)]
    assert pool.vae_seq(pool.frame_vectors(a)) == pytest.approx(100 * np.mean(cos))
    b = pool.frame_vectors(np.array([[0.0, 3.0], [1.0, 1.0], [0.0, 0.0]]))
    assert pool.clip_similarity(pool.frame_vectors(a), b) == pytest.approx((0 + 1 + 0) / 3)


# Two classes whose motion differs: class 1 (say stronger contraction) sits well below class 0.
# Each has one low and one high outlier of its own.
CLASS_1 = [50.0, 55.0, 56.0, 57.0, 58.0, 59.0, 60.0, 65.0]
CLASS_0 = [75.0, 80.0, 82.0, 84.0, 86.0, 88.0, 90.0, 99.0]


def _scored(clip_id: str, label: int, value: float, rng) -> ClipScores:
    """A clip with a given VAE-Seq, an equal cross-entropy and unrelated latents (no duplicates)."""
    vectors = pool.frame_vectors(rng.normal(size=(T, D)))
    return ClipScores(clip_id, f"case-{label}", 0.1, value, vectors, label=label)


def _two_classes(extra=()) -> list[ClipScores]:
    rng = np.random.default_rng(5)
    values = [(f"c1-{v:g}", 1, v) for v in CLASS_1] + [(f"c0-{v:g}", 0, v) for v in CLASS_0]
    values += list(extra)
    order = rng.permutation(len(values))  # classes interleaved in the pool
    return [_scored(*values[i], rng) for i in order]


def test_the_pool_band_rejects_a_whole_class_whose_motion_differs():
    clips = _two_classes()
    result = judge_pool(clips)  # the reference: one band over the pool
    assert result.class_bands == {}
    assert result.band.applied and result.band.low > max(CLASS_1)
    for c, v in zip(clips, result.verdicts, strict=True):
        if c.label == 1:
            assert not v.keep and v.rejected_by == "sequential", v
            assert v.reasons[0].endswith("(incoherent)") and " below band [" in v.reasons[0]


def test_class_bands_judge_each_clip_against_its_own_class():
    clips = _two_classes()
    result = judge_pool(clips, PoolOptions(band_scope="class"))
    assert sorted(result.class_bands) == [0, 1]
    one, zero = result.class_bands[1], result.class_bands[0]
    assert one.applied and zero.applied
    assert (one.low, one.high) == pytest.approx((53.0, 62.0))  # midpoints of 50|56, 59|65
    assert (zero.low, zero.high) == pytest.approx((78.5, 93.5))
    # The pool-wide band is still fitted and reported, unchanged by the scope.
    reference = judge_pool(clips).band
    assert (result.band.low, result.band.high) == (reference.low, reference.high)

    by_id = {v.clip_id: v for v in result.verdicts}
    for value in CLASS_1[1:-1]:  # the middle of class 1: kept under its own band
        v = by_id[f"c1-{value:g}"]
        assert v.keep and v.reasons == [] and v.rejected_by is None, v
    for value in CLASS_0[1:-1]:
        assert by_id[f"c0-{value:g}"].keep
    # Outliers within each class are still rejected, and the reason names the class's band.
    low1, high1 = by_id["c1-50"], by_id["c1-65"]
    assert not low1.keep and low1.rejected_by == "sequential"
    assert low1.reasons == ["sequential: vae_seq 50.0 below class 1 band [53.0, 62.0] (incoherent)"]
    assert not high1.keep and high1.reasons[0].endswith("above class 1 band [53.0, 62.0] (static)")
    low0 = by_id["c0-75"]
    assert not low0.keep and "below class 0 band [78.5, 93.5]" in low0.reasons[0]
    assert not by_id["c0-99"].keep and by_id["c0-99"].reasons[0].endswith("(static)")
    assert sum(v.keep for v in result.verdicts) == len(clips) - 4


def test_class_scope_with_one_class_equals_the_pool_band(pool_clips):
    by_pool = judge_pool(pool_clips)
    by_class = judge_pool(pool_clips, PoolOptions(band_scope="class"))
    band = by_class.class_bands[0]
    assert list(by_class.class_bands) == [0]
    assert (band.low, band.high) == (by_pool.band.low, by_pool.band.high)
    assert [v.keep for v in by_class.verdicts] == [v.keep for v in by_pool.verdicts]
    assert [v.rejected_by for v in by_class.verdicts] == [v.rejected_by for v in by_pool.verdicts]


def test_a_class_with_too_few_distinct_values_gets_no_band():
    small = [("c2-a", 2, 70.0), ("c2-b", 2, 70.0), ("c2-c", 2, 71.0)]
    clips = _two_classes(small)
    result = judge_pool(clips, PoolOptions(band_scope="class"))
    band = result.class_bands[2]
    assert not band.applied and (band.low, band.high) == (-math.inf, math.inf)
    assert band.note == (
        "note: sequential band of class 2 not applied: 2 distinct vae_seq value(s) in the class, "
        "K-means needs at least k=4"
    )
    assert result.class_bands[0].applied and result.class_bands[1].applied
    for c, v in zip(clips, result.verdicts, strict=True):
        if c.label == 2:
            assert v.keep and v.reasons == [band.note], v  # kept, the note says why
        else:
            assert band.note not in v.reasons and not any(r.startswith("note:") for r in v.reasons)
    # Skipping the sequential level: bands still fitted and reported, no notes, no rejections.
    skipped = judge_pool(clips, PoolOptions(band_scope="class", sequential=False))
    assert sorted(skipped.class_bands) == [0, 1, 2] and skipped.class_bands[1].applied
    assert all(v.keep and v.reasons == [] for v in skipped.verdicts)


def test_an_unknown_band_scope_is_refused():
    with pytest.raises(ValueError, match=r"band_scope must be one of \('pool', 'class'\)"):
        PoolOptions(band_scope="case")
