"""One shard of an augmentation job, from the dataset to the kept clips and the report.

`run_job` runs the phases in order; each is a function that returns what the next one needs,
and each resumes from the shard's manifest (`clients.augment.manifest`):

1. `open_shard`: plan the job (`plan_job`), check it against `job.json`, open the manifest;
2. `resume_state`: what the manifest says is finished (pool files it lost are adopted);
3. `conditions_phase`: where the services computing the references' conditions share the
   sampler's cores, all of them first (`clients.augment.schedule`);
4. `generate_phase`: every missing work item into the pool, with the references' conditions
   (`open_references`);
5. `filter_phase`: the pool's verdicts, asked of the filter once and recorded
   (`clients.augment.filtering`); with job-scope filtering a shard may wait for the others;
6. `write_phase`: the kept clips written, the metadata rebuilt from every shard's manifest;
7. `finish`: the report and the `done` event.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

from clients.augment import output, preflight
from clients.augment.filtering import FilterSettings, PoolVerdicts, job_verdicts, pool_verdicts
from clients.augment.generation import GenerationSettings, generate_all
from clients.augment.manifest import (
    Manifest,
    OutputLock,
    ShardState,
    all_written,
    check_job,
    manifest_path,
    pool_path,
    shard_state,
    state_dir,
)
from clients.augment.options import AugmentOptions, channel_settings
from clients.augment.plan import WorkItem, build_plan, class_targets
from clients.augment.plan import shard as shard_items
from clients.augment.preflight import Generator, GeneratorPlan, dataset_name
from clients.augment.progress import Progress
from clients.augment.references import ReferenceConditions
from clients.augment.replicas import JobFailed, ReplicaPool
from clients.augment.schedule import conditions_first, fetch_conditions
from clients.augment.spans import Spans, timings_path, write_timings
from clients.rpc.channel import open_channel
from clients.rpc.encoder import ConditionEncoderClient
from clients.rpc.motion import MotionExtractorClient
from services.data import layout
from services.data.conditions import condition_paths

__all__ = ["JobFailed", "JobPlan", "JobResult", "plan_job", "run_job"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobResult:
    """What a run of one shard did; the summary and the report read it."""

    options: AugmentOptions
    name: str
    class_names: list[str]
    targets: dict[str, int]
    items: list[WorkItem]  # this shard's plan (the whole job's when it filtered the job)
    verdicts: dict[str, dict] = field(default_factory=dict)
    band: list = field(default_factory=lambda: [None, None])  # pool-wide VAE-Seq [low, high]
    # Per-class VAE-Seq bands ({"label", "low", "high", "applied", "note"}) when the filter
    # fitted the sequential band per class (`--sequential-band class`); empty otherwise.
    class_bands: list[dict] = field(default_factory=list)
    written: dict[str, dict] = field(default_factory=dict)  # id -> metadata record
    generated_now: int = 0
    generation_seconds: float = 0.0
    wall_seconds: float = 0.0
    metadata_records: int = 0
    condition_sources: dict[str, str] = field(default_factory=dict)
    replicas: dict[str, int] = field(default_factory=dict)  # clips of this shard per sampler
    report_path: Path | None = None
    # Clips of other shards still missing from the shared pool (job-scope filtering waits).
    waiting_for: int = 0
    generator: str = ""  # the generator's name, when the samplers listed it
    # Its card as ListModels gave it (the report's header), when the samplers listed it.
    generator_card: Generator | None = None
    # What the job let through with --allow-out-of-domain (the summary's first lines).
    out_of_domain: list[str] = field(default_factory=list)
    # Where this run's time went (`clients.augment.spans`; also `<out>/timings.json`).
    timings: dict = field(default_factory=dict)


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
    generator: GeneratorPlan | None = None


def plan_job(o: AugmentOptions, generator: GeneratorPlan | None = None) -> JobPlan:
    """The job's plan. With `generator` (`preflight.check_generator`: the samplers' listed
    generator, checked against the dataset) class ids are the generator's; without it they
    come from `--classes-file`, else from the sorted training classes."""
    name = dataset_name(o.dataset_root, o.name)
    train = layout.load_dataset(o.dataset_root, name, "train")  # never the test split
    if generator is not None:
        class_names = list(generator.class_names)
        class_ids = dict(generator.class_ids)
    elif o.classes_file:
        class_names = [str(c) for c in json.loads(Path(o.classes_file).read_text())]
    else:
        class_names = train.classes
    if generator is None:
        class_ids = {c: i for i, c in enumerate(class_names)}
    preflight.report_missing_classes(o.dataset_root, name, train.classes, class_names)
    targets = class_targets(
        train.class_counts(), o.per_class, o.multiplier, True if o.balance else None
    )
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
        shard_items(plan, o.shard_index, o.shard_count),
        {item.file_name: item.text for item in train.items},
        job,
        generator,
    )


def generation_options(o: AugmentOptions, name: str) -> dict:
    """What a single generation depends on besides its class, clip and seed (the generator
    only when `--model` names one, so jobs recorded before it existed stay the same)."""
    options = {
        "dataset": name,
        "conditions": sorted(o.conditions),
        "steps": o.steps,
        "guidance": o.guidance,
        "solver": o.solver,
    }
    if o.model:
        options["model"] = o.model
    return options


def job_scope(o: AugmentOptions) -> bool:
    """Whether verdicts cover the whole job's pool (shards sharing one --out) or the shard's."""
    return o.shard_count > 1 and o.filter_scope == "job"


@dataclass(frozen=True)
class Shard:
    """What every phase works on: the options, the plan, the output folder, the manifest."""

    options: AugmentOptions
    plan: JobPlan
    out: Path
    manifest: Manifest

    @property
    def job_scope(self) -> bool:
        return job_scope(self.options)

    @property
    def pool(self) -> list[WorkItem]:
        """The items the shard's verdicts cover: the whole job's, or the shard's own."""
        return self.plan.plan if self.job_scope else self.plan.items

    def owned_files(self) -> list[str]:
        """Final names of the files only this shard writes (their temporaries are its own)."""
        items = self.plan.items
        owned = [f"{w.id}.{ext}" for w in items for ext in ("npz", "avi", "npy")]
        cache = state_dir(self.out) / "conditions"
        conditions = {
            path.name
            for w in items
            for path in condition_paths(cache, self.plan.name, w.source_clip).files()
        }
        return owned + sorted(conditions) + [self.manifest.path.name]


