"""Ingest readers: medical sequences from disk to float32 frames (T, H, W) plus modality info.

Supported sources (`read_source` dispatches on what it finds):
- a folder of PNG/JPEG/BMP/TIFF slices or frames, sorted naturally (`img2` before `img10`);
- a video file (AVI, MP4, MOV, MKV, ...), decoded with PyAV to BT.601 luma;
- a NIfTI volume (`.nii`, `.nii.gz`), reoriented to the closest canonical (RAS) orientation and
  shown with anterior up: 3D gives one sequence of slices along the last (z) axis; 4D gives, by
  default, the time series of the middle slice (`nifti_4d="middle-slice"`, a cine), or one time
  series per slice (`"per-slice"`), or one slice stack per time point (`"per-time"`, the
  reference's ACDC-style "stereoscopic" sequences);
- a DICOM file: multi-frame (cine) is one sequence, single-frame is one frame;
- a folder of DICOM files: single-frame files are grouped by SeriesInstanceUID and sorted by
  position along the slice normal (ImagePositionPatient x ImageOrientationPatient), else by
  InstanceNumber; each multi-frame file in it is its own sequence.

DICOM details (colour, rescale to HU, series order, burned-in text) are in `dicom`.

Modality `auto` (see `modality`): the DICOM Modality tag (CT, MR; anything else is shown as
stored, "us"); NIfTI from its header's words, else from its intensities (CT when the 0.5th
percentile is air in HU); videos and images are "us". Each sequence says why
(`modality_source`). Videos are marked `text_risk="possible"` (exported clips usually carry
burned-in annotations); slice folders are not (a static detector would erase static anatomy).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image, UnidentifiedImageError

from genaug.errors import InvalidArgument
from services.data import video
from services.data.dicom import read_dicom_file, read_dicom_folder
from services.data.modality import nifti_modality
from services.data.safety import MAX_FRAMES, check_dims, natural_key, resolve_within
from services.data.sequence import FrameSequence

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".avi", ".mp4", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
NIFTI_4D_MODES = ("middle-slice", "per-slice", "per-time")


def source_kind(path: Path) -> str:
    """Classify a file as `video`, `image`, `nifti`, `dicom` or `unknown`."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in DICOM_SUFFIXES or _has_dicom_magic(path):
        return "dicom"
    return "unknown"


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def read_source(
    path: str | os.PathLike,
    root: str | os.PathLike,
    *,
    modality: str = "auto",
    nifti_4d: str = "middle-slice",
    field_name: str = "source",
) -> list[FrameSequence]:
    """Read every sequence in a file or folder that lies inside `root`.

    Args:
        path: the source file or folder (absolute, or relative to `root`).
        root: the dataset root the source must stay inside (symlinks included).
        modality: `auto`, or `ct`/`mr`/`us` to override what the reader found.
        nifti_4d: how a 4D NIfTI becomes sequences (see module docstring).
        field_name: the field named in errors.

    Returns:
        One or more sequences, each with at least 2 frames.

    Raises:
        NotFound: the path does not exist.
        InvalidArgument: outside `root`, unreadable, no pixels, too small or absurdly large.
    """
    if nifti_4d not in NIFTI_4D_MODES:
        raise InvalidArgument("nifti_4d", f"must be one of {NIFTI_4D_MODES}")
    resolved = resolve_within(root, path, field_name)
    if resolved.is_dir():
        sequences = _read_directory(resolved, root, field_name)
    else:
        kind = source_kind(resolved)
        if kind == "video":
            sequences = [read_video(resolved, field_name)]
        elif kind == "image":
            sequences = [read_image_files([resolved], field_name)]
        elif kind == "nifti":
            sequences = read_nifti(resolved, field_name, nifti_4d)
        elif kind == "dicom":
            sequences = [read_dicom_file(resolved, field_name)]
        else:
            raise InvalidArgument(
                field_name, "unsupported file type (not a video, image, NIfTI or DICOM file)"
            )
    for sequence in sequences:
        check_dims(*sequence.frames.shape, field_name, min_frames=2)
        if modality != "auto":
            sequence.modality, sequence.modality_source = modality, "given"
    return sequences


