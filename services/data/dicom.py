"""DICOM ingest: multi-frame cines, single frames and series folders, with pydicom 3.

Grey conversion per PhotometricInterpretation:
- MONOCHROME2 as stored; MONOCHROME1 inverted within its nominal range (`lo + hi - v`, so an
  unsigned 10-bit 0 becomes 1023), except CT, whose values are Hounsfield units either way;
- YBR_FULL/YBR_FULL_422/YBR_PARTIAL_*: the raw Y channel (`raw=True`), which *is* the grey
  image (converting pydicom's RGB back with another colour-space conversion would convert
  twice); partial-range Y is expanded to full range;
- RGB (and JPEG 2000 YBR_ICT/RCT, which the decoder returns as RGB): BT.601 luma;
- PALETTE COLOR: the colour lookup table applied, then BT.601 luma, in the table's own units
  (16-bit tables give 0-65535: the nominal range says so, instead of clipping at 8 bits).
Signed and unsigned data keep their values; RescaleSlope/RescaleIntercept (top level, or the
shared functional groups of enhanced multi-frame objects) are applied, giving HU for CT, and the
nominal range moves with them. Compressed transfer syntaxes decode through pydicom's plugins:
JPEG baseline/lossless (Pillow or pylibjpeg-libjpeg), JPEG-LS (pylibjpeg-libjpeg), JPEG 2000
(pylibjpeg-openjpeg), RLE.

Series are single-frame files grouped by SeriesInstanceUID and sorted along the slice normal
(ImagePositionPatient x ImageOrientationPatient), then by InstanceNumber.

Burned-in text: ultrasound is cropped to the union of its SequenceOfUltrasoundRegions, and the
pixels of that box outside every region are zeroed (they hold labels and scales). A region edge
on the image border (MaxX1 == Columns, a common off-by-one) is clamped; regions that lie
further outside describe another image size and are not used. Without usable regions, an
ultrasound file (or any file with BurnedInAnnotation YES) is marked `text_risk="possible"` for
`prepare` to mask or refuse (`burned_in`). Header checks (pixel data present, Rows/Columns/
NumberOfFrames within limits) run before any pixel is decoded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pydicom.errors
from pydicom.pixels import apply_color_lut

from genaug.errors import InvalidArgument
from services.data import video
from services.data.modality import dicom_modality
from services.data.safety import MAX_FRAMES, MAX_SIDE, check_dims
from services.data.sequence import FrameSequence

logger = logging.getLogger(__name__)

_RAW_YBR = frozenset({"YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420"})
_REGION_KEYS = ("RegionLocationMinY0", "RegionLocationMaxY1", "RegionLocationMinX0",
                "RegionLocationMaxX1")  # fmt: skip
_PLUGINS_HINT = (
    "; JPEG-LS and JPEG 2000 need pylibjpeg, pylibjpeg-libjpeg and pylibjpeg-openjpeg "
    "(pip install the versions pinned in pyproject.toml)"
)


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


@dataclass
class DicomPixels:
    """Decoded grey pixels with the nominal range of their encoding.

    Attributes:
        grey: float32 (F, H, W), rescaled (CT: HU).
        value_range: (low, high) the encoding can hold, in the units of `grey`; None for
            signed data (shown by its own min-max).
    """

    grey: np.ndarray
    value_range: tuple[float, float] | None


def _decode(ds: pydicom.Dataset, raw_ybr: bool) -> np.ndarray:
    try:
        ds.pixel_array_options(raw=raw_ybr)
        array = ds.pixel_array
        if str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
            array = apply_color_lut(array, ds)
        return array
    except Exception as exc:  # decoders raise many types for damaged or unsupported data
        message = f"cannot decode pixel data ({type(exc).__name__}: {exc})"[:300]
        if "missing dependencies" in str(exc) or "plugin" in str(exc).lower():
            message += _PLUGINS_HINT
        raise InvalidArgument("dicom.PixelData", message) from None


def dicom_grey(ds: pydicom.Dataset) -> DicomPixels:
    """Decode a DICOM dataset's pixels to float32 grey (see the module docstring)."""
    n_frames, rows, cols = _check_dicom_header(ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    raw_ybr = samples == 3 and photometric in _RAW_YBR
    bits = int(ds.get("BitsStored", 8) or 8)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    array = _decode(ds, raw_ybr)
    low, high = (-float(1 << (bits - 1)), float((1 << (bits - 1)) - 1)) if signed else (
        0.0, float((1 << bits) - 1))  # fmt: skip
    if photometric == "PALETTE COLOR":
        array = array.reshape(n_frames, rows, cols, 3)
        grey = video.rgb_to_luma(array)
        low, high, signed = 0.0, float(np.iinfo(array.dtype).max), False
    elif samples == 3:
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
    modality, _ = dicom_modality(str(ds.get("Modality", "")))
    if photometric == "MONOCHROME1" and modality != "ct":
        grey = np.float32(low + high) - grey
    slope, intercept = _rescale(ds)
    if slope != 1.0 or intercept != 0.0:
        grey = grey * np.float32(slope) + np.float32(intercept)
        low, high = sorted((low * slope + intercept, high * slope + intercept))
    return DicomPixels(grey.astype(np.float32, copy=False), None if signed else (low, high))


def read_dicom_file(path: Path, field_name: str = "source") -> FrameSequence:
    """Read one DICOM file (multi-frame cine or a single frame) as one sequence."""
    ds = _dcmread(path, field_name)
    return _sequence(ds, dicom_grey(ds))


def us_regions(ds: pydicom.Dataset, rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    """The ultrasound regions as (y0, y1, x0, x1) half-open boxes inside the image.

    Edges on the border (MaxX1 == Columns) are clamped. Returns [] when there are none, one
    is malformed, or one lies further outside the image (they belong to another image size).
    """
    boxes = []
    for region in ds.get("SequenceOfUltrasoundRegions") or []:
        try:
            y0, y1, x0, x1 = (int(region[k].value) for k in _REGION_KEYS)
        except (KeyError, TypeError, ValueError):
            return []
        if not (0 <= y0 < y1 <= rows and 0 <= x0 < x1 <= cols):
            return []
        boxes.append((y0, min(y1, rows - 1) + 1, x0, min(x1, cols - 1) + 1))
    return boxes


def _crop_to_regions(grey: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """Crop to the regions' union box and zero what lies in no region (labels, scales)."""
    y0, y1 = min(b[0] for b in boxes), max(b[1] for b in boxes)
    x0, x1 = min(b[2] for b in boxes), max(b[3] for b in boxes)
    inside = np.zeros(grey.shape[1:], bool)
    for by0, by1, bx0, bx1 in boxes:
        inside[by0:by1, bx0:bx1] = True
    return np.where(inside, grey, 0).astype(grey.dtype)[:, y0:y1, x0:x1]


def _fps(ds: pydicom.Dataset) -> float | None:
    try:
        frame_time = float(ds.get("FrameTime") or 0)
    except (TypeError, ValueError):
        return None
    return 1000.0 / frame_time if frame_time > 0 else None


def _sequence(ds: pydicom.Dataset, pixels: DicomPixels) -> FrameSequence:
    """Wrap decoded pixels with the header's modality, regions, frame rate and patient key."""
    modality, reason = dicom_modality(str(ds.get("Modality", "")))
    grey, notes, text_risk = pixels.grey, [], "none"
    tag = str(ds.get("Modality", "")).upper()
    annotation = str(ds.get("BurnedInAnnotation", "")).upper()
    if tag == "US" or annotation == "YES":
        boxes = us_regions(ds, grey.shape[1], grey.shape[2]) if tag == "US" else []
        if boxes:
            grey, text_risk = _crop_to_regions(grey, boxes), "cropped"
            notes.append(f"cropped to its {len(boxes)} ultrasound region(s)")
        elif annotation != "NO":
            text_risk = "possible"
        if not boxes and "SequenceOfUltrasoundRegions" in ds:
            notes.append("its ultrasound regions do not fit the image size: not cropped")
    return FrameSequence(
        grey,
        modality,
        pixels.value_range if modality == "us" else None,
        fps=_fps(ds),
        patient_key=str(ds.get("PatientID", "") or "").strip(),
        modality_source=reason,
        text_risk=text_risk,
        notes=notes,
    )


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
    pixels = [dicom_grey(datasets[i]) for i in order]
    if any(p.grey.shape != pixels[0].grey.shape for p in pixels):
        raise InvalidArgument("dicom.Rows", "the slices of one series differ in size")
    stacked = DicomPixels(np.concatenate([p.grey for p in pixels]), pixels[0].value_range)
    return _sequence(datasets[order[0]], stacked)


def read_dicom_folder(paths: list[Path], field_name: str = "source") -> list[FrameSequence]:
    """Read a folder of DICOM files: one sequence per series of single-frame files, and one
    per multi-frame file."""
    sequences: list[FrameSequence] = []
    series: dict[str, list[pydicom.Dataset]] = {}
    for path in paths:
        ds = _dcmread(path, field_name)
        _check_dicom_header(ds)
        if int(ds.get("NumberOfFrames") or 1) > 1:
            sequences.append(_sequence(ds, dicom_grey(ds)))
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
