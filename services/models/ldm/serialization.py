"""Saving and loading the UNet as `config.json` + `model.safetensors` (no pickle)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..weights import load_strict
from .config import LDMConfig
from .unet import SequenceUNet

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "ctrl-genaug-ldm-unet/1"


def save_unet(model: SequenceUNet, directory: str | Path) -> Path:
    """Writes the model's config and weights (fp32 unless the model is in another dtype).

    Args:
        model: The UNet.
        directory: Created if needed; existing files of the same names are replaced.

    Returns:
        The directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = directory / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT})
    tmp.replace(directory / WEIGHTS_NAME)
    config = {"format": FORMAT, "class": type(model).__name__, **model.config.to_dict()}
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def load_config(directory: str | Path) -> LDMConfig:
    """Reads the `LDMConfig` saved by `save_unet`."""
    data = json.loads((Path(directory) / CONFIG_NAME).read_text())
    fmt = data.pop("format", None)
    data.pop("class", None)
    if fmt != FORMAT:
        raise ValueError(f"{directory}: unsupported LDM format {fmt!r} (expected {FORMAT})")
    return LDMConfig.from_dict(data)


def load_unet(
    directory: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SequenceUNet:
    """Builds the UNet from `config.json` and loads `model.safetensors` strictly.

    Args:
        directory: Written by `save_unet`.
        device: Target device.
        dtype: Target dtype (e.g. torch.bfloat16 on CUDA).

    Raises:
        FileNotFoundError: A file is missing.
        services.models.weights.CheckpointError: Weights do not match the config.
    """
    directory = Path(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"weights not found: {weights}")
    model = SequenceUNet(load_config(directory))
    load_strict(model, load_file(str(weights)), str(weights))
    logger.info("loaded LDM UNet from %s (%d parameters)", directory, model.num_parameters())
    return model.to(device, dtype).eval()
