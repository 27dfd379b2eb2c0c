"""`python -m tests.soak.summary runs/soak`: the figures of a `make soak` run, from its JSON.

Reads what the soak's tests wrote: `fuzz-<service>.json` (tests/fuzz), `load.json`
(tests/soak/test_load.py) and `faults.json` (tests/e2e/test_faults.py).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from tests.e2e.test_faults import Outcome, format_matrix


def fuzz_lines(folder: Path) -> list[str]:
    lines = [
        f"{'service':<18} {'cases':>6} {'INTERNAL/UNKNOWN':>16} {'health after':>12} "
        f"{'RSS MiB start / warm -> after':>30}  status codes"
    ]
    total: Counter[str] = Counter()
    for path in sorted(folder.glob("fuzz-*.json")):
        s = json.loads(path.read_text())
        codes: Counter[str] = Counter()
        for per_method in s["codes"].values():
            codes.update(per_method)
        total.update(codes)
        start = s.get("rss_kib_start", s["rss_kib_before"])
        rss = (
            f"{start / 1024:.0f} / {s['rss_kib_before'] / 1024:.0f} -> "
            f"{s['rss_kib_after'] / 1024:.0f}"
        )
        lines.append(
            f"{s['service']:<18} {s['cases']:>6} {s['internal_or_unknown']:>16} "
            f"{s['health_after']:>12} {rss:>30}  "
            + ", ".join(f"{code} {n}" for code, n in codes.most_common())
        )
    lines.append("all: " + ", ".join(f"{code} {n}" for code, n in total.most_common()))
    return lines


def load_lines(summary: dict) -> list[str]:
    latency = summary["latency_s"]
    mib = {k: round(summary[k] / 1024) for k in summary if k.startswith("rss_kib_")}
    return [
        f"{summary['streams']} streams for {summary['seconds']} s (max queue "
        f"{summary['max_queue']}, batch {summary['max_batch_size']}): {summary['codes']}, "
        f"{summary['clips_per_second']} clips/s",
        "latency p50/p95 s: "
        + ", ".join(f"{name} {v['p50']}/{v['p95']}" for name, v in latency.items()),
        f"queue depth max {summary['queue_depth_max']}; health during load "
        f"{summary['health_during_load']}, after {summary['health_after']}; idle again "
        f"{summary['idle_after_s']} s after the load",
        f"RSS MiB: idle {mib['rss_kib_idle']}, after warm-up {mib['rss_kib_after_warmup']}, "
        f"end of load {mib['rss_kib_end_of_load']} "
        f"({100 * summary['rss_growth_after_warmup']:+.1f}%), idle after "
        f"{mib['rss_kib_after_idle']}; every 5 s: {summary['rss_mib_every_5s']}",
    ]


def fault_lines(summary: dict) -> list[str]:
    rows = [{k: v for k, v in row.items() if k != "outcome"} for row in summary["cases"]]
    return format_matrix([Outcome(**row) for row in rows])


def main(argv: list[str]) -> int:
    folder = Path(argv[0] if argv else "runs/soak")
    sections = [
        ("fuzzing: hostile requests per service", "fuzz-*.json", fuzz_lines),
        ("load", "load.json", lambda f: load_lines(json.loads((f / "load.json").read_text()))),
        (
            "fault matrix (genaug augment, two sampler replicas)",
            "faults.json",
            lambda f: fault_lines(json.loads((f / "faults.json").read_text())),
        ),
    ]
    for title, pattern, lines in sections:
        print(f"== {title}")
        if not list(folder.glob(pattern)):
            print(f"  (no {pattern} in {folder})")
            continue
        for line in lines(folder):
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
