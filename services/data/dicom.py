"""DICOM ingest: multi-frame cines, single frames and series folders, with pydicom 3.

Grey conversion of colour DICOM: pydicom 3 converts YBR_FULL/YBR_FULL_422 to RGB by default.
We ask for the raw data instead (`raw=True`) and take the Y channel, which *is* the grey image;
converting pydicom's RGB back with another colour-space conversion would convert twice. RGB
(and JPEG 2000 YBR_ICT/RCT, which the decoder returns as RGB) becomes BT.601 luma.

CT pixel values get RescaleSlope/RescaleIntercept (top level, or the shared functional
groups of enhanced multi-frame objects), giving Hounsfield units. Series are single-frame files
grouped by SeriesInstanceUID and sorted along the slice normal (ImagePositionPatient x
ImageOrientationPatient), then by InstanceNumber. Ultrasound is cropped to its ultrasound
regions when they lie inside the image (this drops most burned-in text around the image);
otherwise a warning says burned-in annotations may remain. Header checks (pixel data present,
Rows/Columns/NumberOfFrames within limits) run before any pixel is decoded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pydicom.errors
from pydicom.pixels import apply_color_lut

from genaug.errors import InvalidArgument
from services.data import video
from services.data.safety import MAX_FRAMES, MAX_SIDE, check_dims
from services.data.sequence import FrameSequence

logger = logging.getLogger(__name__)

_MODALITY_TAGS = {"CT": "ct", "MR": "mr", "US": "us"}
_RAW_YBR = frozenset({"YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420"})


def _dcmread(path: Path, field_name: str) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise InvalidArgument(
            field_name, f"not a readable DICOM file ({type(exc).__name__})"
        ) from None


def _check_dicom_header(ds: pydicom.Dataset) -> tuple[int, int, int]:
    """Validate pixel presence and dimensions before decoding; return (frames, rows, cols)."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InvalidArgument("dicom.PixelData", "the DICOM file has no pixel data")
    values = {}
    for keyword in ("Rows", "Columns", "NumberOfFrames"):
        try:
            values[keyword] = int(ds.get(keyword) or (1 if keyword == "NumberOfFrames" else 0))
        except (TypeError, ValueError):
            raise InvalidArgument(f"dicom.{keyword}", "not an integer") from None
    rows, cols, frames = values["Rows"], values["Columns"], values["NumberOfFrames"]
    for keyword, value, limit in (("Rows", rows, MAX_SIDE), ("Columns", cols, MAX_SIDE)):
        if not 1 <= value <= limit:
            raise InvalidArgument(f"dicom.{keyword}", f"{value} is outside [1, {limit}]")
    if not 1 <= frames <= MAX_FRAMES:
        raise InvalidArgument("dicom.NumberOfFrames", f"{frames} is outside [1, {MAX_FRAMES}]")
    check_dims(frames, rows, cols, "dicom.PixelData")
    return frames, rows, cols


