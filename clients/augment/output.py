"""Phase 3: write the kept clips, rebuild the metadata; clear what a killed run left behind."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clients.augment.manifest import (
    Manifest,
    OutputLock,
    all_written,
    load_pool,
    pool_path,
    state_dir,
)
from clients.augment.plan import WorkItem
from services.data import layout
from services.data.conditions import condition_paths
from services.data.safety import output_within

logger = logging.getLogger(__name__)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """float32 (T,1,H,W) in [-1,1] -> uint8 (T,H,W)."""
    grey = np.asarray(frames, np.float32).reshape(len(frames), *frames.shape[-2:])
    return np.clip((grey + 1.0) * 127.5, 0, 255).round().astype(np.uint8)


@dataclass(frozen=True)
class ClipWriter:
    """Writes kept clips into the output dataset, each followed by its `written` event.

    Attributes:
        texts: source clip -> its text, recorded in the metadata (empty without text
            conditions).
        save_npy: also write each clip's float32 frames as `<id>.npy`.
    """

    out: Path
    name: str
    manifest: Manifest
    texts: dict[str, str]
    save_npy: bool

    def write_kept(
        self, items: list[WorkItem], verdicts: dict[str, dict], written: dict[str, dict]
    ) -> dict[str, dict]:
        """Write every kept clip of `items` not in `written` yet, in plan order; returns the
        metadata records of the clips written now, by id."""
        new = {}
        for w in items:
            verdict = verdicts[w.id]
            if verdict["keep"] and w.id not in written:
                new[w.id] = self.write(w, verdict)
        return new

    def write(self, w: WorkItem, verdict: dict) -> dict:
        """Write one clip atomically, then its `written` event; returns its metadata record."""
        folder = layout.dataset_dir(self.out, self.name)
        _, frames = load_pool(pool_path(self.out, w.id))
        layout.write_clip(folder / f"{w.id}.avi", to_uint8(frames))
        record = {
            "file_name": f"{w.id}.avi",
            "cls": w.cls,
            "synthetic": True,
            "source_clip": w.source_clip,
            "seed": w.seed,
        }
        if self.texts.get(w.source_clip):
            record["text"] = self.texts[w.source_clip]
        for key in ("cross_entropy", "vae_seq", "max_duplicate_similarity"):
            if verdict.get(key) is not None:
                record[key] = round(verdict[key], 6)
        if self.save_npy:
            layout.save_npy(folder / f"{w.id}.npy", np.asarray(frames, np.float32))
            record["npy_file"] = f"{w.id}.npy"
        self.manifest.append({"event": "written", "id": w.id, "record": record})
        return record


def rebuild_metadata(out: Path, name: str) -> int:
    """Atomically rewrite `train_metadata.jsonl` from every shard's written clips."""
    with OutputLock(out):
        records = all_written(out)
        layout.write_metadata(layout.metadata_path(out, name, "train"), records)
    return len(records)


def check_output_paths(out: Path, name: str, manifest: Path) -> None:
    """Refuse an output folder holding a link that would carry the job's writes outside it
    (the folders it writes into, and the files it opens for appending or locking)."""
    state = state_dir(out)
    for path in (
        layout.dataset_dir(out, name),
        state,
        state / "pool",
        state / "conditions",
        state / ".lock",
        manifest,
        Path(out) / "report",
    ):
        output_within(out, path, "--out")


def remove_stale_temporaries(out: Path, name: str, finals: Iterable[str]) -> int:
    """Delete temporaries a killed run left behind for files this shard owns.

    `finals` are final file names owned by this shard (pool files, conditions, clips);
    metadata temporaries are removed under the output lock (no one else writes them then);
    the report removes its own. Returns how many were removed.
    """
    owned = set(finals)
    cache = condition_paths(state_dir(out) / "conditions", name, "any")
    folders = [
        state_dir(out) / "pool",
        *(path.parent for path in cache.files()),
        state_dir(out),
        layout.dataset_dir(out, name),
    ]
    removed = 0
    with OutputLock(out):
        for folder in folders:
            if not folder.is_dir():
                continue
            for path in folder.glob(".*"):
                target = _temporary_of(path.name)
                if target is None:
                    continue
                shared = target.endswith("_metadata.jsonl") or target == "job.json"
                if target in owned or shared:
                    path.unlink(missing_ok=True)
                    removed += 1
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted run", removed)
    return removed


def _temporary_of(file_name: str) -> str | None:
    """`.x.avi.tmp-123-ab12` (layout) or `.x.npy.k3j_9a` (mkstemp) -> `x.avi` / `x.npy`."""
    if not file_name.startswith(".") or file_name == ".lock":
        return None
    body = file_name[1:]
    if ".tmp-" in body:
        return body[: body.rindex(".tmp-")]
    head, dot, _ = body.rpartition(".")
    return head if dot and head else None
