"""The sequence LDM UNet: an SD-style 2D UNet inflated to clips with (2+1)D blocks.

Every 2D layer runs per frame on (B*F, C, h, w). The sequence model adds, per transformer
block, the Sequential Augmentation Module (key-frame attention, and Motion Field Attention at
the highest resolution) in place of self-attention and a zero-initialised temporal attention
after the feed-forward; and, at the input, the motion-field encoder fused with `conv_in` by
`insert_unit`. The same class with `sequence=False` is the 2D image model of the pretraining
stage; `SequenceUNet.from_2d` inflates it.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from ..weights import CheckpointError
from .attention import FrameContext, prepare_trajectories
from .blocks import DownBlock, MidBlock, UpBlock
from .config import LDMConfig
from .embeddings import ImagePriorProjector, MotionFieldEncoder

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


class SequenceUNet(nn.Module):
    """Class-, text-, image-prior- and motion-conditioned UNet over latent clips.

    Args:
        config: The hyperparameters (`LDMConfig.preset("sd14" | "small", ...)`).
    """

    def __init__(self, config: LDMConfig):
        super().__init__()
        self.config = config
        c = config
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
        if c.motion_enabled:
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
                sam=c.sam_enabled,
                mfa=c.mfa_enabled and level == 0,
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
        return self.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

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
        ds = self.config.latent_downsample
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
        if self.config.mfa_enabled and trajectories is not None:
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
        config = model_2d.config.replace(sequence=True, **overrides)
        model = cls(config)
        missing, unexpected = model.load_state_dict(model_2d.state_dict(), strict=False)
        bad = [k for k in missing if not any(m in k for m in SEQUENCE_ONLY_MODULES)]
        if bad or unexpected:
            raise CheckpointError(
                f"cannot inflate: missing {bad[:10]}, unexpected {list(unexpected)[:10]}"
            )
        return model.to(model_2d.device, model_2d.dtype)

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
        model = cls(LDMConfig(**fields))
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
        return model.to(unet.device, unet.dtype)


def finetune_parameters(model: SequenceUNet) -> list[tuple[str, nn.Parameter]]:
    """Parameters trained in the official sequence fine-tuning stage: SAM (`attn1`), the motion
    encoder and `insert_unit`, the query projections of both cross-attentions and the temporal
    attention. Everything else (ResNets, FF, key/value projections) stays frozen."""
    return [(n, p) for n, p in model.named_parameters() if any(m in n for m in FINETUNE_MODULES)]


def _init_identity_fuse(conv: nn.Conv2d, channels: int) -> None:
    """3x3 conv on [features, motion] that passes `features` through and ignores `motion`."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        idx = torch.arange(channels)
        conv.weight[idx, idx, 1, 1] = 1.0
