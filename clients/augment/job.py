"""One shard of an augmentation job, from the dataset to the kept clips and the report.

Phases, each resumable from the manifest: generate every missing work item into the pool;
filter the whole pool once (verdicts recorded); write the kept clips; rebuild the metadata
from every shard's manifest; report.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from clients.augment import output, preflight
from clients.augment.generation import GenerationSettings, generate_all
from clients.augment.manifest import (
    Manifest,
    OutputLock,
    all_written,
    check_job,
    manifest_path,
    pool_path,
    shard_state,
    state_dir,
)
from clients.augment.options import AugmentOptions, channel_settings
from clients.augment.plan import WorkItem, build_plan, class_targets, shard
from clients.augment.references import ReferenceConditions
from clients.augment.replicas import JobFailed, ReplicaPool
from clients.rpc.channel import open_channel
from clients.rpc.errors import GenAugError
from services.data import layout

logger = logging.getLogger(__name__)


@dataclass
class JobResult:
    options: AugmentOptions
    name: str
    class_names: list[str]
    targets: dict[str, int]
    items: list[WorkItem]  # this shard's plan (the whole job's when it filtered the job)
    verdicts: dict[str, dict]
    band: list  # the pool-wide VAE-Seq band [low, high] (None: infinite)
    written: dict[str, dict]
    generated_now: int = 0
    generation_seconds: float = 0.0
    wall_seconds: float = 0.0
    metadata_records: int = 0
    condition_sources: dict[str, str] = field(default_factory=dict)
    replicas: dict[str, int] = field(default_factory=dict)  # clips of this shard per sampler
    report_path: Path | None = None
    # Clips of other shards still missing from the shared pool (job-scope filtering waits).
    waiting_for: int = 0
    # Per-class VAE-Seq bands ({"label", "low", "high", "applied", "note"}) when the filter
    # fitted the sequential band per class (`--sequential-band class`); empty otherwise.
    class_bands: list[dict] = field(default_factory=list)


def dataset_name(root: Path, name: str | None) -> str:
    if name:
        return name
    names = sorted(p.name[: -len("_volume")] for p in Path(root).glob("*_volume") if p.is_dir())
    if len(names) != 1:
        raise ValueError(f"--name is needed: datasets under {root}: {names or 'none'}")
    return names[0]


@dataclass
class JobPlan:
    """Everything decided before any work: the dataset, the targets and this shard's items."""

    name: str
    class_names: list[str]
    targets: dict[str, int]
    plan: list[WorkItem]  # the whole job
    items: list[WorkItem]  # this shard
    texts: dict[str, str]  # training clip -> text
    job: dict  # the options that define the output (recorded in job.json)


def plan_job(o: AugmentOptions) -> JobPlan:
    name = dataset_name(o.dataset_root, o.name)
    train = layout.load_dataset(o.dataset_root, name, "train")  # never the test split
    if o.classes_file:
        class_names = [str(c) for c in json.loads(Path(o.classes_file).read_text())]
    else:
        class_names = train.classes
    preflight.report_missing_classes(o.dataset_root, name, train.classes, class_names)
    targets = class_targets(
        train.class_counts(), o.per_class, o.multiplier, True if o.balance else None
    )
    class_ids = {c: i for i, c in enumerate(class_names)}
    plan = build_plan(preflight.reference_items(train.items), targets, class_ids, o.base_seed)
    job = {
        **generation_options(o, name),
        "class_names": class_names,
        "targets": targets,
        "base_seed": o.base_seed,
        "filter": None
        if o.no_filter or not o.filter
        else {
            "alpha": o.filter_alpha,
            "duplicate_threshold": o.duplicate_threshold,
            "skip": sorted(o.filter_skip),
            "scope": o.filter_scope,
            "sequential_band": o.sequential_band,
        },
        "shard_count": o.shard_count,
        "save_npy": o.save_npy,
    }
    return JobPlan(
        name,
        class_names,
        targets,
        plan,
        shard(plan, o.shard_index, o.shard_count),
        {item.file_name: item.text for item in train.items},
        job,
    )


