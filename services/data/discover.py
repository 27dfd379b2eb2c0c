"""Find the source items of an ingest and their labels.

An item is one thing `readers.read_source` reads: a video, NIfTI or DICOM file, or a folder of
slices / DICOM files. Labelling, in order of precedence:
1. `--labels FILE`: CSV (columns `source`, `class` or `cls`, optional `text`) or JSONL (keys
   `source` (or `file_name`/`path`), `cls` (or `class`), optional `text`); `source` is relative
   to the source folder and must stay inside it.
2. Folder per class: `<source>/<class>/<item>`, each entry of a class folder being one item.
3. Otherwise every item gets `class_name` (default `unlabelled`).
A folder that directly holds images or DICOM files is itself one item.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from genaug.errors import InvalidArgument, NotFound
from services.data.readers import source_kind
from services.data.safety import natural_key, resolve_within

logger = logging.getLogger(__name__)

UNLABELLED = "unlabelled"


@dataclass(frozen=True)
class SourceItem:
    """One source to ingest. `rel` (its path under the source root) may be identifying: it is
    hashed into pseudonyms, never written or shown in `repr`."""

    path: Path = field(repr=False)
    rel: str = field(repr=False)
    cls: str
    text: str = ""


def _visible(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if not p.name.startswith(".")),
        key=lambda p: natural_key(p.name),
    )


def _is_sequence_folder(folder: Path) -> bool:
    """True when the folder directly holds slices or DICOM files (so it is one item)."""
    return any(p.is_file() and source_kind(p) in ("image", "dicom") for p in _visible(folder))


def _rows(labels: Path) -> list[dict[str, str]]:
    text = labels.read_text(encoding="utf-8-sig")
    if labels.suffix.lower() == ".csv":
        return [dict(row) for row in csv.DictReader(text.splitlines())]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InvalidArgument("--labels", f"line {number} is not valid JSON") from None
        if not isinstance(row, dict):
            raise InvalidArgument("--labels", f"line {number} is not a JSON object")
        rows.append(row)
    return rows


def load_labels(labels: str | Path, root: Path) -> list[SourceItem]:
    """Read a CSV or JSONL labels file; sources resolve inside `root`."""
    labels_path = Path(labels)
    if not labels_path.is_file():
        raise NotFound("--labels: no such file")
    items: list[SourceItem] = []
    seen: set[Path] = set()
    for number, row in enumerate(_rows(labels_path), start=1):
        source = row.get("source") or row.get("file_name") or row.get("path")
        cls = row.get("cls", row.get("class"))
        if not source or cls is None or str(cls).strip() == "":
            raise InvalidArgument("--labels", f"entry {number} needs a source and a class")
        path = resolve_within(root, str(source), "--labels")
        if path in seen:
            raise InvalidArgument("--labels", f"entry {number} repeats a source")
        seen.add(path)
        rel = path.relative_to(root.resolve()).as_posix()
        items.append(SourceItem(path, rel, str(cls).strip(), str(row.get("text") or "").strip()))
    return items


def discover(
    source: str | Path, labels: str | Path | None = None, class_name: str | None = None
) -> tuple[Path, list[SourceItem]]:
    """List the items under `source` with their classes.

    Args:
        source: a file or a folder.
        labels: optional labels file (see module docstring).
        class_name: class for items without one (default `unlabelled`).

    Returns:
        (the root every item must stay inside, the items in a stable order).
    """
    source_path = Path(source)
    if not source_path.exists():
        raise NotFound("--source: no such file or directory")
    root = (source_path if source_path.is_dir() else source_path.parent).resolve()
    if labels is not None:
        return root, load_labels(labels, root)
    default = class_name or UNLABELLED
    if source_path.is_file() or _is_sequence_folder(source_path):
        resolved = source_path.resolve()
        return root, [SourceItem(resolved, resolved.name, _default(default, class_name))]
    entries = _visible(source_path)
    class_dirs = [p for p in entries if p.is_dir()]
    items: list[SourceItem] = []
    if class_dirs:
        ignored = sum(1 for p in entries if p.is_file())
        if ignored:
            logger.warning("ignoring %d file(s) next to the class folders", ignored)
        for class_dir in class_dirs:
            for entry in _visible(class_dir):
                path = resolve_within(root, entry, "--source")
                rel = path.relative_to(root).as_posix()
                items.append(SourceItem(path, rel, class_dir.name))
    else:
        for entry in entries:
            path = resolve_within(root, entry, "--source")
            items.append(SourceItem(path, path.relative_to(root).as_posix(), default))
        if items:
            _default(default, class_name)
    return root, items


def _default(default: str, class_name: str | None) -> str:
    if class_name is None:
        logger.warning("no labels file or class folders: using class %r", default)
    return default
