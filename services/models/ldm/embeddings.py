"""Condition embedders: MedSAM image-prior projector and motion-field encoder."""

from __future__ import annotations

import torch
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
from torch import nn


class ImagePriorProjector(nn.Module):
    """Turns the MedSAM prior of a clip's first frame into cross-attention tokens.

    BatchNorm2d -> (optional average pooling) -> 3x3 conv stride 2 -> SiLU -> Linear -> LayerNorm,
    as the official projector; the pooling (absent there, `pool=1`) cuts the token count for
    small models: a (256,64,64) prior gives (64 / pool / 2) ** 2 tokens.

    Args:
        in_channels: Prior channels (256 for MedSAM / LiteMedSAM).
        cross_attention_dim: Token width.
        pool: Average-pooling factor before the conv.
    """

    def __init__(self, in_channels: int, cross_attention_dim: int, pool: int = 1):
        super().__init__()
        self.norm_in = nn.BatchNorm2d(in_channels)
        self.pool = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=1)
        self.act = nn.SiLU()
        self.proj = nn.Linear(in_channels, cross_attention_dim)
        self.norm_out = nn.LayerNorm(cross_attention_dim)

    def forward(self, prior: torch.Tensor) -> torch.Tensor:
        """Maps a prior (B, C, S, S) to tokens (B, T, cross_attention_dim)."""
        x = self.act(self.conv(self.pool(self.norm_in(prior))))
        x = x.flatten(2).transpose(1, 2)
        return self.norm_out(self.proj(x))


class MotionFieldEncoder(nn.Module):
    """ControlNet-style per-frame conv embedder of the motion field, at latent resolution.

    Built on diffusers' `ControlNetConditioningEmbedding` (conv_in, pairs of 3x3 convs with a
    stride-2 step each, conv_out). ControlNet zero-initialises `conv_out`; here it keeps the
    default init because the fusing `insert_unit` already starts at zero on the motion half
    (two zero layers in a row would never receive a gradient).

    Args:
        out_channels: Embedding channels (= the UNet's `conv_in` channels).
        motion_channels: Channels of the field (2).
        block_out_channels: Embedder channels; `len - 1` stride-2 steps.
    """

    def __init__(
        self, out_channels: int, motion_channels: int, block_out_channels: tuple[int, ...]
    ):
        super().__init__()
        self.out_channels = out_channels
        self.embedder = ControlNetConditioningEmbedding(
            conditioning_embedding_channels=out_channels,
            conditioning_channels=motion_channels,
            block_out_channels=tuple(block_out_channels),
        )
        self.embedder.conv_out.reset_parameters()
        self.downsample = 2 ** (len(block_out_channels) - 1)

    def forward(self, motion_field: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
        """Embeds a motion field.

        Args:
            motion_field: (B, 2, F-1, H, W) displacements between consecutive frames, pixels.
            latent_hw: Expected latent (h, w) = (H, W) / downsample.

        Returns:
            (B, out_channels, F, h, w): an all-zero embedding for frame 0, then one per field.
        """
        b, c, fm1, height, width = motion_field.shape
        h, w = latent_hw
        if (height, width) != (h * self.downsample, w * self.downsample):
            raise ValueError(
                f"motion field {height}x{width} does not match latents {h}x{w} (x{self.downsample})"
            )
        zero = motion_field.new_zeros(b, self.out_channels, 1, h, w)
        if fm1 == 0:
            return zero
        frames = motion_field.permute(0, 2, 1, 3, 4).reshape(b * fm1, c, height, width)
        emb = self.embedder(frames).reshape(b, fm1, self.out_channels, h, w)
        return torch.cat([zero, emb.permute(0, 2, 1, 3, 4)], dim=2)
