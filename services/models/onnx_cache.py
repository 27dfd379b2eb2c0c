"""The on-disk cache of ONNX exports (`onnx_session.export_graph`): where it lives, and its pruning.

An entry is an export `<graph>-<16 hex of weights and versions>.onnx` and its parity records
`<same stem>.parity-<n>threads.json`. The cache is pruned after each export (`prune_cache`):
entries not used for `$GENAUG_ONNX_CACHE_MAX_AGE_DAYS` days (default 30) go, then the least
recently used ones until the cache fits in `$GENAUG_ONNX_CACHE_MAX_MIB` MiB (default 2048); 0
turns either limit off. Loading an entry touches its mtime (`touch`); entries this process
loaded (`mark_in_use`), or any process used within the last hour, are never removed, nor are
files not named as entries, nor writers' temp files (only those of a writer that died over a
day ago). Pruning errors are logged warnings.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CACHE_ENV = "GENAUG_ONNX_CACHE"
# Cache pruning (`prune_cache`): limits from the environment; 0 turns a limit off.
CACHE_MAX_AGE_ENV = "GENAUG_ONNX_CACHE_MAX_AGE_DAYS"
CACHE_MAX_MIB_ENV = "GENAUG_ONNX_CACHE_MAX_MIB"
# A month: weights or versions nobody loaded for that long are stale (a re-export costs
# seconds to half a minute once).
DEFAULT_CACHE_MAX_AGE_DAYS = 30.0
# About six full-size VAE encode/decode pairs (~330 MB each) plus image priors (~25 MB).
DEFAULT_CACHE_MAX_MIB = 2048.0
# An entry used (loaded or exported) this recently is kept whatever the cap: another process
# may be loading it right now.
PRUNE_GRACE_S = 3600.0
# Writers' temp files live for the length of an export (under a minute); one older than this
# was left by a process that died mid-write.
STALE_PARTIAL_S = 86400.0
# `<name>-<hash>.onnx` and its `<name>-<hash>.parity-<n>threads.json` records.
_ENTRY_FILE = re.compile(
    r"^(?P<stem>[a-z][a-z0-9_]*-[0-9a-f]{16})(?:\.onnx|\.parity-\d+threads\.json)$"
)
# Writers' temp files (`tempfile.mkstemp` names: onnx_session's export and parity record).
_PARTIAL_FILE = re.compile(r"^\.[a-z][a-z0-9_]*-[0-9a-f]{16}\..+\.partial(?:\.onnx)?$")

_in_use: set[Path] = set()  # graphs this process loaded: never pruned by it
_in_use_lock = threading.Lock()


def default_cache_dir() -> Path:
    """`$GENAUG_ONNX_CACHE`, else a per-user folder under the system temp dir."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"genaug-onnx-{user}"


@dataclass(frozen=True)
class CacheLimits:
    """How long an unused entry is kept and how large the cache may grow (0: no limit)."""

    max_age_days: float = DEFAULT_CACHE_MAX_AGE_DAYS
    max_mib: float = DEFAULT_CACHE_MAX_MIB


