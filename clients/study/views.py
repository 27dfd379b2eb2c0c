"""Training-only views of a dataset: what the generator and the filter of a regime may see.

A view is a dataset root in the seed layout holding one regime's training clips, their slices
and their precomputed conditions (hard links, else copies) and nothing else: the training code
and `genaug augment` run on it unchanged and cannot reach a test clip. The training code also
wants a `test` split (for the figures it logs); in a view it lists the same training clips, so
those logged figures are training figures, and no held-out clip exists to leak.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from services.data import builder, layout
from services.data.conditions import condition_paths

_CLIP_SUFFIX = re.compile(r"_s\d+\.avi$")


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(source, target)


def _volume_of(item: layout.Item) -> str:
    return str(item.extra.get("volume") or _CLIP_SUFFIX.sub("", item.file_name))


def make_view(source: Path, name: str, clip_files: set[str], root: Path) -> Path:
    """Write the view of `clip_files` (train clips of `source`) under `root`; returns `root`.

    Re-running it links what appeared since (e.g. conditions computed after a first call) and
    rewrites the same metadata.
    """
    train = layout.load_dataset(source, name, "train")
    chosen = [item for item in train if item.file_name in clip_files]
    if len(chosen) != len(clip_files):
        raise ValueError(f"{len(clip_files) - len(chosen)} view clips are not in the train split")
    records = layout.read_metadata(layout.metadata_path(source, name, "train"))
    clip_records = [r for r in records if r["file_name"] in clip_files]
    volumes = {_volume_of(item) for item in chosen}
    slice_records = []
    slices_meta = layout.metadata_path(source, name, "train", kind="data")
    if slices_meta.is_file():
        slice_items = layout.load_dataset(source, name, "train", kind="data")
        keep = {i.file_name for i in slice_items if _volume_of(i) in volumes}
        slice_records = [r for r in layout.read_metadata(slices_meta) if r["file_name"] in keep]
    for item in chosen:
        _link(item.path, layout.dataset_dir(root, name) / item.file_name)
        for kind in ("motion_field", "trajectory", "prior"):
            src = getattr(condition_paths(source, name, item.file_name), kind)
            if src.is_file():
                _link(src, getattr(condition_paths(root, name, item.file_name), kind))
    for record in slice_records:
        src = layout.dataset_dir(source, name, "data") / record["file_name"]
        _link(src, layout.dataset_dir(root, name, "data") / record["file_name"])
    for kind, rows in (("volume", clip_records), ("data", slice_records)):
        if kind == "data" and not rows:
            continue
        for split in layout.SPLITS:  # `test` = the same training clips (see the docstring)
            layout.write_metadata(layout.metadata_path(root, name, split, kind), rows)
    manifest = layout.dataset_dir(source, name) / builder.MANIFEST_NAME
    if manifest.is_file():
        _link(manifest, layout.dataset_dir(root, name) / builder.MANIFEST_NAME)
    return root
