"""Faults: kill -9 and SIGTERM of each service while `genaug augment` runs against it.

The five services run as processes with a second sampler replica B (`tests/e2e/conftest.py`,
shared with the other end-to-end modules). The job uses both replicas and the demo's wiring:
it fetches priors and motion from the encoder and the motion extractor, the samplers encode
the text with the encoder and decode with the codec, and the filter judges the pool. Each case
starts a fresh job (its own `--out` and base seed, so no replica replays an earlier case),
waits until the service is in use, signals it, waits for the process to end (after SIGTERM:
its drain time), starts it again on the same port, lets the job finish (retries) or runs it
again when it stopped (resume), and checks the output: exactly the planned clips generated
once each, the kept ones written, metadata matching the files, no temporary file left.

`make test` runs one case per signal; `GENAUG_SOAK=1` (`make soak`) every service with both.
The matrix is printed at the end, and written to `$GENAUG_FUZZ_RESULTS/faults.json` when set.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from clients.augment.job import plan_job
from clients.augment.manifest import manifest_path, read_records
from clients.augment.options import AugmentOptions
from clients.local_cluster import available_services
from services.data import layout
from services.data.phantoms import PHANTOM_NAME, ensure_bundled_dataset
from tests.e2e.cluster import NEEDED, augment
from tests.support import report_lines

PER_CLASS, STEPS, CLASSES = 2, 3, 3
SOAK = os.environ.get("GENAUG_SOAK") == "1"
RESULTS = os.environ.get("GENAUG_FUZZ_RESULTS")
JOB_TIMEOUT = 400.0
# SIGTERM: NOT_SERVING for --drain-seconds (2), then in-flight calls get --grace-seconds (30).
DRAIN_BOUND = 2.0 + 30.0 + 5.0
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM}
# When a service is in use: generation needs the encoder, motion extractor, codec and a
# sampler from the first clip on; the filter is called once the whole pool exists.
IN_USE_AFTER = {
    "sampler": 1,
    "condition_encoder": 1,
    "motion_extractor": 1,
    "vae_codec": 1,
    "filter": PER_CLASS * CLASSES,
}
REPRESENTATIVE = [("sampler", "SIGTERM"), ("vae_codec", "SIGKILL")]
CASES = [(s, k) for s in IN_USE_AFTER for k in SIGNALS] if SOAK else REPRESENTATIVE

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not set(available_services()) >= NEEDED,
        reason=f"needs all five services, missing {sorted(NEEDED - set(available_services()))}",
    ),
]


@dataclass
class Outcome:
    service: str
    signal: str
    runs: int  # job runs until it completed (2: it stopped and was run again)
    first_exit: int
    first_stop: str  # why the first run stopped ("" when it completed)
    service_exit: int | None  # the signalled process's exit code (0: a clean drain)
    drain_seconds: float | None  # SIGTERM to exit
    restart_seconds: float  # start again to SERVING
    job_seconds: float  # the first run's start to the job's completion
    generated: int
    kept: int

    @property
    def outcome(self) -> str:
        if self.runs == 1:
            return "completed in one run (retried)"
        return f"stopped (exit {self.first_exit}), re-run completed"


@pytest.fixture(scope="module")
def cluster(two_sampler_cluster):
    return two_sampler_cluster


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return ensure_bundled_dataset(tmp_path_factory.mktemp("phantom"))


@pytest.fixture(scope="module")
def matrix(request):
    outcomes: list[Outcome] = []
    yield outcomes
    report_lines(request.config, "fault matrix", format_matrix(outcomes))
    if RESULTS:
        Path(RESULTS).mkdir(parents=True, exist_ok=True)
        rows = [{**asdict(o), "outcome": o.outcome} for o in outcomes]
        summary = {"per_class": PER_CLASS, "steps": STEPS, "sampler_replicas": 2, "cases": rows}
        (Path(RESULTS) / "faults.json").write_text(json.dumps(summary, indent=1))


def format_matrix(outcomes: list[Outcome]) -> list[str]:
    head = f"{'service':<18} {'signal':<8} {'drain s':>7} {'restart s':>9} {'job s':>6}  outcome"
    lines = [head]
    for o in outcomes:
        drain = "-" if o.drain_seconds is None else f"{o.drain_seconds:.1f}"
        lines.append(
            f"{o.service:<18} {o.signal:<8} {drain:>7} {o.restart_seconds:>9.1f} "
            f"{o.job_seconds:>6.1f}  {o.outcome}; {o.generated} generated, {o.kept} kept"
            + (f"; first run: {o.first_stop}" if o.first_stop else "")
        )
    return lines


def _generated(out: Path) -> list[dict]:
    return [r for r in read_records(manifest_path(out, 0, 1)) if r["event"] == "generated"]


def _last_line(output: str, prefix: str) -> str:
    lines = [line for line in output.splitlines() if prefix in line]
    return lines[-1].split(prefix, 1)[1].strip()[:160] if lines else ""


@pytest.mark.parametrize(("service", "signal_name"), CASES)
def test_job_survives_the_fault(cluster, data, tmp_path, matrix, service, signal_name):
    main, b = cluster
    t = main.targets()
    victim_cluster = b if service == "sampler" else main  # replica A keeps serving
    victim = victim_cluster.services[service]
    out = tmp_path / "out"
    seed = 300 + 10 * len(matrix)  # request ids no replica has seen
    args = [
        "--dataset-root", str(data), "--name", PHANTOM_NAME, "--out", str(out),
        "--per-class", str(PER_CLASS), "--steps", str(STEPS), "--guidance", "3",
        "--base-seed", str(seed), "--concurrency", "2", "--no-progress", "--no-report",
        "--sampler", t["sampler"], b.targets()["sampler"],
        "--encoder", t["condition_encoder"], "--motion", t["motion_extractor"],
        "--filter", t["filter"],
        # Each clip's conditions asked for as it goes out, so the encoder and the motion
        # extractor are still in use when the first clip is in the pool (IN_USE_AFTER); on one
        # machine the job would otherwise have them all before it.
        "--conditions-schedule", "overlapped",
    ]  # fmt: skip
    began = time.monotonic()
    job = augment(args)
    end = began + JOB_TIMEOUT
    while len(_generated(out)) < IN_USE_AFTER[service] and job.poll() is None:
        assert time.monotonic() < end, "the job made no progress"
        time.sleep(0.02)
    assert job.poll() is None, f"the job ended before the fault:\n{job.communicate()[0]}"

    signalled = time.monotonic()
    victim.process.send_signal(SIGNALS[signal_name])
    service_exit = victim.process.wait(timeout=DRAIN_BOUND + 10)
    drain = time.monotonic() - signalled if signal_name == "SIGTERM" else None
    restarting = time.monotonic()
    victim_cluster.restart(service)
    restart_seconds = time.monotonic() - restarting

    output = job.communicate(timeout=max(10.0, end - time.monotonic()))[0]
    runs, first_exit = 1, job.returncode
    if first_exit != 0:
        runs = 2
        again = augment(args)
        rerun_output = again.communicate(timeout=JOB_TIMEOUT)[0]
        assert again.returncode == 0, f"first run:\n{output}\nre-run:\n{rerun_output}"
    job_seconds = time.monotonic() - began

    expected = _planned_ids(data, out, seed)
    kept = check_output(out, expected)
    outcome = Outcome(
        service, signal_name, runs, first_exit,
        _last_line(output, "stopped:") if runs == 2 else "",
        service_exit, None if drain is None else round(drain, 2),
        round(restart_seconds, 2), round(job_seconds, 2), len(expected), kept,
    )  # fmt: skip
    matrix.append(outcome)
    assert first_exit in (0, 1), output  # 1: stopped cleanly, finished work kept
    assert "[INTERNAL]" not in output, output  # a restart or drain is never a server error
    if signal_name == "SIGTERM":
        assert service_exit == 0, victim.log_tail()  # a clean drain
        assert drain < DRAIN_BOUND, f"{service} took {drain:.1f}s to drain"


def _planned_ids(data: Path, out: Path, seed: int) -> set[str]:
    options = AugmentOptions(
        dataset_root=data,
        name=PHANTOM_NAME,
        out=out,
        per_class=PER_CLASS,
        steps=STEPS,
        guidance=3.0,
        base_seed=seed,
        shard_index=0,
        shard_count=1,
    )
    return {w.id for w in plan_job(options).items}


def check_output(out: Path, expected: set[str]) -> int:
    """Exactly the planned clips, each generated once; the kept ones written with matching
    metadata; nothing temporary left. Returns how many were kept."""
    records = read_records(manifest_path(out, 0, 1))
    generated = [r["id"] for r in records if r["event"] == "generated"]
    assert sorted(generated) == sorted(expected), "a clip generated twice, or one missing"
    assert any(r["event"] == "done" for r in records)
    verdicts = [r for r in records if r["event"] == "filtered"][-1]["verdicts"]
    assert sorted(v["id"] for v in verdicts) == sorted(expected)
    kept = {v["id"] for v in verdicts if v["keep"]}
    written = [r["id"] for r in records if r["event"] == "written"]
    assert sorted(written) == sorted(kept), "a clip written twice, or a kept one missing"

    folder = layout.dataset_dir(out, PHANTOM_NAME)
    files = {p.name for p in folder.iterdir()}
    assert files == {f"{i}.avi" for i in kept} | {"train_metadata.jsonl"}
    dataset = layout.load_dataset(out, PHANTOM_NAME, "train")
    assert sorted(item.file_name for item in dataset) == sorted(f"{i}.avi" for i in kept)
    for item in dataset:
        assert item.file_name.startswith(f"{item.cls}-") and item.extra["synthetic"] is True
        assert layout.read_clip(item.path).shape == (8, 64, 64)

    pool = {p.stem for p in (out / ".augment" / "pool").iterdir()}
    assert pool == expected
    temporaries = [
        p.relative_to(out)
        for p in out.rglob("*")
        if p.name.startswith(".") and p.name not in (".augment", ".lock")
    ]
    assert not temporaries, temporaries
    return len(kept)
