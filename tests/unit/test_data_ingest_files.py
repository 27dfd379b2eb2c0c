"""Ingest of the real offline files, one photometric interpretation or modality per test, with
the expected pixel statistics (pydicom's test files, pydicom-data, nibabel's test data)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import nibabel.testing
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut

from services.data.burned_in import mask_overlay, overlay_mask
from services.data.dicom import dicom_grey, read_dicom_file, us_regions
from services.data.intensity import normalize
from services.data.modality import header_hint, nifti_modality
from services.data.prepare import preprocess
from services.data.readers import read_source

NIFTI = Path(nibabel.testing.data_path)
JPEG_PLUGINS = ("pylibjpeg", "libjpeg", "openjpeg")


def dcm(name: str) -> Path:
    return Path(get_testdata_file(name))


def grey(name: str):
    return dicom_grey(pydicom.dcmread(dcm(name)))


def _luma(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


@pytest.fixture
def jpeg_plugins():
    """JPEG-LS and JPEG 2000 need the pylibjpeg family (pinned in pyproject.toml)."""
    missing = [name for name in JPEG_PLUGINS if importlib.util.find_spec(name) is None]
    if missing:
        message = (
            f"missing {missing}: install pylibjpeg, pylibjpeg-libjpeg and pylibjpeg-openjpeg "
            "(`.venv/bin/pip install -e .` installs the pinned versions)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


# ------------------------------------------------------------------------------ colour


def test_palette_colour_keeps_the_16_bit_table_range_and_its_regions():
    # OBXXXX1A: 8-bit indices into a 16-bit colour table (entries up to 65280).
    sequence = read_dicom_file(dcm("OBXXXX1A_2frame.dcm"))
    assert sequence.value_range == (0.0, 65535.0) and sequence.modality == "us"
    # Two regions: (120..800, 60..518) and (176..743, 522..576); the first ends ON the image
    # edge (MaxX1 == Columns == 800) and is clamped instead of dropping the crop.
    assert sequence.frames.shape == (2, 517, 680) and sequence.text_risk == "cropped"
    ds = pydicom.dcmread(dcm("OBXXXX1A_2frame.dcm"))
    expected = _luma(apply_color_lut(ds.pixel_array, ds))[:, 60:577, 120:800]
    inside = np.zeros((600, 800), bool)
    inside[60:519, 120:800] = inside[522:577, 176:744] = True
    inside = inside[60:577, 120:800]
    assert np.abs(sequence.frames[:, inside] - expected[:, inside]).max() < 0.01
    assert not sequence.frames[:, ~inside].any()  # between and beside the regions: labels
    unit = normalize(sequence.frames, sequence.modality, sequence.value_range)
    assert 0.11 < unit.mean() < 0.125 and (unit > 0.98).mean() < 0.001
    # The defect: read in 8-bit units, the sector came out as solid white.
    assert normalize(sequence.frames, "us", (0.0, 255.0)).mean() > 0.75


def test_ybr_full_is_its_y_channel_and_rgb_its_luma():
    ybr, rgb = grey("SC_ybr_full_uncompressed.dcm"), grey("SC_rgb.dcm")  # the same test card
    assert ybr.value_range == rgb.value_range == (0.0, 255.0)
    assert np.abs(ybr.grey - rgb.grey).max() < 1.5
    assert ybr.grey.mean() == pytest.approx(127.69, abs=0.01)
    assert rgb.grey.mean() == pytest.approx(127.70, abs=0.01)
    us = grey("US1_UNCR.dcm")
    rgb_pixels = pydicom.dcmread(dcm("US1_UNCR.dcm")).pixel_array
    np.testing.assert_allclose(us.grey[0], _luma(rgb_pixels), atol=1e-3)
    assert us.grey.mean() == pytest.approx(35.597, abs=0.01)


# ------------------------------------------------------------------------------ grey levels


def test_monochrome1_is_inverted_within_its_nominal_range():
    ct = grey("RG3_UNCR.dcm")  # CR, MONOCHROME1, 10 bits stored
    stored = pydicom.dcmread(dcm("RG3_UNCR.dcm")).pixel_array
    assert ct.value_range == (0.0, 1023.0)
    np.testing.assert_array_equal(ct.grey[0], 1023.0 - stored)
    assert ct.grey.mean() == pytest.approx(1023.0 - stored.mean(), abs=1e-3)
    assert ct.grey.mean() == pytest.approx(690.29, abs=0.01)


def test_signed_data_and_rescale_slope_intercept():
    mr = grey("MR_small.dcm")  # signed 16-bit: shown by its own range
    assert mr.value_range is None and mr.grey.min() == 127.0
    assert mr.grey.mean() == pytest.approx(518.88, abs=0.01)
    ct = grey("693_UNCR.dcm")  # signed CT, intercept -1024: Hounsfield units
    assert (ct.grey.min(), ct.grey.max()) == (-3024.0, 1468.0)
    assert ct.grey.mean() == pytest.approx(-1035.56, abs=0.01)
    sloped = grey("MR2_UNCR.dcm")  # slope 3.774114, intercept 0.000061
    stored = pydicom.dcmread(dcm("MR2_UNCR.dcm")).pixel_array.astype(np.float64)
    np.testing.assert_allclose(sloped.grey[0], stored * 3.774114 + 0.000061, atol=1e-3)


# ------------------------------------------------------------------------------ codecs


@pytest.mark.parametrize(
    ("compressed", "reference"),
    [
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS
        ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"),  # JPEG-LS, 10 frames
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),  # JPEG 2000
        ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm"),  # JPEG 2000, 10 frames
        ("US1_J2KR.dcm", "US1_UNCR.dcm"),  # JPEG 2000 YBR_RCT colour
        ("RG3_J2KR.dcm", "RG3_UNCR.dcm"),  # JPEG 2000 MONOCHROME1
    ],
)
def test_jpeg_ls_and_jpeg_2000_decode_to_the_uncompressed_pixels(
    jpeg_plugins, compressed, reference
):
    decoded, expected = grey(compressed), grey(reference)
    np.testing.assert_array_equal(decoded.grey, expected.grey)
    assert decoded.value_range == expected.value_range


def test_a_jpeg_ls_cine_is_ingested(jpeg_plugins, tmp_path):
    shutil.copy(dcm("emri_small_jpeg_ls_lossless.dcm"), tmp_path / "cine.dcm")
    (sequence,) = read_source("cine.dcm", tmp_path)
    assert sequence.frames.shape == (10, 64, 64) and sequence.modality == "mr"
    assert sequence.frames.mean() == pytest.approx(109.70, abs=0.01)


# ------------------------------------------------------------------------------ modality


def test_mr_nifti_with_negative_values_is_mr_and_not_windowed_white(tmp_path):
    shutil.copy(NIFTI / "anatomical.nii", tmp_path / "anat.nii")
    (sequence,) = read_source("anat.nii", tmp_path)
    assert sequence.frames.min() == -610.0  # the old rule (min < -500) called this CT
    assert sequence.modality == "mr" and "not Hounsfield" in sequence.modality_source
    unit = normalize(sequence.frames, sequence.modality)
    assert unit.mean() == pytest.approx(0.6232, abs=0.001) and (unit > 0.99).mean() < 0.01
    assert (normalize(sequence.frames, "ct") > 0.99).mean() > 0.99  # the defect: all white
    (given,) = read_source("anat.nii", tmp_path, modality="ct")
    assert given.modality == "ct" and given.modality_source == "given"


def test_modality_from_header_words_and_from_hounsfield_statistics():
    assert header_hint(["dcm2niix TE=30;Time=1"]) == "mr"
    assert header_hint(["CT abdomen"]) == "ct" and header_hint(["spm - 3D normalized"]) is None
    air_and_tissue = np.concatenate([np.full(500, -1000.0), np.full(500, 40.0)])
    assert nifti_modality([""], air_and_tissue)[0] == "ct"
    assert nifti_modality(["T1w MPRAGE"], air_and_tissue) == ("mr", "NIfTI header names MR")
    assert nifti_modality([""], np.linspace(-610, 30000, 1000))[0] == "mr"


def test_dicom_modality_is_reported(tmp_path):
    assert read_dicom_file(dcm("CT_small.dcm")).modality_source == "DICOM Modality CT"
    nm = read_dicom_file(dcm("JPEG2000_UNC.dcm"))
    assert nm.modality == "us" and "NM" in nm.modality_source


# ------------------------------------------------------------------------------ burned-in text


def test_regions_beyond_the_image_are_not_used():
    ds = pydicom.dcmread(dcm("examples_ybr_color.dcm"))  # regions of a 640x480 original
    assert us_regions(ds, 240, 320) == []
    sequence = read_dicom_file(dcm("examples_ybr_color.dcm"))
    assert sequence.text_risk == "possible" and sequence.frames.shape == (30, 240, 320)


def test_echo_patient_name_and_settings_are_masked_and_the_sector_is_kept():
    sequence = read_dicom_file(dcm("examples_ybr_color.dcm"))
    frames, value_range = sequence.frames, sequence.value_range
    name_box = (slice(0, 12), slice(0, 30))  # "PLA", the PatientName, drawn top left
    assert (frames[(slice(None), *name_box)] > 60).sum() > 30 * 40
    mask = overlay_mask(frames, value_range)
    masked, count = mask_overlay(frames, value_range)
    assert count == int(mask.sum()) == 5699
    assert masked[(slice(None), *name_box)].max() < 30  # JPEG noise of the background remains
    # Nothing that moves is touched: every masked pixel is static across the 30 frames.
    assert (frames.max(axis=0)[mask] - frames.min(axis=0)[mask] <= 20).mean() > 0.99
    sector = frames.std(axis=0) > 5
    assert not (mask & sector).any()
    np.testing.assert_array_equal(masked[:, ~mask], frames[:, ~mask])
    # After preprocessing to a 320 px square the name area stays dark.
    out = preprocess(sequence.__class__(masked, "us", value_range), 320)
    assert out[:, 40:52, 0:30].max() < 30  # 240x320 is padded by 40 rows on top


def test_static_anatomy_is_not_text():
    frames = np.zeros((6, 64, 64), np.float32)
    frames[:, 10:50, 10:50] = 200.0  # a large static bright structure
    frames[:, 55:58, 2:12] = 255.0  # a short static label
    mask = overlay_mask(frames, (0.0, 255.0))
    assert not mask[20:40, 20:40].any() and mask[55:58, 2:12].all()
