"""`genaug export-onnx`: the VAE encoder/decoder and the LiteMedSAM image-prior network to ONNX.

    genaug export-onnx [--model-dir deploy/model-repository] [--out runs/onnx]
                       [--models vae_encode vae_decode image_prior] [--opset 17]
                       [--triton-layout] [--check-parity]

Writes `<out>/<model>.onnx`, or with `--triton-layout` a Triton model repository,
`<out>/<model>/1/model.onnx` + `<out>/<model>/config.pbtxt` (`platform: "onnxruntime_onnx"`,
`max_batch_size: 0`, the frame axis is the first, dynamic, dimension). Models, tensor names and
shapes are those of our KServe v2 models, so `vae_encode` and `vae_decode` callers can move to a
stock Triton server unchanged. `image_prior` differs: ours takes raw grey frames UINT8/FP32
(N,H,W) and preprocesses them in Python; the ONNX model takes the preprocessed FP32
(N,3,256,256) (`services.models.medsam_preprocess.preprocess_frames`), see `onnx_graphs`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from services.data.safety import output_within
from services.models.generators import generator_dir
from services.models.medsam import PRIOR_SHAPE, ImagePriorEncoder, load_image_prior_encoder
from services.models.onnx_graphs import (
    DEFAULT_OPSET,
    ExportResult,
    ExportSpec,
    VaeDecodeGraph,
    VaeEncodeGraph,
    export_onnx,
    max_abs_diff,
)
from services.models.vae import VAE_CONFIGS, downsample_factor, load_or_init_vae

logger = logging.getLogger(__name__)

MODELS = ("vae_encode", "vae_decode", "image_prior")
PARITY_ATOL = 1e-4


def _uniform(shape: tuple[int, ...], low: float, high: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def vae_specs(vae_dir: Path, config_name: str = "small", seed: int = 0) -> list[ExportSpec]:
    """`vae_encode` and `vae_decode` for the VAE in `vae_dir` (else the seeded `config_name`)."""
    vae, provenance = load_or_init_vae(vae_dir, config_name, seed)
    return vae_specs_for(vae.float(), provenance)


def vae_specs_for(vae: torch.nn.Module, provenance: str) -> list[ExportSpec]:
    """`vae_encode` and `vae_decode` for an already loaded fp32 CPU VAE (not copied: the
    graphs wrap it, and `VaeCodec` keeps using it for the parity check and on torch)."""
    vae = vae.eval().requires_grad_(False)
    f, c = downsample_factor(vae), int(vae.config.latent_channels)
    meta = {
        "weights": provenance,
        "scaling_factor": str(float(vae.config.scaling_factor)),
        "downsample_factor": str(f),
    }

    def frames(batch: int, variant: int) -> np.ndarray:
        # variant 1 is twice as high: proves the dynamic H axis as well as the frame axis.
        return _uniform((batch, 1, 8 * f * (1 + variant), 8 * f), -1, 1, 10 * batch + variant)

    def latents(batch: int, variant: int) -> np.ndarray:
        rng = np.random.default_rng(10 * batch + variant)
        return rng.standard_normal((batch, c, 8 * (1 + variant), 8), dtype=np.float32)

    return [
        ExportSpec(
            "vae_encode",
            VaeEncodeGraph(vae),
            "frames",
            "latents",
            (-1, 1, -1, -1),
            (-1, c, -1, -1),
            torch.from_numpy(frames(2, 0)),
            frames,
            (1, 3),
            dict(meta),
        ),
        ExportSpec(
            "vae_decode",
            VaeDecodeGraph(vae),
            "latents",
            "frames",
            (-1, c, -1, -1),
            (-1, 1, -1, -1),
            torch.from_numpy(latents(2, 0)),
            latents,
            (1, 3),
            dict(meta),
        ),
    ]


def image_prior_spec(checkpoint: Path | None = None) -> ExportSpec:
    """`image_prior`: LiteMedSAM's TinyViT on preprocessed (N,3,256,256) input, fp32."""
    encoder = load_image_prior_encoder("litemedsam", checkpoint, device="cpu", dtype=torch.float32)
    return image_prior_spec_for(encoder)


def image_prior_spec_for(encoder: ImagePriorEncoder) -> ExportSpec:
    """`image_prior` for an already loaded LiteMedSAM encoder (fp32, on the CPU)."""
    size = encoder.preprocessing.size

    def frames(batch: int, variant: int) -> np.ndarray:
        # Like real input: one grey channel in [0, 1] replicated three times.
        grey = _uniform((batch, 1, size, size), 0, 1, 10 * batch + variant)
        return np.repeat(grey, 3, axis=1)

    return ExportSpec(
        "image_prior",
        encoder.network,
        "frames",
        "prior",
        (-1, 3, size, size),
        (-1, *PRIOR_SHAPE),
        torch.from_numpy(frames(1, 0)),  # traced with 1, parity at 2 proves the dynamic axis
        frames,
        (1, 2),
        {
            "weights": "pretrained",
            "network": "litemedsam",
            "preprocessing": "services.models.medsam_preprocess.preprocess_frames (not included)",
        },
    )


