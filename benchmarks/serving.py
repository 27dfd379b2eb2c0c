"""Serving overhead: the same generation requests through the sampler service vs in-process.

The same requests both ways: conditions as tensors (one reference clip per class,
`benchmarks.reference_requests`), the same class ids, seeds, steps, guidance and solver (the
bundled generator's `sampling.json`), decoded to frames; the same batch composition: groups of
`BATCH` requests, all of a group in flight together, one group after another.

- **service**: a sampler process on loopback with its codec in-process (no `--codec-target`)
  and its result cache off; the group's requests are `Generate` streams from this process's
  `SamplerClient`, the decoded frames coming back over gRPC. As in an augmentation job, where
  each reference clip serves several clips, the client sends a reference's conditions in full
  once (here in the warm-up group) and then names them by the digest the sampler kept them
  under (`GenerateRequest.conditions_digest`); each round counts the requests that did.
- **in-process**: the sampler's own code in this process (`SamplerBackend.build`,
  `SequenceSampler.generate` per group, the VAE decode per clip), on `--threads` threads like
  the service.

Rounds of (service, in-process) are interleaved; the ratio is the median over rounds of the
wall time of all groups. The profile says where the difference went, from the service's own
step counters (`genaug_sampler_step_seconds`, `genaug_sampler_step_batch_size`) read before
and after each round: seconds per denoising step and steps taken against in-process (a group
whose requests arrive apart starts with a partial batch and ends with one), and the seconds
outside steps (decoding on both sides; for the service also each request's transport,
parsing and preparing, and each result's encoding and transport).

    python -m benchmarks.serving [--groups 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.augment import InProcess, engine_counters, engine_since
from benchmarks.common import bar_plot, machine_facts, median, write_results
from benchmarks.demo_job import BATCH, MODEL_DIR
from benchmarks.reference_requests import Reference, class_references, generate_request
from benchmarks.suite import BenchSettings, Row, Section, at_most
from clients.augment.sampling_defaults import sampling_defaults
from clients.local_cluster import LocalCluster
from clients.rpc.channel import ChannelSettings, open_channel
from clients.rpc.sampler import SamplerClient
from genaug.deadline import Deadline
from genaug.v1 import sampler_pb2 as pb

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 1.10


def requests(references: list[Reference], classes: list[str], clips: int, steps: int | None):
    defaults = sampling_defaults(MODEL_DIR)
    made = []
    for n in range(clips):
        reference = references[n % len(references)]
        made.append(
            generate_request(
                f"serving-{n}",
                classes.index(reference.class_name),
                reference,
                seed=1000 + n,
                steps=steps or defaults.steps,
                guidance=defaults.guidance,
                solver=defaults.solver,
                decode=True,
            )
        )
    return made


def through_service(client: SamplerClient, batch: list[pb.GenerateRequest], tag: str) -> float:
    """Seconds for every group of `BATCH` requests, each group in flight together."""

    def one(request: pb.GenerateRequest):
        clip = client.generate(
            request.class_id,
            request.conditions,
            seed=request.seed,
            steps=request.steps,
            guidance_scale=request.guidance_scale,
            solver=request.solver,
            decode=True,
            batch=True,
            request_id=f"{request.request_id}-{tag}",
            timeout=600,
        )
        assert clip.frames is not None
        return clip

    began = time.perf_counter()
    with ThreadPoolExecutor(BATCH) as pool:
        for start in range(0, len(batch), BATCH):
            list(pool.map(one, batch[start : start + BATCH]))
    return time.perf_counter() - began


def run(
    out_dir: Path,
    device: str = "cpu",
    threads: int = 2,
    groups: int = 3,
    rounds: int = 2,
    steps: int | None = None,
) -> dict:
    began = time.perf_counter()
    machine = machine_facts()
    on_device = ["--device", "cuda"] if device == "cuda" else []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        local = InProcess(device, threads)
        classes = local.backend.generator("").classes
        made = requests(class_references(work, classes), classes, groups * BATCH, steps)
        routed = [local.backend.build(r, Deadline.none()) for r in made]
        extra = {"sampler": [*on_device, "--result-cache-entries", "0"]}
        with LocalCluster(["sampler"], None, work / "logs", extra_args=extra) as cluster:
            channel = open_channel(cluster.targets()["sampler"], ChannelSettings())
            client = SamplerClient(channel)
            # A whole group, as the in-process side warmed: the service's first batch-4 steps
            # (new shapes, allocator growth) would otherwise land in round 1 only.
            through_service(client, made[:BATCH], "warm")
            measured = []
            for r in range(rounds):
                before = engine_counters(cluster)
                service = through_service(client, made, f"round-{r}")
                engine = engine_since(cluster, before)
                local_run = local.run(routed, BATCH)
                measured.append(_round(service, engine, local_run))
            channel.close()
    ratio = median([m["service_s"] / m["in_process_s"] for m in measured])
    results = {
        "machine": machine,
        "machine_after": machine_facts(),
        "settings": {
            "device": device,
            "threads": threads,
            "clips": len(made),
            "batch": BATCH,
            "steps": made[0].steps,
            "rounds": rounds,
        },
        "rounds": measured,
        "service_over_in_process": ratio,
        "profile": _profile(measured),
        "seconds": round(time.perf_counter() - began, 1),
    }
    write_results(out_dir, "serving", results)
    bar_plot(
        out_dir,
        "serving",
        {
            f"round {i + 1}": {"service": m["service_s"], "in-process": m["in_process_s"]}
            for i, m in enumerate(measured)
        },  # fmt: skip
        "seconds for the same clips",
    )
    return results


def _round(service_s: float, engine: dict, local: dict) -> dict:
    """One round's wall times, with where each side's time went: denoising steps (the
    service's from its engine's step counters) and the rest (decoding, and for the service
    also preparing, scheduling and transport)."""
    return {
        "service_s": service_s,
        "in_process_s": local["seconds"],
        "service_steps": engine["steps"],
        "in_process_steps": local["steps"],
        "service_step_s": engine["step_seconds"],
        "in_process_step_s": local["sampling_seconds"],
        "service_mean_batch": engine["mean_batch"],
        "service_conditions_by_digest": engine["by_digest"],
        "in_process_mean_batch": local["mean_batch"],
    }


def _profile(rounds: list[dict]) -> dict:
    """Why the service takes longer, as medians over rounds: per-step time, step count and
    the seconds outside steps, each against in-process."""

    def per_step(m: dict, side: str) -> float:
        return m[f"{side}_step_s"] / max(m[f"{side}_steps"], 1)

    return {
        "step_seconds_over_in_process": median(
            [per_step(m, "service") / per_step(m, "in_process") for m in rounds]
        ),
        "steps_over_in_process": median(
            [m["service_steps"] / max(m["in_process_steps"], 1) for m in rounds]
        ),
        "service_mean_batch": median([m["service_mean_batch"] for m in rounds]),
        "service_outside_steps_s": median([m["service_s"] - m["service_step_s"] for m in rounds]),
        "in_process_outside_steps_s": median(
            [m["in_process_s"] - m["in_process_step_s"] for m in rounds]
        ),
    }


def _section(settings: BenchSettings) -> list[Row]:
    groups, rounds, steps = (1, 1, 2) if settings.quick else (3, 2, None)
    results = run(Path(settings.out_dir), settings.device, settings.threads, groups, rounds, steps)
    s, ratio = results["settings"], results["service_over_in_process"]
    why = results["profile"]
    service = median([m["service_s"] for m in results["rounds"]])
    local = median([m["in_process_s"] for m in results["rounds"]])
    by_digest = min(m["service_conditions_by_digest"] for m in results["rounds"])
    return [
        Row(
            "serving",
            "sampler service / in-process, same requests",
            ratio,
            "x",
            f"<= {TARGET}",
            at_most(ratio, TARGET),
            f"{s['clips']} clips decoded, {s['steps']} steps, groups of {s['batch']}: "
            f"{service:.1f}s vs {local:.1f}s; per step {why['step_seconds_over_in_process']:.2f}x "
            f"in-process, {why['steps_over_in_process']:.2f}x the steps (mean batch "
            f"{why['service_mean_batch']:.2f}), {by_digest} of {s['clips']} requests naming "
            f"their conditions by digest, outside steps "
            f"{why['service_outside_steps_s']:.1f}s vs {why['in_process_outside_steps_s']:.1f}s",
        )
    ]


SECTION = Section("serving", "Serving overhead: sampler service vs in-process", _section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, help="default: the generator's sampling.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = run(args.out, args.device, args.threads, args.groups, args.rounds, args.steps)
    print(f"machine: {results['machine']}; {results['seconds']}s")
    for m in results["rounds"]:
        print(
            f"service {m['service_s']:.2f}s ({m['service_steps']} steps, "
            f"{m['service_step_s']:.2f}s in them), in-process {m['in_process_s']:.2f}s "
            f"({m['in_process_steps']} steps, {m['in_process_step_s']:.2f}s)"
        )
    print("profile:", {k: round(v, 3) for k, v in results["profile"].items()})
    print(f"service / in-process: {results['service_over_in_process']:.3f}x")
    print(f"wrote {args.out / 'serving.json'} and {args.out / 'serving.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
