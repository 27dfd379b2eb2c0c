"""Typed genaug.v1.Sampler API: Generate streams queue/progress events, then the result."""

from __future__ import annotations

import hashlib
import queue
import time

import numpy as np

from genaug import wire
from genaug.deadline import Deadline
from genaug.errors import DeadlineExceeded, Unavailable
from genaug.v1 import sampler_pb2 as pb
from genaug.v1 import sampler_pb2_grpc
from services.models.repository import GeneratorCard
from services.sampler.backend import SamplerBackend
from services.sampler.conditions_cache import ConditionsCache
from services.sampler.engine import SamplerEngine
from services.sampler.jobs import Failed, Finished, Job, Priority, Progress, Queued

POLL_SECONDS = 0.25
# Generate threads beyond the engine's capacity: they answer overflow with RESOURCE_EXHAUSTED
# at once and serve callers re-attaching to a known request id, so no stream waits unseen.
SPARE_GENERATE_THREADS = 8


def generate_threads(max_batch_size: int, max_queue: int) -> int:
    """Threads for Generate streams: one per request the engine holds (running or waiting)."""
    return max_batch_size + max_queue + SPARE_GENERATE_THREADS


# How a request is delivered, not what it asks for: left out of its fingerprint.
_DELIVERY = frozenset({"conditions", "conditions_digest", "priority", "preview_every"})


def fingerprint(request: pb.GenerateRequest, conditions_digest: str) -> str:
    """Identity of a request for idempotency: everything except how it is delivered, with its
    conditions as their digest, so a retry that sends them by digest is the same request."""
    head = pb.GenerateRequest(conditions_digest=conditions_digest)
    for field, value in request.ListFields():
        if field.name in _DELIVERY:
            continue
        if field.is_repeated:
            getattr(head, field.name).extend(value)
        elif field.message_type is not None:
            getattr(head, field.name).CopyFrom(value)
        else:
            setattr(head, field.name, value)
    return hashlib.sha256(head.SerializeToString(deterministic=True)).hexdigest()


def preview(latents) -> np.ndarray:
    """A cheap low-resolution look at latents (C,F,h,w): channel mean as grey uint8 (F,h,w)."""
    grey = latents.mean(dim=0).numpy()
    low, high = float(grey.min()), float(grey.max())
    return ((grey - low) / max(high - low, 1e-6) * 255).astype(np.uint8)


def stage_seconds(job: Job, event: Finished) -> pb.StageSeconds:
    """Where a finished job's time went: preparing it, then waiting (queued or paused), then
    its denoising steps; the three add up to `event.seconds` (submitted to finished)."""
    prepare = (job.queued_at or job.submitted) - job.submitted
    sampling = min(job.stepping_seconds, max(0.0, event.seconds - prepare))
    return pb.StageSeconds(
        prepare=prepare, queue=max(0.0, event.seconds - prepare - sampling), sampling=sampling
    )


def generator_info(card: GeneratorCard, is_default: bool) -> pb.GeneratorInfo:
    """A generator's card as ListModels sends it (the typed fields and the whole card)."""
    return pb.GeneratorInfo(
        name=card.name,
        version=card.version,
        class_names=list(card.class_names),
        modality=card.modality,
        num_frames=card.num_frames,
        height=card.height,
        width=card.width,
        latent_channels=card.latent_channels,
        dataset_name=card.dataset_name,
        dataset_fingerprint=card.dataset_fingerprint,
        is_default=is_default,
        card_json=card.to_json(),
    )