def triton_config(spec: ExportSpec) -> str:
    """A minimal Triton `config.pbtxt` (onnxruntime backend, no server-side batching)."""

    def tensor(name: str, dims: tuple[int, ...]) -> str:
        shown = ", ".join(str(d) for d in dims)
        return f'  {{\n    name: "{name}"\n    data_type: TYPE_FP32\n    dims: [ {shown} ]\n  }}'

    comments = "".join(f"# {key}: {value}\n" for key, value in spec.metadata.items())
    return (
        f"# Written by `genaug export-onnx`.\n{comments}"
        f'name: "{spec.name}"\n'
        'platform: "onnxruntime_onnx"\n'
        "max_batch_size: 0\n"
        f"input [\n{tensor(spec.input_name, spec.input_dims)}\n]\n"
        f"output [\n{tensor(spec.output_name, spec.output_dims)}\n]\n"
    )


def onnx_path(out: Path, name: str, triton_layout: bool) -> Path:
    return out / name / "1" / "model.onnx" if triton_layout else out / f"{name}.onnx"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path("deploy/model-repository"),
        help="model repository; the VAE is that of --generator (default %(default)s)",
    )
    parser.add_argument(
        "--generator", default="", help="generator whose VAE to export (default: the default)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/onnx"), help="output folder (default %(default)s)"
    )
    parser.add_argument(
        "--models", nargs="+", choices=MODELS, default=list(MODELS), help="models to export (all)"
    )
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default %(default)s)"
    )
    parser.add_argument(
        "--triton-layout",
        action="store_true",
        help="write <out>/<model>/1/model.onnx and <out>/<model>/config.pbtxt",
    )
    parser.add_argument(
        "--check-parity",
        action="store_true",
        help="compare onnxruntime with torch on random inputs of two batch sizes",
    )
    parser.add_argument(
        "--parity-atol",
        type=float,
        default=PARITY_ATOL,
        help="largest max-abs difference --check-parity accepts (default %(default)s)",
    )
    parser.add_argument(
        "--vae-config",
        choices=sorted(VAE_CONFIGS),
        default="small",
        help="VAE configuration used when <model-dir>/vae holds no weights (default small)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of that initialisation")
    parser.add_argument(
        "--prior-checkpoint",
        type=Path,
        help="LiteMedSAM checkpoint (default: the packaged lite_medsam.pth)",
    )


def run(args: argparse.Namespace) -> int:
    models = list(dict.fromkeys(args.models))
    specs: list[ExportSpec] = []
    if {"vae_encode", "vae_decode"} & set(models):
        vae_dir = generator_dir(args.model_dir, args.generator) / "vae"
        specs += vae_specs(vae_dir, args.vae_config, args.seed)
    if "image_prior" in models:
        specs.append(image_prior_spec(args.prior_checkpoint))
    specs = sorted((s for s in specs if s.name in models), key=lambda s: models.index(s.name))
    failed = []
    for spec in specs:
        path = onnx_path(args.out, spec.name, args.triton_layout)
        config = path.parent.parent / "config.pbtxt"
        for written in [path, config] if args.triton_layout else [path]:
            output_within(args.out, written, "--out")  # a link planted in --out is refused
        result: ExportResult = export_onnx(spec, path, args.opset)
        if args.triton_layout:
            config.write_text(triton_config(spec))
        print(
            f"{spec.name}: {path} ({result.size_bytes / 1e6:.1f} MB, opset {args.opset}, "
            f"exported and checked in {result.seconds:.1f} s; weights {spec.metadata['weights']})"
        )
        if args.check_parity:
            inputs = [spec.make_input(b, i) for i, b in enumerate(spec.parity_batches)]
            for x, diff in zip(inputs, max_abs_diff(path, spec, inputs), strict=True):
                ok = diff <= args.parity_atol
                failed += [] if ok else [spec.name]
                print(
                    f"  parity, input {tuple(x.shape)}: max abs diff {diff:.2e} "
                    f"({'ok' if ok else 'FAILED'}, tolerance {args.parity_atol:.0e})"
                )
    if failed:
        logger.error("parity above %.0e for %s", args.parity_atol, ", ".join(sorted(set(failed))))
        return 1
    return 0
