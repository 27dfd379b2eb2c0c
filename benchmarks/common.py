"""Shared benchmark plumbing: machine load, interleaved repetitions, JSON + plot output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path


def machine_facts() -> dict:
    load1, load5, _ = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "load_1m": round(load1, 2),
        "load_5m": round(load5, 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def interleaved(variants: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Time every variant once per round, rounds repeated, so machine noise hits all alike; the
    order rotates from round to round, so no variant always runs first (or after the same one)."""
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            began = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - began)
    return times


def run_clients(count: int, client: Callable[[int], None]) -> float:
    """`client(i)` on `count` threads at once; the wall seconds until all ended. A client's
    error is raised here once every thread has joined, not lost inside its thread."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            client(i)
        except BaseException as error:
            errors.append(error)

    began = time.perf_counter()
    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    if errors:
        raise errors[0]
    return wall


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_results(out_dir: Path, name: str, results: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def bar_plot(out_dir: Path, name: str, groups: dict[str, dict[str, float]], ylabel: str) -> Path:
    """Grouped bars: groups[group][variant] = value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = sorted({v for g in groups.values() for v in g})
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(variants))
    for i, variant in enumerate(variants):
        xs = [j + i * width for j in range(len(groups))]
        ax.bar(xs, [g.get(variant, 0.0) for g in groups.values()], width, label=variant)
    ax.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(groups))])
    ax.set_xticklabels(list(groups))
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
