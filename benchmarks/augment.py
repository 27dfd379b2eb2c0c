"""End-to-end batch augmentation: `genaug augment` on the demo's job vs in-process sampling.

The demo's job (`clients/demo.py`: the bundled Phantom dataset and generator, the five services
as local processes, sampling settings from the generator's `sampling.json`, concurrency 4,
filter on, report written) with fewer clips per class, run four ways:

- **conditions fetched**: a fresh output folder, as `make demo` runs the first time: priors
  and motion come from the condition encoder and the motion extractor, all of them before the
  first clip is sampled (`--conditions-schedule auto` on one machine: `clients.augment.schedule`);
- **conditions fetched, overlapped with sampling**: the same, each reference's conditions asked
  for as its clip goes out, as on a deployment whose encoder has cores of its own;
- **conditions cached**: a fresh output folder holding the first run's condition cache, as a
  re-run or a second job on the same references does;
- **2 sampler replicas**: the cached job spread over two sampler processes (same concurrency),
  on a cluster of its own whose replicas split the cores (`LocalCluster`), against the first
  two ways' cluster of one replica on every core, as `make demo` runs.

A short job (one clip per class, 2 steps) runs first, so that what a process's first job pays
once falls on none of these. Each job records where its time went (`clients.augment.spans`:
conditions, the sampler's own account of queueing, sampling and decoding, transport, filtering,
writing) in its `timings.json`. The reference is in-process sampling of the same clips (same
conditions, class ids, seeds, steps, guidance and solver) at the engine's batch size: the
sampler's `SequenceSampler.generate` per batch, then the generator's VAE decode of each clip,
in this process on `--threads` threads. The samplers run with their result cache off, so a job
re-run with the same request ids is computed again. Rounds of (cached job, in-process) are
interleaved; figures are medians over rounds. The section runs 4 of the demo's 10 clips per
class (12 clips: three full batches) to fit its 4 minutes. The same run measures every
service's RSS for `benchmarks.memory` (the second replica's on the two-replica cluster).

    python -m benchmarks.augment [--per-class 4] [--rounds 3] [--replica-rounds 1] [--no-overlapped]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

from benchmarks import memory
from benchmarks.common import bar_plot, machine_facts, median, write_results
from benchmarks.demo_job import BATCH, CONCURRENCY, MODEL_DIR, demo_job_options, start_cluster
from benchmarks.suite import BenchSettings, Row, Section, at_most
from clients.augment.job import plan_job, run_job
from clients.augment.manifest import state_dir
from clients.augment.options import AugmentOptions
from clients.augment.references import ReferenceConditions
from clients.augment.schedule import conditions_first
from clients.augment.spans import CATEGORIES
from clients.local_cluster import LocalCluster
from genaug.compute_lane import run_on_lane
from services.data import layout
from services.data.phantoms import PHANTOM_NAME, ensure_bundled_dataset

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = 1.25


class InProcess:
    """The sampler's own models in this process: request building as the service does it
    (`SamplerBackend.build`), `SequenceSampler.generate` per batch, the VAE decode per clip."""

    def __init__(self, device: str, threads: int):
        import torch

        from services.sampler.backend import SamplerBackend

        # The backend loads and runs on the compute lane, as in the service (one OpenMP team).
        torch.set_num_threads(threads)
        run_on_lane(torch.set_num_threads, threads)
        self.backend = SamplerBackend(MODEL_DIR, device)  # no codec target: decodes here
        self.backend.load()
        self.backend.warmup()

    def requests(self, options: AugmentOptions, conditions_out: Path) -> list:
        """The job's work items as the sampler would prepare them, with the conditions the
        job sent (read from `conditions_out`'s condition cache)."""
        from genaug.deadline import Deadline
        from genaug.v1 import sampler_pb2 as pb

        plan = plan_job(options)
        conditions = ReferenceConditions(
            options.dataset_root, plan.name, conditions_out, options.conditions, plan.texts
        )
        routed = []
        for item in plan.items:
            request = pb.GenerateRequest(
                request_id=item.id,
                class_id=item.class_id,
                conditions=conditions(item.source_clip),
                seed=item.seed,
                steps=options.steps,
                guidance_scale=options.guidance,
                solver=options.solver,
                decode=True,
                priority=pb.PRIORITY_BATCH,
            )
            routed.append(self.backend.build(request, Deadline.none()))
        return routed

    def run(self, routed: list, batch: int = BATCH) -> dict:
        """Sample and decode every request, `batch` at a time: seconds in all, sampling and
        decoding, and the mean seconds of one denoising step."""
        return run_on_lane(self._run, routed, batch)

    def _run(self, routed: list, batch: int) -> dict:
        import torch

        sampling = decoding = 0.0
        steps = 0
        cpu_began = time.process_time()  # every thread of this process: what it really used
        with torch.inference_mode():
            for start in range(0, len(routed), batch):
                group = routed[start : start + batch]
                generator = group[0].generator
                began = time.perf_counter()
                latents = generator.sampler.generate([r.request for r in group])
                sampling += time.perf_counter() - began
                steps += max(r.request.num_inference_steps for r in group)
                began = time.perf_counter()
                for z in latents:
                    clip = z.detach().float().cpu().transpose(0, 1).contiguous().numpy()
                    generator.local_codec.decode(clip)
                decoding += time.perf_counter() - began
        return {
            "seconds": sampling + decoding,
            "cpu_seconds": time.process_time() - cpu_began,
            "sampling_seconds": sampling,
            "decoding_seconds": decoding,
            "steps": steps,
            "mean_step_seconds": sampling / max(steps, 1),
            "mean_batch": len(routed) * routed[0].request.num_inference_steps / max(steps, 1),
        }


def engine_counters(cluster: LocalCluster) -> dict[str, float]:
    """The samplers' counters summed over replicas: steps, their seconds, batch rows, and the
    requests that named their conditions by a digest the sampler held."""
    from prometheus_client.parser import text_string_to_metric_families

    totals = dict.fromkeys(("steps", "step_seconds", "batched_requests", "by_digest"), 0.0)
    wanted = {
        ("genaug_sampler_step_seconds_count", None): "steps",
        ("genaug_sampler_step_seconds_sum", None): "step_seconds",
        ("genaug_sampler_step_batch_size_sum", None): "batched_requests",
        ("genaug_sampler_conditions_cache_total", "hit"): "by_digest",
    }
    for service in cluster.services.values():
        if service.module != "sampler":
            continue
        url = f"http://127.0.0.1:{service.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = wanted.get((sample.name, sample.labels.get("result")))
                if key is not None:
                    totals[key] += sample.value
    return totals


def engine_since(cluster: LocalCluster, before: dict[str, float]) -> dict:
    """The samplers' denoising steps since `before` (an `engine_counters` reading): how many,
    their seconds, how many requests a step advanced on average, and the requests that named
    their conditions by digest."""
    after = engine_counters(cluster)
    steps = after["steps"] - before["steps"]
    return {
        "steps": int(steps),
        "step_seconds": after["step_seconds"] - before["step_seconds"],
        "mean_batch": (after["batched_requests"] - before["batched_requests"]) / max(steps, 1),
        "by_digest": int(after["by_digest"] - before["by_digest"]),
    }


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds each process has used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for name, pid in pids.items():
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        seconds[name] = (int(fields[11]) + int(fields[12])) / tick
    return seconds


def _job(
    options: AugmentOptions, cluster: LocalCluster, conditions_from: Path | None = None
) -> dict:
    """Run one job into a fresh folder (seeded with a condition cache): its timings, with
    the samplers' denoising steps during it (how many, how long, how full) and the CPU
    seconds every process used meanwhile (the job's own client: "client")."""
    if conditions_from is not None:
        shutil.copytree(
            state_dir(conditions_from) / "conditions", state_dir(options.out) / "conditions"
        )
    pids = {**cluster.pids(), "client": os.getpid()}
    steps_before, cpu_before = engine_counters(cluster), cpu_seconds(pids)
    timings = run_job(options).timings
    engine, cpu_after = engine_since(cluster, steps_before), cpu_seconds(pids)
    timings["engine"] = {
        "steps": engine["steps"],
        "mean_step_seconds": engine["step_seconds"] / max(engine["steps"], 1),
        "mean_batch": engine["mean_batch"],
    }
    timings["cpu_seconds"] = {n: round(cpu_after[n] - cpu_before[n], 2) for n in pids}
    return timings


def run(
    per_class: int,
    rounds: int,
    out_dir: Path,
    device: str = "cpu",
    threads: int = 2,
    steps: int | None = None,
    replica_rounds: int = 1,
    overlapped: bool = True,
) -> dict:
    """On one sampler replica (the demo's cluster): the fetched job (its conditions first, as
    `make demo` schedules them on one machine) and, with `overlapped`, the same job with them
    overlapped with sampling, then `rounds` rounds of (cached job, in-process); then, on a
    cluster of two replicas that split the cores, `replica_rounds` cached jobs. The clusters
    are separate because a replica's threads are set when it starts: a lone sampler on a
    two-replica cluster has half the cores' threads."""
    began = time.perf_counter()
    machine = machine_facts()
    with tempfile.TemporaryDirectory(prefix="bench-augment-") as tmp:
        work = Path(tmp)
        data = ensure_bundled_dataset(work / "data")
        n_classes = len(layout.load_dataset(data, PHANTOM_NAME, "train").classes)

        def options(name: str, cluster: LocalCluster) -> AugmentOptions:
            samplers = cluster.sampler_targets()
            return demo_job_options(data, work / name, cluster, samplers, per_class, steps)

        with start_cluster(work / "logs-1", 1, device, n_classes) as cluster:
            started = time.perf_counter() - began
            monitor = memory.RssMonitor(cluster.pids()).start_at_rest()
            monitor.phase("load")
            # A first job in this process pays once for what later jobs find loaded (the
            # report's and the filter client's imports, about 2 s here): a short one first,
            # so that it falls on neither schedule of the fetched job.
            run_job(replace(options("warm-up", cluster), per_class=1, steps=2))
            fetched_options = options("fetched", cluster)
            schedule = "first" if conditions_first(fetched_options) else "overlapped"
            fetched = _job(fetched_options, cluster)
            fetched_overlapped = None
            if overlapped:
                o = replace(
                    options("fetched-overlapped", cluster), conditions_schedule="overlapped"
                )
                fetched_overlapped = _job(o, cluster)
            monitor.phase("in-process setup")
            local = InProcess(device, threads)
            routed = local.requests(fetched_options, work / "fetched")
            measured = []
            for r in range(rounds):  # interleaved, so the machine's noise hits all alike
                one_round = {}
                monitor.phase("load")
                cached = _job(options(f"cached-{r}", cluster), cluster, work / "fetched")
                one_round["cached"] = cached
                monitor.phase("in-process")
                one_round["in_process"] = local.run(routed)
                measured.append(one_round)
            monitor.phase("after")
            rss = monitor.stop()
        replicas = []
        if replica_rounds:
            with start_cluster(work / "logs-2", 2, device, n_classes) as cluster:
                monitor = memory.RssMonitor(cluster.pids()).start_at_rest()
                for r in range(replica_rounds):
                    monitor.phase("load")
                    name = f"two-replicas-{r}"
                    replicas.append(_job(options(name, cluster), cluster, work / "fetched"))
                monitor.phase("after")
                two = monitor.stop()["processes"]
            rss["processes"] |= {k: v for k, v in two.items() if k not in rss["processes"]}
    settings = {
        "per_class": per_class,
        "clips": len(routed),
        "classes": n_classes,
        "steps": routed[0].request.num_inference_steps,
        "concurrency": CONCURRENCY,
        "in_process_batch": BATCH,
        "in_process_threads": threads,
        "rounds": rounds,
        "replica_rounds": replica_rounds,
        "conditions_schedule": schedule,  # of the fetched job
        "device": device,
    }
    results = {
        "machine": machine,
        "machine_after": machine_facts(),
        "settings": settings,
        "cluster_start_seconds": round(started, 1),
        "conditions_fetched": fetched,
        "conditions_fetched_overlapped": fetched_overlapped,
        "rounds": measured,
        "two_replicas": replicas,
        **summarise(fetched, measured, replicas, len(routed), fetched_overlapped),
        "memory": rss
        | {"load": f"the augment section's jobs ({len(routed)} clips, {settings['steps']} steps)"},
        "seconds": round(time.perf_counter() - began, 1),
    }
    memory.share(results["memory"])
    write_results(out_dir, "augment", results)
    bar_plot(out_dir, "augment", results["share_of_wall"], "share of the job's wall time")
    return results


def summarise(
    fetched: dict,
    rounds: list[dict],
    replicas: list[dict],
    clips: int,
    overlapped: dict | None = None,
) -> dict:
    """Ratios, clips per minute, shares of wall time, and the profile of the cached job
    against in-process sampling (medians over rounds); two replicas against one as the ratio
    of their median walls (`replicas` empty: not measured); the fetched job with its
    conditions overlapped with sampling (`overlapped`, None: not measured)."""
    in_process = median([r["in_process"]["seconds"] for r in rounds])
    cached = median([r["cached"]["wall_seconds"] for r in rounds])
    two = median([job["wall_seconds"] for job in replicas]) if replicas else None
    step_ratio = median(
        [r["cached"]["engine"]["mean_step_seconds"] / r["in_process"]["mean_step_seconds"]
         for r in rounds]
    )  # fmt: skip
    cached_jobs = [r["cached"] for r in rounds]
    return {
        "in_process_seconds": in_process,
        "ratios": {
            "fetched_over_in_process": fetched["wall_seconds"] / in_process,
            "fetched_overlapped_over_in_process": overlapped["wall_seconds"] / in_process
            if overlapped
            else None,
            "cached_over_in_process": cached / in_process,
            "two_over_one_replica_throughput": cached / two if two else None,
        },
        "clips_per_minute": {
            "conditions_fetched": 60 * clips / fetched["wall_seconds"],
            "conditions_cached": 60 * clips / cached,
            "two_replicas": 60 * clips / two if two else None,
            "in_process": 60 * clips / in_process,
        },
        "share_of_wall": {
            "conditions fetched": fetched["share_of_wall"],
            "conditions cached": _median_shares(cached_jobs),
            "2 replicas": _median_shares(replicas) if replicas else {},
        },
        "fetched_floor": fetched_floor(fetched, rounds),
        # Why the cached job takes longer than in-process sampling of the same clips.
        "profile": {
            "step_seconds_over_in_process": step_ratio,
            "mean_batch": median([j["engine"]["mean_batch"] for j in cached_jobs]),
            "in_process_mean_batch": rounds[0]["in_process"]["mean_batch"],
            "steps_over_in_process": median([j["engine"]["steps"] for j in cached_jobs])
            / rounds[0]["in_process"]["steps"],
            "seconds_outside_generation": median(
                [j["wall_seconds"] - j["phases"].get("generation", 0.0) for j in cached_jobs]
            ),
            "cpu_seconds_of_other_processes": median(
                [sum(v for k, v in j["cpu_seconds"].items() if k != "sampler") for j in cached_jobs]
            ),  # fmt: skip
        },
    }


def fetched_floor(fetched: dict, rounds: list[dict], cores: int | None = None) -> dict:
    """The least the fetched job's wall can be against in-process sampling on these cores.

    The job must do the in-process run's work (its CPU seconds) and also compute the
    conditions (the encoder's and motion extractor's CPU seconds during the job); no schedule
    does that in less wall than their sum over the cores, nor in less than the in-process
    wall. Above the target, the fetched row cannot meet it here, however well it overlaps."""
    cores = cores or len(os.sched_getaffinity(0))
    wall = median([r["in_process"]["seconds"] for r in rounds])
    sampling_cpu = median([r["in_process"]["cpu_seconds"] for r in rounds])
    used = fetched["cpu_seconds"]
    conditions_cpu = used.get("condition_encoder", 0.0) + used.get("motion_extractor", 0.0)
    return {
        "cores": cores,
        "in_process_seconds": wall,
        "in_process_cpu_seconds": sampling_cpu,
        "conditions_cpu_seconds": conditions_cpu,
        "ratio": max(wall, (sampling_cpu + conditions_cpu) / cores) / wall,
    }


def _median_shares(timings: list[dict]) -> dict[str, float]:
    return {
        c: round(statistics.median(t["share_of_wall"].get(c, 0.0) for t in timings), 4)
        for c in CATEGORIES
    }


def _shares_note(shares: dict[str, float]) -> str:
    top = sorted(shares.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name} {100 * share:.0f}%" for name, share in top if share >= 0.005)


def _section(settings: BenchSettings) -> list[Row]:
    # 4 per class: 12 clips, three full batches; the demo's 10 per class would take the
    # section past its 4 minutes.
    per_class, rounds, steps = (1, 1, 2) if settings.quick else (4, 3, None)
    results = run(
        per_class,
        rounds,
        Path(settings.out_dir),
        settings.device,
        settings.threads,
        steps,
        overlapped=not settings.quick,
    )
    s, ratios, cpm = results["settings"], results["ratios"], results["clips_per_minute"]
    shares, profile = results["share_of_wall"], results["profile"]
    job = f"{s['clips']} of the demo's 30 clips, {s['steps']} steps, concurrency {s['concurrency']}"
    fetched, cached = ratios["fetched_over_in_process"], ratios["cached_over_in_process"]
    encoder_cpu = results["conditions_fetched"]["cpu_seconds"].get("condition_encoder", 0.0)
    overlapped = results["conditions_fetched_overlapped"]
    overlapped_cpu = (
        f"{overlapped['cpu_seconds'].get('condition_encoder', 0.0):.0f}" if overlapped else "-"
    )
    floor = results["fetched_floor"]
    why_cached = (
        f"per step {profile['step_seconds_over_in_process']:.2f}x in-process, "
        f"{profile['steps_over_in_process']:.2f}x the steps (mean batch "
        f"{profile['mean_batch']:.2f} of {BATCH}), {profile['seconds_outside_generation']:.1f}s "
        f"outside generation; {_shares_note(shares['conditions cached'])}"
    )
    rows = [
        Row(
            "augment",
            "demo job clips/min (conditions fetched)",
            cpm["conditions_fetched"],
            "clips/min",
            note=f"{job}; in-process {cpm['in_process']:.1f} clips/min at batch {BATCH}",
        ),
        Row(
            "augment",
            "job / in-process wall (conditions fetched)",
            fetched,
            "x",
            f"<= {TARGET}",
            at_most(fetched, TARGET),
            f"conditions {s['conditions_schedule']}; encoder {encoder_cpu:.0f} CPU-s for the "
            "priors; " + _shares_note(shares["conditions fetched"]),
        ),
        Row(
            "augment",
            "job / in-process wall (conditions fetched, overlapped with sampling)",
            ratios["fetched_overlapped_over_in_process"],
            "x",
            note="the same job, each reference's conditions asked for as its clip goes out "
            f"(--conditions-schedule overlapped); encoder {overlapped_cpu} CPU-s",
        ),
        Row(
            "augment",
            "floor of job / in-process wall on these cores (conditions fetched)",
            floor["ratio"],
            "x",
            note=f"(in-process {floor['in_process_cpu_seconds']:.0f} CPU-s + conditions "
            f"{floor['conditions_cpu_seconds']:.0f} CPU-s) / {floor['cores']} cores vs "
            f"in-process {floor['in_process_seconds']:.1f}s wall: no job that computes its "
            "conditions runs faster here",
        ),
        Row(
            "augment",
            "job / in-process wall (conditions cached)",
            cached,
            "x",
            f"<= {TARGET}",
            at_most(cached, TARGET),
            why_cached,
        ),
        Row(
            "augment",
            "2 / 1 sampler replicas clips/min",
            ratios["two_over_one_replica_throughput"],
            "x",
            note=f"conditions cached, same concurrency, the replicas splitting the cores; "
            f"{_shares_note(shares['2 replicas'])}",
        ),
    ]
    for category in CATEGORIES:
        value = 100 * shares["conditions fetched"].get(category, 0.0)
        rows.append(Row("augment", f"share of wall (fetched): {category}", value, "%"))
    return rows


SECTION = Section("augment", "End-to-end batch augmentation vs in-process sampling", _section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, help="default: the generator's sampling.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--replica-rounds", type=int, default=1, help="two-replica jobs (0: none)")
    parser.add_argument(
        "--no-overlapped",
        action="store_true",
        help="skip the fetched job with its conditions overlapped with sampling",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = run(
        args.per_class,
        args.rounds,
        args.out,
        args.device,
        args.threads,
        args.steps,
        args.replica_rounds,
        overlapped=not args.no_overlapped,
    )
    print(f"machine: {results['machine']}")
    print(f"settings: {results['settings']}; {results['seconds']}s")
    for name, value in results["clips_per_minute"].items():
        print(f"clips/min {name:<20} " + ("not run" if value is None else f"{value:.1f}"))
    for name, value in results["ratios"].items():
        print(f"{name:<34} " + ("not run" if value is None else f"{value:.2f}x"))
    print(f"profile of the cached job: {results['profile']}")
    for name, shares in results["share_of_wall"].items():
        print(f"share of wall, {name}: {_shares_note(shares)}")
    print(f"wrote {args.out / 'augment.json'} and {args.out / 'augment.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
