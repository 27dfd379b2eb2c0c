"""The hard phantom benchmark: deterministic, overlapping classes, a minority, out-of-domain."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from services.data import layout, phantoms, phantoms_hard

SMALL = {"NOR": 4, "HCM": 4, "DCM": 2}
OOD = {"NOR": 3, "HCM": 3, "DCM": 3}


def _digests(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    root = tmp_path_factory.mktemp("hard")
    phantoms_hard.generate_hard_benchmark(
        root, patients_per_class=SMALL, ood_patients_per_class=OOD
    )
    return root


def test_same_seed_same_bytes_and_another_seed_differs(benchmark, tmp_path):
    phantoms_hard.generate_hard_benchmark(
        tmp_path / "b", patients_per_class=SMALL, ood_patients_per_class=OOD
    )
    assert _digests(benchmark) == _digests(tmp_path / "b")
    phantoms_hard.generate_hard_benchmark(
        tmp_path / "c", seed=5, patients_per_class=SMALL, ood_patients_per_class=OOD
    )
    assert _digests(tmp_path / "c") != _digests(benchmark)


def test_defaults_have_a_minority_and_a_mostly_test_ood_set():
    counts = phantoms_hard.HARD_PATIENTS
    assert counts["DCM"] * 3 < min(counts["NOR"], counts["HCM"])
    assert phantoms_hard.OOD_TEST_FRACTION > 0.9


def test_classes_are_closer_and_wider_than_the_bundled_ones():
    bundled = phantoms.BUNDLED_CLASS_RANGES
    same = phantoms_hard.hard_class_ranges(phantoms_hard.Difficulty(1.0, 1.0))
    assert same == {c: {k: pytest.approx(v) for k, v in r.items()} for c, r in bundled.items()}
    hard = phantoms_hard.hard_class_ranges(phantoms_hard.Difficulty(0.5, 1.5))
    for key in ("cavity", "wall", "contraction"):
        gap = abs(np.mean(bundled["HCM"][key]) - np.mean(bundled["NOR"][key]))
        hard_gap = abs(np.mean(hard["HCM"][key]) - np.mean(hard["NOR"][key]))
        assert hard_gap < gap
        width = np.diff(hard["NOR"][key])[0]
        assert width > np.diff(bundled["NOR"][key])[0] or hard["NOR"][key][0] == 0.0


def test_ood_is_another_acquisition_of_other_patients(benchmark):
    train = layout.load_dataset(benchmark, phantoms_hard.HARD_NAME, "train")
    ood_name = phantoms_hard.ood_name()
    ood = layout.load_dataset(benchmark, ood_name, "test")
    assert set(ood.class_counts()) == set(SMALL) and len(ood) > len(
        layout.load_dataset(benchmark, ood_name, "train")
    )
    patients = {i.extra["patient"] for i in train}
    assert patients.isdisjoint({i.extra["patient"] for i in ood})
    manifest = phantoms.builder.read_manifest(benchmark, ood_name)
    style = manifest["variant"]["style"]
    assert style["gain"] < 1 and style["zoom"] < 1 and style["noise_std"] > 0.02
    inside = np.mean([layout.read_clip(i.path).mean() for i in train])
    outside = np.mean([layout.read_clip(i.path).mean() for i in ood])
    assert outside < inside  # lower gain


def test_the_bundled_phantom_is_unchanged_by_the_default_style():
    attrs = phantoms.sample_attributes("NOR", 123)
    a = phantoms.render_sequence(attrs)
    b = phantoms.render_sequence(attrs, style=phantoms.PhantomStyle())
    assert np.array_equal(a, b)
    other = phantoms.render_sequence(attrs, style=phantoms_hard.IN_DOMAIN_STYLE)
    assert not np.array_equal(a, other)
