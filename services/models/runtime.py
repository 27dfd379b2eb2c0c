"""Device and dtype choice for every network: CUDA in bf16 (or fp16), else CPU in fp32."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Returns `device`, or CUDA when present and the CPU otherwise.

    Args:
        device: An explicit device (`"cpu"`, `"cuda:1"`), or None / `"auto"` to pick one.

    Returns:
        The device to run on.

    Raises:
        RuntimeError: a CUDA device was asked for on a machine without one.
    """
    if device is None or device == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but CUDA is not available here")
    return resolved


def resolve_dtype(device: torch.device, dtype: torch.dtype | None = None) -> torch.dtype:
    """Returns `dtype`, or the inference dtype for the device.

    Args:
        device: The device the network runs on.
        dtype: An explicit dtype, or None to pick one: bf16 on CUDA devices that support it,
            fp16 on older CUDA devices, fp32 on the CPU (half precision is slow there).

    Returns:
        The dtype for the network's weights and inputs.
    """
    if dtype is not None:
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32