def _rescale(ds: pydicom.Dataset) -> tuple[float, float]:
    """RescaleSlope/Intercept, from the top level or the shared functional groups."""
    source = ds
    if "RescaleSlope" not in ds and "SharedFunctionalGroupsSequence" in ds:
        shared = ds.SharedFunctionalGroupsSequence[0]
        if "PixelValueTransformationSequence" in shared:
            source = shared.PixelValueTransformationSequence[0]
    slope = float(source.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(source.get("RescaleIntercept", 0.0) or 0.0)
    return slope, intercept


def dicom_grey(ds: pydicom.Dataset) -> np.ndarray:
    """Decode a DICOM dataset's pixels to float32 grey (F, H, W), rescaled (CT: HU).

    YBR colour is read raw and its Y channel kept (no double colour conversion); RGB and
    palette colour become BT.601 luma; MONOCHROME1 is inverted (except CT).
    """
    n_frames, rows, cols = _check_dicom_header(ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    raw_ybr = samples == 3 and photometric in _RAW_YBR
    bits = int(ds.get("BitsStored", 8) or 8)
    try:
        ds.pixel_array_options(raw=raw_ybr)
        array = ds.pixel_array
        if photometric == "PALETTE COLOR":
            array = apply_color_lut(array, ds)
            samples = 3
    except Exception as exc:  # decoders raise many types for damaged or unsupported data
        raise InvalidArgument(
            "dicom.PixelData", f"cannot decode pixel data ({type(exc).__name__}: {exc})"[:300]
        ) from None
    if samples == 3:
        array = array.reshape(n_frames, rows, cols, 3)
        if raw_ybr:
            grey = array[..., 0].astype(np.float32)
            if photometric.startswith("YBR_PARTIAL"):
                scale = float(1 << max(bits - 8, 0))
                grey = np.clip((grey - 16 * scale) * (255.0 / 219.0), 0, 255 * scale)
        else:
            grey = video.rgb_to_luma(array)
    else:
        grey = array.reshape(n_frames, rows, cols).astype(np.float32)
    modality = _MODALITY_TAGS.get(str(ds.get("Modality", "")).upper(), "us")
    if photometric == "MONOCHROME1" and modality != "ct":
        grey = float(grey.max() + grey.min()) - grey
    slope, intercept = _rescale(ds)
    if slope != 1.0 or intercept != 0.0:
        grey = grey * np.float32(slope) + np.float32(intercept)
    return grey


def _dicom_meta(ds: pydicom.Dataset) -> tuple[str, tuple[float, float] | None, str]:
    modality = _MODALITY_TAGS.get(str(ds.get("Modality", "")).upper(), "us")
    bits = int(ds.get("BitsStored", 8) or 8)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    value_range = None if signed or modality != "us" else (0.0, float((1 << bits) - 1))
    patient_key = str(ds.get("PatientID", "") or "").strip()
    return modality, value_range, patient_key


def read_dicom_file(path: Path, field_name: str = "source") -> FrameSequence:
    """Read one DICOM file (multi-frame cine or a single frame) as one sequence."""
    return _dicom_sequence(_dcmread(path, field_name))


def _us_region(ds: pydicom.Dataset, rows: int, cols: int) -> tuple[int, int, int, int] | None:
    """Union box (y0, y1, x0, x1) of the ultrasound regions, if it lies inside the image."""
    regions = ds.get("SequenceOfUltrasoundRegions") or []
    boxes = []
    for region in regions:
        try:
            box = tuple(
                int(region[k].value)
                for k in ("RegionLocationMinY0", "RegionLocationMaxY1",
                          "RegionLocationMinX0", "RegionLocationMaxX1")
            )  # fmt: skip
        except (KeyError, TypeError, ValueError):
            return None
        boxes.append(box)
    if not boxes:
        return None
    y0, y1 = min(b[0] for b in boxes), max(b[1] for b in boxes)
    x0, x1 = min(b[2] for b in boxes), max(b[3] for b in boxes)
    if not (0 <= y0 < y1 < rows and 0 <= x0 < x1 < cols):
        return None
    return y0, y1 + 1, x0, x1 + 1


def _dicom_sequence(ds: pydicom.Dataset) -> FrameSequence:
    grey = dicom_grey(ds)
    modality, value_range, patient_key = _dicom_meta(ds)
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES" or modality == "us":
        box = _us_region(ds, grey.shape[1], grey.shape[2]) if modality == "us" else None
        if box is not None:
            grey = grey[:, box[0] : box[1], box[2] : box[3]]
        else:
            logger.warning(
                "DICOM pixels may carry burned-in annotations (text) and no usable "
                "ultrasound region to crop to; they are kept as they are"
            )
    fps = None
    frame_time = ds.get("FrameTime")
    if frame_time:
        try:
            fps = 1000.0 / float(frame_time) if float(frame_time) > 0 else None
        except (TypeError, ValueError):
            fps = None
    return FrameSequence(grey, modality, value_range, fps=fps, patient_key=patient_key)


def _slice_order_key(ds: pydicom.Dataset, index: int) -> tuple[float, float, int]:
    position, orientation = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    along = 0.0
    if position is not None and orientation is not None and len(orientation) == 6:
        row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
        along = float(np.dot(np.asarray(position, float), np.cross(row, col)))
    instance = float(ds.get("InstanceNumber") or 0)
    return along, instance, index


def read_dicom_series(datasets: list[pydicom.Dataset], field_name: str = "source") -> FrameSequence:
    """Stack single-frame DICOM datasets of one series, sorted along the slice normal."""
    check_dims(len(datasets), 1, 1, field_name, min_frames=0)
    order = sorted(range(len(datasets)), key=lambda i: _slice_order_key(datasets[i], i))
    frames = [dicom_grey(datasets[i]) for i in order]
    if any(f.shape != frames[0].shape for f in frames):
        raise InvalidArgument("dicom.Rows", "the slices of one series differ in size")
    modality, value_range, patient_key = _dicom_meta(datasets[order[0]])
    return FrameSequence(np.concatenate(frames), modality, value_range, patient_key=patient_key)


def read_dicom_folder(paths: list[Path], field_name: str = "source") -> list[FrameSequence]:
    """Read a folder of DICOM files: one sequence per series of single-frame files, and one
    per multi-frame file."""
    sequences: list[FrameSequence] = []
    series: dict[str, list[pydicom.Dataset]] = {}
    for path in paths:
        ds = _dcmread(path, field_name)
        _check_dicom_header(ds)
        if int(ds.get("NumberOfFrames") or 1) > 1:
            sequences.append(_dicom_sequence(ds))
        else:
            series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    for number, uid in enumerate(sorted(series)):
        sequence = read_dicom_series(series[uid], field_name)
        sequence.part = f"series{number}" if len(series) > 1 else ""
        sequences.append(sequence)
    for number, sequence in enumerate(sequences):
        if len(sequences) > 1 and not sequence.part:
            sequence.part = f"seq{number}"
    return sequences
