"""Pure-function tests: clip sampling, patient split, intensity, geometry, pseudonyms."""

from __future__ import annotations

import numpy as np
import pytest

from genaug.errors import InvalidArgument
from services.data.geometry import fit_square
from services.data.intensity import IntensityConfig, normalize, to_uint8
from services.data.privacy import pseudonym, volume_id
from services.data.sampling import Clip, SamplingConfig, assemble_clip, sample_clips
from services.data.split import patient_classes, split_patients

MOSMED = SamplingConfig(frames_per_clip=15, clip_sampling_interval=1, required_clip_num=8)
ACDC = SamplingConfig(frames_per_clip=8, clip_sampling_interval=0, required_clip_num=8, max_clips=2)


def test_volume_shorter_than_a_window_is_one_zero_padded_clip():
    assert sample_clips(5, MOSMED) == [Clip(0, (0, 1, 2, 3, 4), 3)]
    frames = np.ones((5, 4, 4), np.uint8)
    clip = assemble_clip(frames, sample_clips(5, MOSMED)[0])
    assert clip.shape == (8, 4, 4)
    assert clip[:5].all() and not clip[5:].any()


def test_between_required_and_window_takes_evenly_spaced_frames():
    (clip,) = sample_clips(12, MOSMED)
    assert clip.n_pad == 0 and len(clip.frame_indices) == 8
    assert clip.frame_indices[0] == 0 and clip.frame_indices[-1] == 11
    assert len(set(clip.frame_indices)) == 8


def test_exact_fit():
    # 30 frames = 2 windows of 15, no gap; every second frame of each window.
    clips = sample_clips(30, MOSMED)
    assert [c.start for c in clips] == [0, 15]
    assert clips[0].frame_indices == (0, 2, 4, 6, 8, 10, 12, 14)
    assert clips[1].frame_indices == (15, 17, 19, 21, 23, 25, 27, 29)
    assert all(c.n_pad == 0 for c in clips)
    assert [c.start for c in sample_clips(15, MOSMED)] == [0]


def test_interval_zero_takes_consecutive_frames():
    clips = sample_clips(19, ACDC)
    # n = 2, gap = (19 - 16) // 1 = 3: windows at 0 and 11.
    assert [c.start for c in clips] == [0, 11]
    assert clips[1].frame_indices == tuple(range(11, 19))


def test_many_clips_are_capped_and_evenly_spaced():
    clips = sample_clips(200, MOSMED)
    assert len(clips) == 10
    gap = (200 - 10 * 15) // 9
    assert [c.start for c in clips] == [i * (15 + gap) for i in range(10)]
    assert clips[-1].frame_indices[-1] <= 199
    # With fewer frames, the largest n with n * 15 <= N wins.
    assert len(sample_clips(44, MOSMED)) == 2
    assert len(sample_clips(45, MOSMED)) == 3


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (SamplingConfig(frames_per_clip=0), "frames_per_clip"),
        (SamplingConfig(clip_sampling_interval=-1), "clip_sampling_interval"),
        (SamplingConfig(max_clips=0), "max_clips"),
        (SamplingConfig(frames_per_clip=8, clip_sampling_interval=1), "required_clip_num"),
    ],
)
def test_bad_sampling_settings_name_the_parameter(config, field):
    with pytest.raises(InvalidArgument) as info:
        sample_clips(30, config)
    assert info.value.field == field


def test_patient_split_keeps_patients_whole_and_is_stratified():
    pairs = [(f"p{i}", "A") for i in range(20) for _ in range(3)]
    pairs += [(f"q{i}", "B") for i in range(5) for _ in range(2)]
    pairs += [("lonely", "C")]
    classes = patient_classes(pairs)
    split = split_patients(classes, test_fraction=0.2, seed=3)
    assert split == split_patients(classes, test_fraction=0.2, seed=3)
    assert sum(1 for p, s in split.items() if s == "test" and classes[p] == "A") == 4
    assert sum(1 for p, s in split.items() if s == "test" and classes[p] == "B") == 1
    assert split["lonely"] == "train"  # a class never loses its only patient
    with pytest.raises(InvalidArgument):
        split_patients(classes, test_fraction=1.0)


def test_intensity_per_modality():
    hu = np.array([[[-2000.0, -1000.0, -300.0, 400.0, 3000.0]]], np.float32)
    np.testing.assert_allclose(normalize(hu, "ct")[0, 0], [0, 0, 0.5, 1, 1], atol=1e-6)
    narrow = normalize(hu, "ct", config=IntensityConfig(ct_window=(-300.0, 400.0)))
    assert narrow[0, 0, 2] == 0.0
    mr = np.arange(1000, dtype=np.float32).reshape(1, 10, 100)
    unit = normalize(mr, "mr")
    assert unit.min() == 0.0 and unit.max() == 1.0
    us = np.array([[[0.0, 51.0, 255.0]]], np.float32)
    np.testing.assert_allclose(normalize(us, "us", (0.0, 255.0))[0, 0], [0, 0.2, 1])
    assert to_uint8(np.array([0.0, 0.5, 1.2])).tolist() == [0, 128, 255]
    with pytest.raises(InvalidArgument) as info:
        normalize(hu, "ct", config=IntensityConfig(ct_window=(400.0, -1000.0)))
    assert info.value.field == "ct_window"


def test_fit_square_keeps_aspect_and_centres():
    frames = np.ones((2, 30, 60), np.float32)
    out = fit_square(frames, 64)
    assert out.shape == (2, 64, 64)
    assert out[:, 16:48, :].min() == 1.0  # 30x60 -> 32x64, padded 16 rows top and bottom
    assert out[:, :16].max() == 0.0 and out[:, 48:].max() == 0.0
    with pytest.raises(InvalidArgument) as info:
        fit_square(frames, 63)
    assert info.value.field == "size"


def test_pseudonyms_are_salted_and_stable():
    a = pseudonym("MRN-1", "salt")
    assert a == pseudonym("MRN-1", "salt") and a != pseudonym("MRN-1", "other")
    assert a.startswith("pt-") and len(a) == 13 and "MRN" not in a
    assert volume_id(a, "x#").startswith(a + "-")