def _env_limit(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        logger.warning("%s=%r is not a number >= 0 (0 = no limit); using %g", name, raw, default)
        return default
    return value


def cache_limits() -> CacheLimits:
    """`$GENAUG_ONNX_CACHE_MAX_AGE_DAYS` and `$GENAUG_ONNX_CACHE_MAX_MIB`, else the defaults."""
    return CacheLimits(
        _env_limit(CACHE_MAX_AGE_ENV, DEFAULT_CACHE_MAX_AGE_DAYS),
        _env_limit(CACHE_MAX_MIB_ENV, DEFAULT_CACHE_MAX_MIB),
    )


@dataclass(frozen=True)
class Pruned:
    """What `prune_cache` removed (each entry's `.onnx` path), and the cache's size after."""

    removed: tuple[Path, ...]
    freed_bytes: int
    kept_bytes: int


@dataclass
class _Entry:
    graph: Path  # `<stem>.onnx` (maybe absent: orphan parity records)
    files: list[Path]
    size: int = 0
    used: float = 0.0  # the newest mtime of its files


def mark_in_use(path: Path) -> None:
    with _in_use_lock:
        _in_use.add(Path(os.path.abspath(path)))


def touch(path: Path) -> bool:
    """Marks the entry `path` used now (its mtime; the pruners' clock); False when absent."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    except OSError as error:  # a read-only cache: it can still be read
        logger.debug("could not touch %s: %s", path, error)
    return path.is_file()


def _scan(cache_dir: Path, now: float) -> tuple[dict[str, _Entry], list[Path]]:
    """The cache's entries by stem, and writers' temp files older than `STALE_PARTIAL_S`."""
    entries: dict[str, _Entry] = {}
    stale_partials = []
    with os.scandir(cache_dir) as scan:
        for item in scan:
            try:
                info = item.stat(follow_symlinks=False)
            except FileNotFoundError:  # removed meanwhile
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            match = _ENTRY_FILE.match(item.name)
            if match is None:
                if _PARTIAL_FILE.match(item.name) and now - info.st_mtime > STALE_PARTIAL_S:
                    stale_partials.append(Path(item.path))
                continue
            stem = match["stem"]
            entry = entries.setdefault(stem, _Entry(cache_dir / f"{stem}.onnx", []))
            entry.files.append(Path(item.path))
            entry.size += info.st_size
            entry.used = max(entry.used, info.st_mtime)
    return entries, stale_partials


def _used_since(entry: _Entry) -> float:
    """The entry's newest mtime now (another process may have touched it since the scan)."""
    newest = 0.0
    for path in entry.files:
        with contextlib.suppress(FileNotFoundError):
            newest = max(newest, path.stat().st_mtime)
    return newest


def _remove(paths: Sequence[Path], failures: list[str]) -> bool:
    """Unlinks `paths` in order, stopping at the first that cannot be removed (False). Called
    with an entry's parity records before its graph, so a failed removal never leaves a record
    without the graph it vouches for."""
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            failures.append(f"{path.name}: {error}")
            return False
    return True


def prune_cache(
    cache_dir: Path,
    limits: CacheLimits | None = None,
    keep: Sequence[Path] = (),
    now: float | None = None,
) -> Pruned:
    """Removes cache entries (a `<name>-<hash>.onnx` and its parity records) not used for
    `limits.max_age_days`, then the least recently used until the entries fit in
    `limits.max_mib` (`limits`: `cache_limits()` by default).

    Never removed: the graphs in `keep` and those this process loaded; entries used (their
    newest mtime; a load touches it) within `PRUNE_GRACE_S`, so a concurrent loader never
    loses the file it is about to read (a session already loaded has it in memory); files
    the cache does not name, such as another writer's temp file (only one older than
    `STALE_PARTIAL_S` is removed: its writer died). An entry whose mtime changed since the
    scan is left alone. Files that cannot be removed are logged in one warning and skipped.

    Raises:
        OSError: `cache_dir` cannot be listed.
    """
    limits = limits or cache_limits()
    now = time.time() if now is None else now
    cache_dir = Path(cache_dir)
    with _in_use_lock:
        protected = {Path(os.path.abspath(p)) for p in (*keep, *_in_use)}
    entries, stale_partials = _scan(cache_dir, now)
    failures: list[str] = []
    for partial in stale_partials:
        _remove([partial], failures)

    def removable(entry: _Entry) -> bool:
        return (
            Path(os.path.abspath(entry.graph)) not in protected and now - entry.used > PRUNE_GRACE_S
        )

    doomed: list[_Entry] = []
    kept: list[_Entry] = []
    max_age = limits.max_age_days * 86400.0
    for entry in sorted(entries.values(), key=lambda e: e.used):  # least recently used first
        too_old = limits.max_age_days > 0 and now - entry.used > max_age
        (doomed if too_old and removable(entry) else kept).append(entry)
    total = sum(e.size for e in kept)
    if limits.max_mib > 0:
        cap = limits.max_mib * (1 << 20)
        for entry in [e for e in kept if removable(e)]:
            if total <= cap:
                break
            doomed.append(entry)
            total -= entry.size
        if total > cap:
            logger.info(
                "ONNX cache %s holds %.0f MiB > %s=%g in entries in use or used within %.0f s",
                cache_dir,
                total / (1 << 20),
                CACHE_MAX_MIB_ENV,
                limits.max_mib,
                PRUNE_GRACE_S,
            )
    removed, freed = [], 0
    for entry in doomed:
        if _used_since(entry) > entry.used:  # loaded by someone since the scan
            total += entry.size
            continue
        records = [p for p in entry.files if p != entry.graph]
        graph = [p for p in entry.files if p == entry.graph]
        if _remove(records + graph, failures):
            removed.append(entry.graph)
            freed += entry.size
        else:
            total += entry.size
    if removed:
        logger.info(
            "pruned %d unused ONNX export(s) (%.1f MiB) from %s: %s",
            len(removed),
            freed / (1 << 20),
            cache_dir,
            ", ".join(p.name for p in removed),
        )
    if failures:
        logger.warning("could not prune the ONNX cache %s: %s", cache_dir, "; ".join(failures))
    return Pruned(tuple(removed), freed, total)


def prune_quietly(cache_dir: Path, keep: Sequence[Path]) -> None:
    """`prune_cache`, whose failure is only a warning: a cache that cannot be pruned still
    serves."""
    try:
        prune_cache(cache_dir, keep=keep)
    except Exception as error:  # noqa: BLE001 - pruning never fails a load
        logger.warning("could not prune the ONNX cache %s: %s", cache_dir, error)
