"""When the job computes its references' conditions: all first, or overlapped with sampling.

Overlapped, each generation thread asks for its reference's conditions when its turn comes,
while the sampler steps the clips already sent: where the condition encoder has cores of its
own (a Kubernetes deployment), that hides the encoder's time behind the sampler's.

Where the encoder shares the sampler's cores (one machine: `genaug demo`, a local cluster),
the two overlapped slow each other down: the MedSAM priors and the denoising steps are each a
team of one thread per core (onnxruntime, OpenMP), and two teams on the same cores wait on
each other's descheduled threads. On 2 cores the demo's job of 12 clips took 23.0-26.1 s
overlapped, and 16.1-18.7 s with the 12 references' conditions computed first (7.0-7.4 s) and
the clips sampled after (three jobs each, alternated, after a warm-up job; the sampler used
28-32 CPU-s overlapped against 15-18 first). `python -m benchmarks.augment` runs both.

`--conditions-schedule auto` (the default) computes them first when a service that computes
the job's conditions and a sampler are both on this machine (loopback or unix-socket
addresses), and overlaps them otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from clients.augment.generation import conditions_of
from clients.augment.plan import WorkItem
from clients.augment.replicas import JobFailed
from clients.augment.spans import Spans
from genaug.addresses import on_this_machine


def conditions_first(o) -> bool:
    """Whether the job computes every reference's conditions before sampling (`o`: the job's
    `AugmentOptions`)."""
    if o.conditions_schedule != "auto":
        return o.conditions_schedule == "first"
    computing = [o.encoder if "prior" in o.conditions else None]
    computing.append(o.motion if "motion" in o.conditions else None)
    local = [t for t in computing if t is not None and on_this_machine(t)]
    return bool(local) and any(on_this_machine(t) for t in o.sampler)


def fetch_conditions(
    items: list[WorkItem],
    conditions: Callable[[str], object],
    workers: int,
    spans: Spans,
    on_fetched: Callable[[int, int], None] = lambda done, total: None,
) -> int:
    """The conditions of every distinct reference clip of `items`, `workers` at a time,
    through `conditions` (`ReferenceConditions`, which keeps what the services computed in the
    job's cache, where the generation phase finds it); returns how many clips.
    `on_fetched(done, total)` follows the progress.

    Raises:
        JobFailed: a clip's conditions could not be had; the calls in flight finish, no new
            one starts, and the clips fetched so far stay in the cache.
    """
    clips = list(dict.fromkeys(item.source_clip for item in items))
    stop = threading.Event()
    lock = threading.Lock()
    done = 0

    def one(clip: str) -> None:
        nonlocal done
        if stop.is_set():
            return
        try:
            conditions_of(clip, conditions, spans)
        except Exception as error:
            stop.set()  # what has not started yet does not start
            if isinstance(error, JobFailed):
                raise
            # e.g. an unreadable reference clip
            raise JobFailed(f"conditions of {clip}: {type(error).__name__}: {error}") from error
        with lock:
            done += 1
            on_fetched(done, len(clips))

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="conditions") as executor:
        try:
            for _ in executor.map(one, clips):
                pass
        finally:
            stop.set()  # after Ctrl-C too
    return len(clips)
