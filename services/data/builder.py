"""Build one dataset in the seed layout: sample clips, write them, split by patient, swap in.

`DatasetWriter` is shared by `prepare` (real data) and `phantoms` (the bundled benchmark). It
writes into a hidden staging folder under the root and moves the finished `<DS>_data/` and
`<DS>_volume/` into place only on `commit`, so a failed or interrupted build leaves no partial
dataset behind (the staging folder is removed on error, and by the next build if the process
died). `<DS>_volume/manifest.json` is written last and records how the dataset was made.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from genaug.errors import InvalidArgument
from services.data import layout
from services.data.safety import check_name
from services.data.sampling import SamplingConfig, assemble_clip, sample_clips
from services.data.split import keep_every_class_in_train, patient_classes, split_patients

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
LAYOUT_VERSION = "ctrl-genaug-seed-layout/1"
_RESERVED = frozenset({"file_name", "cls", "text", "patient", "volume"})


@dataclass
class Summary:
    """Counts of a built dataset: split -> class -> number."""

    name: str
    clips: dict[str, dict[str, int]] = field(default_factory=dict)
    slices: dict[str, dict[str, int]] = field(default_factory=dict)
    patients: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: int = 0
    # One line per ingested sequence (number, class, modality and why, frames, clips, notes)
    # and every warning and skip of the build, each naming its item; no identifying values.
    items: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def format(self) -> str:
        """Per-item lines, then a small table (clips, slices and patients per class and split),
        then the warnings."""
        rows = [f"  {line}" for line in self.items]
        rows.append(f"dataset {self.name}: clips / slices / patients per class and split")
        rows.append(f"{'split':<6} {'class':<16} {'clips':>6} {'slices':>7} {'patients':>9}")
        for split in layout.SPLITS:
            for cls in sorted(self.clips.get(split, {})):
                rows.append(
                    f"{split:<6} {cls:<16} {self.clips[split][cls]:>6} "
                    f"{self.slices.get(split, {}).get(cls, 0):>7} "
                    f"{self.patients.get(split, {}).get(cls, 0):>9}"
                )
        if self.skipped:
            rows.append(f"skipped sources: {self.skipped}")
        if self.warnings:
            rows.append(f"warnings ({len(self.warnings)}):")
            rows.extend(f"  {line}" for line in self.warnings)
        return "\n".join(rows)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(root: Path, name: str) -> None:
    pattern = re.compile(rf"^\.(staging|trash)-{re.escape(name)}-(\d+)-[0-9a-f]+$")
    for entry in root.iterdir():
        match = pattern.match(entry.name)
        if match and not _pid_alive(int(match.group(2))):
            logger.info("removing leftover %s from a dead build", entry.name)
            shutil.rmtree(entry, ignore_errors=True)


class DatasetWriter:
    """Write clips and slices of one dataset; use as a context manager, then `commit`.

    Args:
        root: the dataset root (created if missing).
        name: the dataset name `<DS>`.
        sampling: clip sampling parameters.
        fps: clip frame rate.
        overwrite: replace an existing dataset of the same name on commit.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        name: str,
        *,
        sampling: SamplingConfig | None = None,
        fps: float = layout.CLIP_FPS,
        overwrite: bool = False,
    ):
        self.root = Path(root)
        self.name = check_name(name)
        self.sampling = (sampling or SamplingConfig()).validate()
        self.fps = fps
        self.overwrite = overwrite
        self.root.mkdir(parents=True, exist_ok=True)
        finals = [layout.dataset_dir(self.root, name, kind) for kind in ("data", "volume")]
        if not overwrite and any(path.exists() for path in finals):
            raise InvalidArgument("name", "the dataset already exists; `overwrite` replaces it")
        _remove_stale(self.root, name)
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._staging = self.root / f".staging-{name}-{token}"
        self._dirs = {
            kind: self._staging / final.name
            for kind, final in zip(("data", "volume"), finals, strict=True)
        }
        for folder in self._dirs.values():
            folder.mkdir(parents=True)
        self._clips: list[dict[str, Any]] = []
        self._slices: list[dict[str, Any]] = []
        self._volumes: set[str] = set()
        self._done = False

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._done:
            self.abort()

    def abort(self) -> None:
        """Delete everything written so far; the final folders are untouched."""
        self._done = True
        shutil.rmtree(self._staging, ignore_errors=True)

    def add_sequence(
        self,
        frames: np.ndarray,
        *,
        cls: str,
        patient: str,
        volume: str,
        text: str = "",
        extra: dict[str, Any] | None = None,
    ) -> int:
        """Sample, write and record the clips and slices of one preprocessed sequence.

        Args:
            frames: uint8 (T, S, S) preprocessed frames.
            cls: class name.
            patient: the patient's pseudonym (split unit).
            volume: the sequence's pseudonymous id (prefix of its file names).
            text: optional description written as `text`.
            extra: extra JSON-serialisable metadata keys (must not shadow reserved ones).

        Returns:
            The number of clips written.
        """
        if self._done:
            raise RuntimeError("the writer is closed")
        extra = dict(extra or {})
        if _RESERVED & extra.keys():
            raise InvalidArgument("extra", f"keys {sorted(_RESERVED & extra.keys())} are reserved")
        if volume in self._volumes:
            raise InvalidArgument("volume", f"{volume} was already added")
        self._volumes.add(volume)
        base = {"cls": cls, "text": text, "patient": patient, "volume": volume}
        clips = sample_clips(frames.shape[0], self.sampling)
        written_slices: set[int] = set()
        for clip in clips:
            file_name = layout.clip_file_name(volume, clip.start)
            layout.write_clip(
                self._dirs["volume"] / file_name,
                assemble_clip(frames, clip),
                self.fps,
                durable=False,
            )
            self._clips.append(
                {
                    "file_name": file_name,
                    **base,
                    "frames": list(clip.frame_indices),
                    "n_pad": clip.n_pad,
                    "source_frames": int(frames.shape[0]),
                    **extra,
                }
            )
            for index in clip.frame_indices:
                if index in written_slices:
                    continue
                written_slices.add(index)
                slice_name = layout.slice_file_name(volume, index)
                layout.write_slice(self._dirs["data"] / slice_name, frames[index], durable=False)
                self._slices.append(
                    {"file_name": slice_name, **base, "frame_index": index, **extra}
                )
        return len(clips)

    def commit(
        self,
        *,
        test_fraction: float = 0.2,
        seed: int = 33,
        manifest: dict[str, Any] | None = None,
        skipped: int = 0,
    ) -> Summary:
        """Split by patient, write metadata and the manifest, and move the dataset into place.

        Args:
            test_fraction: share of each class's patients in `test`.
            seed: split seed.
            manifest: extra keys for `manifest.json` (no identifying data).
            skipped: number of skipped sources, reported in the summary.

        Returns:
            The dataset summary.
        """
        if self._done:
            raise RuntimeError("the writer is closed")
        if not self._clips:
            raise InvalidArgument("source", "no usable sequences were found")
        classes = patient_classes((r["patient"], r["cls"]) for r in self._clips)
        assignment, moved = keep_every_class_in_train(
            ((r["patient"], r["cls"]) for r in self._clips),
            split_patients(classes, test_fraction, seed),
        )
        summary = Summary(self.name, skipped=skipped)
        for cls in moved:
            message = (
                f"class {cls!r}: every patient holding it went to test; one moved to train so "
                "that augmentation (which reads the training split) keeps the class"
            )
            logger.warning(message)
            summary.warnings.append(message)
        for kind, records in (("volume", self._clips), ("data", self._slices)):
            counts = summary.clips if kind == "volume" else summary.slices
            for split in layout.SPLITS:
                chosen = sorted(
                    (r for r in records if assignment[r["patient"]] == split),
                    key=lambda r: r["file_name"],
                )
                layout.write_metadata(
                    self._dirs[kind] / f"{split}{layout.METADATA_SUFFIX}", chosen, durable=False
                )
                counts[split] = _count(r["cls"] for r in chosen)
        for split in layout.SPLITS:
            summary.patients[split] = _count(
                classes[p] for p, side in sorted(assignment.items()) if side == split
            )
        document = {
            "layout": LAYOUT_VERSION,
            "name": self.name,
            "clip_fps": self.fps,
            "sampling": asdict(self.sampling),
            "test_fraction": test_fraction,
            "split_seed": seed,
            "clips": summary.clips,
            "slices": summary.slices,
            "patients": summary.patients,
            **(manifest or {}),
        }
        layout.atomic_write_bytes(
            self._dirs["volume"] / MANIFEST_NAME,
            (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8"),
            durable=False,
        )
        layout.sync_tree(self._staging)  # everything durable before it becomes visible
        self._swap_in()
        self._done = True
        logger.info("dataset %s committed: %d clips", self.name, len(self._clips))
        return summary

    def _swap_in(self) -> None:
        trash = self.root / self._staging.name.replace(".staging-", ".trash-", 1)
        trash.mkdir()
        try:
            for kind in ("data", "volume"):  # volume (holding the manifest) goes last
                final = layout.dataset_dir(self.root, self.name, kind)
                if final.exists():
                    os.replace(final, trash / final.name)
                os.replace(self._dirs[kind], final)
            fd = os.open(self.root, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            shutil.rmtree(trash, ignore_errors=True)
            with contextlib.suppress(OSError):
                shutil.rmtree(self._staging)


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items()))


def read_manifest(root: str | os.PathLike, name: str) -> dict[str, Any] | None:
    """Return `<root>/<name>_volume/manifest.json` as a dict, or None if absent or unreadable."""
    path = layout.dataset_dir(root, name, "volume") / MANIFEST_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
