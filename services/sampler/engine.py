"""Step-level continuous batching of diffusion sampling.

One scheduler thread owns the running batch. At every denoising-step boundary it retires
finished, cancelled and expired requests, pauses batch-priority requests when interactive ones
wait and the batch is full (their state is kept; they resume where they stopped), admits queued
requests up to `max_batch_size`, then advances the whole batch by ONE step: the sampler runs one
UNet forward per group of compatible requests, with each request's conditional and
unconditional CFG rows in the same forward.

Queue depth (`genaug_sampler_queue_depth`, the autoscaler's signal) counts every admitted
request that waits for a batch slot: those still preparing their conditions, those queued, and
paused ones. Shutdown: `stop_admitting` refuses new request ids (UNAVAILABLE, so the caller
goes to another replica) while admitted work goes on; `close` ends what is left with
UNAVAILABLE, which the batch client retries elsewhere under the same request id.

After work, once the engine has been idle for `idle_release_s`, it gives the heap's free pages
back to the OS (`release_free_heap`): a pod's RSS then comes back to its baseline between jobs
instead of keeping the peak of the last burst.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from typing import Protocol

from genaug.compute_lane import run_on_lane
from genaug.errors import (
    Cancelled,
    DeadlineExceeded,
    GenaugError,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from services.common.memory import release_free_heap
from services.common.result_cache import DEFAULT_MAX_BYTES, ResultCache
from services.sampler import metrics
from services.sampler.jobs import Failed, Finished, Job, Priority, Progress, Queued

logger = logging.getLogger(__name__)

ADMISSIONS = ("continuous", "whole-request")
# How long work starting on an idle engine waits for requests still arriving or being prepared,
# so that requests sent together share their first step (see `_gather`).
DEFAULT_GATHER_S = 0.1


class StepSampler(Protocol):
    """What the engine drives (services.models.ldm.pipeline.SequenceSampler fits)."""

    def prepare(self, request): ...

    def step(self, states): ...

    def finish(self, state): ...


class _StepFailed(Exception):
    """A denoising step raised (the cause); `batch` is what it was stepping."""

    def __init__(self, batch: list[Job]):
        super().__init__("denoising step failed")
        self.batch = batch


class SamplerEngine(abc.ABC):
    """The interface the servicer depends on."""

    @abc.abstractmethod
    def submit(
        self,
        request_id: str,
        fingerprint: str,
        build_request: Callable[[], object],
        priority: Priority,
        deadline: float | None,
        preview_every: int = 0,
    ) -> Job:
        """Start (or join, for a known request id) a generation; returns its job."""

    @abc.abstractmethod
    def announce(self) -> None:
        """A call that will submit has started (its request may still be arriving)."""

    @abc.abstractmethod
    def cancel(self, request_id: str, reason: str = "cancelled by the caller") -> bool:
        """Cancel a queued or running job; its slot is freed at the next step."""

    @abc.abstractmethod
    def stop_admitting(self) -> None:
        """Refuse new request ids with UNAVAILABLE; admitted requests carry on."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the scheduler; unfinished jobs fail with UNAVAILABLE."""