@dataclass(frozen=True)
class Generation:
    """What the generation phase did in this run."""

    count: int = 0
    seconds: float = 0.0
    condition_sources: dict[str, str] = field(default_factory=dict)  # kind -> where from


def run_job(
    o: AugmentOptions,
    sampler_pool=None,
    filter_client=None,
    generator: GeneratorPlan | None = None,
) -> JobResult:
    """Run (or continue) one shard; `sampler_pool`/`filter_client` replace the services;
    `generator` is the checked generator (`preflight.check_generator`), whose ids it uses."""
    began = time.perf_counter()
    spans = Spans()
    with spans.phase("planning"):
        shard = open_shard(o, generator)
        state = resume_state(shard)
    p = shard.plan
    todo = [w for w in p.items if w.id not in state.generated]
    description = f"augment {p.name} shard {o.shard_index}/{o.shard_count}"
    with Progress(description, len(p.items), len(p.items) - len(todo), o.progress) as progress:
        with open_references(shard) as references:
            if todo and conditions_first(o):
                with spans.phase("conditions"):
                    conditions_phase(o, todo, references, progress, spans)
            with spans.phase("generation"):
                generation = generate_phase(shard, todo, progress, references, sampler_pool, spans)
        with spans.phase("filtering"):
            pool, waiting_for = filter_phase(shard, state.filtered, filter_client)
        if pool is not None:
            progress.pool_filtered(pool.kept)
    result = JobResult(
        o,
        p.name,
        p.class_names,
        p.targets,
        p.items,
        generated_now=generation.count,
        generation_seconds=generation.seconds,
        condition_sources=generation.condition_sources,
        generator="" if generator is None else generator.generator.name,
        generator_card=None if generator is None else generator.generator,
        out_of_domain=[] if generator is None else list(generator.out_of_domain),
    )
    if pool is None:
        logger.info(
            "shard %d/%d generated its clips; %d clips of other shards are not in the shared "
            "pool yet: the shard that completes the pool filters it and writes the kept clips",
            o.shard_index,
            o.shard_count,
            waiting_for,
        )
        result = replace(result, waiting_for=waiting_for, wall_seconds=time.perf_counter() - began)
        return record_timings(shard, result, spans)
    with spans.phase("writing"):
        written = write_phase(shard, pool, state)
        records = output.rebuild_metadata(shard.out, p.name)
    result = replace(
        result,
        items=shard.pool,
        verdicts=pool.verdicts,
        band=pool.band,
        class_bands=pool.class_bands,
        written=written,
        replicas=replica_counts(shard.manifest),
        metadata_records=records,
        wall_seconds=time.perf_counter() - began,
    )
    # The `done` event counts the clips this shard's manifest records as written: in job scope
    # the shard that completes the pool writes every shard's kept clips.
    kept = len(shard_state(shard.manifest.records(), []).written)
    with spans.phase("report"):
        result = finish(shard, result, kept)
    result = replace(result, wall_seconds=time.perf_counter() - began)
    return record_timings(shard, result, spans)


