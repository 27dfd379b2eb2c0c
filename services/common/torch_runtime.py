"""Device and precision choice: CUDA with bf16 (or fp16) when present, CPU fp32 otherwise."""

from __future__ import annotations

import torch


def select_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {requested}: CUDA is not available on this machine")
    return device


def inference_dtype(device: torch.device) -> torch.dtype:
    """Half precision on GPUs (bf16 where supported), full precision on CPU."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
