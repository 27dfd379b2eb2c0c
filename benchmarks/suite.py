"""The `make bench` suite: sections, their table rows, and the run that ties them together.

A section is one module under `benchmarks/` with a `SECTION = Section(...)`. Its `run` measures
everything it compares side by side in one run (variants interleaved, medians over repeats),
writes its own JSON and PNG under the results folder, and returns the rows it adds to the
table: a measured value, the target it is held to (empty when only reported) and whether the
target was met. Targets live here, in the rows, never in timed tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class BenchSettings:
    """What every section is run with.

    Args:
        out_dir: where sections write their JSON and PNG.
        device: "cpu", or "cuda" to run the models in bf16 on a GPU where one exists.
        quick: tiny sizes and one repeat: checks that a section runs, measures nothing.
        threads: torch intra-op threads for in-process model work (the services' default).
    """

    out_dir: Path
    device: str = "cpu"
    quick: bool = False
    threads: int = 2


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    section: str
    metric: str
    value: float | None
    unit: str = "x"
    target: str = ""  # e.g. ">= 0.45"; empty: reported, not a target
    met: bool | None = None  # None when there is no target or nothing was measured
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Section:
    name: str  # also the stem of its JSON and PNG
    title: str
    run: Callable[[BenchSettings], list[Row]]


def at_least(value: float | None, bound: float) -> bool | None:
    return None if value is None else value >= bound


def at_most(value: float | None, bound: float) -> bool | None:
    return None if value is None else value <= bound


def format_value(row: Row) -> str:
    if row.value is None:
        return "-"
    if row.unit == "x":
        return f"{row.value:.2f}x"
    magnitude = abs(row.value)
    digits = 0 if magnitude >= 100 else 1 if magnitude >= 10 else 2 if magnitude >= 1 else 3
    return f"{row.value:.{digits}f} {row.unit}"


def markdown_table(rows: list[Row]) -> str:
    """The table as the README shows it."""
    lines = ["| section | metric | measured | target | met |", "|---|---|---|---|---|"]
    for row in rows:
        met = {True: "yes", False: "**no**", None: ""}[row.met]
        metric = f"{row.metric} ({row.note})" if row.note else row.metric
        lines.append(f"| {row.section} | {metric} | {format_value(row)} | {row.target} | {met} |")
    return "\n".join(lines) + "\n"


def text_table(rows: list[Row]) -> str:
    """The table as `make bench` prints it."""
    cells = [
        (
            r.section,
            r.metric,
            format_value(r),
            r.target,
            {True: "yes", False: "NO", None: ""}[r.met],
        )
        for r in rows
    ]
    header = ("section", "metric", "measured", "target", "met")
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells]
    notes = [f"  [{r.section}] {r.metric}: {r.note}" for r in rows if r.note]
    return "\n".join(lines + (["notes:", *notes] if notes else [])) + "\n"


def result_path(settings: BenchSettings, name: str, suffix: str = ".json") -> Path:
    return Path(settings.out_dir) / f"{name}{suffix}"
