"""The bundled phantom dataset: fast, deterministic, imbalanced, patient-level split."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest

from genaug.errors import InvalidArgument
from services.data import layout, phantoms

SMALL = {"NOR": 3, "HCM": 3, "DCM": 2}


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundled")
    start = time.perf_counter()
    phantoms.ensure_bundled_dataset(root)
    return root, time.perf_counter() - start


def _digests(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def test_default_dataset_is_fast_imbalanced_and_split_by_patient(bundled):
    root, seconds = bundled
    assert seconds < 20.0  # about 2 s on an idle core; generous for a shared machine
    train = layout.load_dataset(root, phantoms.PHANTOM_NAME, "train")
    test = layout.load_dataset(root, phantoms.PHANTOM_NAME, "test")
    assert 100 <= len(train) <= 150 and 30 <= len(test) <= 50
    counts = train.class_counts()
    assert set(counts) == {"NOR", "HCM", "DCM"} == set(test.class_counts())
    assert counts["DCM"] * 2.5 < counts["NOR"] and counts["DCM"] * 2.5 < counts["HCM"]
    train_patients = {item.extra["patient"] for item in train}
    test_patients = {item.extra["patient"] for item in test}
    assert train_patients and test_patients and not train_patients & test_patients
    for item in (train[0], test[-1]):
        clip = layout.read_clip(item.path)
        assert clip.shape == (8, 64, 64) and clip.dtype == np.uint8
        assert clip.std() > 10  # not blank
        assert {"wall_thickness", "contraction", "seed", "cavity_radius"} <= item.extra.keys()
        assert item.text.endswith("cavity.")
    slices = layout.load_dataset(root, phantoms.PHANTOM_NAME, "train", kind="data")
    assert len(slices) == 8 * len(train)
    assert {item.extra["patient"] for item in slices} == train_patients


def test_classes_differ_in_appearance_and_motion(bundled):
    root, _ = bundled
    by_class = layout.load_dataset(root, phantoms.PHANTOM_NAME, "train").by_class()
    wall = {c: np.mean([i.extra["wall_thickness"] for i in items]) for c, items in by_class.items()}

    def area_change(item):
        """Fractional area change of the dark blood pool near the centre (echo's FAC)."""
        clip = layout.read_clip(item.path)
        yy, xx = np.mgrid[0:64, 0:64]
        centre = (yy - 36) ** 2 + (xx - 32) ** 2 < 24**2
        area = ((clip < 40) & centre).sum(axis=(1, 2))
        return (area.max() - area.min()) / area.max()

    fac = {cls: np.mean([area_change(i) for i in items[:6]]) for cls, items in by_class.items()}
    assert wall["HCM"] > wall["NOR"] > wall["DCM"]
    assert fac["DCM"] < 0.5 * fac["NOR"] and fac["DCM"] < 0.5 * fac["HCM"], fac
    texts = {cls: {i.text for i in items} for cls, items in by_class.items()}
    assert any("Thick" in t for t in texts["HCM"]) and any("weak" in t for t in texts["DCM"])


def test_ensure_is_idempotent(bundled):
    root, _ = bundled
    before = _digests(root)
    mtime = (root / "Phantom_volume" / "manifest.json").stat().st_mtime_ns
    start = time.perf_counter()
    phantoms.ensure_bundled_dataset(root)
    assert time.perf_counter() - start < 1.0
    assert (root / "Phantom_volume" / "manifest.json").stat().st_mtime_ns == mtime
    assert _digests(root) == before


def test_same_seed_gives_identical_bytes(tmp_path):
    a = phantoms.generate_phantom_dataset(tmp_path / "a", seed=7, patients_per_class=SMALL)
    phantoms.generate_phantom_dataset(tmp_path / "b", seed=7, patients_per_class=SMALL)
    digests = _digests(tmp_path / "a")
    assert digests == _digests(tmp_path / "b")
    assert sum(name.endswith(".avi") for name in digests) == 2 * sum(SMALL.values())
    assert set(a.clips["test"]) == set(SMALL)  # each class sends one patient to test
    phantoms.generate_phantom_dataset(tmp_path / "a", seed=8, patients_per_class=SMALL)
    assert _digests(tmp_path / "a") != digests
    with pytest.raises(InvalidArgument):
        phantoms.generate_phantom_dataset(tmp_path / "c", patients_per_class={"XYZ": 2})
