"""What makes a job exactly-once and resumable: an append-only manifest and an atomic pool.

```
<out>/.augment/job.json                         the job's options; a re-run must match them
<out>/.augment/manifest-<i>-of-<n>.jsonl        one per shard: append-only, fsync'ed lines
<out>/.augment/pool/<item id>.npz               generated latents + frames (atomic)
<out>/.augment/conditions/<clip stem>.*         conditions fetched from the services
```

Manifest events, in the order a work item goes through them: `generated` (after its pool file
was renamed into place), one `filtered` line for the whole shard pool (the verdicts), `written`
(after its clip was renamed into place, with its metadata record), and `done` at the end. Each
line is one `write` followed by fsync; a torn last line (a crash mid-write) is ignored when
reading and cut off before the next append. A pool file without its `generated` line (a crash
between rename and append) is complete by construction and is adopted on the next run.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.data import layout

logger = logging.getLogger(__name__)

STATE_DIR = ".augment"


def state_dir(out: Path) -> Path:
    return Path(out) / STATE_DIR


def pool_path(out: Path, item_id: str) -> Path:
    return state_dir(out) / "pool" / f"{item_id}.npz"


def manifest_path(out: Path, shard_index: int, shard_count: int) -> Path:
    return state_dir(out) / f"manifest-{shard_index}-of-{shard_count}.jsonl"


def save_pool(path: Path, latents: np.ndarray, frames: np.ndarray) -> None:
    """Atomically write a generated clip: latents (T,C,h,w), frames (T,1,H,W) float32."""
    layout.save_npz(path, latents=np.asarray(latents), frames=np.asarray(frames))


def load_pool(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return archive["latents"], archive["frames"]


class Manifest:
    """Append-only JSON lines; safe for the threads of one process."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.path)

    def append(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, sort_keys=True, allow_nan=False) + "\n").encode()
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    tail = os.pread(fd, size, 0)
                    os.ftruncate(fd, tail.rfind(b"\n") + 1)
                    logger.warning("%s: cut a torn last line", self.path.name)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a manifest (a torn last line is skipped)."""
    try:
        text = Path(path).read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines[:-1], start=1):  # the part after the last \n is torn
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{Path(path).name}:{number}: not valid JSON") from None
    if lines[-1].strip():
        logger.warning("%s: ignoring a torn last line", Path(path).name)
    return records


@dataclass
class ShardState:
    """What a shard's manifest says is finished."""

    generated: dict[str, dict] = field(default_factory=dict)  # id -> generated event
    filtered: dict | None = None  # the filtered event for exactly this pool
    written: dict[str, dict] = field(default_factory=dict)  # id -> metadata record
    done: dict | None = None


def shard_state(records: list[dict], pool_ids: list[str]) -> ShardState:
    state = ShardState()
    wanted = sorted(pool_ids)
    for record in records:
        event = record.get("event")
        if event == "generated":
            state.generated[record["id"]] = record
        elif event == "filtered" and sorted(v["id"] for v in record["verdicts"]) == wanted:
            state.filtered = record
        elif event == "written":
            state.written[record["id"]] = record["record"]
        elif event == "done":
            state.done = record
    return state


def all_written(out: Path) -> list[dict]:
    """The metadata records of every shard's written clips, sorted by file name."""
    records: dict[str, dict] = {}
    for path in sorted(state_dir(out).glob("manifest-*.jsonl")):
        for record in read_records(path):
            if record.get("event") == "written":
                records[record["record"]["file_name"]] = record["record"]
    return [records[name] for name in sorted(records)]


def check_job(out: Path, job: dict[str, Any]) -> None:
    """Record the job's options on first run; refuse to mix a different job into `out`."""
    path = state_dir(out) / "job.json"
    with OutputLock(out):
        if path.is_file():
            existing = _with_defaults(json.loads(path.read_text()))
            if existing != job:
                keys = set(existing) | set(job)
                changed = sorted(k for k in keys if existing.get(k) != job.get(k))
                raise ValueError(
                    f"{out} holds a different augmentation job (changed: {', '.join(changed)}); "
                    "use a new --out or the same options"
                )
            return
        layout.atomic_write_bytes(path, (json.dumps(job, indent=2, sort_keys=True) + "\n").encode())


def _with_defaults(job: dict[str, Any]) -> dict[str, Any]:
    """A recorded job with the options added since it was written, at the value it ran with."""
    job_filter = job.get("filter")
    if isinstance(job_filter, dict) and "sequential_band" not in job_filter:
        # Jobs recorded before --sequential-band fitted the reference's pool-wide band.
        job = {**job, "filter": {**job_filter, "sequential_band": "pool"}}
    return job


class OutputLock:
    """An exclusive lock on `<out>/.augment/.lock` (shards sharing an output folder)."""

    def __init__(self, out: Path):
        self._path = state_dir(out) / ".lock"
        self._handle = None

    def __enter__(self) -> OutputLock:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self._path, "a+b")  # noqa: SIM115 - closed in __exit__
        fcntl.flock(self._handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()
