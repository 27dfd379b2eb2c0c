"""The fixed mmap threshold (`--mmap-threshold-mib`): its CPU cost in sampling and its RSS gain.

Two worker processes load the bundled sequence LDM, one with glibc's dynamic threshold and one
with the services' fixed threshold. The parent interleaves rounds (the same seeds and batch in
both), so machine noise hits both alike. A round is one batch of in-process DDIM sampling
(timed in the worker), then request-like churn: 8 threads each parse and free 4 MiB buffers, as
a served sampler does with every request's prior. The worker's RSS is read after each round.

    python -m benchmarks.heap [--rounds 6] [--batch 4] [--steps 4] [--threshold-mib 4]

Writes `benchmarks/results/heap.json` and `heap.png` (median seconds per batch and final RSS).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.common import bar_plot, machine_facts, median, write_results

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def worker(threshold_bytes: int, batch: int, steps: int) -> None:
    """Answer one line per round on stdout: {"seconds": ..., "rss_mib": ...}."""
    from services.common.memory import resident_kib, set_mmap_threshold

    set_mmap_threshold(threshold_bytes)
    import threading
    import time

    import numpy as np
    import torch

    from services.common.config import DEFAULT_MODEL_DIR
    from services.models.generators import generator_dir
    from services.models.ldm import SamplingRequest, SequenceSampler, SequenceUNet

    torch.set_num_threads(1)
    unet = SequenceUNet.from_pretrained(generator_dir(DEFAULT_MODEL_DIR) / "ldm").eval()
    side = unet.config.sample_size
    width = unet.config.text_embed_dim or unet.config.cross_attention_dim
    empty = torch.zeros(7, width)
    sampler = SequenceSampler(unet, empty_text_embedding=empty)

    def request(seed: int) -> SamplingRequest:
        gen = torch.Generator().manual_seed(seed)
        return SamplingRequest(
            num_frames=8,
            class_label=seed % 3,
            seed=seed,
            num_inference_steps=steps,
            guidance_scale=3.0,
            image_prior=torch.randn(256, 64, 64, generator=gen),
            motion_field=torch.randn(7, 2, 64, 64, generator=gen),
            latent_size=(side, side),
        )

    def churn() -> None:
        for _ in range(16):
            raw = np.random.default_rng(0).bytes(4 << 20)  # a request's prior, as bytes
            np.frombuffer(raw, np.float32).copy()

    with torch.inference_mode():
        sampler.generate([request(0)])  # warm-up
        for line in sys.stdin:
            seed = int(line)
            began = time.perf_counter()
            sampler.generate([request(seed + i) for i in range(batch)])
            seconds = time.perf_counter() - began
            threads = [threading.Thread(target=churn) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rss = resident_kib() // 1024
            print(json.dumps({"seconds": seconds, "rss_mib": rss}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threshold-mib", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    variants = {
        "dynamic (glibc default)": 0,
        f"fixed {args.threshold_mib:g} MiB": round(args.threshold_mib * 2**20),
    }
    workers = {
        name: subprocess.Popen(
            [sys.executable, "-m", "benchmarks.heap", "--worker", str(threshold)]
            + ["--batch", str(args.batch), "--steps", str(args.steps)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name, threshold in variants.items()
    }
    rounds: dict[str, list[dict]] = {name: [] for name in workers}
    try:
        for index in range(args.rounds):
            for name, proc in workers.items():  # interleaved: one round of each in turn
                proc.stdin.write(f"{1000 + index * args.batch}\n")
                proc.stdin.flush()
                rounds[name].append(json.loads(proc.stdout.readline()))
    finally:
        for proc in workers.values():
            proc.stdin.close()
            proc.wait(timeout=60)
    summary = {
        name: {
            "median_seconds_per_batch": round(median([r["seconds"] for r in rs]), 3),
            "rss_mib_per_round": [r["rss_mib"] for r in rs],
        }
        for name, rs in rounds.items()
    }
    dynamic, fixed = (summary[name]["median_seconds_per_batch"] for name in variants)
    results = {
        "machine": machine_facts(),
        "settings": vars(args) | {"out": str(args.out)},
        "variants": summary,
        "fixed_over_dynamic_seconds": round(fixed / dynamic, 3),
    }
    write_results(args.out, "heap", results)
    bar_plot(
        args.out,
        "heap",
        {
            "seconds per batch": {n: s["median_seconds_per_batch"] for n, s in summary.items()},
            "final RSS (GiB)": {n: s["rss_mib_per_round"][-1] / 1024 for n, s in summary.items()},
        },
        "median s / GiB",
    )
    for name, s in summary.items():
        seconds, rss = s["median_seconds_per_batch"], s["rss_mib_per_round"]
        print(f"{name:<24} {seconds:>7.3f} s/batch  RSS MiB {rss}")
    print(f"fixed / dynamic seconds: {results['fixed_over_dynamic_seconds']}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_args = argparse.ArgumentParser()
        worker_args.add_argument("threshold", type=int)
        worker_args.add_argument("--batch", type=int)
        worker_args.add_argument("--steps", type=int)
        parsed = worker_args.parse_args(sys.argv[2:])
        worker(parsed.threshold, parsed.batch, parsed.steps)
    else:
        sys.exit(main())
