"""Input guards shared by the readers and the layout: path containment, size limits, and
outputs kept apart from inputs.

Every path that comes from a user, a labels file or a metadata line goes through
`resolve_within` before it is opened, so `..`, absolute paths and symlinks cannot reach
outside the dataset root. Messages name the offending field, never the path itself: source
paths may carry patient names. `check_outside` is how every command that writes refuses an
output folder at or inside one of its inputs (where it could replace or mix with real files).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from genaug.errors import InvalidArgument, NotFound

MAX_SIDE = 8192
"""Largest accepted frame height or width, in pixels."""
MAX_FRAMES = 100_000
"""Largest accepted number of frames (or slices) in one sequence."""
MAX_VOXELS = 1 << 31
"""Largest accepted T*H*W of one sequence (8 GiB as float32)."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def resolve_within(root: str | os.PathLike, path: str | os.PathLike, field: str) -> Path:
    """Resolve `path` (absolute, or relative to `root`) and require it to stay inside `root`.

    Symlinks are followed before the check, so a link that points outside is rejected too.

    Args:
        root: the dataset root; must exist.
        path: the candidate path.
        field: the argument or metadata field named in errors.

    Returns:
        The resolved absolute path (it exists).

    Raises:
        NotFound: `root` or the resolved path does not exist.
        InvalidArgument: the path resolves outside `root`.
    """
    if not Path(root).exists():
        raise NotFound(f"{field}: the dataset root does not exist")
    resolved = _contained(root, path, field, "path is outside the dataset root")
    if not resolved.exists():
        raise NotFound(f"{field}: no such file or directory")
    return resolved


def output_within(root: str | os.PathLike, path: str | os.PathLike, field: str) -> Path:
    """Require a path a command will write (it need not exist yet) to stay inside its output
    root once symlinks are resolved: a link planted inside the root (`<out>/<DS>_volume ->
    /elsewhere`) would otherwise carry the writes outside it. The root itself may be a link.

    Returns:
        The resolved path.

    Raises:
        InvalidArgument: naming `field` (the output root's flag) and the path relative to it.
    """
    relative = Path(path).relative_to(root) if Path(path).is_relative_to(root) else Path(path)
    message = f"{relative} leads outside it (a symbolic link or '..'); outputs stay inside it"
    return _contained(root, path, field, message)


def _contained(root: str | os.PathLike, path: str | os.PathLike, field: str, message: str) -> Path:
    root_resolved = Path(root).resolve()
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = root_resolved / candidate
    resolved = candidate.resolve()
    if resolved != root_resolved and not resolved.is_relative_to(root_resolved):
        raise InvalidArgument(field, message)
    return resolved


def is_within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True when `path` is `folder` or lies inside it, symlinks resolved (neither need exist)."""
    candidate, container = Path(path).resolve(), Path(folder).resolve()
    return candidate == container or candidate.is_relative_to(container)


def check_outside(
    output: str | os.PathLike, output_field: str, input_path: str | os.PathLike, input_field: str
) -> None:
    """Refuse an output folder that is `input_path` or lies inside it.

    Raises:
        InvalidArgument: naming `output_field`; the message names `input_field` in backticks
            (the CLI shows both as its flags).
    """
    if is_within(output, input_path):
        raise InvalidArgument(
            output_field,
            f"is at or inside `{input_field}`: writing there could replace or mix with its "
            "files; choose a folder outside it",
        )


def check_name(name: str, field: str = "name") -> str:
    """Require a dataset name usable as a path component (letters, digits, `_`, `-`)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidArgument(field, "use 1-64 letters, digits, '_' or '-', starting alphanumeric")
    return name


def check_dims(frames: int, height: int, width: int, field: str, min_frames: int = 1) -> None:
    """Reject empty, too short or absurdly large sequences before any pixel is decoded.

    Args:
        frames: number of frames (T).
        height: frame height (H).
        width: frame width (W).
        field: the field named in errors (e.g. `dicom.Rows`, `source`).
        min_frames: the fewest frames accepted (2 where a clip is needed).
    """
    if height < 1 or width < 1:
        raise InvalidArgument(field, f"empty frame size {height}x{width}")
    if height > MAX_SIDE or width > MAX_SIDE:
        raise InvalidArgument(field, f"frame size {height}x{width} exceeds {MAX_SIDE} px")
    if frames > MAX_FRAMES:
        raise InvalidArgument(field, f"{frames} frames exceeds the limit of {MAX_FRAMES}")
    if frames < min_frames:
        raise InvalidArgument(
            field, f"has {frames} frame(s); a sequence needs at least {min_frames}"
        )
    if frames * height * width > MAX_VOXELS:
        raise InvalidArgument(field, f"{frames}x{height}x{width} exceeds {MAX_VOXELS} voxels")


def natural_key(name: str) -> list[object]:
    """Sort key that orders `img2` before `img10` (digit runs compare as integers)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]
