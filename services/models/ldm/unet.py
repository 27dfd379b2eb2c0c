"""The sequence LDM UNet: an SD-style 2D UNet inflated to clips with (2+1)D blocks.

Every 2D layer runs per frame on (B*F, C, h, w). The sequence model adds, per transformer
block, the Sequential Augmentation Module (key-frame attention, and Motion Field Attention at
the highest resolution) in place of self-attention and a zero-initialised temporal attention
after the feed-forward; and, at the input, the motion-field encoder fused with `conv_in` by
`insert_unit`. The same class with `sequence=False` is the 2D image model of the pretraining
stage; `SequenceUNet.from_2d` inflates it.

It is a diffusers `ModelMixin` + `ConfigMixin`: the `__init__` arguments are its one config,
and `save_pretrained` / `from_pretrained` use the VAE's layout (`config.json` +
`diffusion_pytorch_model.safetensors`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from torch import nn

from ..weights import CheckpointError
from .attention import FrameContext, prepare_trajectories
from .blocks import DownBlock, MidBlock, UpBlock
from .embeddings import ImagePriorProjector, MotionFieldEncoder
from .presets import preset_config

# The weights file `save_pretrained` writes next to `config.json` (the VAE's name too).
WEIGHTS_NAME = SAFETENSORS_WEIGHTS_NAME

# Modules that exist only in the sequence model (freshly initialised by `from_2d`).
SEQUENCE_ONLY_MODULES = ("attn_temp.", "norm_temp.", "motion_encoder.", "insert_unit.")
# Trainable in the official fine-tuning stage (everything else stays frozen).
FINETUNE_MODULES = (
    "attn1.",
    "motion_encoder.",
    "insert_unit.",
    "attn2.to_q.",
    "attn_prior.to_q.",
    "norm_temp.",
    "attn_temp.",
)


class SequenceUNet(ModelMixin, AttentionMixin, ConfigMixin):
    """Class-, text-, image-prior- and motion-conditioned UNet over latent clips.

    The defaults are the paper's SD-1.4-scale model; `SequenceUNet.from_preset("small", ...)`
    builds the CPU-sized one.

    Args:
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

    Raises:
        ValueError: Inconsistent hyperparameters.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 4,
        sample_size: int = 32,
        block_out_channels: Sequence[int] = (320, 640, 1280, 1280),
        attention_levels: Sequence[bool] = (True, True, True, False),
        layers_per_block: int = 2,
        num_attention_heads: int = 8,
        cross_attention_dim: int = 768,
        text_embed_dim: int | None = None,
        num_classes: int | None = None,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        image_prior_channels: int | None = 256,
        image_prior_size: int = 64,
        image_prior_pool: int = 1,
        sequence: bool = True,
        use_sam: bool = True,
        use_mfa: bool = True,
        use_motion: bool = True,
        motion_embed_channels: Sequence[int] = (16, 32, 96, 256),
        motion_channels: int = 2,
    ):
        super().__init__()
        _validate(
            block_out_channels,
            attention_levels,
            norm_num_groups,
            num_attention_heads,
            image_prior_pool,
            motion_embed_channels,
        )
        c = self.config
        ch0 = c.block_out_channels[0]
        temb = ch0 * 4
        n_levels = len(c.block_out_channels)

        self.conv_in = nn.Conv2d(c.in_channels, ch0, kernel_size=3, padding=1)
        self.time_proj = Timesteps(ch0, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(ch0, temb)
        self.class_embedding = nn.Embedding(c.num_classes, temb) if c.num_classes else None
        self.encoder_hid_proj = (
            nn.Linear(c.text_embed_dim, c.cross_attention_dim)
            if c.text_embed_dim and c.text_embed_dim != c.cross_attention_dim
            else None
        )
        self.prior_projector = (
            ImagePriorProjector(c.image_prior_channels, c.cross_attention_dim, c.image_prior_pool)
            if c.image_prior_channels
            else None
        )
        if self.motion_enabled:
            self.motion_encoder = MotionFieldEncoder(
                ch0, c.motion_channels, c.motion_embed_channels
            )
            self.insert_unit = nn.Conv2d(2 * ch0, ch0, kernel_size=3, padding=1)
            _init_identity_fuse(self.insert_unit, ch0)
        else:
            self.motion_encoder = self.insert_unit = None

        def tkw(level: int | None) -> dict:
            return dict(
                heads=c.num_attention_heads,
                cross_attention_dim=c.cross_attention_dim,
                image_prior=self.prior_projector is not None,
                sequence=c.sequence,
                sam=self.sam_enabled,
                mfa=self.mfa_enabled and level == 0,
            )

        common = dict(temb_channels=temb, groups=c.norm_num_groups, eps=c.norm_eps)
        self.down_blocks = nn.ModuleList()
        out_ch = ch0
        for level, ch in enumerate(c.block_out_channels):
            in_ch, out_ch = out_ch, ch
            self.down_blocks.append(
                DownBlock(
                    in_ch,
                    out_ch,
                    num_layers=c.layers_per_block,
                    add_downsample=level < n_levels - 1,
                    transformer_kwargs=tkw(level) if c.attention_levels[level] else None,
                    **common,
                )
            )
        self.mid_block = MidBlock(c.block_out_channels[-1], transformer_kwargs=tkw(None), **common)
        self.up_blocks = nn.ModuleList()
        rev = list(reversed(c.block_out_channels))
        out_ch = rev[0]
        for i in range(n_levels):
            level = n_levels - 1 - i
            prev, out_ch = out_ch, rev[i]
            self.up_blocks.append(
                UpBlock(
                    rev[min(i + 1, n_levels - 1)],
                    prev,
                    out_ch,
                    num_layers=c.layers_per_block + 1,
                    add_upsample=i < n_levels - 1,
                    transformer_kwargs=tkw(level) if c.attention_levels[level] else None,
                    **common,
                )
            )
        self.conv_norm_out = nn.GroupNorm(c.norm_num_groups, ch0, eps=c.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch0, c.out_channels, kernel_size=3, padding=1)

    # ----------------------------------------------------------------- properties / helpers
    @property
    def device(self) -> torch.device:
        # One parameter, not ModelMixin's walk over every module: forward reads it per call.
        return self.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def sam_enabled(self) -> bool:
        return bool(self.config.sequence and self.config.use_sam)

    @property
    def mfa_enabled(self) -> bool:
        return self.sam_enabled and bool(self.config.use_mfa)

    @property
    def motion_enabled(self) -> bool:
        return bool(self.config.sequence and self.config.use_motion)

    @property
    def latent_downsample(self) -> int:
        """Pixel-to-latent factor the motion embedder assumes (the VAE's, e.g. 8)."""
        return 2 ** (len(self.config.motion_embed_channels) - 1)

    def place(self, device: torch.device | str, dtype: torch.dtype) -> SequenceUNet:
        """`to(device)`, then a cast only when `dtype` differs: diffusers' `to()` warns about
        fp32 modules on every dtype argument, needed or not (this model has none)."""
        model = self.to(device)
        return model if model.dtype == dtype else model.to(dtype=dtype)

    def config_dict(self) -> dict[str, Any]:
        """The `__init__` arguments as `config.json` stores them (lists, no diffusers `_` keys):
        equal for a model and its reloaded copy."""
        return {k: json.loads(json.dumps(v)) for k, v in self.config.items() if k[0] != "_"}

    def encode_image_prior(self, image_prior: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Prior tokens (B, T, cross_attention_dim); None gives the tokens of an all-zero prior
        (the dropped condition). Independent of the timestep: samplers compute it once."""
        if self.prior_projector is None:
            raise ValueError("this model has no image-prior branch (image_prior_channels=None)")
        if image_prior is None:
            side = self.config.image_prior_size
            image_prior = torch.zeros(
                batch, self.config.image_prior_channels, side, side, device=self.device
            )
        return self.prior_projector(image_prior.to(self.device, self.dtype))

    def encode_motion(
        self, motion_field: torch.Tensor | None, batch: int, num_frames: int, latent_hw
    ) -> torch.Tensor:
        """Motion embedding (B, C0, F, h, w); None embeds an all-zero field (the dropped
        condition). Independent of the timestep: samplers compute it once."""
        if self.motion_encoder is None:
            raise ValueError("this model has no motion input (sequence=False or use_motion=False)")
        h, w = latent_hw
        ds = self.latent_downsample
        if motion_field is None:
            motion_field = torch.zeros(
                batch,
                self.config.motion_channels,
                num_frames - 1,
                h * ds,
                w * ds,
                device=self.device,
            )
        if motion_field.shape[2] != num_frames - 1:
            raise ValueError(
                f"motion field has {motion_field.shape[2]} steps, expected F-1 = {num_frames - 1}"
            )
        return self.motion_encoder(motion_field.to(self.device, self.dtype), (h, w))

    # ---------------------------------------------------------------------------- forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        image_prior: torch.Tensor | None = None,
        motion_field: torch.Tensor | None = None,
        trajectories: torch.Tensor | None = None,
        trajectory_mask: torch.Tensor | None = None,
        *,
        prior_tokens: torch.Tensor | None = None,
        motion_embedding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicts the noise of a latent clip.

        Conditions the model has no branch for (motion, trajectories without MFA, prior
        without a projector) are ignored, so ablated models take the same inputs.

        Args:
            sample: (B, C, F, h, w) noisy latents, or (B, C, h, w) for single frames.
            timestep: Scalar or (B,) diffusion timesteps.
            class_labels: (B,) int64; required when the model has `num_classes`.
            encoder_hidden_states: (B, L, text_embed_dim) text tokens; None skips the text
                cross-attention.
            image_prior: (B, 256, 64, 64) MedSAM prior of the first frame; None = all-zero prior.
            motion_field: (B, 2, F-1, h*8, w*8) pixel displacements; None = all-zero field.
            trajectories: (B, N, S, 3) or (N, S, 3) int64 (t, row, col) at latent resolution (see
                `prepare_trajectories`); None = key-frame attention only.
            trajectory_mask: (B, N, S) or (N, S) bool; None = all slots valid.
            prior_tokens: Precomputed `encode_image_prior` output (overrides `image_prior`).
            motion_embedding: Precomputed `encode_motion` output (overrides `motion_field`).

        Returns:
            Predicted noise, same shape as `sample`.
        """
        single = sample.dim() == 4
        if single:
            sample = sample.unsqueeze(2)
        b, _, f, h, w = sample.shape
        dtype = self.dtype

        timestep = torch.as_tensor(timestep, device=sample.device)
        temb = self.time_embedding(self.time_proj(timestep.reshape(-1).expand(b)).to(dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels are required by this class-conditional model")
            temb = temb + self.class_embedding(class_labels.to(sample.device)).to(dtype)
        temb = temb.repeat_interleave(f, dim=0)

        text = None
        if encoder_hidden_states is not None:
            text = encoder_hidden_states.to(dtype)
            if self.encoder_hid_proj is not None:
                text = self.encoder_hid_proj(text)
        prior = None
        if self.prior_projector is not None:
            if prior_tokens is None:
                prior_tokens = self.encode_image_prior(image_prior, b)
            prior = prior_tokens.to(dtype)

        ctx = FrameContext(num_frames=f)
        if self.mfa_enabled and trajectories is not None:
            ctx.traj_index, ctx.traj_mask = prepare_trajectories(
                trajectories.to(sample.device),
                None if trajectory_mask is None else trajectory_mask.to(sample.device),
                f,
                h,
                w,
            )

        x = sample.to(self.device, dtype).transpose(1, 2).reshape(b * f, -1, h, w)
        x = self.conv_in(x)
        if self.motion_encoder is not None:
            if motion_embedding is None:
                motion_embedding = self.encode_motion(motion_field, b, f, (h, w))
            emb = motion_embedding.to(dtype).transpose(1, 2).reshape(b * f, -1, h, w)
            x = self.insert_unit(torch.cat([x, emb], dim=1))

        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, temb, ctx, text=text, prior=prior)
            skips.extend(block_skips)
        x = self.mid_block(x, temb, ctx, text=text, prior=prior)
        for block in self.up_blocks:
            x = block(x, skips, temb, ctx, text=text, prior=prior)
        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))

        out = x.reshape(b, f, -1, h, w).transpose(1, 2)
        return out.squeeze(2) if single else out

    # ------------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> SequenceUNet:
        """A freshly initialised model of preset `name` (`"sd14"`, `"small"`; see
        `presets.py`) with `overrides` (e.g. `num_classes=3`, `sequence=False`)."""
        return cls(**preset_config(name, **overrides))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> SequenceUNet:
        """`ModelMixin.from_pretrained` from a local folder written by `save_pretrained`:
        safetensors only, offline, and strict (a missing, extra or mis-shaped tensor raises).

        Args:
            pretrained_model_name_or_path: The folder (`config.json`,
                `diffusion_pytorch_model.safetensors`).
            **kwargs: Passed on, e.g. `torch_dtype=torch.bfloat16`.

        Raises:
            FileNotFoundError: No weights in the folder (for a pre-diffusers checkpoint, the
                message names the converter, `python -m services.models.ldm.legacy`).
            services.models.weights.CheckpointError: Weights do not match the config.
        """
        directory = Path(pretrained_model_name_or_path)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            hint = ""
            if (directory / "model.safetensors").is_file():
                hint = (
                    "; if its model.safetensors is a pre-diffusers LDM checkpoint, convert it "
                    f"once: python -m services.models.ldm.legacy {directory} NEW_DIR"
                )
            raise FileNotFoundError(f"weights not found: {weights}{hint}")
        want_info = kwargs.pop("output_loading_info", False)
        kwargs = dict(use_safetensors=True, local_files_only=True, low_cpu_mem_usage=False) | kwargs
        model, info = super().from_pretrained(directory, output_loading_info=True, **kwargs)
        problems = [
            f"{kind.replace('_', ' ')}: {', '.join(map(str, info[kind][:10]))}"
            for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
            if info[kind]
        ]
        if problems:
            raise CheckpointError(f"{weights} does not match its config: " + "; ".join(problems))
        return (model, info) if want_info else model

    @classmethod
    def from_2d(cls, model_2d: SequenceUNet, **overrides) -> SequenceUNet:
        """Inflates a 2D model into the sequence model, copying every shared weight.

        `attn_temp`/`norm_temp` (zero output projection), `motion_encoder` and `insert_unit`
        (identity on the `conv_in` half, zero on the motion half) are new, so the inflated
        model starts equal to the 2D model frame by frame when SAM is off; SAM's key-frame
        attention reuses the self-attention weights.

        Args:
            model_2d: A `SequenceUNet` (normally `sequence=False`).
            **overrides: Config fields to change (e.g. `use_mfa=False`).
        """
        model = cls(**{**model_2d.config_dict(), "sequence": True, **overrides})
        missing, unexpected = model.load_state_dict(model_2d.state_dict(), strict=False)
        bad = [k for k in missing if not any(m in k for m in SEQUENCE_ONLY_MODULES)]
        if bad or unexpected:
            raise CheckpointError(
                f"cannot inflate: missing {bad[:10]}, unexpected {list(unexpected)[:10]}"
            )
        return model.place(model_2d.device, model_2d.dtype)

    @classmethod
    def from_diffusers_unet(cls, unet: nn.Module, **overrides) -> SequenceUNet:
        """Builds the 2D model from a diffusers SD-1.x `UNet2DConditionModel` and its weights.

        This is the official initialisation (SD-1.4); modules SD lacks (image-prior branch,
        text projection) stay freshly initialised.

        Args:
            unet: A `UNet2DConditionModel` with SD-1.x layout (conv projections, one transformer
                layer per block, `CrossAttnDownBlock2D`/`DownBlock2D`).
            **overrides: Config fields to set (e.g. `num_classes=3`, `in_channels`).
        """
        uc = unet.config
        if uc.use_linear_projection or uc.mid_block_type != "UNetMidBlock2DCrossAttn":
            raise ValueError("only the SD-1.x UNet layout (conv projections) is supported")
        heads = uc.num_attention_heads or uc.attention_head_dim
        if not isinstance(heads, int):
            raise ValueError("per-block head counts are not supported")
        fields = dict(
            in_channels=uc.in_channels,
            out_channels=uc.out_channels,
            sample_size=uc.sample_size,
            block_out_channels=tuple(uc.block_out_channels),
            attention_levels=tuple(t.startswith("CrossAttn") for t in uc.down_block_types),
            layers_per_block=uc.layers_per_block,
            num_attention_heads=heads,
            cross_attention_dim=uc.cross_attention_dim,
            norm_num_groups=uc.norm_num_groups,
            norm_eps=uc.norm_eps,
            num_classes=uc.num_class_embeds,
            sequence=False,
        )
        fields.update(overrides)
        model = cls(**fields)
        state = unet.state_dict()
        missing, unexpected = model.load_state_dict(state, strict=False)
        new = ("prior_projector.", "attn_prior.", "norm_prior.", "encoder_hid_proj.")
        if uc.num_class_embeds is None:
            new += ("class_embedding.",)
        bad = [k for k in missing if not any(m in k for m in new + SEQUENCE_ONLY_MODULES)]
        if bad or unexpected:
            raise CheckpointError(
                f"SD UNet does not map: missing {bad[:10]}, unexpected {list(unexpected)[:10]}"
            )
        return model.place(unet.device, unet.dtype)


def finetune_parameters(model: SequenceUNet) -> list[tuple[str, nn.Parameter]]:
    """Parameters trained in the official sequence fine-tuning stage: SAM (`attn1`), the motion
    encoder and `insert_unit`, the query projections of both cross-attentions and the temporal
    attention. Everything else (ResNets, FF, key/value projections) stays frozen."""
    return [(n, p) for n, p in model.named_parameters() if any(m in n for m in FINETUNE_MODULES)]


def _validate(
    block_out_channels: Sequence[int],
    attention_levels: Sequence[bool],
    norm_num_groups: int,
    num_attention_heads: int,
    image_prior_pool: int,
    motion_embed_channels: Sequence[int],
) -> None:
    if len(attention_levels) != len(block_out_channels):
        raise ValueError("attention_levels needs one entry per block_out_channels level")
    for ch in block_out_channels:
        if ch % norm_num_groups or ch % num_attention_heads:
            raise ValueError(
                f"block channels {ch} must be divisible by norm_num_groups "
                f"({norm_num_groups}) and num_attention_heads ({num_attention_heads})"
            )
    if image_prior_pool < 1:
        raise ValueError("image_prior_pool must be >= 1")
    if len(motion_embed_channels) < 1:
        raise ValueError("motion_embed_channels needs at least one entry")


def _init_identity_fuse(conv: nn.Conv2d, channels: int) -> None:
    """3x3 conv on [features, motion] that passes `features` through and ignores `motion`."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        idx = torch.arange(channels)
        conv.weight[idx, idx, 1, 1] = 1.0
