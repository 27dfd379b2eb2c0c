"""Compute efficiency: the UNet's achieved FLOP/s during sampling against the machine's peak.

The physical limit is measured in the same run: the best of several large fp32 (and bf16)
matrix products on `--threads` threads. The UNet's work per denoising step is counted by
PyTorch's `FlopCounterMode` on one step of the bundled generator at the engine's batch
(`BATCH` requests with guidance: 2 rows each, real conditions from
`benchmarks.reference_requests`); its time per step is the median over steps of the same
batch, run the way the sampler runs it. Variants, interleaved step by step:

- **fp32**: what the sampler runs on a CPU;
- **channels-last**: the UNet's 4-D weights (its 2-D convolutions) in channels-last layout;
- **bf16**: weights and activations in bfloat16 (latents and scheduler math stay fp32), where
  the CPU has native bf16 dot products (`avx512_bf16`/AMX); the row also reports the latent
  difference to fp32 after the measured steps;
- **torch.compile** (`--compile`): inductor on the fp32 UNet (its compile time reported).

    python -m benchmarks.compute [--steps 6] [--compile]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import bar_plot, machine_facts, write_results
from benchmarks.demo_job import BATCH, MODEL_DIR
from benchmarks.reference_requests import class_references, generate_request
from benchmarks.suite import BenchSettings, Row, Section
from clients.augment.sampling_defaults import sampling_defaults
from genaug.compute_lane import run_on_lane
from genaug.deadline import Deadline

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def matmul_peak(dtype, device: str = "cpu", n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` (n x n) @ (n x n) products."""
    import torch

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - began)
    return 2 * n**3 / best


class Variant:
    """A sampler of the bundled generator set up one way, with its own batch of states."""

    def __init__(self, name: str, sampler, routed: list, steps: int):
        self.name, self.sampler, self.steps = name, sampler, steps
        self.routed = routed
        self.seconds: list[float] = []
        self.states = None

    def reset(self) -> None:
        self.states = [self.sampler.prepare(r.request) for r in self.routed]

    def step(self) -> float:
        import torch

        with torch.inference_mode():
            began = time.perf_counter()
            self.sampler.step(self.states)
            return time.perf_counter() - began

    def latents(self):
        return [s.latents.float() for s in self.states]