def generation_options(o: AugmentOptions, name: str) -> dict:
    """What a single generation depends on besides its class, clip and seed."""
    return {
        "dataset": name,
        "conditions": sorted(o.conditions),
        "steps": o.steps,
        "guidance": o.guidance,
        "solver": o.solver,
    }


def run_job(o: AugmentOptions, sampler_pool=None, filter_client=None) -> JobResult:
    """Run (or continue) one shard; `sampler_pool`/`filter_client` replace the services."""
    began = time.perf_counter()
    preflight.check_output(o)  # --out at or inside --dataset-root would rewrite its metadata
    p = plan_job(o)
    out = Path(o.out)
    check_job(out, p.job)
    manifest = Manifest(manifest_path(out, o.shard_index, o.shard_count))
    owned = _owned_files(p.items, manifest)
    output.remove_stale_temporaries(out, p.name, owned)
    scope = p.plan if job_scope(o) else p.items  # the pool this shard's verdicts cover
    state = shard_state(manifest.records(), [w.id for w in scope])
    for w in p.items:  # a pool file whose `generated` line was lost to a crash is complete
        if w.id not in state.generated and pool_path(out, w.id).is_file():
            record = {"event": "generated", "id": w.id, "adopted": True}
            manifest.append(record)
            state.generated[w.id] = record
    todo = [w for w in p.items if w.id not in state.generated]
    result = JobResult(o, p.name, p.class_names, p.targets, p.items, {}, [None, None], {})

    bar = tqdm(
        total=len(p.items),
        initial=len(p.items) - len(todo),
        desc=f"augment {p.name} shard {o.shard_index}/{o.shard_count}",
        unit="clip",
        disable=not o.progress,
        dynamic_ncols=True,
    )
    _counts(bar, len(p.items) - len(todo))
    try:
        if todo:
            _generate(o, p, out, todo, manifest, bar, result, sampler_pool)
        if state.filtered is None:
            if job_scope(o):
                state.filtered, result.waiting_for = _job_verdicts(o, out, p.plan, filter_client)
            else:
                state.filtered = _filter(o, out, p.items, filter_client)
            if state.filtered is not None:
                manifest.append(state.filtered)
        if state.filtered is None:
            logger.info(
                "shard %d/%d generated its clips; %d clips of other shards are not in the shared "
                "pool yet: the shard that completes the pool filters it and writes the kept clips",
                o.shard_index,
                o.shard_count,
                result.waiting_for,
            )
            result.wall_seconds = time.perf_counter() - began
            return result
        result.verdicts = {v["id"]: v for v in state.filtered["verdicts"]}
        result.band = state.filtered.get("band", [None, None])
        result.class_bands = state.filtered.get("class_bands") or []  # absent in older states
        kept = sum(v["keep"] for v in result.verdicts.values())
        _counts(bar, len(p.items), len(p.items), kept)
    finally:
        bar.close()
    generated = shard_state(manifest.records(), []).generated.values()
    result.replicas = dict(Counter(r.get("replica", "adopted") for r in generated))
    texts = p.texts if "text" in o.conditions else {}
    if job_scope(o):
        # Any shard holding the job's verdicts writes every kept clip that no shard wrote yet.
        with OutputLock(out):
            written = {r["file_name"].removesuffix(".avi"): r for r in all_written(out)}
            output.write_kept(
                p.plan, result.verdicts, written, out, p.name, manifest, texts, o.save_npy
            )
        result.items, result.written = p.plan, written
    else:
        output.write_kept(
            p.items, result.verdicts, state.written, out, p.name, manifest, texts, o.save_npy
        )
        result.written = state.written
    result.metadata_records = output.rebuild_metadata(out, p.name)
    result.wall_seconds = time.perf_counter() - began
    if o.report:
        from clients.augment.report import write_report

        result.report_path = write_report(result)
    manifest.append(
        {
            "event": "done",
            "generated_now": result.generated_now,
            "generation_seconds": round(result.generation_seconds, 3),
            "wall_seconds": round(result.wall_seconds, 3),
            "kept": len(state.written),
        }
    )
    output.remove_stale_temporaries(out, p.name, owned)
    return result


