"""The checkpoint format of the UNet before it was a diffusers `ModelMixin`, read and converted.

That format is a folder with `config.json` (the `LDMConfig` fields plus
`"format": "ctrl-genaug-ldm-unet/1"`) and `model.safetensors` (the state dict). The modules,
hence every state-dict key, are unchanged, so converting is: the fields become the registered
config, the same tensors (same dtype) go to `diffusion_pytorch_model.safetensors`.

    python -m services.models.ldm.legacy OLD_DIR NEW_DIR   # NEW_DIR may be OLD_DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from safetensors.torch import load_file

from ..weights import CheckpointError, load_strict
from .unet import SequenceUNet

logger = logging.getLogger(__name__)

LEGACY_FORMAT = "ctrl-genaug-ldm-unet/1"
LEGACY_WEIGHTS = "model.safetensors"
CONFIG_NAME = "config.json"


def _legacy_config(directory: Path) -> dict | None:
    path = directory / CONFIG_NAME
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if data.get("format") == LEGACY_FORMAT else None


def is_legacy_checkpoint(directory: str | Path) -> bool:
    """True when `directory/config.json` is a pre-diffusers LDM config."""
    return _legacy_config(Path(directory)) is not None


def load_legacy_unet(directory: str | Path) -> SequenceUNet:
    """Builds a `SequenceUNet` from a pre-diffusers checkpoint, strictly, on the CPU, in the
    stored dtype.

    Raises:
        FileNotFoundError: No `model.safetensors`.
        services.models.weights.CheckpointError: Not that format, or weights that do not match.
    """
    directory = Path(directory)
    config = _legacy_config(directory)
    if config is None:
        raise CheckpointError(f"{directory}/{CONFIG_NAME} is not a {LEGACY_FORMAT} config")
    weights = directory / LEGACY_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"weights not found: {weights}")
    fields = {k: v for k, v in config.items() if k not in ("format", "class")}
    try:
        model = SequenceUNet(**fields)
    except TypeError as err:  # a field this version does not know
        raise CheckpointError(f"{directory}/{CONFIG_NAME}: {err}") from err
    state = load_file(str(weights))
    load_strict(model, state, str(weights))
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) == 1:  # keep a float16 export float16
        model = model.place("cpu", dtypes.pop())
    return model.eval()


def convert_legacy_checkpoint(source: str | Path, destination: str | Path) -> Path:
    """Writes `source` (pre-diffusers) as `save_pretrained` does into `destination`.

    Other files of `source` (`classes.json`, `training.json`) are copied along; converting in
    place (`destination == source`) replaces the old config and removes `model.safetensors`.

    Returns:
        The destination folder.
    """
    source, destination = Path(source), Path(destination)
    model = load_legacy_unet(source)
    model.save_pretrained(destination)
    in_place = destination.resolve() == source.resolve()
    for path in source.iterdir():
        if path.name in (CONFIG_NAME, LEGACY_WEIGHTS) or not path.is_file():
            continue
        if not in_place:
            shutil.copy2(path, destination / path.name)
    if in_place:
        (source / LEGACY_WEIGHTS).unlink()
    logger.info("converted %s (%s) to %s", source, LEGACY_FORMAT, destination)
    return destination


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert a pre-diffusers LDM checkpoint.")
    parser.add_argument("source", type=Path, help=f"folder with {LEGACY_WEIGHTS} + {CONFIG_NAME}")
    parser.add_argument("destination", type=Path, help="output folder (may be the source)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    convert_legacy_checkpoint(args.source, args.destination)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