def record_timings(shard: Shard, result: JobResult, spans: Spans) -> JobResult:
    """This run's time per stage into `<out>/timings.json` (per shard) and the result."""
    timings = spans.as_dict(result.wall_seconds, result.generated_now)
    o = shard.options
    write_timings(timings_path(shard.out, o.shard_index, o.shard_count), timings)
    return replace(result, timings=timings)


def open_shard(o: AugmentOptions, generator: GeneratorPlan | None = None) -> Shard:
    """Plan the job, check that its writes stay inside `--out`, record it there (or refuse a
    different one), open the shard's manifest and remove the temporaries a killed run of this
    shard left."""
    preflight.check_output(o)  # --out at or inside --dataset-root would rewrite its metadata
    plan = plan_job(o, generator)
    out = Path(o.out)
    manifest = Manifest(manifest_path(out, o.shard_index, o.shard_count))
    output.check_output_paths(out, plan.name, manifest.path)
    check_job(out, plan.job)
    shard = Shard(o, plan, out, manifest)
    output.remove_stale_temporaries(out, plan.name, shard.owned_files())
    return shard


def resume_state(shard: Shard) -> ShardState:
    """What the manifest says is finished. A pool file whose `generated` line was lost to a
    crash is complete (it is renamed into place whole): its line is written now."""
    state = shard_state(shard.manifest.records(), [w.id for w in shard.pool])
    for w in shard.plan.items:
        if w.id not in state.generated and pool_path(shard.out, w.id).is_file():
            record = {"event": "generated", "id": w.id, "adopted": True}
            shard.manifest.append(record)
            state.generated[w.id] = record
    return state


def conditions_phase(
    o: AugmentOptions,
    todo: list[WorkItem],
    references: ReferenceConditions,
    progress: Progress,
    spans: Spans,
) -> None:
    """The conditions of every reference of `todo`, before any of its clips is sampled
    (`clients.augment.schedule`: where the services computing them share the sampler's cores).

    Raises:
        JobFailed: a reference's conditions could not be had (nothing was sampled).
    """
    began = time.perf_counter()
    count = fetch_conditions(todo, references, o.concurrency, spans, progress.conditions_fetched)
    logger.info(
        "conditions of %d reference clips in %.1fs, before sampling (--conditions-schedule %s)",
        count,
        time.perf_counter() - began,
        o.conditions_schedule,
    )


def generate_phase(
    shard: Shard,
    todo: list[WorkItem],
    progress: Progress,
    references: ReferenceConditions,
    replicas=None,
    spans=None,
) -> Generation:
    """Generate `todo` into the pool, with each reference's conditions from `references`;
    `replicas` replaces the sampler replicas of `--sampler`; `spans`
    (`clients.augment.spans.Spans`) records where the time went.

    Raises:
        JobFailed: an item failed for good (the items finished before it stay in the pool).
    """
    if not todo:
        return Generation()
    o = shard.options
    settings = GenerationSettings(
        o.steps, o.guidance, o.solver, o.deadline, o.max_attempts, o.model or ""
    )
    with _sampler_replicas(o, replicas) as samplers:
        seconds = generate_all(
            todo,
            shard.out,
            shard.manifest,
            samplers,
            references,
            settings,
            o.concurrency,
            progress.clip_generated,
            spans,
        )
        return Generation(len(todo), seconds, dict(references.sources))


