"""Phases 2 and 3: filter the shard's pool, write the kept clips, rebuild the metadata."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
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
from clients.rpc.filter import FilterClient, PoolClip
from services.data import layout

logger = logging.getLogger(__name__)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """float32 (T,1,H,W) in [-1,1] -> uint8 (T,H,W)."""
    grey = np.asarray(frames, np.float32).reshape(len(frames), *frames.shape[-2:])
    return np.clip((grey + 1.0) * 127.5, 0, 255).round().astype(np.uint8)


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def filter_pool(
    items: list[WorkItem],
    out: Path,
    client: FilterClient | None,
    alpha: float,
    duplicate_threshold: float,
    skip: Iterable[str],
    timeout: float,
    band_scope: str = "pool",
) -> dict:
    """The `filtered` manifest event for this pool (the verdicts, in pool order).

    `band` is the pool-wide VAE-Seq band [low, high] (None for an infinite bound); with
    `band_scope` "class", `class_bands` lists the per-class bands the filter judged with
    ({"label", "low", "high", "applied", "note"}, in label order; empty with "pool"; events
    written before the option existed have no `class_bands`).
    """
    if client is None or not items:
        verdicts = [{"id": w.id, "keep": True, "reasons": ["note: not filtered"]} for w in items]
        return {
            "event": "filtered",
            "filter": "none",
            "verdicts": verdicts,
            "band": [None, None],
            "class_bands": [],
        }

    def clips():
        for w in items:
            yield PoolClip(w.id, w.source_clip, w.class_id, load_pool(pool_path(out, w.id))[1])

    skip = set(skip)
    result = client.filter_pool(
        clips(),
        alpha=alpha,
        duplicate_threshold=duplicate_threshold,
        skip_semantic="semantic" in skip,
        skip_sequential="sequential" in skip,
        skip_duplicates="duplicates" in skip,
        band_scope=band_scope,
        timeout=timeout,
    )
    verdicts = [
        {
            "id": v.clip_id,
            "keep": v.keep,
            "cross_entropy": _finite(v.cross_entropy),
            "vae_seq": _finite(v.vae_seq),
            "max_duplicate_similarity": _finite(v.max_duplicate_similarity),
            "reasons": list(v.reasons),
            "rejected_by": v.rejected_by,
        }
        for v in result.verdicts
    ]
    band = [_finite(result.vae_seq_low), _finite(result.vae_seq_high)]
    class_bands = [
        {
            "label": b.label,
            "low": _finite(b.low),
            "high": _finite(b.high),
            "applied": b.applied,
            "note": b.note,
        }
        for b in result.class_bands
    ]
    return {
        "event": "filtered",
        "filter": "service",
        "verdicts": verdicts,
        "band": band,
        "class_bands": class_bands,
    }


def write_kept(
    items: list[WorkItem],
    verdicts: dict[str, dict],
    written: dict[str, dict],
    out: Path,
    name: str,
    manifest: Manifest,
    texts: dict[str, str],
    save_npy: bool,
) -> int:
    """Write every kept clip not written yet (atomically), then its `written` event."""
    folder = layout.dataset_dir(out, name)
    count = 0
    for w in items:
        verdict = verdicts[w.id]
        if not verdict["keep"] or w.id in written:
            continue
        _, frames = load_pool(pool_path(out, w.id))
        layout.write_clip(folder / f"{w.id}.avi", to_uint8(frames))
        record = {
            "file_name": f"{w.id}.avi",
            "cls": w.cls,
            "synthetic": True,
            "source_clip": w.source_clip,
            "seed": w.seed,
        }
        if texts.get(w.source_clip):
            record["text"] = texts[w.source_clip]
        for key in ("cross_entropy", "vae_seq", "max_duplicate_similarity"):
            if verdict.get(key) is not None:
                record[key] = round(verdict[key], 6)
        if save_npy:
            layout.save_npy(folder / f"{w.id}.npy", np.asarray(frames, np.float32))
            record["npy_file"] = f"{w.id}.npy"
        manifest.append({"event": "written", "id": w.id, "record": record})
        written[w.id] = record
        count += 1
    return count


def rebuild_metadata(out: Path, name: str) -> int:
    """Atomically rewrite `train_metadata.jsonl` from every shard's written clips."""
    with OutputLock(out):
        records = all_written(out)
        layout.write_metadata(layout.metadata_path(out, name, "train"), records)
    return len(records)


def remove_stale_temporaries(out: Path, name: str, finals: Iterable[str]) -> int:
    """Delete temporaries a killed run left behind for files this shard owns.

    `finals` are final file names owned by this shard (pool files, conditions, clips);
    metadata temporaries are removed under the output lock (no one else writes them then);
    the report removes its own. Returns how many were removed.
    """
    owned = set(finals)
    folders = [
        state_dir(out) / "pool",
        state_dir(out) / "conditions",
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
