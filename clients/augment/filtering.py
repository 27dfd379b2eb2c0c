"""Phase 2: the pool's verdicts, asked of the filter service once and kept in the manifest.

They travel as the `filtered` manifest event: `verdicts` in pool order, `band` the pool-wide
VAE-Seq band [low, high] (None for an infinite bound) and `class_bands` the per-class bands the
filter judged with under `--sequential-band class` ({"label", "low", "high", "applied",
"note"}, in label order; empty with "pool"; events written before the option existed have
none). With `--filter-scope job`, the first shard that finds the whole job's pool generated asks
for its verdicts and stores them in `job-verdicts.json`, where every other shard reads them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from clients.augment.manifest import OutputLock, load_pool, pool_path, state_dir
from clients.augment.patience import until_available
from clients.augment.plan import WorkItem
from clients.augment.replicas import JobFailed
from clients.rpc.channel import ChannelSettings, open_channel
from clients.rpc.errors import GenAugError
from clients.rpc.filter import FilterClient, FilterResult, PoolClip
from services.data import layout


@dataclass(frozen=True)
class FilterSettings:
    """How the pool is filtered.

    Attributes:
        target: the filter service's address; None keeps every clip unfiltered.
        skip: the levels that keep every clip ("semantic", "sequential", "duplicates").
        band_scope: "pool" or "class" (`--sequential-band`).
        deadline: the least time allowed for a call (a large pool gets more).
        model, model_version: the generator whose VAE and classifier score the pool (the one
            that generated it); empty: the filter's default.
    """

    target: str | None
    channel: ChannelSettings | None  # None with no target
    alpha: float
    duplicate_threshold: float
    skip: frozenset[str]
    band_scope: str
    deadline: float
    model: str = ""
    model_version: str = ""

    def timeout(self, clips: int) -> float:
        return max(self.deadline, 60.0 + 5.0 * clips)


@dataclass(frozen=True)
class PoolVerdicts:
    """A `filtered` event, read: verdicts by clip id and the bands they were judged with."""

    verdicts: dict[str, dict]
    band: list  # [low, high], None for an infinite bound
    class_bands: list[dict]

    @classmethod
    def from_event(cls, event: dict) -> PoolVerdicts:
        return cls(
            {v["id"]: v for v in event["verdicts"]},
            event.get("band", [None, None]),
            event.get("class_bands") or [],  # absent in events written before per-class bands
        )

    @property
    def kept(self) -> int:
        return sum(v["keep"] for v in self.verdicts.values())


def pool_verdicts(items: list[WorkItem], out: Path, settings: FilterSettings, client=None) -> dict:
    """The `filtered` event for the pool `items`; `client` replaces the service's.

    Raises:
        JobFailed: the filter service failed (the pool stays; a re-run asks again).
    """
    channel = None
    if settings.target is None:
        client = None
    elif client is None:
        channel = open_channel(settings.target, settings.channel)
        client = FilterClient(channel)
    try:
        if client is None or not items:
            return _unfiltered_event(items)
        verdicts = until_available(
            lambda: _ask(client, items, out, settings), f"filtering the pool of {len(items)} clips"
        )
        return _filtered_event(verdicts)
    except GenAugError as error:
        raise JobFailed(f"filtering the pool of {len(items)} clips: {error}") from None
    finally:
        if channel is not None:
            channel.close()


def job_verdicts(
    plan: list[WorkItem], out: Path, settings: FilterSettings, client=None
) -> tuple[dict | None, int]:
    """The whole job's `filtered` event, asked for once by the first shard that finds the pool
    complete; returns (the event or None, clips still missing from the pool).

    The K-means band and the per-case means then come from the same pool as in a single run,
    so the shards' union equals it.
    """
    path = state_dir(out) / "job-verdicts.json"
    with OutputLock(out):
        if path.is_file():
            return json.loads(path.read_text()), 0
        missing = sum(not pool_path(out, w.id).is_file() for w in plan)
        if missing:
            return None, missing
        filtered = pool_verdicts(plan, out, settings, client)
        layout.atomic_write_bytes(path, (json.dumps(filtered) + "\n").encode())
        return filtered, 0


def _ask(client, items: list[WorkItem], out: Path, settings: FilterSettings) -> FilterResult:
    """The FilterPool call, streaming the pool files one at a time in pool order."""
    clips = (
        PoolClip(w.id, w.source_clip, w.class_id, load_pool(pool_path(out, w.id))[1]) for w in items
    )
    return client.filter_pool(
        clips,
        alpha=settings.alpha,
        duplicate_threshold=settings.duplicate_threshold,
        skip_semantic="semantic" in settings.skip,
        skip_sequential="sequential" in settings.skip,
        skip_duplicates="duplicates" in settings.skip,
        band_scope=settings.band_scope,
        timeout=settings.timeout(len(items)),
        model=settings.model,
        model_version=settings.model_version,
    )


def _unfiltered_event(items: list[WorkItem]) -> dict:
    verdicts = [{"id": w.id, "keep": True, "reasons": ["note: not filtered"]} for w in items]
    return {
        "event": "filtered",
        "filter": "none",
        "verdicts": verdicts,
        "band": [None, None],
        "class_bands": [],
    }


def _filtered_event(result: FilterResult) -> dict:
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
        "band": [_finite(result.vae_seq_low), _finite(result.vae_seq_high)],
        "class_bands": class_bands,
    }


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