class SamplerServicer(sampler_pb2_grpc.SamplerServicer):
    def __init__(
        self,
        engine: SamplerEngine,
        backend: SamplerBackend,
        conditions: ConditionsCache | None = None,
    ):
        self.engine = engine
        self.backend = backend
        self.conditions = conditions or ConditionsCache()

    def announce_generate(self) -> None:
        """A Generate call started (`TypedService.call_started`): tell the engine, which may
        wait for it before a first step (`SamplerEngine.announce`)."""
        if self.engine is not None:
            self.engine.announce()

    def _submit(self, request, deadline: Deadline):
        """Admit `request` to the engine: (its job, the generator that samples it)."""
        if self.engine is None:
            raise Unavailable("the sampler is still loading")
        remaining = deadline.remaining()
        priority = Priority.BATCH if request.priority == pb.PRIORITY_BATCH else Priority.INTERACTIVE
        generator = self.backend.generator(request.model)
        resolved = self.conditions.resolve(request)
        job = self.engine.submit(
            request.request_id,
            fingerprint(request, resolved.digest),
            lambda: self.backend.build(request, deadline, generator, resolved.conditions),
            priority,
            None if remaining is None else time.monotonic() + remaining,
            max(0, request.preview_every),
        )
        with job._lock:  # a retry decodes with the version that sampled, not a newer one
            generator = job.memo.setdefault("generator", generator)
            job.memo.setdefault("conditions_digest", resolved.digest if resolved.kept else "")
        return job, generator

    def _events(self, job: Job, still_wanted):
        """The job's events until its end; cancels it when its last caller goes away."""
        events = job.subscribe()
        try:
            while True:
                try:
                    event = events.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    if not still_wanted():
                        return
                    continue
                if isinstance(event, Failed):
                    raise event.error
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            if job.unsubscribe(events) == 0 and not job.finished:
                self.engine.cancel(job.request_id, "every caller of this request went away")

    def Generate(self, request, context):
        deadline = Deadline.from_context(context)
        job, generator = self._submit(request, deadline)
        for event in self._events(job, context.is_active):
            if isinstance(event, Finished):
                yield pb.GenerateEvent(
                    request_id=job.request_id,
                    result=self._result(job, event, request.decode, deadline, generator),
                )
            else:
                yield self._event(job.request_id, event)

    def generate_result(self, request, deadline: Deadline) -> pb.GenerateResult:
        """One generation to its result, without a stream (the KServe v2 generator models)."""
        job, generator = self._submit(request, deadline)
        for event in self._events(job, lambda: not deadline.expired()):
            if isinstance(event, Finished):
                return self._result(job, event, request.decode, deadline, generator)
        raise DeadlineExceeded("deadline exceeded while generating")

    @staticmethod
    def _event(request_id: str, event: Progress | Queued) -> pb.GenerateEvent:
        if isinstance(event, Queued):
            return pb.GenerateEvent(
                request_id=request_id, queued=pb.Queued(position=event.position)
            )
        progress = pb.Progress(step=event.step, total=event.total, eta_seconds=event.eta_seconds)
        if event.latents is not None:
            wire.to_proto(preview(event.latents), progress.preview)
        return pb.GenerateEvent(request_id=request_id, progress=progress)

    def _result(self, job: Job, event: Finished, decode: bool, deadline: Deadline, generator):
        """Built once per job and decode flag, so a retry does not decode again."""
        key = ("result", decode)
        with job._lock:
            cached = job.memo.get(key)
        if cached is not None:
            return cached
        latents = event.latents.transpose(0, 1).contiguous().numpy()  # (T, C, h, w)
        result = pb.GenerateResult(
            latents=wire.to_proto(latents),
            seconds=event.seconds,
            conditions_digest=job.memo.get("conditions_digest", ""),
        )
        result.stages.CopyFrom(stage_seconds(job, event))
        if decode:
            began = time.perf_counter()
            wire.to_proto(self.backend.decode(latents, deadline, generator), result.frames)
            result.stages.decode = time.perf_counter() - began
        with job._lock:
            job.memo.setdefault(key, result)
            return job.memo[key]

    def ListModels(self, request, context):
        if not self.backend.loaded:
            raise Unavailable("the sampler is still loading")
        default = self.backend.default_model
        return pb.ListModelsResponse(
            models=[
                generator_info(card, name == default)
                for name, card in sorted(self.backend.cards.items())
            ]
        )

    def Cancel(self, request, context):
        if self.engine is None:
            raise Unavailable("the sampler is still loading")
        return pb.CancelResponse(cancelled=self.engine.cancel(request.request_id))
