"""ONNX export building blocks: exportable graphs, the export itself, its checks and parity.

What each exported graph computes, with a dynamic frame axis N (and dynamic H, W for the VAE):

- `vae_encode`: `frames` FP32 (N,1,H,W) in [-1,1] -> `latents` FP32 (N,C,H/8,W/8), the latent
  mean times the scaling factor (`VaeCodec.encode`);
- `vae_decode`: scaled `latents` FP32 (N,C,h,w) -> `frames` FP32 (N,1,8h,8w) clamped to [-1,1]
  (`VaeCodec.decode`);
- `image_prior`: preprocessed `frames` FP32 (N,3,256,256) -> `prior` FP32 (N,256,64,64)
  (`TinyViT.forward`).

`image_prior` is LiteMedSAM's network only: the preprocessing (resize the longest side to 256,
min-max normalise, zero-pad, replicate to 3 channels; `services/models/medsam_preprocess.py`)
stays in Python, because OpenCV's `INTER_AREA` resize has no exact ONNX equivalent.

Export uses the TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`); the
torch.export-based one needs onnxscript, which is not installed.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

# 17 has LayerNormalization (TinyViT) and runs on every onnxruntime since 1.12 (Triton >= 22.07).
DEFAULT_OPSET = 17


class VaeEncodeGraph(nn.Module):
    """frames (N,1,H,W) in [-1,1] -> the latent distribution's mean times the scaling factor."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        # The mean, not a sample, exactly as `VaeCodec._encode_batch`: the codec is deterministic.
        return self.vae.encode(frames).latent_dist.mode() * self.scaling_factor


class VaeDecodeGraph(nn.Module):
    """Scaled latents (N,C,h,w) -> frames (N,1,h*8,w*8) clamped to [-1,1]."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scaling_factor).sample.clamp(-1, 1)


@dataclass
class ExportSpec:
    """One model to export, named and shaped as its KServe v2 counterpart.

    Attributes:
        name: KServe v2 / Triton model name.
        module: The graph to export (eval mode, fp32, on the CPU).
        input_name: Its input tensor's name.
        output_name: Its output tensor's name.
        input_dims: Input shape with -1 for dynamic axes (Triton `dims`, batch axis included).
        output_dims: Output shape, likewise.
        example: Traced input; its batch size should differ from the parity batch sizes'
            smallest so a batch size baked into the trace is caught by the parity check.
        make_input: (batch, variant) -> a random input; variant 1 may also change H and W.
        parity_batches: Batch sizes of the parity check's two random inputs.
        metadata: Written into the ONNX file's `metadata_props` (provenance, preprocessing).
    """

    name: str
    module: nn.Module
    input_name: str
    output_name: str
    input_dims: tuple[int, ...]
    output_dims: tuple[int, ...]
    example: torch.Tensor
    make_input: Callable[[int, int], np.ndarray]
    parity_batches: tuple[int, int] = (1, 3)
    metadata: dict[str, str] = field(default_factory=dict)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axis_names = {0: "frames", 2: "height", 3: "width"}

        def axes(dims: tuple[int, ...]) -> dict[int, str]:
            return {i: axis_names.get(i, f"dim{i}") for i, d in enumerate(dims) if d == -1}

        return {self.input_name: axes(self.input_dims), self.output_name: axes(self.output_dims)}


@dataclass(frozen=True)
class ExportResult:
    """Where a model was written, how long export + check took and its size."""

    name: str
    path: Path
    seconds: float
    size_bytes: int


def export_onnx(spec: ExportSpec, path: Path, opset: int = DEFAULT_OPSET) -> ExportResult:
    """Exports `spec.module` to `path`, adds its metadata and runs `onnx.checker` on it.

    Raises:
        onnx.checker.ValidationError: The exported model is not valid ONNX.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    module = spec.module.eval().requires_grad_(False)
    with warnings.catch_warnings():
        # The legacy-exporter deprecation notice, and TracerWarnings from Python-level shape
        # checks (diffusers, TinyViT's token-count check): benign here, and the parity check
        # at batch sizes other than the traced one is what proves the graph generalises.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*Constant folding.*")
        torch.onnx.export(
            module,
            (spec.example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[spec.input_name],
            output_names=[spec.output_name],
            dynamic_axes=spec.dynamic_axes(),
            do_constant_folding=True,
        )
    model = onnx.load(str(path))
    model.doc_string = f"genaug {spec.name}: {spec.input_name} -> {spec.output_name}"
    onnx.helper.set_model_props(model, {"genaug_model": spec.name, **spec.metadata})
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return ExportResult(spec.name, path, time.perf_counter() - start, path.stat().st_size)


def onnx_session(path: Path, threads: int | None = None):
    """A CPU `InferenceSession`; `threads` intra-op threads (None: torch's own count), one
    inter-op thread (graphs are sequential), all graph optimisations, and no spinning: idle
    onnxruntime threads would otherwise busy-wait on cores torch (text encoder, the sampler's
    UNet) needs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_abs_diff(
    path: Path, spec: ExportSpec, inputs: Sequence[np.ndarray], threads: int | None = None
) -> list[float]:
    """Runs each input through onnxruntime and torch; returns the max abs difference of each.

    Raises:
        AssertionError: An output's shape differs between the two.
    """
    session = onnx_session(path, threads)
    diffs = []
    for x in inputs:
        (got,) = session.run([spec.output_name], {spec.input_name: x})
        with torch.inference_mode():
            want = spec.module(torch.from_numpy(x)).numpy()
        if got.shape != want.shape:
            raise AssertionError(f"{spec.name}: onnx shape {got.shape} != torch {want.shape}")
        diffs.append(float(np.abs(got - want).max()))
    return diffs
