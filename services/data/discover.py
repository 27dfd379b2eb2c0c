"""Find the source items of an ingest and their labels.

An item is one thing `readers.read_source` reads: a video, NIfTI or DICOM file, or a folder of
slices / DICOM files. Labelling, in order of precedence:
1. `labels` FILE: CSV (columns `source`, `class` or `cls`, optional `text`, optional
   `modality`) or JSONL (keys `source` (or `file_name`/`path`), `cls` (or `class`), optional
   `text`, `modality`); `source` is relative to the source folder and must stay inside it.
2. Folder per class: `<source>/<class>/<item>`, each entry of a class folder being one item.
3. Otherwise every item gets `class_name` (default `unlabelled`).
A folder that directly holds images or DICOM files is itself one item. Files that are not
media (`notes.txt`, `.DS_Store`-like names are hidden anyway) are skipped with a warning. Bad
labels rows are errors naming the file and line; with `skip_bad` a row whose file is missing
or unreadable is skipped instead (reported in `Discovery.skipped`).

Paths appear only in messages about what was *not* ingested (skipped or refused files), which
the user must find; items that are ingested are named by number and pseudonym elsewhere.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from genaug.errors import InvalidArgument, NotFound
from services.data.modality import MODALITIES
from services.data.readers import source_kind
from services.data.safety import natural_key, resolve_within

logger = logging.getLogger(__name__)

UNLABELLED = "unlabelled"


@dataclass(frozen=True)
class SourceItem:
    """One source to ingest. `rel` (its path under the source root) may be identifying: it is
    hashed into pseudonyms, never written or shown in `repr`. `modality` overrides the
    detected one for this item (from a labels file), `""` when not given."""

    path: Path = field(repr=False)
    rel: str = field(repr=False)
    cls: str
    text: str = ""
    modality: str = ""


@dataclass
class Discovery:
    """What `discover` found: the root every item stays inside, the items, and what it
    skipped (one message each, naming the file)."""

    root: Path
    items: list[SourceItem]
    skipped: list[str] = field(default_factory=list)


def _visible(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if not p.name.startswith(".")),
        key=lambda p: natural_key(p.name),
    )


def _is_media(path: Path) -> bool:
    return path.is_dir() or source_kind(path) != "unknown"


def _is_sequence_folder(folder: Path) -> bool:
    """True when the folder directly holds slices or DICOM files (so it is one item)."""
    return any(p.is_file() and source_kind(p) in ("image", "dicom") for p in _visible(folder))


def _rows(labels: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) for every row of a CSV or JSONL labels file."""
    text = labels.read_text(encoding="utf-8-sig")
    where = labels.name
    if labels.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        return [(reader.line_num, dict(row)) for row in reader]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InvalidArgument("labels", f"{where} line {number}: not valid JSON") from None
        if not isinstance(row, dict):
            raise InvalidArgument("labels", f"{where} line {number}: not a JSON object")
        rows.append((number, row))
    return rows


def load_labels(labels: str | Path, root: Path, skip_bad: bool = False) -> Discovery:
    """Read a CSV or JSONL labels file; sources resolve inside `root`.

    Raises:
        NotFound: the labels file, or (unless `skip_bad`) a listed source, does not exist.
        InvalidArgument: a malformed row, naming the file and line.
    """
    labels_path = Path(labels)
    if not labels_path.is_file():
        raise NotFound("labels: no such file")
    found = Discovery(root, [])
    seen: set[Path] = set()
    for number, row in _rows(labels_path):
        where = f"{labels_path.name} line {number}"
        source = row.get("source") or row.get("file_name") or row.get("path")
        cls = row.get("cls", row.get("class"))
        if not source or cls is None or str(cls).strip() == "":
            raise InvalidArgument("labels", f"{where}: needs a source and a class")
        modality = str(row.get("modality") or "").strip().lower()
        if modality and modality not in MODALITIES:
            raise InvalidArgument("labels", f"{where}: modality must be one of {MODALITIES}")
        try:
            path = resolve_within(root, str(source), "labels")
            if not _is_media(path):
                raise InvalidArgument("labels", "not a video, image, NIfTI or DICOM file")
        except NotFound:
            if not skip_bad:
                raise NotFound(f"labels: {where}: no such file: {source}") from None
            found.skipped.append(f"{where}: no such file: {source}")
            continue
        except InvalidArgument as exc:
            message = str(exc).removeprefix("labels: ")
            if not skip_bad or "outside" in message:
                raise InvalidArgument("labels", f"{where}: {source}: {message}") from None
            found.skipped.append(f"{where}: {source}: {message}")
            continue
        if path in seen:
            raise InvalidArgument("labels", f"{where}: repeats a source")
        seen.add(path)
        rel = path.relative_to(root.resolve()).as_posix()
        text = str(row.get("text") or "").strip()
        found.items.append(SourceItem(path, rel, str(cls).strip(), text, modality))
    return found


def discover(
    source: str | Path,
    labels: str | Path | None = None,
    class_name: str | None = None,
    *,
    skip_bad: bool = False,
) -> Discovery:
    """List the items under `source` with their classes.

    Args:
        source: a file or a folder (absolute or relative to the working directory).
        labels: optional labels file (see module docstring).
        class_name: class for items without one (default `unlabelled`).
        skip_bad: skip labels rows whose file is missing instead of failing.

    Returns:
        The items in a stable order, and what was skipped.
    """
    source_path = Path(source)
    if not source_path.exists():
        raise NotFound("source: no such file or directory")
    source_path = source_path.resolve()  # relative sources must not be joined to root again
    root = source_path if source_path.is_dir() else source_path.parent
    if labels is not None:
        return load_labels(labels, root, skip_bad)
    default = class_name or UNLABELLED
    if source_path.is_file() or _is_sequence_folder(source_path):
        return Discovery(
            root, [SourceItem(source_path, source_path.name, _default(default, class_name))]
        )
    entries = _visible(source_path)
    class_dirs = [p for p in entries if p.is_dir()]
    found = Discovery(root, [])
    if class_dirs:
        ignored = sum(1 for p in entries if p.is_file())
        if ignored:
            logger.warning("ignoring %d file(s) next to the class folders", ignored)
        candidates = [(entry, d.name) for d in class_dirs for entry in _visible(d)]
    else:
        candidates = [(entry, default) for entry in entries]
    for entry, cls in candidates:
        path = resolve_within(root, entry, "source")
        rel = path.relative_to(root).as_posix()
        if not _is_media(path):
            found.skipped.append(f"{rel}: not a video, image, NIfTI or DICOM file")
            continue
        found.items.append(SourceItem(path, rel, cls))
    if found.items and not class_dirs:
        _default(default, class_name)
    return found


def _default(default: str, class_name: str | None) -> str:
    if class_name is None:
        logger.warning("no labels file or class folders: using class %r", default)
    return default
