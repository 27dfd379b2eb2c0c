"""Synthetic clips of a regime, made through the services, and the filter's verdicts on them.

The regime's model repository is served by the sampler and the filter as local processes (as
`genaug demo` serves all five; the references' priors and motion are already in the view, as
`genaug conditions` writes them, and the sampler decodes in-process, so the other three would
idle); `genaug augment` (clients.augment) builds the unfiltered pool from the regime's training
view (references, conditions, class-balanced plan, sampler), writing every generated clip.
The filter service then judges that one pool under each filter configuration of the study,
with the view's real clips as references (per-class reference band, nearest-clip distances,
optional memorisation level). One pool, several verdict sets: every filtered arm draws from
the same generations.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clients.augment import run_options
from clients.augment.options import AugmentOptions, validate
from clients.local_cluster import LocalCluster, available_services
from clients.rpc.channel import open_channel
from clients.rpc.filter import FilterClient, PoolClip
from clients.study.regimes import patient_of
from services.data import layout
from services.models.training.data import to_unit

logger = logging.getLogger(__name__)

POOL_DIR = "pool"
SERVICES = ("sampler", "filter")
VERDICTS = "verdicts.json"


@dataclass(frozen=True)
class FilterConfig:
    """One way of filtering the pool (the arms and the acceptance table name them)."""

    name: str
    band_scope: str = "pool"
    skip: tuple[str, ...] = ()
    memorisation: bool = False

    def describe(self) -> str:
        parts = [f"band {self.band_scope}"]
        if self.skip:
            parts.append("skip " + "+".join(self.skip))
        if self.memorisation:
            parts.append("memorisation level")
        return ", ".join(parts)


# The reference's filter; per-class K-means band; band from the real clips' VAE-Seq; the same
# with the memorisation level (reported as acceptance, and an arm when asked for).
FILTERS = (
    FilterConfig("reference", "pool"),
    FilterConfig("class-band", "class"),
    FilterConfig("real-band", "reference"),
    FilterConfig("real-band+memorisation", "reference", memorisation=True),
)


@dataclass
class Pool:
    """The regime's synthetic clips: uint8 frames (N, T, H, W), labels, ids, source clips."""

    frames: np.ndarray
    labels: np.ndarray
    ids: list[str]
    sources: list[str]
    seconds: float


def _clip(frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W) -> float32 (T, 1, H, W) in [-1, 1], as the filter takes clips."""
    return to_unit(frames).unsqueeze(1).numpy()


def load_pool(out: Path, name: str, classes: list[str], seconds: float = 0.0) -> Pool:
    items = layout.load_dataset(out / POOL_DIR, name, "train")
    frames = np.stack([layout.read_clip(i.path) for i in items])
    labels = np.array([classes.index(i.cls) for i in items], np.int64)
    return Pool(
        frames,
        labels,
        [i.file_name.removesuffix(".avi") for i in items],
        [str(i.extra.get("source_clip", "")) for i in items],
        seconds,
    )


def synthesize(
    view: Path,
    name: str,
    model_dir: Path,
    out: Path,
    per_class: int,
    steps: int,
    guidance: float,
    concurrency: int = 4,
) -> tuple[Pool, dict]:
    """Generate (or reuse) the regime's pool and its verdicts under every `FILTERS` entry.

    Returns the pool and the judgement: {"filters": {name: {"verdicts": [...], "threshold",
    "class_bands", ...}}, "real": [{"id", "vae_seq", "cross_entropy"}], "seconds"}.
    """
    classes = json.loads((model_dir / "classes.json").read_text())
    verdicts_path = out / VERDICTS
    if verdicts_path.is_file():
        stored = json.loads(verdicts_path.read_text())
        return load_pool(out, name, classes, stored["seconds"]), stored
    names = [n for n in SERVICES if n in available_services()]
    began = time.perf_counter()
    with LocalCluster(names, model_dir, out / "logs") as cluster:
        targets = cluster.targets()
        options = AugmentOptions(
            dataset_root=view,
            name=name,
            out=out / POOL_DIR,
            per_class=per_class,
            steps=steps,
            guidance=guidance,
            sampler=[targets["sampler"]],
            filter=None,
            no_filter=True,
            concurrency=concurrency,
            classes_file=model_dir / "classes.json",
            shard_index=0,
            shard_count=1,
            progress=False,
            report=False,
        )
        validate(options)
        run_options(options)
        seconds = time.perf_counter() - began
        pool = load_pool(out, name, classes, seconds)
        data = {"seconds": seconds, **judge(targets["filter"], pool, view, name, classes)}
    layout.atomic_write_bytes(verdicts_path, (json.dumps(data) + "\n").encode())
    return pool, data


def references(view: Path, name: str, classes: list[str]) -> list[PoolClip]:
    """The view's real training clips as filter references (case = patient)."""
    return [
        PoolClip(i.file_name, patient_of(i), classes.index(i.cls), _clip(layout.read_clip(i.path)))
        for i in layout.load_dataset(view, name, "train")
    ]


def judge(target: str, pool: Pool, view: Path, name: str, classes: list[str]) -> dict:
    """The filter service's verdicts on `pool` under every `FILTERS` entry (with each clip's
    VAE-Seq and nearest-reference distance), and the real clips' own scores."""
    refs = references(view, name, classes)
    clips = [
        PoolClip(i, s, int(y), _clip(f))
        for i, s, y, f in zip(pool.ids, pool.sources, pool.labels, pool.frames, strict=True)
    ]
    results = {}
    with open_channel(target) as channel:
        client = FilterClient(channel)
        for config in FILTERS:
            result = client.filter_pool(
                clips,
                band_scope=config.band_scope,
                skip_semantic="semantic" in config.skip,
                skip_sequential="sequential" in config.skip,
                skip_duplicates="duplicates" in config.skip,
                references=refs,
                check_memorisation=config.memorisation,
                timeout=600.0 + 2.0 * len(clips),
            )
            results[config.name] = {
                "describe": config.describe(),
                "threshold": result.memorisation_threshold,
                "class_bands": [[b.label, b.low, b.high, b.applied] for b in result.class_bands],
                "pool_band": [result.vae_seq_low, result.vae_seq_high],
                "verdicts": [
                    {
                        "id": v.clip_id,
                        "keep": v.keep,
                        "rejected_by": v.rejected_by,
                        "cross_entropy": v.cross_entropy,
                        "vae_seq": v.vae_seq,
                        "nearest_distance": v.nearest_reference_distance,
                        "nearest_id": v.nearest_reference_id,
                    }
                    for v in result.verdicts
                ],
            }
        # The real clips' own VAE-Seq and classifier cross-entropy (every level skipped).
        real = client.filter_pool(
            refs, skip_semantic=True, skip_sequential=True, skip_duplicates=True
        )
        real_scores = [
            {"id": v.clip_id, "vae_seq": v.vae_seq, "cross_entropy": v.cross_entropy}
            for v in real.verdicts
        ]
    return {"filters": results, "real": real_scores}
