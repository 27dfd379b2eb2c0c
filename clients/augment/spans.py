"""Where a job's time goes: seconds per stage, recorded by the code that does the work.

The job wraps each piece of work in `spans.span(stage)` (or adds the sampler's own account of
a request, `add_sampler_stages`), and each phase in `spans.phase(name)`. Stages of the
generation phase overlap (`--concurrency` clips at once), so their summed seconds exceed the
phase's wall time; `shares_of_wall` splits each phase's wall time among its stages in
proportion to their summed seconds, which makes the shares add up to the job's wall time.

Written as `<out>/timings.json` (`timings-<i>-of-<n>.json` for a shard) at the end of a run,
and summarised in the run's last lines. Only this run's work is counted: a resumed run does
not see the time of the runs before it.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.data import layout

# The stages the job records, in pipeline order, and the category each one counts in.
STAGES = {
    "conditions": "conditions",  # the reference clip's conditions (files, cache or services)
    "prepare": "conditions",  # the sampler parsing, fetching and embedding them
    "queueing": "queueing",  # waiting in the sampler for a batch slot
    "sampling": "sampling",  # the denoising steps
    "decoding": "decoding",  # latents to frames (the VAE codec)
    "transport": "transport",  # the call's wait beyond the sampler's own account: bytes, gRPC
    "retrying": "other",  # failed generation attempts and their backoff
    "pool": "writing",  # the generated clip into the job's pool
    "filtering": "filtering",  # the filter's verdicts on the pool (streaming it included)
    "writing": "writing",  # the kept clips and the metadata
    "planning": "other",  # the plan, the manifest, resuming
    "report": "writing",  # the HTML report (its contact sheet reads the pool)
}
CATEGORIES = (
    "conditions",
    "queueing",
    "sampling",
    "decoding",
    "transport",
    "filtering",
    "writing",
    "other",
)
# The sampler's StageSeconds fields, as the job's stages.
SAMPLER_STAGES = {
    "prepare": "prepare",
    "queue": "queueing",
    "sampling": "sampling",
    "decode": "decoding",
}


class Spans:
    """Seconds and counts per stage, wall seconds per phase; safe for the job's threads.

    Phases run one after another; a stage's seconds count in the phase running when they
    were recorded. A phase in which no stage was recorded counts as the stage of its name
    (`phase("filtering")`), or as "other".
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: defaultdict[tuple[str, str], float] = defaultdict(float)  # (phase, stage)
        self._counts: Counter[str] = Counter()
        self._phases: dict[str, float] = {}  # phase -> wall seconds
        self._phase = ""  # the phase running now ("" outside every phase)

    def add(self, stage: str, seconds: float, count: int = 1) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
        with self._lock:
            self._seconds[self._phase, stage] += max(0.0, float(seconds))
            self._counts[stage] += count

    @contextmanager
    def span(self, stage: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - began)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with self._lock:
            self._phase = name
        began = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self._phases[name] = self._phases.get(name, 0.0) + time.perf_counter() - began
                self._phase = ""

    def add_call(self, call_seconds: float, sampler_stages: dict[str, float]) -> None:
        """One generation call: the sampler's own account of it (`GeneratedClip.stages`) and,
        as transport, what the call took beyond that account."""
        accounted = 0.0
        for field, stage in SAMPLER_STAGES.items():
            seconds = max(0.0, float(sampler_stages.get(field, 0.0)))
            self.add(stage, seconds)
            accounted += seconds
        self.add("transport", call_seconds - accounted)

    def as_dict(self, wall_seconds: float, clips: int) -> dict:
        """The JSON of `timings.json`."""
        with self._lock:
            seconds = dict(self._seconds)
            counts = dict(self._counts)
            phases = dict(self._phases)
        totals: defaultdict[str, float] = defaultdict(float)
        for (_, stage), value in seconds.items():
            totals[stage] += value
        by_category = dict.fromkeys(CATEGORIES, 0.0)
        for stage, share in shares_of_wall(seconds, phases, wall_seconds).items():
            by_category[STAGES.get(stage, "other")] += share
        return {
            "wall_seconds": round(wall_seconds, 3),
            "clips_generated": clips,
            "clips_per_minute": round(60.0 * clips / wall_seconds, 3) if wall_seconds else None,
            "phases": {k: round(v, 3) for k, v in phases.items()},
            "stages": {
                stage: {
                    "seconds": round(totals[stage], 3),
                    "count": counts.get(stage, 0),
                    "category": STAGES[stage],
                }
                for stage in STAGES
                if stage in totals
            },
            "share_of_wall": {k: round(v, 4) for k, v in by_category.items()},
            "note": "stage seconds are summed over the generation threads; each phase's wall "
            "time is split among its stages in proportion to them (clients.augment.spans)",
        }


def shares_of_wall(
    seconds: dict[tuple[str, str], float], phases: dict[str, float], wall_seconds: float
) -> dict[str, float]:
    """Each stage's share of the job's wall time, from seconds by (phase, stage).

    A phase's wall time goes to its stages in proportion to their summed seconds; a phase
    without any counts as the stage of its name, else "other" (as does the time outside
    every phase).
    """
    if wall_seconds <= 0:
        return {}
    shares: defaultdict[str, float] = defaultdict(float)
    for phase, phase_wall in phases.items():
        inside = {stage: v for (p, stage), v in seconds.items() if p == phase}
        total = sum(inside.values())
        if total <= 0:
            shares[phase if phase in STAGES else "other"] += phase_wall / wall_seconds
            continue
        for stage, value in inside.items():
            shares[stage] += phase_wall * value / total / wall_seconds
    outside = wall_seconds - sum(phases.values())
    if outside > 0:
        shares["other"] += outside / wall_seconds
    return dict(shares)


def timings_path(out: Path, shard_index: int, shard_count: int) -> Path:
    name = "timings.json" if shard_count == 1 else f"timings-{shard_index}-of-{shard_count}.json"
    return Path(out) / name


def write_timings(path: Path, timings: dict) -> Path:
    layout.atomic_write_bytes(path, (json.dumps(timings, indent=2) + "\n").encode())
    return path


def summary_line(timings: dict) -> str:
    """`time per stage: sampling 61%, decoding 12%, ...` (largest first, under 0.5% left out)."""
    shares = sorted(timings["share_of_wall"].items(), key=lambda kv: -kv[1])
    parts = ", ".join(f"{name} {100 * share:.0f}%" for name, share in shares if share >= 0.005)
    rate = timings.get("clips_per_minute")
    head = f"  {rate:.1f} clips/min; " if rate else "  "
    return f"{head}share of wall time: {parts or '-'}"
