"""What batching buys one denoising step on this machine: per-clip cost at batch 1, 2, 4, 8.

The bundled generator's UNet with its sampling defaults and real conditions (one train clip
per class), both CFG rows in each forward as the engine runs them; batch sizes interleaved over
`--rounds`, medians. The ceiling of the batching section's continuous / one-at-a-time ratio:
the engine cannot gain more than a full batch's step does over a batch of one.

    python -m benchmarks.step_batching [--rounds 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.demo_job import MODEL_DIR
from benchmarks.reference_requests import class_references, generate_request
from clients.augment.sampling_defaults import sampling_defaults
from genaug.compute_lane import run_on_lane
from genaug.deadline import Deadline

BATCHES = (1, 2, 4, 8)


def measure(rounds: int, threads: int, device: str = "cpu") -> dict[int, float]:
    """Median seconds of one step at each batch size (call it on the compute lane, as the
    sampler steps)."""
    import torch

    from services.sampler.backend import SamplerBackend

    torch.set_num_threads(threads)
    backend = SamplerBackend(MODEL_DIR, device)
    backend.load()
    generator = backend.generator("")
    defaults = sampling_defaults(MODEL_DIR)
    with tempfile.TemporaryDirectory(prefix="bench-step-batching-") as tmp:
        references = class_references(Path(tmp), generator.classes)

    def states(size: int) -> list:
        made = []
        for i in range(size):
            ref = references[i % len(references)]
            message = generate_request(
                f"step-{size}-{i}", generator.classes.index(ref.class_name), ref, i,
                10 * rounds + 10, defaults.guidance, defaults.solver,
            )  # fmt: skip
            made.append(generator.sampler.prepare(backend.build(message, Deadline.none()).request))
        return made

    sampler = generator.sampler
    batches = {size: states(size) for size in BATCHES}
    for batch in batches.values():
        sampler.step(batch)  # warm-up
    times: dict[int, list[float]] = {size: [] for size in BATCHES}
    for _ in range(rounds):
        for size, batch in batches.items():
            began = time.perf_counter()
            sampler.step(batch)
            if device == "cuda":
                torch.cuda.synchronize()
            times[size].append(time.perf_counter() - began)
    return {size: statistics.median(t) for size, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    steps = run_on_lane(measure, args.rounds, args.threads)
    for size, seconds in steps.items():
        per_clip = seconds / size
        print(
            f"batch {size}: {seconds * 1e3:.1f} ms per step, {per_clip * 1e3:.1f} ms per "
            f"clip-step, {steps[1] / per_clip:.2f}x batch 1's throughput"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