@contextmanager
def open_references(shard: Shard) -> Iterator[ReferenceConditions]:
    """The sampler's conditions of each reference clip. The condition encoder and the motion
    extractor, when their addresses are given, compute what the dataset and the job's cache
    lack; their channels close on exit."""
    o, p = shard.options, shard.plan
    settings = channel_settings(o)
    with ExitStack() as channels:
        encoder = motion = None
        if o.encoder and "prior" in o.conditions:
            channel = channels.enter_context(closing(open_channel(o.encoder, settings)))
            encoder = ConditionEncoderClient(channel)
        if o.motion and "motion" in o.conditions:
            channel = channels.enter_context(closing(open_channel(o.motion, settings)))
            motion = MotionExtractorClient(channel)
        yield ReferenceConditions(
            o.dataset_root,
            p.name,
            shard.out,
            o.conditions,
            p.texts,
            encoder,
            motion,
            timeout=o.deadline,
        )


def _sampler_replicas(o: AugmentOptions, replicas):
    """`replicas` as given (the caller closes it), else the `--sampler` replicas (closed here)."""
    if replicas is not None:
        return nullcontext(replicas)
    return closing(ReplicaPool(o.sampler, channel_settings(o)))


def filter_phase(
    shard: Shard, recorded: dict | None, client=None
) -> tuple[PoolVerdicts | None, int]:
    """The verdicts of the shard's pool, and how many clips of other shards that pool still
    waits for (job scope only; no verdicts then). `recorded` is the manifest's `filtered`
    event, used as it is; else the filter is asked and its event appended to the manifest.

    Raises:
        JobFailed: the filter service failed.
    """
    waiting_for = 0
    filtered = recorded
    if filtered is None:
        settings = filter_settings(shard.options, shard.plan.generator)
        if shard.job_scope:
            filtered, waiting_for = job_verdicts(shard.plan.plan, shard.out, settings, client)
        else:
            filtered = pool_verdicts(shard.plan.items, shard.out, settings, client)
        if filtered is not None:
            shard.manifest.append(filtered)
    return (None if filtered is None else PoolVerdicts.from_event(filtered)), waiting_for


def filter_settings(o: AugmentOptions, generator: GeneratorPlan | None = None) -> FilterSettings:
    """How the pool is filtered: with the VAE and classifier of the generator that made it."""
    target = None if o.no_filter or not o.filter else o.filter
    card = None if generator is None else generator.generator
    return FilterSettings(
        model="" if card is None else card.name,
        model_version="" if card is None else card.version,
        target=target,
        channel=channel_settings(o) if target else None,
        alpha=o.filter_alpha,
        duplicate_threshold=o.duplicate_threshold,
        skip=frozenset(o.filter_skip),
        band_scope=o.sequential_band,
        deadline=o.deadline,
    )


def write_phase(shard: Shard, pool: PoolVerdicts, state: ShardState) -> dict[str, dict]:
    """Write every kept clip of the pool that is not written yet; returns the metadata records
    of the pool's written clips by id."""
    o, p = shard.options, shard.plan
    texts = p.texts if "text" in o.conditions else {}
    writer = output.ClipWriter(shard.out, p.name, shard.manifest, texts, o.save_npy)
    if not shard.job_scope:
        return {**state.written, **writer.write_kept(p.items, pool.verdicts, state.written)}
    # Any shard holding the job's verdicts writes every kept clip that no shard wrote yet.
    with OutputLock(shard.out):
        written = {r["file_name"].removesuffix(".avi"): r for r in all_written(shard.out)}
        return {**written, **writer.write_kept(p.plan, pool.verdicts, written)}


def replica_counts(manifest: Manifest) -> dict[str, int]:
    """Clips of this shard per sampler replica ("adopted": pool files found after a crash)."""
    generated = shard_state(manifest.records(), []).generated.values()
    return dict(Counter(r.get("replica", "adopted") for r in generated))


def finish(shard: Shard, result: JobResult, kept: int) -> JobResult:
    """Write the report (unless `--no-report`), record the `done` event and remove what a
    killed run left; returns the result with the report's path."""
    if shard.options.report:
        from clients.augment.report import write_report

        result = replace(result, report_path=write_report(result))
    shard.manifest.append(
        {
            "event": "done",
            "generated_now": result.generated_now,
            "generation_seconds": round(result.generation_seconds, 3),
            "wall_seconds": round(result.wall_seconds, 3),
            "kept": kept,
        }
    )
    output.remove_stale_temporaries(shard.out, shard.plan.name, shard.owned_files())
    return result
