"""Memory: resident set size of each service process at rest and under an augmentation load.

A thread reads `VmRSS` and `VmHWM` from `/proc/<pid>/status` of every service process every
0.2 s while the services run. "At rest" is the median RSS over a few seconds after all of them
report SERVING (models loaded, warmed up), before any work; "peak under load" is the largest
RSS seen while `genaug augment` jobs run against them; VmHWM (the kernel's high-water mark,
start-up included) is kept in the JSON.

Inside `make bench` this section reads the measurement the augment section took during its
jobs (one load, both figures; run it after `benchmarks.augment`). Run alone, it starts the
services itself and runs a short job of the demo's kind:

    python -m benchmarks.memory [--per-class 2] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import bar_plot, machine_facts, write_results
from benchmarks.suite import BenchSettings, Row, Section

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLE_SECONDS = 0.2
REST_SECONDS = 3.0
SERVICES = ("condition_encoder", "vae_codec", "sampler", "filter", "motion_extractor")

# The measurement the augment section took in this process (`make bench` runs both).
_shared: dict | None = None


def share(measurement: dict) -> None:
    global _shared
    _shared = measurement


def shared() -> dict | None:
    return _shared


def read_status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process in KiB ({} once it has exited)."""
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return fields


class RssMonitor:
    """Samples every process of `pids` each `interval` seconds, tagging samples with the
    phase set by `phase(...)` ("rest", "load", or anything else, which counts as neither)."""

    def __init__(self, pids: dict[str, int], interval: float = SAMPLE_SECONDS):
        self.pids = dict(pids)
        self.interval = interval
        self._phase = "start"
        self._samples: list[tuple[float, str, dict[str, int]]] = []  # (t, phase, name -> KiB)
        self._hwm: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-monitor", daemon=True)

    def start(self) -> RssMonitor:
        self._thread.start()
        return self

    def start_at_rest(self, seconds: float = REST_SECONDS) -> RssMonitor:
        """Start, and sample `seconds` of the "rest" phase before returning."""
        self.start().phase("rest")
        time.sleep(seconds)
        return self

    def phase(self, name: str) -> None:
        with self._lock:
            self._phase = name
        self._sample()  # the phase's first sample now, not up to `interval` later

    def _sample(self) -> None:
        rss = {}
        for name, pid in self.pids.items():
            status = read_status_kib(pid)
            if status:
                rss[name] = status.get("VmRSS", 0)
                self._hwm[name] = max(self._hwm.get(name, 0), status.get("VmHWM", 0))
        with self._lock:
            self._samples.append((time.monotonic(), self._phase, rss))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()
        return self.summary()

    def summary(self) -> dict:
        """Per process: rest (median) and peak-under-load RSS, the high-water mark, in MiB."""
        with self._lock:
            samples = list(self._samples)
        per: dict[str, dict] = {}
        for name in self.pids:
            rest = [rss[name] for _, phase, rss in samples if phase == "rest" and name in rss]
            load = [rss[name] for _, phase, rss in samples if phase == "load" and name in rss]
            per[name] = {
                "rest_mib": _mib(statistics.median(rest)) if rest else None,
                "peak_under_load_mib": _mib(max(load)) if load else None,
                "vm_hwm_mib": _mib(self._hwm[name]) if name in self._hwm else None,
                "samples_rest": len(rest),
                "samples_load": len(load),
            }
        return {"interval_s": self.interval, "processes": per}


def _mib(kib: float) -> float:
    return round(kib / 1024, 1)


def measure_own_load(per_class: int, steps: int, work: Path) -> dict:
    """Start the services, measure them at rest, then under one short demo-like job."""
    from benchmarks.demo_job import demo_job_options, start_cluster
    from clients.augment.job import run_job
    from services.data.phantoms import ensure_bundled_dataset

    data = ensure_bundled_dataset(work / "data")
    with start_cluster(work / "logs", replicas=1) as cluster:
        monitor = RssMonitor(cluster.pids()).start_at_rest()
        monitor.phase("load")
        samplers = cluster.sampler_targets()
        run_job(demo_job_options(data, work / "job", cluster, samplers, per_class, steps))
        monitor.phase("after")
        return {"load": f"one demo job: {per_class} per class, {steps} steps"} | monitor.stop()


def run(settings: BenchSettings, per_class: int = 2, steps: int = 10) -> dict:
    measurement = shared()
    source = "the augment section's jobs (same run)"
    if measurement is None:
        source = "its own load"
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as work:
            if settings.quick:
                per_class, steps = 1, 2
            measurement = measure_own_load(per_class, steps, Path(work))
    results = {"machine": machine_facts(), "measured_under": source, **measurement}
    write_results(Path(settings.out_dir), "memory", results)
    per = measurement["processes"]
    bar_plot(
        Path(settings.out_dir),
        "memory",
        {
            name: {
                "rest": per[name]["rest_mib"] or 0.0,
                "peak under load": per[name]["peak_under_load_mib"] or 0.0,
            }
            for name in per
        },
        "RSS (MiB)",
    )
    return results


def _section(settings: BenchSettings) -> list[Row]:
    results = run(settings)
    load = results.get("load", "")
    rows = []
    for name in (*SERVICES, *sorted(set(results["processes"]) - set(SERVICES))):
        figures = results["processes"].get(name)
        if figures is None:
            continue
        rows.append(Row("memory", f"{name} RSS at rest", figures["rest_mib"], "MiB"))
        note = f"VmHWM {figures['vm_hwm_mib']} MiB"
        note += f"; load: {load}" if name == "sampler" else ""
        peak = figures["peak_under_load_mib"]
        rows.append(Row("memory", f"{name} peak RSS under load", peak, "MiB", note=note))
    return rows


SECTION = Section("memory", "Memory: RSS of each service at rest and under load", _section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    settings = BenchSettings(args.out, quick=args.quick)
    results = run(settings, args.per_class, args.steps)
    print(f"machine: {results['machine']}; load: {results.get('load')}")
    for name, f in results["processes"].items():
        print(
            f"{name:<18} rest {f['rest_mib']} MiB, peak under load "
            f"{f['peak_under_load_mib']} MiB, VmHWM {f['vm_hwm_mib']} MiB"
        )
    print(f"wrote {args.out / 'memory.json'} and {args.out / 'memory.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
