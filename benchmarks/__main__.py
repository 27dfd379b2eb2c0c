"""`make bench`: every performance section on this machine, one table, JSON and plots.

    python -m benchmarks [--device cuda] [--only transport batching] [--skip triton] [--quick]

Sections run one after another (never two at once: they measure the machine). A section that
fails is reported in the table with its error and the rest still run; the exit status is 1 then.
Writes `<out>/bench.json` (machine, rows, seconds per section) and `<out>/bench.md` (the table
the README shows) beside each section's own JSON and PNG.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

from benchmarks.common import machine_facts
from benchmarks.suite import BenchSettings, Row, Section, markdown_table, text_table

RESULTS = Path(__file__).resolve().parent / "results"

# In the order they run; each module defines SECTION.
SECTION_MODULES = (
    "benchmarks.transport",
    "benchmarks.serving",
    "benchmarks.batching",
    "benchmarks.compute",
    "benchmarks.official",
    "benchmarks.augment",
    "benchmarks.memory",
    "benchmarks.triton",
)


def _sections() -> list[Section]:
    return [importlib.import_module(name).SECTION for name in SECTION_MODULES]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--only", nargs="+", metavar="SECTION", help="run only these sections")
    parser.add_argument("--skip", nargs="+", metavar="SECTION", default=[])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the suite runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def _chosen(sections: list[Section], only: list[str] | None, skip: list[str]) -> list[Section]:
    known = [s.name for s in sections]
    unknown = sorted((set(only or []) | set(skip)) - set(known))
    if unknown:
        raise SystemExit(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [s for s in sections if (not only or s.name in only) and s.name not in skip]


def main(argv: list[str] | None = None, sections: list[Section] | None = None) -> int:
    args = _parse(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device on this machine")
    settings = BenchSettings(args.out, args.device, args.quick, args.threads)
    sections = _chosen(sections if sections is not None else _sections(), args.only, args.skip)
    began = time.perf_counter()
    machine = machine_facts()
    rows: list[Row] = []
    seconds: dict[str, float] = {}
    failed = False
    for index, section in enumerate(sections, 1):
        print(f"[{index}/{len(sections)}] {section.title} ...", flush=True)
        start = time.perf_counter()
        try:
            section_rows = section.run(settings)
        except Exception as error:  # a failed section must not hide the others' figures
            traceback.print_exc()
            failed = True
            section_rows = [
                Row(section.name, "failed", None, note=f"{type(error).__name__}: {error}")
            ]
        seconds[section.name] = round(time.perf_counter() - start, 1)
        rows += section_rows
        print(text_table(section_rows), flush=True)
    total = time.perf_counter() - began
    machine_after = machine_facts()
    report = {
        "machine": machine,
        "load_after": {k: machine_after[k] for k in ("load_1m", "load_5m")},
        "device": args.device,
        "quick": args.quick,
        "seconds": {"total": round(total, 1), **seconds},
        "rows": [r.as_dict() for r in rows],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    header = (
        f"`make bench` on {machine['cpus']} CPU cores ({machine['platform']}, Python "
        f"{machine['python']}), device {args.device}, {machine['time']}, load "
        f"{machine['load_1m']} before / {machine_after['load_1m']} after, {total / 60:.1f} min\n\n"
    )
    (args.out / "bench.md").write_text(header + markdown_table(rows))
    print("== make bench\n" + header + text_table(rows))
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
