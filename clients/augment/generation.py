"""Phase 1: generate a shard's missing work items concurrently; each result lands in the pool."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

from clients.augment.manifest import Manifest, pool_path, save_pool
from clients.augment.patience import until_available
from clients.augment.plan import WorkItem
from clients.augment.replicas import JobFailed, ReplicaPool, generate_with_retries
from clients.augment.spans import Spans
from clients.rpc.errors import GenAugError
from clients.rpc.sampler import GeneratedClip

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    steps: int
    guidance: float
    solver: str
    deadline: float
    max_attempts: int
    model: str = ""  # the generator (GenerateRequest.model); "" = the sampler's default


def request_id(item: WorkItem, conditions, settings: GenerationSettings) -> str:
    """`<item id>.<hash of everything the request carries>`.

    Content-addressed: the same request (a retry, a re-run reading cached conditions) gets the
    same id, so the sampler computes it once; a different request (other conditions, steps,
    ...) never reuses an id, which the sampler would refuse.
    """
    digest = hashlib.sha256(conditions.SerializeToString(deterministic=True))
    key = [item.class_id, item.seed, settings.steps, settings.guidance, settings.solver]
    if settings.model:  # only when named: ids of jobs from before --model stay the same
        key.append(settings.model)
    digest.update(json.dumps(key).encode())
    return f"{item.id}.{digest.hexdigest()[:12]}"


def conditions_of(source_clip: str, conditions: Callable[[str], object], spans: Spans):
    """The sampler's `Conditions` of a reference clip, riding out a restart of the services
    that compute them (`until_available`), its time recorded as the `conditions` stage.

    Raises:
        JobFailed: they could not be had (the service's error, naming the clip).
    """
    try:
        with spans.span("conditions"):
            return until_available(lambda: conditions(source_clip), f"conditions of {source_clip}")
    except GenAugError as error:
        raise JobFailed(f"conditions of {source_clip}: {error}") from None


def generate_all(
    items: list[WorkItem],
    out,
    manifest: Manifest,
    replicas: ReplicaPool,
    conditions: Callable[[str], object],
    settings: GenerationSettings,
    concurrency: int,
    on_done: Callable[[WorkItem], None] = lambda item: None,
    spans: Spans | None = None,
) -> float:
    """Generate `items` (none of which is in the pool yet); returns the seconds it took.
    `spans` records where each item's time went (conditions, the sampler's stages, transport,
    the pool write).

    Raises:
        JobFailed: an item failed for good; items finished before it stay in the pool.
    """
    stop = threading.Event()
    began = time.perf_counter()
    spans = spans or Spans()

    def one(item: WorkItem) -> None:
        if stop.is_set():
            return
        message = conditions_of(item.source_clip, conditions, spans)
        rid = request_id(item, message, settings)

        def call(client) -> tuple[GeneratedClip, float]:
            start = time.perf_counter()
            clip = client.generate(
                item.class_id,
                message,
                seed=item.seed,
                steps=settings.steps,
                guidance_scale=settings.guidance,
                solver=settings.solver,
                decode=True,
                batch=True,
                request_id=rid,
                timeout=settings.deadline,
                **({"model": settings.model} if settings.model else {}),
            )
            return clip, time.perf_counter() - start

        calls_began = time.perf_counter()
        (clip, call_seconds), replica, attempts = generate_with_retries(
            replicas, call, max_attempts=settings.max_attempts, stop=stop
        )
        # The successful call, as the sampler accounts for it; failed attempts and their
        # backoff before it count as retrying.
        spans.add_call(call_seconds, clip.stages)
        if attempts > 1:
            spans.add("retrying", time.perf_counter() - calls_began - call_seconds)
        if clip.frames is None:
            raise JobFailed(f"{replica.target} returned no frames for {item.id}")
        with spans.span("pool"):
            save_pool(pool_path(out, item.id), clip.latents, clip.frames)
            manifest.append(
                {
                    "event": "generated",
                    "id": item.id,
                    "replica": replica.target,
                    "request_id": rid,
                    "attempts": attempts,
                    "seconds": round(float(clip.seconds), 3),
                }
            )
        on_done(item)

    executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="generate")
    futures = [executor.submit(one, item) for item in items]
    try:
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in done if f.exception() is not None), None)
        if failed is not None:
            error = failed.exception()
            if isinstance(error, JobFailed):
                raise error
            raise JobFailed(f"{type(error).__name__}: {error}") from error
    finally:
        # On a failure or Ctrl-C: nothing new starts; calls in flight finish or fail.
        stop.set()
        executor.shutdown(wait=True, cancel_futures=True)
    return time.perf_counter() - began