def _read_directory(folder: Path, root: str | os.PathLike, field_name: str) -> list[FrameSequence]:
    files = sorted(
        (p for p in folder.iterdir() if not p.name.startswith(".")),
        key=lambda p: natural_key(p.name),
    )
    files = [resolve_within(root, p, field_name) for p in files]
    files = [p for p in files if p.is_file()]
    images = [p for p in files if source_kind(p) == "image"]
    if images:
        return [read_image_files(images, field_name)]
    dicoms = [p for p in files if source_kind(p) == "dicom"]
    if dicoms:
        return read_dicom_folder(dicoms, field_name)
    raise InvalidArgument(field_name, "the folder holds no image or DICOM files")


# ---------------------------------------------------------------------------- images, video


def read_image_files(paths: list[Path], field_name: str = "source") -> FrameSequence:
    """Read 2D images (in the given order) as one sequence; colour becomes BT.601 luma."""
    frames: list[np.ndarray] = []
    value_range: tuple[float, float] | None = (0.0, 255.0)
    if len(paths) > MAX_FRAMES:
        check_dims(len(paths), 1, 1, field_name)
    for index, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                width, height = image.size
                check_dims(1, height, width, field_name)
                if image.mode in ("L", "LA"):
                    array = np.asarray(image.getchannel(0), dtype=np.float32)
                elif image.mode.startswith("I") or image.mode == "F":
                    array = np.asarray(image, dtype=np.float32)
                    value_range = None
                else:
                    array = video.rgb_to_luma(np.asarray(image.convert("RGB")))
        except InvalidArgument:  # a size check above, already naming the field
            raise
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise InvalidArgument(
                field_name, f"cannot decode image {index} ({type(exc).__name__})"
            ) from None
        if frames and array.shape != frames[0].shape:
            raise InvalidArgument(field_name, f"image {index} differs in size from image 0")
        frames.append(array)
    return FrameSequence(np.stack(frames), "us", value_range, modality_source="images")


def read_video(path: Path, field_name: str = "source") -> FrameSequence:
    """Decode a video file to grey frames (values 0-255)."""
    frames, fps = video.decode_grey(path, field_name)
    return FrameSequence(
        frames.astype(np.float32),
        "us",
        (0.0, 255.0),
        fps=fps,
        modality_source="video",
        text_risk="possible",
    )


# ---------------------------------------------------------------------------- NIfTI


def _stack_to_frames(stack: np.ndarray) -> np.ndarray:
    """(X, Y, N) canonical RAS array -> (N, Y, X) frames with anterior at the top."""
    return np.ascontiguousarray(np.flip(np.transpose(stack, (2, 1, 0)), axis=1))


def read_nifti(
    path: Path, field_name: str = "source", nifti_4d: str = "middle-slice"
) -> list[FrameSequence]:
    """Read a 3D or 4D NIfTI volume as sequences (see the module docstring for 4D modes)."""
    try:
        image = nib.load(path)
        shape = tuple(int(s) for s in image.shape)
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) not in (3, 4):
            raise InvalidArgument(field_name, f"NIfTI with {len(shape)} dimensions; need 3 or 4")
        x, y = shape[0], shape[1]
        check_dims(int(np.prod(shape[2:])), y, x, field_name, min_frames=0)
        image = nib.as_closest_canonical(image)
        data = np.asarray(image.get_fdata(dtype=np.float32)).reshape(image.shape[:3] + (-1,))
        texts = [_header_text(image.header, key) for key in ("descrip", "aux_file", "intent_name")]
    except InvalidArgument:
        raise
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InvalidArgument(field_name, f"cannot read NIfTI ({type(exc).__name__})") from None
    data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    modality, reason = nifti_modality(texts, data)

    def sequence(stack: np.ndarray, part: str = "") -> FrameSequence:
        return FrameSequence(_stack_to_frames(stack), modality, part=part, modality_source=reason)

    if len(shape) == 3:
        return [sequence(data[..., 0])]
    if nifti_4d == "middle-slice":
        return [sequence(data[:, :, data.shape[2] // 2, :])]
    if nifti_4d == "per-slice":
        return [sequence(data[:, :, z, :], f"z{z:03d}") for z in range(data.shape[2])]
    return [sequence(data[:, :, :, t], f"t{t:03d}") for t in range(data.shape[3])]


def _header_text(header: object, key: str) -> str:
    try:
        value = header[key]  # type: ignore[index]
    except (KeyError, ValueError, TypeError):
        return ""
    raw = np.asarray(value).item()
    return raw.decode("latin-1", "replace") if isinstance(raw, bytes) else str(raw)
