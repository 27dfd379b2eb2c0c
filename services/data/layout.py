"""The seed's on-disk dataset layout: one reader and one writer for every producer and consumer.

```
<root>/<DS>_data/<vol>_slice<idx>.png          sampled slices/frames, uint8 grey PNG
<root>/<DS>_data/{train,test}_metadata.jsonl
<root>/<DS>_volume/<vol>_s<firstIdx>.avi       clips: I420 AVI, 2.5 fps, grey as 3 channels
<root>/<DS>_volume/{train,test}_metadata.jsonl
```
Metadata lines are JSON objects with at least `file_name` (a plain name inside the same
folder) and `cls`; `text` and any extra keys are optional.

Every file is written atomically (temporary name in the same folder, fsync, `os.replace`, fsync
of the folder) and metadata appends are line-atomic (one `write` of the whole line under an
exclusive lock, then fsync), so a crash never leaves a half-written clip or line behind that a
reader would take for real.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np

from genaug.errors import InvalidArgument, NotFound
from services.data import video
from services.data.safety import check_dims, check_name, resolve_within

logger = logging.getLogger(__name__)

CLIP_FPS = 2.5
"""Frame rate of stored clips (as in the reference)."""
SPLITS = ("train", "test")
KINDS = ("volume", "data")
METADATA_SUFFIX = "_metadata.jsonl"


def dataset_dir(root: str | os.PathLike, name: str, kind: str = "volume") -> Path:
    """Return `<root>/<name>_<kind>` (`kind` is `volume` for clips, `data` for slices)."""
    if kind not in KINDS:
        raise InvalidArgument("kind", f"must be one of {KINDS}")
    return Path(root) / f"{check_name(name)}_{kind}"


def metadata_path(root: str | os.PathLike, name: str, split: str, kind: str = "volume") -> Path:
    """Return `<root>/<name>_<kind>/<split>_metadata.jsonl`."""
    if split not in SPLITS:
        raise InvalidArgument("split", f"must be one of {SPLITS}")
    return dataset_dir(root, name, kind) / f"{split}{METADATA_SUFFIX}"


def clip_file_name(volume: str, first_index: int) -> str:
    """Name of the clip of `volume` whose first frame is source frame `first_index`."""
    return f"{volume}_s{first_index:02d}.avi"


def slice_file_name(volume: str, index: int) -> str:
    """Name of source frame/slice `index` of `volume` in `<DS>_data/`."""
    return f"{volume}_slice{index:02d}.png"


# ---------------------------------------------------------------------------- atomic writes


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(folder: str | os.PathLike) -> None:
    """Make every file under `folder` durable.

    One `syncfs(2)` of the folder's filesystem where libc has it (measured here: 0.7 s instead
    of 5.6 s for 1,600 per-file fsyncs under load), else an fsync per file and folder.
    """
    top = Path(folder)
    fd = os.open(top, os.O_RDONLY)
    try:
        syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
        if syncfs is not None and syncfs(fd) == 0:
            return
    finally:
        os.close(fd)
    for directory, _, files in os.walk(top):
        for name in files:
            file_fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(file_fd)
            finally:
                os.close(file_fd)
        _fsync_dir(Path(directory))


def atomic_write(
    path: str | os.PathLike, write: Callable[[Path], None], durable: bool = True
) -> Path:
    """Run `write(tmp)` on a temporary name next to `path`, fsync it, then rename it into place.

    On any error the temporary file is removed and `path` is left as it was.

    Args:
        path: the final path; its folder is created if needed.
        write: writes the complete file at the path it is given.
        durable: fsync the file and its folder. Pass False only inside a private staging
            folder that is made durable as a whole (`sync_tree`) before it becomes visible.

    Returns:
        The final path.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        write(tmp)
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if durable:
        _fsync_dir(final.parent)
    return final


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> Path:
    """Atomically replace `path` with `data`."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), durable)


def _write_with(save: Callable[[BinaryIO], None]) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a handle: np.save would append .npy to a bare path
            save(handle)

    return write


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """`np.save(..., allow_pickle=False)` to exactly `path`, atomically (no object arrays)."""
    array = np.asarray(array)
    return atomic_write(path, _write_with(lambda f: np.save(f, array, allow_pickle=False)))


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """`np.savez` of named plain arrays to exactly `path`, atomically (no object arrays)."""
    arrays = {name: np.asarray(value) for name, value in arrays.items()}
    return atomic_write(path, _write_with(lambda f: np.savez(f, allow_pickle=False, **arrays)))


def _check_frames(frames: np.ndarray, ndim: int, field_name: str) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise InvalidArgument(f"{field_name}.dtype", "must be a uint8 numpy array")
    if frames.ndim != ndim:
        raise InvalidArgument(f"{field_name}.shape", f"must have {ndim} dimensions")
    return np.ascontiguousarray(frames)


def write_clip(
    path: str | os.PathLike, frames: np.ndarray, fps: float = CLIP_FPS, durable: bool = True
) -> Path:
    """Atomically write uint8 grey frames (T, H, W) as an I420 AVI clip.

    Args:
        path: destination `.avi` path.
        frames: uint8 (T, H, W), T >= 2, H and W even (4:2:0 chroma).
        fps: frame rate stored in the container.
        durable: see `atomic_write`.

    Returns:
        The final path.
    """
    frames = _check_frames(frames, 3, "frames")
    t, h, w = frames.shape
    check_dims(t, h, w, "frames.shape", min_frames=2)
    if h % 2 or w % 2:
        raise InvalidArgument("frames.shape", f"height and width must be even, got {h}x{w}")
    if not fps > 0:
        raise InvalidArgument("fps", "must be positive")
    return atomic_write(path, lambda tmp: video.encode_i420_avi(tmp, frames, fps), durable)


def write_slice(path: str | os.PathLike, frame: np.ndarray, durable: bool = True) -> Path:
    """Atomically write one uint8 grey frame (H, W) as PNG (`durable`: see `atomic_write`)."""
    frame = _check_frames(frame, 2, "frame")
    check_dims(1, *frame.shape, "frame.shape")
    ok, encoded = cv2.imencode(".png", frame)
    if not ok:
        raise InvalidArgument("frame", "PNG encoding failed")
    return atomic_write_bytes(path, encoded.tobytes(), durable)


# ---------------------------------------------------------------------------- metadata


def _check_record(record: dict[str, Any]) -> str:
    if not isinstance(record, dict):
        raise InvalidArgument("record", "must be a dict")
    name = record.get("file_name")
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name[0] == ".":
        raise InvalidArgument("record.file_name", "must be a plain file name in the same folder")
    if not isinstance(record.get("cls"), str | int) or isinstance(record.get("cls"), bool):
        raise InvalidArgument("record.cls", "must be a string or an integer")
    try:
        line = json.dumps(record, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument("record", f"not JSON-serialisable ({exc})") from None
    return line + "\n"


def append_metadata(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one record as one line, line-atomically.

    The whole line goes out in one `write` under an exclusive `flock`, then the file is
    fsynced. A torn last line left by an earlier crash (no trailing newline) is cut off first.

    Args:
        path: the metadata `.jsonl` file; created if missing.
        record: a JSON-serialisable dict with `file_name` and `cls`.
    """
    data = _check_record(record).encode("utf-8")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            tail = os.pread(fd, min(size, 1 << 20), max(0, size - (1 << 20)))
            cut = size - len(tail) + tail.rfind(b"\n") + 1
            logger.warning("metadata file had a torn last line; cutting %d bytes", size - cut)
            os.ftruncate(fd, cut)
        written = os.write(fd, data)
        if written != len(data):
            os.ftruncate(fd, os.fstat(fd).st_size - written)
            raise OSError(f"short write to metadata ({written} of {len(data)} bytes)")
        os.fsync(fd)
    finally:
        os.close(fd)


