"""Typed configuration of the sequence LDM UNet, with the `sd14` and `small` presets.

The config is a frozen dataclass written next to the weights as JSON (see `serialization.py`).
The same config describes the 2D (image) model used for pretraining (`sequence=False`) and the
sequence model it is inflated into (`sequence=True`, see `SequenceUNet.from_2d`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LDMConfig:
    """Hyperparameters of `SequenceUNet`.

    Attributes:
        in_channels: Latent channels in (4: the grayscale SD-style VAE; 8: the small VAE).
        out_channels: Channels predicted (epsilon), normally `in_channels`.
        sample_size: Nominal latent side (32 for 256 px frames with a x8 VAE). Informative only:
            any latent size divisible by `2 ** (len(block_out_channels) - 1)` works.
        block_out_channels: Channels per resolution level (SD-1.4: 320/640/1280/1280).
        attention_levels: Per level, whether its down/up blocks have transformer blocks (SD-1.4:
            the three highest resolutions; the mid block always has one).
        layers_per_block: ResNet (+ transformer) layers per down block; up blocks get one more.
        num_attention_heads: Heads of every attention layer (SD-1.4: 8; its config calls this
            `attention_head_dim`). Head size is `channels // num_attention_heads`.
        cross_attention_dim: Width of the text and image-prior tokens (SD-1.4: 768, CLIP L/14).
        text_embed_dim: Width of the text encoder output when it differs from
            `cross_attention_dim` (e.g. 384 for all-MiniLM-L6-v2): a linear `encoder_hid_proj`
            maps it. None: the text embedding already has `cross_attention_dim` channels.
        num_classes: Number of class labels (class embedding added to the time embedding);
            None for a model without class conditioning.
        norm_num_groups: GroupNorm groups in ResNets and transformers.
        norm_eps: GroupNorm epsilon of the ResNets and the output norm.
        image_prior_channels: Channels of the MedSAM image prior (256); None: no prior branch.
        image_prior_size: Side of the prior map (64); used to build an all-zero prior when a
            forward gets none (the "dropped" condition of training).
        image_prior_pool: Average-pooling factor applied to the (BatchNorm-ed) prior before the
            stride-2 conv: tokens = (64 / pool / 2) ** 2 for a 64x64 prior (1: 1024 tokens, as
            the official model; 4: 64 tokens, for the CPU model).
        sequence: True for the sequence model (temporal attention, SAM, motion input); False
            for the 2D image model, which treats frames independently.
        use_sam: Sequential Augmentation Module in place of spatial self-attention (key-frame
            attention, plus Motion Field Attention where `use_mfa`). Ignored when not `sequence`.
        use_mfa: Motion Field Attention in the highest-resolution blocks (needs trajectories at
            forward time; without them those blocks run key-frame attention only).
        use_motion: Motion-field encoder concatenated with the `conv_in` output and fused by
            `insert_unit`. Ignored when not `sequence`.
        motion_embed_channels: Channels of the ControlNet-style motion embedder; it has
            `len - 1` stride-2 steps, so `2 ** (len - 1)` must equal the VAE downsampling factor
            (official: 16/32/96/256, x8).
        motion_channels: Channels of the motion field (2: x and y displacement).
    """

    in_channels: int = 4
    out_channels: int = 4
    sample_size: int = 32
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    attention_levels: tuple[bool, ...] = (True, True, True, False)
    layers_per_block: int = 2
    num_attention_heads: int = 8
    cross_attention_dim: int = 768
    text_embed_dim: int | None = None
    num_classes: int | None = None
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    image_prior_channels: int | None = 256
    image_prior_size: int = 64
    image_prior_pool: int = 1
    sequence: bool = True
    use_sam: bool = True
    use_mfa: bool = True
    use_motion: bool = True
    motion_embed_channels: tuple[int, ...] = (16, 32, 96, 256)
    motion_channels: int = 2

    def __post_init__(self) -> None:
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError("attention_levels needs one entry per block_out_channels level")
        for ch in self.block_out_channels:
            if ch % self.norm_num_groups or ch % self.num_attention_heads:
                raise ValueError(
                    f"block channels {ch} must be divisible by norm_num_groups "
                    f"({self.norm_num_groups}) and num_attention_heads ({self.num_attention_heads})"
                )
        if self.image_prior_pool < 1:
            raise ValueError("image_prior_pool must be >= 1")
        if len(self.motion_embed_channels) < 1:
            raise ValueError("motion_embed_channels needs at least one entry")

    @property
    def sam_enabled(self) -> bool:
        return self.sequence and self.use_sam

    @property
    def mfa_enabled(self) -> bool:
        return self.sam_enabled and self.use_mfa

    @property
    def motion_enabled(self) -> bool:
        return self.sequence and self.use_motion

    @property
    def latent_downsample(self) -> int:
        """Pixel-to-latent factor the motion embedder assumes (the VAE's, e.g. 8)."""
        return 2 ** (len(self.motion_embed_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Latent height and width must be multiples of this."""
        return 2 ** (len(self.block_out_channels) - 1)

    def replace(self, **changes: Any) -> LDMConfig:
        """Returns a copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LDMConfig:
        """Inverse of `to_dict`; unknown keys raise `ValueError` (a config from a newer format)."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown LDMConfig keys: {unknown}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> LDMConfig:
        """A named preset (`"sd14"` or `"small"`), with `overrides` applied.

        Args:
            name: `"sd14"`: the paper's SD-1.4-scale UNet (about 0.9 G parameters, 32x32 latents
                of 256 px frames). `"small"`: a few M parameters that trains on a CPU (8x8
                latents with the small VAE's 8 channels for 64x64 frames, 64 image-prior
                tokens, 384-d MiniLM text).
            **overrides: Fields to change, e.g. `num_classes=3` or `sequence=False`.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown LDM preset {name!r}; choose from {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS: dict[str, LDMConfig] = {
    "sd14": LDMConfig(),
    "small": LDMConfig(
        in_channels=8,  # the small VAE's latent channels
        out_channels=8,
        sample_size=8,
        block_out_channels=(64, 128),
        attention_levels=(True, True),
        layers_per_block=1,
        num_attention_heads=4,
        cross_attention_dim=128,
        text_embed_dim=384,
        image_prior_pool=4,
        motion_embed_channels=(8, 16, 32, 32),
    ),
}