def _owned_files(items: list[WorkItem], manifest: Manifest) -> list[str]:
    """Final names of the files only this shard writes (their temporaries are its own)."""
    owned = [f"{w.id}.{ext}" for w in items for ext in ("npz", "avi", "npy")]
    stems = {Path(w.source_clip).stem for w in items}
    kinds = ("prior.npy", "motion.npy", "trajectory.npz")
    return owned + [f"{s}.{kind}" for s in stems for kind in kinds] + [manifest.path.name]


def _generate(o, p: JobPlan, out: Path, todo, manifest, bar, result, replicas=None) -> None:
    settings = channel_settings(o)
    channels = []
    encoder = motion = None
    if o.encoder and "prior" in o.conditions:
        from clients.rpc.encoder import ConditionEncoderClient

        channels.append(open_channel(o.encoder, settings))
        encoder = ConditionEncoderClient(channels[-1])
    if o.motion and "motion" in o.conditions:
        from clients.rpc.motion import MotionExtractorClient

        channels.append(open_channel(o.motion, settings))
        motion = MotionExtractorClient(channels[-1])
    conditions = ReferenceConditions(
        o.dataset_root, p.name, out, o.conditions, p.texts, encoder, motion, timeout=o.deadline
    )
    gen = GenerationSettings(o.steps, o.guidance, o.solver, o.deadline, o.max_attempts)
    owned = replicas is None
    replicas = replicas or ReplicaPool(o.sampler, settings)
    counter = {"n": len(p.items) - len(todo)}

    def on_done(item: WorkItem) -> None:
        counter["n"] += 1
        _counts(bar, counter["n"], refresh=False)
        bar.update()

    try:
        result.generation_seconds = generate_all(
            todo, out, manifest, replicas, conditions, gen, o.concurrency, on_done
        )
        result.generated_now = len(todo)
    finally:
        if owned:
            replicas.close()
        for channel in channels:
            channel.close()
        result.condition_sources = dict(conditions.sources)


def _counts(bar, generated: int, filtered: int = 0, kept: int = 0, refresh: bool = True) -> None:
    bar.set_postfix(OrderedDict(generated=generated, filtered=filtered, kept=kept), refresh=refresh)


def job_scope(o: AugmentOptions) -> bool:
    """Whether verdicts cover the whole job's pool (shards sharing one --out) or the shard's."""
    return o.shard_count > 1 and o.filter_scope == "job"


def _job_verdicts(o: AugmentOptions, out: Path, plan: list[WorkItem], client=None):
    """The job's verdicts, computed once by the first shard that finds the pool complete.

    Returns (filtered event or None, clips still missing). The K-means band and the per-case
    means then come from the same pool as in a single run, so the shards' union equals it.
    """
    path = state_dir(out) / "job-verdicts.json"
    with OutputLock(out):
        if path.is_file():
            return json.loads(path.read_text()), 0
        missing = sum(not pool_path(out, w.id).is_file() for w in plan)
        if missing:
            return None, missing
        filtered = _filter(o, out, plan, client)
        layout.atomic_write_bytes(path, (json.dumps(filtered) + "\n").encode())
        return filtered, 0


def _filter(o: AugmentOptions, out: Path, items: list[WorkItem], client=None) -> dict:
    channel = None
    if o.no_filter or not o.filter:
        client = None
    elif client is None:
        from clients.rpc.filter import FilterClient

        channel = open_channel(o.filter, channel_settings(o))
        client = FilterClient(channel)
    timeout = max(o.deadline, 60.0 + 5.0 * len(items))
    try:
        return output.filter_pool(
            items,
            out,
            client,
            o.filter_alpha,
            o.duplicate_threshold,
            o.filter_skip,
            timeout,
            band_scope=o.sequential_band,
        )
    except GenAugError as error:
        raise JobFailed(f"filtering the pool of {len(items)} clips: {error}") from None
    finally:
        if channel is not None:
            channel.close()
