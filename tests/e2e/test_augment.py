"""`genaug augment` against real service processes on the bundled Phantom dataset.

Two sampler replicas: A (in the five-service cluster) and B (a second process wired to the
same encoder, motion extractor and codec). The uninterrupted reference run uses A and fetches
conditions from the encoder and motion services itself; the run that is killed with SIGKILL and
re-run uses B and lets the sampler fetch the conditions, so the two compute independently.
The last test kills replica B in the middle of a job that uses both.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from clients.augment import run_options
from clients.augment.manifest import manifest_path, read_records
from clients.augment.options import AugmentOptions
from clients.local_cluster import available_services
from services.data import layout
from services.data.phantoms import PHANTOM_NAME, ensure_bundled_dataset
from tests.e2e.cluster import NEEDED, augment

PER_CLASS, STEPS = 2, 3

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not set(available_services()) >= NEEDED,
        reason=f"needs all five services, missing {sorted(NEEDED - set(available_services()))}",
    ),
]


@pytest.fixture(scope="module")
def cluster(two_sampler_cluster):
    return two_sampler_cluster


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return ensure_bundled_dataset(tmp_path_factory.mktemp("phantom"))


def _args(data: Path, out: Path, sampler: list[str] | None = None, **extra) -> list[str]:
    args = [
        "--dataset-root", str(data), "--name", PHANTOM_NAME, "--out", str(out),
        "--per-class", str(PER_CLASS), "--steps", str(STEPS), "--guidance", "3",
        "--concurrency", "1", "--no-progress",
    ]  # fmt: skip
    if sampler:
        args += ["--sampler", *sampler]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", *([value] if isinstance(value, str) else value)]
    return args


def _files(out: Path) -> dict[str, bytes]:
    folder = layout.dataset_dir(out, PHANTOM_NAME)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _generated(out: Path) -> list[dict]:
    return [r for r in read_records(manifest_path(out, 0, 1)) if r["event"] == "generated"]


def test_output_layout_counts_and_crash_resume(cluster, data, tmp_path):
    main, b = cluster
    t = main.targets()
    reference = tmp_path / "reference"
    run = augment(
        _args(
            data,
            reference,
            [t["sampler"]],
            encoder=t["condition_encoder"],
            motion=t["motion_extractor"],
            filter=t["filter"],
        )
    )
    output = run.communicate(timeout=400)[0]
    assert run.returncode == 0, output
    assert "report:" in output and (reference / "report" / "index.html").is_file()

    # Layout and metadata, readable by the data library; counts = requested - rejected.
    dataset = layout.load_dataset(reference, PHANTOM_NAME, "train")
    records = read_records(manifest_path(reference, 0, 1))
    verdicts = next(r for r in records if r["event"] == "filtered")["verdicts"]
    assert len(verdicts) == 3 * PER_CLASS
    rejected = [v for v in verdicts if not v["keep"]]
    assert all(any(not r.startswith("note:") for r in v["reasons"]) for v in rejected)
    kept_by_class = Counter(item.cls for item in dataset)
    rejected_by_class = Counter(v["id"].split("-", 1)[0] for v in rejected)
    for cls in ("DCM", "HCM", "NOR"):
        assert kept_by_class[cls] == PER_CLASS - rejected_by_class[cls]
    test_clips = {i.file_name for i in layout.load_dataset(data, PHANTOM_NAME, "test")}
    for item in dataset:
        assert item.extra["synthetic"] is True and item.extra["source_clip"] not in test_clips
        assert layout.read_clip(item.path).shape == (8, 64, 64)

    # kill -9 the client once some items are done, then re-run: same files, same bytes.
    resumed = tmp_path / "resumed"
    args = _args(data, resumed, [b.targets()["sampler"]], filter=t["filter"])
    victim = augment(args)
    end = time.monotonic() + 300
    while len(_generated(resumed)) < 2 and victim.poll() is None and time.monotonic() < end:
        time.sleep(0.05)
    assert victim.poll() is None, "the job finished before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    done_before = len(_generated(resumed))
    assert 2 <= done_before < 3 * PER_CLASS
    again = augment(args)
    output = again.communicate(timeout=400)[0]
    assert again.returncode == 0, output
    assert _files(resumed) == _files(reference)
    ids = [r["id"] for r in _generated(resumed)]
    assert len(ids) == len(set(ids)) == 3 * PER_CLASS  # nothing generated twice
    leftovers = [p for p in resumed.rglob("*") if ".tmp-" in p.name]
    assert not leftovers


def test_two_shards_into_one_folder_equal_a_single_run(cluster, data, tmp_path):
    main, _ = cluster
    t = main.targets()
    # Every filter level on: the shard that completes the shared pool filters the whole job.
    # The pool-wide VAE-Seq band (with PER_CLASS clips per class, per-class bands would not
    # apply) is the one that depends on the whole pool.
    extra = {"filter": t["filter"], "sampler": [t["sampler"]], "sequential_band": "pool"}
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    # One after another: equal bytes need the same batch composition on the sampler (CFG rows
    # batched with other requests differ by ~1e-5, which can move a uint8 pixel by one level).
    outputs = []
    for args in (
        _args(data, single, **extra),
        _args(data, sharded, shard_index="0", shard_count="2", **extra),
        _args(data, sharded, shard_index="1", shard_count="2", **extra),
    ):
        run = augment(args)
        outputs.append(run.communicate(timeout=400)[0])
        assert run.returncode == 0, outputs[-1]
    assert "still to come" in outputs[1]  # shard 0 left the filtering to the last shard
    assert _files(sharded) == _files(single)
    shard_ids = [
        {r["id"] for r in read_records(manifest_path(sharded, i, 2)) if r["event"] == "generated"}
        for i in (0, 1)
    ]
    assert not shard_ids[0] & shard_ids[1]
    assert shard_ids[0] | shard_ids[1] == {r["id"] for r in _generated(single)}
    assert list((sharded / "report").glob("shard-*-of-2/index.html"))


def test_job_completes_when_one_of_two_samplers_is_killed(cluster, data, tmp_path):
    main, b = cluster
    t = main.targets()
    out = tmp_path / "failover"
    options = AugmentOptions(
        dataset_root=data,
        name=PHANTOM_NAME,
        out=out,
        per_class=PER_CLASS,
        steps=STEPS,
        guidance=3.0,
        base_seed=90,  # ids the replicas have not seen
        sampler=[b.targets()["sampler"], t["sampler"]],
        filter=t["filter"],
        concurrency=2,
        shard_index=0,
        shard_count=1,
        progress=False,
        report=False,
    )
    result: dict = {}
    job = threading.Thread(target=lambda: result.setdefault("job", run_options(options)))
    job.start()
    end = time.monotonic() + 300
    while not _generated(out) and job.is_alive() and time.monotonic() < end:
        time.sleep(0.05)
    b.services["sampler"].process.kill()
    killed_at = len(_generated(out))
    job.join(timeout=400)
    assert "job" in result, "the job did not finish"
    generated = _generated(out)
    assert len(generated) == 3 * PER_CLASS > killed_at
    after = [(r["id"], r["replica"], r["attempts"]) for r in generated[killed_at:]]
    assert {replica for _, replica, _ in after} == {t["sampler"]}, after
    assert len(layout.load_dataset(out, PHANTOM_NAME, "train")) == sum(
        v["keep"] for v in result["job"].verdicts.values()
    )