class ContinuousBatchingEngine(SamplerEngine):
    """The engine.

    Args:
        sampler: prepares, steps and finishes sampling states.
        max_batch_size: requests advanced together per step.
        max_queue: requests allowed to wait; beyond it submissions get RESOURCE_EXHAUSTED.
        completed_cache: finished results kept for retries with the same request id.
        completed_cache_bytes: the most bytes those results may hold (latents and decoded
            result messages); the least recently used leave first.
        idle_release_s: idle seconds after work before freed heap pages go back to the OS
            (None: never).
        admission: `"continuous"` admits queued requests at every step boundary;
            `"whole-request"` (static batching, the baseline `benchmarks.batching` compares
            against) starts a new batch only once every request of the running one finished.
        interactive_alone: while interactive requests run or wait, batch requests pause and
            the interactive ones step without them. On a CPU a step's time grows with its rows,
            so sharing steps with batch work makes an interactive request several times
            slower (`benchmarks.batching`); on a GPU rows are nearly free and sharing is the
            better trade.
        gather_s: when work starts on an idle engine, the most seconds its first step waits
            for requests still arriving (`announce`) or being prepared (0: never). Requests
            sent together then share every step, instead of the first taking one step alone
            and the rest finishing one step after it.
    """

    def __init__(
        self,
        sampler: StepSampler,
        max_batch_size: int = 4,
        max_queue: int = 64,
        completed_cache: int = 256,
        completed_cache_bytes: int = DEFAULT_MAX_BYTES,
        idle_release_s: float | None = 1.0,
        admission: str = "continuous",
        interactive_alone: bool = False,
        gather_s: float = DEFAULT_GATHER_S,
    ):
        if max_batch_size < 1 or max_queue < 0 or gather_s < 0:
            raise ValueError("max_batch_size must be >= 1, max_queue and gather_s >= 0")
        if admission not in ADMISSIONS:
            raise ValueError(f"admission must be one of {ADMISSIONS}, got {admission!r}")
        self.admission = admission
        self.interactive_alone = interactive_alone
        self.gather_s = gather_s
        self.sampler = sampler
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.idle_release_s = idle_release_s
        self._worked = False  # since the heap was last released
        self._queues: dict[Priority, deque[Job]] = {p: deque() for p in Priority}
        self._running: list[Job] = []
        self._preparing: Counter[Priority] = Counter()  # admitted, conditions being fetched
        self._announced: deque[float] = deque()  # when calls on their way to `submit` started
        self._jobs: dict[str, Job] = {}  # in flight, by request id
        self._done = ResultCache(Job.nbytes, completed_cache, completed_cache_bytes)  # with a clip
        metrics.RESULT_CACHE_BYTES.set_function(self._done.measure)  # at scrape time
        self._cv = threading.Condition()
        self._closed = False
        self._admitting = True
        self._step_seconds: deque[float] = deque(maxlen=32)
        self._thread = threading.Thread(target=self._loop, name="sampler-engine", daemon=True)
        self._thread.start()

    # -- submission ---------------------------------------------------------------------------
    def announce(self) -> None:
        """A Generate call started, its request still being received (`CallStartHooks`): a
        gathering scheduler waits for it as for a request being prepared. An announcement
        that no submission follows (the call failed first) expires after `gather_s`."""
        if self.gather_s <= 0:
            return
        now = time.monotonic()
        with self._cv:
            self._expire_announced(now)
            self._announced.append(now)

    def _expire_announced(self, now: float) -> None:
        while self._announced and self._announced[0] < now - self.gather_s:
            self._announced.popleft()

    def submit(
        self, request_id, fingerprint, build_request, priority, deadline, preview_every=0
    ) -> Job:
        request_id = request_id or uuid.uuid4().hex
        with self._cv:
            if self._announced:  # this call's announcement, or an older one: one fewer to come
                self._announced.popleft()
            if self._closed:
                raise Unavailable("the sampler is shutting down")
            known = self._jobs.get(request_id) or self._done.get(request_id)
            if known is not None:
                if known.fingerprint != fingerprint:
                    raise InvalidArgument(
                        "request_id", f"{request_id!r} was already used for a different request"
                    )
                return known
            if not self._admitting:
                raise Unavailable("the sampler is draining; retry on another replica")
            waiting = self._waiting()
            if waiting >= self.max_queue:
                metrics.REJECTED.inc()
                raise ResourceExhausted(
                    f"sampler queue is full ({waiting} waiting); retry later",
                    retry_after_s=self._retry_hint(waiting),
                )
            job = Job(request_id, fingerprint, priority, deadline, preview_every)
            self._jobs[request_id] = job
            if not self._worked:  # its tensors are on the heap now, even if it fails to prepare
                self._worked = True
                self._cv.notify()  # the idle scheduler starts its release timer
            self._preparing[priority] += 1
            self._update_gauges()
        # Conditions are fetched and embedded outside the lock: other requests keep stepping.
        try:
            built = build_request()  # may wait on other services: not on the lane
            run_on_lane(self._prepare_and_queue, job, built)
        except GenaugError as error:  # before ValueError: InvalidArgument is one
            self._prepared(job, error)
            raise
        except ValueError as error:
            self._prepared(job, InvalidArgument("conditions", str(error)))
            raise InvalidArgument("conditions", str(error)) from None
        except Exception:
            self._prepared(job, Unavailable("could not prepare the request"))
            raise
        return job

    def _prepare_and_queue(self, job: Job, built) -> None:
        """On the lane: the job's sampling state, then its place in the queue, in one task, so
        that the step the lane runs next already sees it (see `_admitted_step`)."""
        job.state = self.sampler.prepare(built)
        with self._cv:
            self._preparing[job.priority] -= 1
            if job.finished:
                pass  # cancelled or handed back while preparing
            elif job.cancelled:
                self._retire(job, Failed(Cancelled("cancelled by the caller")), locked=True)
            elif self._closed:
                self._retire(job, Failed(Unavailable("the sampler shut down")), locked=True)
            else:
                self._queues[job.priority].append(job)
                job.publish(Queued(len(self._queues[job.priority])))
                self._cv.notify()
            self._update_gauges()
            job.ready.set()

    def _prepared(self, job: Job, error: GenaugError) -> None:
        with self._cv:
            self._preparing[job.priority] -= 1
            self._cv.notify()  # a gathering scheduler need not wait for it any longer
        self._fail(job, error)

    def _waiting(self) -> int:
        return sum(len(q) for q in self._queues.values()) + sum(self._preparing.values())

    def _retry_hint(self, waiting: int) -> float:
        step = sum(self._step_seconds) / len(self._step_seconds) if self._step_seconds else 1.0
        steps_per_job = 50
        return round(max(1.0, waiting / self.max_batch_size * steps_per_job * step), 1)

    def cancel(self, request_id: str, reason: str = "cancelled by the caller") -> bool:
        with self._cv:
            job = self._jobs.get(request_id)
            if job is None or job.finished:
                return False
            job.cancelled = True
            for q in self._queues.values():
                if job in q:
                    q.remove(job)
                    self._fail(job, Cancelled(reason))
            self._update_gauges()
            self._cv.notify()
        if job.state is None and not job.finished:
            self._fail(job, Cancelled(reason))
        return True

    def stop_admitting(self) -> None:
        with self._cv:
            self._admitting = False

    def close(self) -> None:
        with self._cv:
            self._closed = True
            unfinished = list(self._jobs.values())
            self._cv.notify_all()
        # Failed first, so callers hear UNAVAILABLE now rather than after the current step.
        for job in unfinished:
            self._fail(job, Unavailable("the sampler shut down before this request finished"))
        self._thread.join(timeout=30)

    # -- the scheduler ------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                idle = not self._running
                self._admit()
                while not self._running and not self._closed:
                    if not self._cv.wait(timeout=self._idle_wait()):  # idle since the last work
                        self._release_heap()
                    self._admit()
                if self._closed:
                    return
                if idle:
                    self._gather()
            try:
                batch, seconds = run_on_lane(self._admitted_step)
            except _StepFailed as failed:
                logger.error("denoising step failed; failing the batch", exc_info=failed.__cause__)
                for job in failed.batch:
                    self._retire(job, Failed(Unavailable("the denoising step failed")))
                continue
            if not batch:
                continue
            self._step_seconds.append(seconds)
            metrics.STEP_SECONDS.observe(seconds)
            metrics.STEP_BATCH.observe(len(batch))
            for job in batch:
                if not job.finished:  # not cancelled or handed back during the step
                    self._after_step(job, seconds)

    def _admitted_step(self) -> tuple[list[Job], float]:
        """On the lane: admit as of the moment the step starts, then advance the batch one
        step; returns the batch and the step's seconds.

        Deciding the batch when the lane is free rather than when the step was handed to it
        lets a request whose prepare ran on the lane just before join this step, not the
        next: an interactive request waits for at most the step already running.
        """
        with self._cv:
            self._admit()
            batch = list(self._running)
            if batch:
                self._worked = True
        if not batch:
            return batch, 0.0
        began = time.perf_counter()
        try:
            self.sampler.step([job.state for job in batch])
        except Exception as error:
            raise _StepFailed(batch) from error
        return batch, time.perf_counter() - began

    def _gather(self) -> None:
        """Called holding the lock as work starts on an idle engine: wait (at most `gather_s`)
        while requests sent with it are still arriving (`announce`) or being prepared and the
        batch has room.

        Requests sent together reach the engine tens of milliseconds apart (each is received,
        parsed and prepared in turn). Without the wait the first steps alone, the others join
        one step later, and the group ends with a step that the first no longer needs: two
        smaller forwards instead of one (`benchmarks.serving`). An interactive request never
        waits, and a lone request finds nothing coming and does not wait either.
        """
        until = time.monotonic() + self.gather_s
        while (
            not self._closed
            and (sum(self._preparing.values()) or self._announced)
            and len(self._running) < self.max_batch_size
            and all(job.priority == Priority.BATCH for job in self._running)
        ):
            left = until - time.monotonic()
            if left <= 0:
                break
            self._cv.wait(timeout=left)
            self._expire_announced(time.monotonic())
            self._admit(forming=True)

    def _release_heap(self) -> None:
        """Called holding the lock; released around the trim (milliseconds), so submissions
        need not wait for it."""
        self._worked = False
        self._cv.release()
        try:
            release_free_heap()
        finally:
            self._cv.acquire()

    def _idle_wait(self) -> float | None:
        """How long to wait for work before releasing the heap (None: until work comes)."""
        return self.idle_release_s if self._worked and self.idle_release_s is not None else None

    def _after_step(self, job: Job, seconds: float) -> None:
        state = job.state
        job.record_step(seconds)
        if state.done:
            latents = run_on_lane(lambda: self.sampler.finish(state).detach().float().cpu())
            self._retire(job, Finished(latents, time.monotonic() - job.submitted))
            return
        preview = job.preview_every and state.step_index % job.preview_every == 0
        job.publish(
            Progress(
                state.step_index,
                state.total_steps,
                job.eta(state.total_steps - state.step_index),
                state.latents[0].detach().float().cpu() if preview else None,
            )
        )

    def _admit(self, forming: bool = False) -> None:
        """At a step boundary: drop ended jobs, preempt for interactive work, fill the batch.
        `forming`: the batch has not stepped yet, so whole-request admission may still fill it."""
        now = time.monotonic()
        for job in list(self._running):
            if job.cancelled:
                self._retire(job, Failed(Cancelled("cancelled by the caller")), locked=True)
            elif job.expired(now):
                self._retire(
                    job, Failed(DeadlineExceeded("deadline exceeded while generating")), locked=True
                )
        if self.admission == "whole-request" and self._running and not forming:
            self._update_gauges()  # static batching: nobody joins or preempts a running batch
            return
        interactive = self._queues[Priority.INTERACTIVE]
        batch = self._queues[Priority.BATCH]
        alone = self.interactive_alone and (
            bool(interactive) or any(j.priority == Priority.INTERACTIVE for j in self._running)
        )
        if alone:  # every batch job pauses; they resume in their order, from their steps
            for job in reversed([j for j in self._running if j.priority == Priority.BATCH]):
                self._running.remove(job)
                batch.appendleft(job)
                metrics.PREEMPTIONS.inc()
        while interactive and len(self._running) >= self.max_batch_size:
            paused = [j for j in self._running if j.priority == Priority.BATCH]
            if not paused:
                break
            # Pause the batch job that started last; it resumes first, from its current step.
            victim = paused[-1]
            self._running.remove(victim)
            batch.appendleft(victim)
            metrics.PREEMPTIONS.inc()
        while len(self._running) < self.max_batch_size and (interactive or (batch and not alone)):
            job = (interactive or batch).popleft()
            if job.expired(now):
                self._retire(
                    job, Failed(DeadlineExceeded("deadline exceeded in the queue")), locked=True
                )
                continue
            self._running.append(job)
        self._update_gauges()

    def _retire(self, job: Job, outcome: Finished | Failed, locked: bool = False) -> None:
        if not locked:
            with self._cv:
                self._retire(job, outcome, locked=True)
            return
        if job in self._running:
            self._running.remove(job)
        self._jobs.pop(job.request_id, None)
        if not job.finished:  # else it already ended (e.g. handed back): count it once
            job.publish(outcome)
            self._count(job, outcome)
        self._update_gauges()

    def _count(self, job: Job, outcome: Finished | Failed) -> None:
        name = job.priority.name.lower()
        if isinstance(outcome, Finished):
            metrics.CLIPS.labels(name).inc()
            metrics.REQUEST_SECONDS.labels(name).observe(outcome.seconds)
            job.state = None  # the request's tensors (MBs): the cache keeps only the outcome
            self._done.put(job.request_id, job)
        else:
            metrics.ENDED.labels(type(outcome.error).__name__).inc()

    def _fail(self, job: Job, error: GenaugError) -> None:
        with self._cv:
            self._retire(job, Failed(error), locked=True)
        job.ready.set()

    def _update_gauges(self) -> None:
        for priority, q in self._queues.items():
            metrics.QUEUE_DEPTH.labels(priority.name.lower()).set(
                len(q) + self._preparing[priority]
            )
        metrics.RUNNING.set(len(self._running))

    # -- introspection (tests, health) --------------------------------------------------------
    def snapshot(self) -> dict[str, int]:
        with self._cv:
            return {
                "running": len(self._running),
                **{
                    f"queued_{p.name.lower()}": len(q) + self._preparing[p]
                    for p, q in self._queues.items()
                },
            }