def write_metadata(
    path: str | os.PathLike, records: Iterable[dict[str, Any]], durable: bool = True
) -> Path:
    """Atomically replace a metadata file with `records`, one JSON line each."""
    data = "".join(_check_record(record) for record in records).encode("utf-8")
    return atomic_write_bytes(path, data, durable)


def read_metadata(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Parse a metadata `.jsonl` file into dicts.

    Blank lines are skipped; an unparsable last line without a trailing newline (a torn append)
    is skipped with a warning; any other bad line is an error.

    Raises:
        NotFound: the file does not exist.
        InvalidArgument: a line is not a JSON object with `file_name` and `cls`.
    """
    meta = Path(path)
    if not meta.is_file():
        raise NotFound(f"metadata: {meta.name} does not exist")
    text = meta.read_text(encoding="utf-8")
    lines = text.split("\n")
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        torn = number == len(lines)  # the last element follows the last newline
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if torn:
                logger.warning("%s: skipping a torn last line", meta.name)
                continue
            raise InvalidArgument(f"{meta.name}:{number}", "not valid JSON") from None
        if not isinstance(record, dict) or "file_name" not in record or "cls" not in record:
            raise InvalidArgument(f"{meta.name}:{number}", "needs an object with file_name, cls")
        records.append(record)
    return records


# ---------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Item:
    """One metadata line of a dataset, with its file resolved inside the dataset folder."""

    path: Path
    file_name: str
    cls: str
    text: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Dataset:
    """The items of one split of one kind (`volume` clips or `data` slices) of a dataset."""

    root: Path
    name: str
    split: str
    kind: str
    items: list[Item]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __getitem__(self, index: int) -> Item:
        return self.items[index]

    @property
    def classes(self) -> list[str]:
        """Sorted class names present in this split."""
        return sorted({item.cls for item in self.items})

    def class_counts(self) -> dict[str, int]:
        """Number of items per class, sorted by class name."""
        return dict(sorted(Counter(item.cls for item in self.items).items()))

    def by_class(self) -> dict[str, list[Item]]:
        """Items grouped by class name."""
        groups: dict[str, list[Item]] = {}
        for item in self.items:
            groups.setdefault(item.cls, []).append(item)
        return dict(sorted(groups.items()))


def load_dataset(
    root: str | os.PathLike, name: str, split: str = "train", kind: str = "volume"
) -> Dataset:
    """Read `<root>/<name>_<kind>/<split>_metadata.jsonl` into a `Dataset`.

    Every `file_name` must resolve inside the dataset folder and exist. `cls` is returned as a
    string (integer classes, as in MRNet, become "0", "1").

    Args:
        root: the dataset root.
        name: the dataset name (`<DS>`).
        split: `train` or `test`.
        kind: `volume` (clips) or `data` (slices).

    Raises:
        NotFound: the folder, the metadata file or a listed file does not exist.
        InvalidArgument: a line is malformed or names a path outside the folder.
    """
    folder = dataset_dir(root, name, kind)
    meta = metadata_path(root, name, split, kind)
    if not folder.is_dir():
        raise NotFound(f"dataset: {folder.name} does not exist under the dataset root")
    items = []
    for number, record in enumerate(read_metadata(meta), start=1):
        file_name = str(record["file_name"])
        path = resolve_within(folder, file_name, f"{meta.name}:{number}.file_name")
        extra = {k: v for k, v in record.items() if k not in ("file_name", "cls", "text")}
        text = record.get("text") or ""
        items.append(Item(path, file_name, str(record["cls"]), str(text), extra))
    return Dataset(Path(root), name, split, kind, items)


def read_clip(path: str | os.PathLike, root: str | os.PathLike | None = None) -> np.ndarray:
    """Decode a clip to uint8 grey (T, H, W).

    Reads our I420 AVIs within 1 grey level of what was written, and any other video PyAV can
    open (colour is reduced to BT.601 luma).

    Args:
        path: the clip file.
        root: when given, `path` must resolve inside it.

    Raises:
        NotFound: no such file.
        InvalidArgument: outside `root`, undecodable, or fewer than 2 frames.
    """
    clip = _resolve(path, root, "clip")
    frames, _ = video.decode_grey(clip, "clip")
    check_dims(*frames.shape, "clip", min_frames=2)
    return frames


def read_slice(path: str | os.PathLike, root: str | os.PathLike | None = None) -> np.ndarray:
    """Decode a slice PNG to uint8 grey (H, W)."""
    image_path = _resolve(path, root, "slice")
    image = cv2.imread(os.fspath(image_path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise InvalidArgument("slice", "cannot decode image")
    return image


def _resolve(path: str | os.PathLike, root: str | os.PathLike | None, field_name: str) -> Path:
    if root is not None:
        return resolve_within(root, path, field_name)
    resolved = Path(path)
    if not resolved.is_file():
        raise NotFound(f"{field_name}: no such file")
    return resolved