def count_flops(sampler, routed: list) -> int:
    """FLOPs of one denoising step of `routed` (the UNet forward and the scheduler)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    states = [sampler.prepare(r.request) for r in routed]
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        sampler.step(states)
    return counter.get_total_flops()


def run(
    out_dir: Path,
    device: str = "cpu",
    threads: int = 2,
    steps: int = 6,
    compile_unet: bool = False,
) -> dict:
    """Measured on the compute lane, where the sampler service steps (one OpenMP team)."""
    return run_on_lane(_run, out_dir, device, threads, steps, compile_unet)


def _run(out_dir: Path, device: str, threads: int, steps: int, compile_unet: bool) -> dict:
    import torch

    from services.models.ldm.pipeline import SequenceSampler
    from services.sampler.backend import SamplerBackend

    began = time.perf_counter()
    machine = machine_facts()
    torch.set_num_threads(threads)  # on the lane: _run runs there
    backend = SamplerBackend(MODEL_DIR, device)
    backend.load()
    generator = backend.generator("")
    defaults = sampling_defaults(MODEL_DIR)
    with tempfile.TemporaryDirectory(prefix="bench-compute-") as tmp:
        references = class_references(Path(tmp), generator.classes)
    made = [
        generate_request(
            f"compute-{n}",
            generator.classes.index(references[n % len(references)].class_name),
            references[n % len(references)],
            seed=n,
            steps=defaults.steps,
            guidance=defaults.guidance,
            solver=defaults.solver,
        )
        for n in range(BATCH)
    ]
    routed = [backend.build(r, Deadline.none(), generator) for r in made]
    fp32 = generator.sampler
    flops = count_flops(fp32, routed)
    empty_text = fp32.empty_text
    variants = [Variant("fp32", fp32, routed, steps)]
    unet = fp32.unet
    channels_last = copy.deepcopy(unet).to(memory_format=torch.channels_last)
    variants.append(
        Variant("channels-last", SequenceSampler(channels_last, empty_text, device), routed, steps)
    )
    bf16 = cpu_has_bf16() or device == "cuda"
    if bf16:
        model = copy.deepcopy(unet)
        variants.append(
            Variant(
                "bf16", SequenceSampler(model, empty_text, device, torch.bfloat16), routed, steps
            )
        )
    compile_seconds = None
    if compile_unet:
        compiled = SequenceSampler(copy.deepcopy(unet), empty_text, device)
        compiled.unet = torch.compile(compiled.unet)
        variant = Variant("torch.compile", compiled, routed, steps)
        variant.reset()
        compile_seconds = variant.step()  # the first call compiles
        variants.append(variant)
    for variant in variants:
        variant.reset()
        variant.step()  # warm
    for _ in range(steps):
        for variant in variants:  # interleaved, step by step
            variant.seconds.append(variant.step())
    reference = variants[0].latents()
    peak = {"fp32": matmul_peak(torch.float32, device)}
    if bf16:
        peak["bf16"] = matmul_peak(torch.bfloat16, device)
    figures = {}
    for variant in variants:
        seconds = statistics.median(variant.seconds)
        kind = "bf16" if variant.name == "bf16" else "fp32"
        difference = max(
            float((a - b).abs().max()) for a, b in zip(variant.latents(), reference, strict=True)
        )
        figures[variant.name] = {
            "step_seconds": seconds,
            "achieved_flops": flops / seconds,
            "share_of_peak": flops / seconds / peak[kind],
            "peak_kind": kind,
            "speedup_over_fp32": statistics.median(variants[0].seconds) / seconds,
            "max_latent_difference_to_fp32": difference,
        }
    results = {
        "machine": machine,
        "machine_after": machine_facts(),
        "settings": {
            "device": device,
            "threads": threads,
            "batch": BATCH,
            "rows": sum(r.request.guidance_scale != 1.0 for r in routed) + len(routed),
            "steps": steps,
            "cpu_bf16": cpu_has_bf16(),
        },
        "flops_per_step": flops,
        "peak_flops": peak,
        "variants": figures,
        "compile_seconds": compile_seconds,
        "seconds": round(time.perf_counter() - began, 1),
    }
    write_results(out_dir, "compute", results)
    bar_plot(
        out_dir,
        "compute",
        {"share of peak": {n: v["share_of_peak"] for n, v in figures.items()}},
        "achieved / measured matmul peak",
    )
    return results


def _section(settings: BenchSettings) -> list[Row]:
    steps = 1 if settings.quick else 6
    results = run(Path(settings.out_dir), settings.device, settings.threads, steps)
    gflop = results["flops_per_step"] / 1e9
    rows = []
    for name, v in results["variants"].items():
        peak = results["peak_flops"][v["peak_kind"]] / 1e9
        rows.append(
            Row(
                "compute",
                f"UNet achieved / matmul peak, {name}",
                100 * v["share_of_peak"],
                "%",
                note=f"{v['achieved_flops'] / 1e9:.1f} of {peak:.0f} GFLOP/s "
                f"({v['peak_kind']}); {v['step_seconds']:.3f} s per step of {gflop:.1f} GFLOP; "
                f"{v['speedup_over_fp32']:.2f}x fp32; latents differ by "
                f"{v['max_latent_difference_to_fp32']:.1e}",
            )
        )
    return rows


SECTION = Section("compute", "Compute efficiency: UNet FLOP/s against the matmul peak", _section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = run(args.out, args.device, args.threads, args.steps, args.compile)
    print(f"machine: {results['machine']}; {results['seconds']}s")
    print(
        f"{results['flops_per_step'] / 1e9:.2f} GFLOP per step; peak "
        + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in results["peak_flops"].items())
    )
    for name, v in results["variants"].items():
        print(f"{name:<14} {v}")
    if results["compile_seconds"] is not None:
        print(f"torch.compile's first step: {results['compile_seconds']:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
