"""`genaug study` pieces on small inputs: metrics and intervals, arms, regimes, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clients.study import arms, classify, metrics, regimes
from services.data.layout import Dataset, Item


def test_scores_macro_f1_and_recall():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 1, 0])
    s = metrics.scores(labels, predicted, ["a", "b", "c"])
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["recall"] == pytest.approx({"a": 2 / 3, "b": 1.0, "c": 0.0})
    f1_a, f1_b = 2 * (2 / 3) * (2 / 3) / (4 / 3), 2 * (2 / 3) / (5 / 3)
    assert s["macro_f1"] == pytest.approx((f1_a + f1_b + 0.0) / 3)
    assert s["confusion"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_paired_interval_is_a_t_interval_over_seed_differences():
    arm, base = [0.7, 0.72, 0.69, 0.75, 0.71], [0.6, 0.61, 0.62, 0.6, 0.58]
    d = np.subtract(arm, base)
    interval = metrics.paired_interval(arm, base)
    half = 2.7764451 * d.std(ddof=1) / np.sqrt(5)  # t(0.975, 4)
    assert interval.mean == pytest.approx(d.mean())
    assert (interval.low, interval.high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert interval.excludes_zero and interval.boot_low <= interval.mean <= interval.boot_high
    same = metrics.paired_interval(base, base)
    assert same.mean == 0 and not same.excludes_zero
    with pytest.raises(ValueError):
        metrics.paired_interval([1.0], [1.0, 2.0])


def test_frechet_distance_is_zero_for_one_set_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 3))
    assert metrics.frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert metrics.frechet_distance(a, a + 2.0) == pytest.approx(12.0, rel=1e-6)


def _filters(kept: set[str], ids: list[str]) -> dict:
    verdicts = [{"id": i, "keep": i in kept} for i in ids]
    return {name: {"verdicts": verdicts} for name in ("reference", "class-band", "real-band")}


def test_every_synthetic_arm_gets_the_same_class_balanced_count():
    ids = [f"c{c}-{k}" for c in range(2) for k in range(5)]
    labels = np.array([c for c in range(2) for _ in range(5)])
    filters = _filters({"c0-0", "c0-1", "c0-2", "c1-3", "c1-4"}, ids)
    chosen = arms.arms_named(arms.DEFAULT_ARMS)
    n, skipped = arms.synthetic_per_class(chosen, ids, labels, filters, 2)
    assert (n, skipped) == (2, {})  # class 1 keeps 2 under every filter
    assert arms.synthetic_per_class(chosen, ids, labels, filters, 2, cap=1) == (1, {})
    # A filter that keeps almost nothing of a class is skipped, not allowed to shrink every arm.
    strict = dict(filters, **{"real-band": _filters({"c0-0", "c1-0"}, ids)["real-band"]})
    n_strict, skipped = arms.synthetic_per_class(chosen, ids, labels, strict, 2)
    assert (
        n_strict == 2
        and list(skipped) == ["e-real-band"]
        and "kept 1 clip" in skipped["e-real-band"]
    )
    unfiltered = arms.eligible(chosen[2], ids, labels, filters)
    filtered = arms.eligible(chosen[3], ids, labels, filters)
    assert len(unfiltered[1]) == 5 and filtered[1] == ["c1-3", "c1-4"]
    draw = arms.draw(3, 0, filtered, n)
    assert len(draw) == 4 and draw == arms.draw(3, 0, filtered, n)
    assert arms.draw(2, 0, unfiltered, n) != arms.draw(2, 1, unfiltered, n)
    with pytest.raises(ValueError, match="baseline"):
        arms.arms_named(["c-unfiltered"])


def test_regimes_keep_whole_patients_of_every_class(tmp_path):
    items = [
        Item(tmp_path / f"{c}{p}_{k}.avi", f"{c}{p}_{k}.avi", c, "", {"patient": f"{c}{p}"})
        for c, n in (("A", 8), ("B", 3))
        for p in range(n)
        for k in range(2)
    ]
    train = Dataset(tmp_path, "X", "train", "volume", items)
    low = regimes.select_regime(train, "low", 0.25, seed=0)
    assert low.patients == {"A": 2, "B": 2}  # at least two patients per class
    patients = {f.split("_")[0] for f in low.file_names}
    assert len(low.file_names) == 2 * len(patients) == 8
    assert low == regimes.select_regime(train, "low", 0.25, seed=0)
    assert len(regimes.select_regime(train, "full", 1.0, 0).file_names) == len(items)


def test_conventional_augmentation_keeps_shape_and_range_and_varies():
    torch.manual_seed(0)
    x = torch.rand(4, 8, 1, 16, 16) * 2 - 1
    g = torch.Generator().manual_seed(1)
    y = classify.conventional_augment(x, g)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert not torch.allclose(y, x)
    z = classify.conventional_augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(y, z)


def test_a_classifier_trains_and_evaluates(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 60, (12, 4, 16, 16)).astype(np.uint8)
    labels = np.array([0, 1] * 6)
    frames[labels == 1, :, :8] += 150  # a bright top half: separable after the z-score
    data = classify.TrainingSet(frames, labels, np.zeros(12, bool))
    recipe = classify.ClassifierRecipe(steps=25, batch_size=8, widths=(8, 16), warmup_steps=2)
    torch.set_num_threads(1)
    model, summary = classify.train_classifier(data, 2, recipe, 0, tmp_path / "run")
    assert summary["steps"] == 25 and summary["train_clips"] == 12
    result = classify.evaluate(model, frames, labels, ["x", "y"])
    assert result["n"] == 12 and 0 <= result["macro_f1"] <= 1
    assert classify.clip_features(model, frames).shape == (12, 16)


def test_the_outlook_names_a_gain_or_says_what_would_change_a_negative_result():
    from types import SimpleNamespace

    from clients.study.report import outlook

    def table(low):
        d = {"mean": 0.05, "low": low, "high": 0.1}
        return {"low": {"in_domain": {"c-unfiltered": {"macro_f1": {"vs_a-real": d}}}}}

    audit = {"fidelity": {"all": 0.35}, "judge_test_accuracy": 0.96}
    study = SimpleNamespace(
        classes=["A", "B", "C"], audits={"low": audit, "judge": "the full regime's"}
    )
    negative = outlook(study, table(-0.02))
    assert negative.startswith("The result is negative")
    assert "low 0.35 (chance 0.33; the judge scores 0.96" in negative
    assert outlook(study, table(0.01)).endswith("low in-domain (c-unfiltered, +0.050)")
