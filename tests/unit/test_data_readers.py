"""Ingest readers on real files: YBR echo cine, CT series, NIfTI, slice folders, bad inputs."""

from __future__ import annotations

import os
import shutil

import nibabel as nib
import nibabel.testing
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import convert_color_space, pixel_array
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from genaug.errors import InvalidArgument, NotFound
from services.data import layout
from services.data.readers import read_source

ECHO = get_testdata_file("examples_ybr_color.dcm")
CT = get_testdata_file("CT_small.dcm")
NIFTI_4D = os.path.join(nibabel.testing.data_path, "example4d.nii.gz")


def _luma(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def test_ybr_echo_grey_is_the_raw_luma_channel(tmp_path):
    shutil.copy(ECHO, tmp_path / "echo.dcm")
    (sequence,) = read_source("echo.dcm", tmp_path)
    assert sequence.frames.shape == (30, 240, 320) and sequence.modality == "us"
    assert sequence.value_range == (0.0, 255.0)
    assert sequence.fps == pytest.approx(30.0, abs=0.01)
    assert pydicom.dcmread(ECHO).PhotometricInterpretation == "YBR_FULL_422"
    raw_y = pixel_array(ECHO, raw=True)[..., 0].astype(np.float64)
    assert np.abs(sequence.frames - raw_y).max() <= 1.0
    # pydicom's default output is already RGB: its luma agrees (up to gamut clipping) ...
    rgb = pydicom.dcmread(ECHO).pixel_array
    assert np.abs(_luma(rgb) - sequence.frames).mean() < 0.5
    # ... while converting that RGB "from YBR" again (the double conversion) would not.
    twice = convert_color_space(rgb, "YBR_FULL", "RGB")
    assert np.abs(_luma(twice) - sequence.frames).mean() > 5.0


def _ct_series(folder, positions):
    folder.mkdir()
    for index, z in enumerate(positions):
        ds = pydicom.dcmread(CT)
        ds.ImagePositionPatient = [0.0, 0.0, float(z)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.InstanceNumber = len(positions) - index  # deliberately disagrees with file order
        arr = ds.pixel_array.copy()
        arr[0, 0] = index  # marks the file
        ds.PixelData = arr.tobytes()
        ds.save_as(folder / f"slice{index}.dcm")


def test_ct_series_sorted_by_position_and_rescaled_to_hu(tmp_path):
    _ct_series(tmp_path / "series", [20.0, 0.0, 10.0])
    (sequence,) = read_source("series", tmp_path)
    assert sequence.modality == "ct" and sequence.frames.shape == (3, 128, 128)
    ds = pydicom.dcmread(CT)
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
    # Ordered by position along the normal: z 0 (file 1), 10 (file 2), 20 (file 0).
    assert sequence.frames[:, 0, 0].tolist() == [1 - 1024.0, 2 - 1024.0, 0 - 1024.0]
    expected = ds.pixel_array.astype(np.float32) - 1024.0
    np.testing.assert_array_equal(sequence.frames[0, 1:], expected[1:])


def test_nifti_3d_and_4d(tmp_path):
    shutil.copy(NIFTI_4D, tmp_path / "f.nii.gz")
    (cine,) = read_source("f.nii.gz", tmp_path)
    assert cine.frames.shape == (2, 96, 128)  # middle slice over time, (T, Y, X)
    assert cine.modality == "mr"
    per_slice = read_source("f.nii.gz", tmp_path, nifti_4d="per-slice")
    assert len(per_slice) == 24 and per_slice[12].part == "z012"
    np.testing.assert_array_equal(per_slice[12].frames, cine.frames)
    volume = np.random.default_rng(0).normal(-600, 300, (20, 16, 5)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "ct.nii")
    (stack,) = read_source("ct.nii", tmp_path)
    assert stack.frames.shape == (5, 16, 20) and stack.modality == "ct"
    np.testing.assert_allclose(stack.frames[2], np.flipud(volume[:, :, 2].T))


def test_slice_folder_sorted_naturally_and_grey(tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    for index in (1, 2, 10):
        rgb = np.zeros((8, 6, 3), np.uint8)
        rgb[..., 1] = index * 10  # green only
        Image.fromarray(rgb).save(folder / f"img{index}.png")
    (sequence,) = read_source("slices", tmp_path)
    assert sequence.frames.shape == (3, 8, 6)
    np.testing.assert_allclose(sequence.frames[:, 0, 0], [5.87, 11.74, 58.7], atol=1e-3)


def _dicom(path, **attrs):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "US", "DOE^JANE", "MRN98765X"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)


def test_dicom_without_pixel_data(tmp_path):
    _dicom(tmp_path / "nopix.dcm", Rows=16, Columns=16, NumberOfFrames=4)
    with pytest.raises(InvalidArgument) as info:
        read_source("nopix.dcm", tmp_path)
    assert info.value.field == "dicom.PixelData"


@pytest.mark.parametrize(
    ("attrs", "field"),
    [
        ({"Rows": 10000, "Columns": 10, "NumberOfFrames": 2}, "dicom.Rows"),
        ({"Rows": 10, "Columns": 9000, "NumberOfFrames": 2}, "dicom.Columns"),
        ({"Rows": 10, "Columns": 10, "NumberOfFrames": 200_000}, "dicom.NumberOfFrames"),
    ],
)
def test_dicom_with_absurd_dimensions(tmp_path, attrs, field):
    _dicom(tmp_path / "big.dcm", PixelData=b"\0" * 200, **attrs)
    with pytest.raises(InvalidArgument) as info:
        read_source("big.dcm", tmp_path)
    assert info.value.field == field


def test_absurd_image_and_single_frames(tmp_path):
    Image.fromarray(np.zeros((2, 9000), np.uint8)).save(tmp_path / "wide.png")
    with pytest.raises(InvalidArgument, match="exceeds 8192"):
        read_source("wide.png", tmp_path)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "one.png")
    with pytest.raises(InvalidArgument, match="1 frame"):
        read_source("one.png", tmp_path)
    layout.write_clip(tmp_path / "two.avi", np.zeros((2, 8, 8), np.uint8))
    assert read_source("two.avi", tmp_path)[0].frames.shape == (2, 8, 8)


def test_corrupt_video_missing_file_and_paths_outside_the_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "bad.avi").write_bytes(b"RIFF\x00\x10\x00\x00AVI LIST" + bytes(range(256)) * 8)
    with pytest.raises(InvalidArgument) as info:
        read_source("bad.avi", root)
    assert info.value.field == "source" and "video" in info.value.message
    (root / "junk.bin").write_bytes(b"hello")
    with pytest.raises(InvalidArgument, match="unsupported"):
        read_source("junk.bin", root)
    with pytest.raises(NotFound):
        read_source("missing.mp4", root)
    shutil.copy(ECHO, tmp_path / "outside.dcm")
    with pytest.raises(InvalidArgument, match="outside the dataset root"):
        read_source("../outside.dcm", root)
    with pytest.raises(InvalidArgument, match="outside the dataset root"):
        read_source(tmp_path / "outside.dcm", root)
    os.symlink(tmp_path / "outside.dcm", root / "link.dcm")
    with pytest.raises(InvalidArgument, match="outside the dataset root"):
        read_source("link.dcm", root)


def test_ultrasound_is_cropped_to_its_region(tmp_path):
    region = Dataset()
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 5, 4
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 44, 33
    pixels = np.full((3, 40, 50), 200, np.uint8)
    pixels[:, 4:34, 5:45] = 50  # the image inside the region; "text" (200) outside it
    _dicom(
        tmp_path / "us.dcm",
        Rows=40,
        Columns=50,
        NumberOfFrames=3,
        PixelData=pixels.tobytes(),
        SequenceOfUltrasoundRegions=[region],
    )
    (sequence,) = read_source("us.dcm", tmp_path)
    assert sequence.frames.shape == (3, 30, 40) and (sequence.frames == 50).all()
