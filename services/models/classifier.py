"""The noisy-data filter's semantic-level video classifier: a small residual 3D CNN.

The official filter scores each synthetic clip by the cross-entropy of a video classifier trained on
real clips only (an I3D-R50 with one input channel, per-frame z-score normalisation). This is a
small stand-in of the same contract, written without torchvision: clips (B, T, 1, H, W) in
[-1, 1] -> logits (B, num_classes). Any T, H and W work (strided convs, then global pooling).
GroupNorm instead of BatchNorm: training and inference behave the same even with tiny batches.

Saved as a folder: `config.json` (the `VideoClassifierConfig`) and `model.safetensors`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from services.models.weights import load_strict

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
Normalization = Literal["frame", "clip", "none"]
# Floor of the standard deviation in the z-score, so a flat frame maps to zeros, not NaN.
_STD_FLOOR = 1e-6


@dataclass(frozen=True)
class VideoClassifierConfig:
    """Hyperparameters of `VideoClassifier`.

    Attributes:
        num_classes: Number of output logits.
        in_channels: Channels per frame (1 for grey sequences).
        widths: Channels of the stem and of each later stage; every stage after the first halves
            T, H and W (a size of 1 stays 1).
        blocks_per_stage: Residual blocks per stage.
        normalization: `"frame"` z-scores each frame (as the reference), `"clip"` each clip,
            `"none"` leaves the input as it is.
        groups: GroupNorm groups (each width must be divisible by it).
        dropout: Dropout before the final linear layer (training only).
    """

    num_classes: int = 2
    in_channels: int = 1
    widths: tuple[int, ...] = field(default=(16, 32, 64, 128))
    blocks_per_stage: int = 1
    normalization: Normalization = "frame"
    groups: int = 8
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if not self.widths or any(w % self.groups for w in self.widths):
            raise ValueError(f"widths {self.widths} must be non-empty multiples of {self.groups}")
        if self.normalization not in ("frame", "clip", "none"):
            raise ValueError(f"unknown normalization {self.normalization!r}")

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-serialisable dict."""
        data = asdict(self)
        data["widths"] = list(self.widths)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoClassifierConfig:
        """Builds a config from `to_dict` output; unknown keys are an error."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown classifier config keys: {sorted(unknown)}")
        return cls(**data)


def zscore(x: torch.Tensor, mode: Normalization) -> torch.Tensor:
    """Z-score normalises clips (B, T, C, H, W) per frame or per clip.

    Args:
        x: Clips.
        mode: `"frame"` (statistics over C, H, W of each frame), `"clip"` (over T, C, H, W of each
            clip) or `"none"`.

    Returns:
        The normalised clips, same shape.
    """
    if mode == "none":
        return x
    dims = (2, 3, 4) if mode == "frame" else (1, 2, 3, 4)
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True, unbiased=False).clamp_min(_STD_FLOOR)
    return (x - mean) / std


class ResBlock3d(nn.Module):
    """Two 3x3x3 conv + GroupNorm layers with a shortcut; the first conv may be strided."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv3d(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_ch, out_ch, 1, stride=stride, bias=False), nn.GroupNorm(groups, out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.silu(y + self.shortcut(x))


class VideoClassifier(nn.Module):
    """Small residual 3D CNN video classifier.

    Args:
        config: Hyperparameters; None means the defaults.

    Input (B, T, C, H, W) float (nominally [-1, 1]) -> logits (B, num_classes).
    """

    def __init__(self, config: VideoClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or VideoClassifierConfig()
        w0 = cfg.widths[0]
        # Stem: spatial stride 2 only, so short clips keep their frames for the stages.
        self.stem = nn.Sequential(
            nn.Conv3d(cfg.in_channels, w0, (3, 5, 5), (1, 2, 2), (1, 2, 2), bias=False),
            nn.GroupNorm(cfg.groups, w0),
            nn.SiLU(),
        )
        stages = []
        in_ch = w0
        for i, width in enumerate(cfg.widths):
            blocks = [
                ResBlock3d(
                    in_ch if j == 0 else width, width, 2 if (i > 0 and j == 0) else 1, cfg.groups
                )
                for j in range(cfg.blocks_per_stage)
            ]
            stages.append(nn.Sequential(*blocks))
            in_ch = width
        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(in_ch, cfg.num_classes)

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """Clip features: the globally pooled last stage, (B, widths[-1]) (what the head sees).

        Args:
            clips: (B, T, C, H, W) float.
        """
        if clips.ndim != 5 or clips.shape[2] != self.config.in_channels:
            raise ValueError(
                f"clips: expected (B, T, {self.config.in_channels}, H, W), got {tuple(clips.shape)}"
            )
        x = zscore(clips.float(), self.config.normalization)
        x = x.permute(0, 2, 1, 3, 4)  # (B, C, T, H, W) for Conv3d
        x = self.stages(self.stem(x))
        return x.mean(dim=(2, 3, 4))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """Classifies clips.

        Args:
            clips: (B, T, C, H, W) float.

        Returns:
            Logits (B, num_classes).
        """
        return self.head(self.dropout(self.features(clips)))

    def save_pretrained(self, directory: str | Path) -> Path:
        """Writes `config.json` and `model.safetensors` into `directory` (created if needed)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        logger.info("saved video classifier to %s", directory)
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu"
    ) -> VideoClassifier:
        """Loads a classifier written by `save_pretrained` (strict), in eval mode.

        Raises:
            FileNotFoundError: The folder lacks the config or the weights.
            services.models.weights.CheckpointError: The weights do not fit the config.
        """
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"video classifier file not found: {path}")
        config = VideoClassifierConfig.from_dict(json.loads(config_path.read_text()))
        model = cls(config)
        load_strict(model, load_file(str(weights_path)), str(weights_path))
        logger.info("loaded video classifier from %s (%d classes)", directory, config.num_classes)
        return model.to(device).eval()
