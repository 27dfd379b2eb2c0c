"""Sequential Augmentation Module, Motion Field Attention and the (2+1)D transformer blocks.

SAM's key-frame attention and MFA are diffusers attention processors (`KeyFrameAttnProcessor`,
`MotionFieldAttnProcessor`) on the blocks' `attn1`, so `SequenceUNet.attn_processors` lists
them and `set_attn_processor` swaps them like any other processor.

Token layout: hidden states inside the UNet are per frame, (B*F, h*w, C) with frames of one clip
adjacent. Trajectory points are `(t, row, col)` triples, the reference's `(t, x, y)` with x the
row (it gathers `key[b, t, x, y]` on a (b, f, h, w) tensor) and what the motion extractor sends;
point (t, row, col) has flat index `t*h*w + row*w + col` in the clip's (F*h*w) token sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn


@dataclass
class FrameContext:
    """Per-forward sequence information shared by every transformer block.

    Attributes:
        num_frames: Frames per clip (F); hidden states hold B*F frames.
        traj_index: (B, N, S) int64 flat token indices of each token's trajectory slots
            (N = F*h*w at latent resolution), or None: no Motion Field Attention.
        traj_mask: (B, N, S) bool, True where a slot takes part (slot 0, the token itself,
            always does).
    """

    num_frames: int
    traj_index: torch.Tensor | None = None
    traj_mask: torch.Tensor | None = None


def prepare_trajectories(
    trajectories: torch.Tensor,
    mask: torch.Tensor | None,
    num_frames: int,
    height: int,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Converts (t, row, col) trajectories into flat token indices for Motion Field Attention.

    Args:
        trajectories: (N, S, 3) or (B, N, S, 3) int64 of (t, row, col) at latent resolution,
            N = F*h*w in flat token order. Slot 0 is the token itself; the last F-1 slots are
            the other points of its trajectory (any slots in between, such as the official
            format's 8 spatial neighbours, are dropped). S <= F keeps every slot.
        mask: (N, S) / (B, N, S) bool validity, or None (all valid).
        num_frames: F.
        height: Latent rows h.
        width: Latent columns w.

    Returns:
        index (B', N, S') int64 and mask (B', N, S') bool with slot 0 always valid; B' is 1
        for unbatched input (broadcast over the batch).

    Raises:
        ValueError: Wrong shape, or a valid slot outside the (F, h, w) grid.
    """
    if trajectories.dim() == 3:
        trajectories = trajectories.unsqueeze(0)
        mask = None if mask is None else mask.unsqueeze(0)
    n_tokens = num_frames * height * width
    if trajectories.dim() != 4 or trajectories.shape[-1] != 3:
        raise ValueError(f"trajectories must be (B, N, S, 3), got {tuple(trajectories.shape)}")
    if trajectories.shape[1] != n_tokens:
        raise ValueError(
            f"trajectories have {trajectories.shape[1]} points, expected F*h*w = {n_tokens} "
            f"({num_frames}x{height}x{width} latent grid)"
        )
    if mask is None:
        mask = torch.ones(trajectories.shape[:3], dtype=torch.bool, device=trajectories.device)
    if mask.shape != trajectories.shape[:3]:
        raise ValueError(f"trajectory mask {tuple(mask.shape)} does not match trajectories")
    slots = trajectories.shape[2]
    if slots > num_frames:
        keep = [0, *range(slots - (num_frames - 1), slots)]
        trajectories, mask = trajectories[:, :, keep], mask[:, :, keep]
    mask = mask.clone()
    mask[:, :, 0] = True
    t, row, col = trajectories.long().unbind(-1)
    inside = (t >= 0) & (t < num_frames) & (row >= 0) & (row < height) & (col >= 0) & (col < width)
    if bool((mask & ~inside).any()):
        raise ValueError("a valid trajectory slot lies outside the latent grid")
    index = torch.where(mask, t * (height * width) + row * width + col, torch.zeros_like(t))
    return index, mask


def identity_trajectories(num_frames: int, height: int, width: int) -> tuple[torch.Tensor, ...]:
    """Trajectories in which every token is alone: (N, F, 3) and mask (N, F), MFA is a no-op."""
    t, y, x = torch.meshgrid(
        torch.arange(num_frames), torch.arange(height), torch.arange(width), indexing="ij"
    )
    traj = torch.zeros(num_frames * height * width, num_frames, 3, dtype=torch.long)
    traj[:, 0] = torch.stack([t.flatten(), y.flatten(), x.flatten()], dim=-1)
    mask = torch.zeros(traj.shape[:2], dtype=torch.bool)
    mask[:, 0] = True
    return traj, mask


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, tokens, heads*d) -> (batch, heads, tokens, d)."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


class KeyFrameAttnProcessor:
    """SAM's key-frame attention as a diffusers attention processor (for `attn1`).

    Frame i of a clip attends to frames 0 and i-1 (frame 0 to itself twice), with the layer's
    own `to_q`/`to_k`/`to_v`/`to_out`, so it starts from the 2D model's self-attention weights.
    Needs `frame_context=` (the clip's frame count) from the caller, like any processor's extra
    `cross_attention_kwargs`.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        frame_context: FrameContext | None = None,
    ) -> torch.Tensor:
        """Args: hidden_states (B*F, n, C) normalised, frames of a clip adjacent.

        Returns:
            (B*F, n, C) after `to_out`.
        """
        if frame_context is None:
            raise ValueError(f"{type(self).__name__} needs frame_context (frames per clip)")
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(f"{type(self).__name__} is a self-attention without a mask")
        out = self._key_frame_attention(attn, hidden_states, frame_context.num_frames)
        out = self._after_key_frames(out, attn.heads, frame_context)
        return attn.to_out[1](attn.to_out[0](out))

    @staticmethod
    def _key_frame_attention(attn: Attention, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """(B*F, n, C) -> (B*F, n, heads*d): head outputs merged, before `to_out`."""
        bf, n, _ = x.shape
        b = bf // num_frames
        query = attn.to_q(x)
        key = attn.to_k(x).view(b, num_frames, n, -1)
        value = attn.to_v(x).view(b, num_frames, n, -1)
        first = torch.zeros(num_frames, dtype=torch.long, device=x.device)
        prev = (torch.arange(num_frames, device=x.device) - 1).clamp(min=0)
        key = torch.cat([key[:, first], key[:, prev]], dim=2).reshape(bf, 2 * n, -1)
        value = torch.cat([value[:, first], value[:, prev]], dim=2).reshape(bf, 2 * n, -1)
        out = F.scaled_dot_product_attention(
            _heads(query, attn.heads), _heads(key, attn.heads), _heads(value, attn.heads)
        )
        return out.transpose(1, 2).reshape(bf, n, -1)

    def _after_key_frames(
        self, features: torch.Tensor, heads: int, ctx: FrameContext
    ) -> torch.Tensor:
        """(B*F, n, C) before `to_out`: key-frame attention alone passes it through."""
        return features


class MotionFieldAttnProcessor(KeyFrameAttnProcessor):
    """Key-frame attention, then Motion Field Attention, before `to_out` (the highest-resolution
    `attn1` layers). Without trajectories in the frame context it is key-frame attention."""

    def _after_key_frames(
        self, features: torch.Tensor, heads: int, ctx: FrameContext
    ) -> torch.Tensor:
        if ctx.traj_index is None:
            return features
        return self.attend_along_trajectories(features, heads, ctx)

    @staticmethod
    def attend_along_trajectories(
        features: torch.Tensor, heads: int, ctx: FrameContext
    ) -> torch.Tensor:
        """Motion Field Attention: each token attends over itself and its trajectory's tokens.

        q = k = v = `features` split into heads, no projections; masked slots get -inf.

        Args:
            features: (B*F, n, C) key-frame attention output (before `to_out`).
            heads: Number of heads.
            ctx: Frame context holding `traj_index` / `traj_mask` (B or 1, F*n, S).

        Returns:
            (B*F, n, C).
        """
        bf, n, c = features.shape
        b = bf // ctx.num_frames
        tokens = features.reshape(b, ctx.num_frames * n, c)
        index, mask = ctx.traj_index, ctx.traj_mask
        if index.shape[0] != b:
            index, mask = index.expand(b, -1, -1), mask.expand(b, -1, -1)
        big_n, slots = index.shape[1], index.shape[2]
        gathered = torch.gather(
            tokens, 1, index.reshape(b, big_n * slots, 1).expand(-1, -1, c)
        )  # (B, N*S, C)
        d = c // heads
        query = tokens.reshape(b * big_n, heads, 1, d)
        kv = gathered.reshape(b * big_n, slots, heads, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            query, kv, kv, attn_mask=mask.reshape(b * big_n, 1, 1, slots)
        )
        return out.reshape(bf, n, c)


class SequenceTransformerBlock(nn.Module):
    """One transformer block: (SAM or self-attention), text + image-prior cross-attention,
    feed-forward and, in the sequence model, temporal attention.

    Parameter names follow diffusers' `BasicTransformerBlock` (`norm1/attn1/norm2/attn2/norm3/ff`)
    so SD-1.4 weights load by name; `norm_prior/attn_prior` (the parallel image-prior
    cross-attention) and `norm_temp/attn_temp` are new.

    Args:
        dim: Channels.
        heads: Attention heads.
        cross_attention_dim: Text and prior token width.
        image_prior: Build the parallel image-prior cross-attention.
        sequence: Build the temporal attention (output projection zero-initialised).
        sam: `attn1` runs `KeyFrameAttnProcessor` instead of per-frame self-attention.
        mfa: `attn1` runs `MotionFieldAttnProcessor` (key-frame attention, then MFA when
            trajectories are given).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        cross_attention_dim: int,
        image_prior: bool,
        sequence: bool,
        sam: bool,
        mfa: bool,
    ):
        super().__init__()
        head_dim = dim // heads
        self.norm1 = nn.LayerNorm(dim)
        spatial = MotionFieldAttnProcessor() if mfa else KeyFrameAttnProcessor() if sam else None
        self.attn1 = Attention(dim, heads=heads, dim_head=head_dim, bias=False, processor=spatial)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(
            dim, cross_attention_dim=cross_attention_dim, heads=heads, dim_head=head_dim
        )
        if image_prior:
            self.norm_prior = nn.LayerNorm(dim)
            self.attn_prior = Attention(
                dim, cross_attention_dim=cross_attention_dim, heads=heads, dim_head=head_dim
            )
        else:
            self.norm_prior = self.attn_prior = None
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")
        if sequence:
            self.norm_temp = nn.LayerNorm(dim)
            self.attn_temp = Attention(dim, heads=heads, dim_head=head_dim, bias=False)
            nn.init.zeros_(self.attn_temp.to_out[0].weight)
            nn.init.zeros_(self.attn_temp.to_out[0].bias)
        else:
            self.norm_temp = self.attn_temp = None

    def _spatial_attention(self, x: torch.Tensor, ctx: FrameContext) -> torch.Tensor:
        # Only the sequence processors take the frame context (diffusers warns on extra kwargs).
        if isinstance(self.attn1.processor, KeyFrameAttnProcessor):
            return self.attn1(x, frame_context=ctx)
        return self.attn1(x)

    def forward(
        self,
        x: torch.Tensor,
        ctx: FrameContext,
        text: torch.Tensor | None = None,
        prior: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args: x (B*F, n, C); text (B, L, D) or None; prior tokens (B, T, D) or None.

        The conditions are the same for every frame of a clip, so the cross-attentions run
        with the clip's F*n queries against one copy of the tokens (identical to per-frame
        attention, without F copies of the key/value projections).
        """
        x = x + self._spatial_attention(self.norm1(x), ctx)
        bf, n, c = x.shape
        clip = (bf // ctx.num_frames, ctx.num_frames * n, c)
        cross = None
        if text is not None:
            cross = self.attn2(self.norm2(x).reshape(clip), encoder_hidden_states=text)
        if prior is not None and self.attn_prior is not None:
            p = self.attn_prior(self.norm_prior(x).reshape(clip), encoder_hidden_states=prior)
            cross = p if cross is None else cross + p
        if cross is not None:
            x = x + cross.reshape(bf, n, c)
        x = x + self.ff(self.norm3(x))
        if self.attn_temp is not None:
            f = ctx.num_frames
            xt = x.reshape(bf // f, f, n, c).transpose(1, 2).reshape(-1, f, c)
            xt = self.attn_temp(self.norm_temp(xt))
            x = x + xt.reshape(bf // f, n, f, c).transpose(1, 2).reshape(bf, n, c)
        return x


class SequenceTransformer(nn.Module):
    """GroupNorm -> 1x1 conv in -> transformer block(s) -> 1x1 conv out, plus the residual.

    Mirrors diffusers' `Transformer2DModel` (SD-1.4 uses the conv projections) on (B*F, C, h, w).
    """

    def __init__(self, dim: int, norm_num_groups: int, depth: int = 1, **block_kwargs):
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, dim, eps=1e-6)
        self.proj_in = nn.Conv2d(dim, dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [SequenceTransformerBlock(dim, **block_kwargs) for _ in range(depth)]
        )
        self.proj_out = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(
        self,
        x: torch.Tensor,
        ctx: FrameContext,
        text: torch.Tensor | None = None,
        prior: torch.Tensor | None = None,
    ) -> torch.Tensor:
        bf, c, h, w = x.shape
        hidden = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            hidden = block(hidden, ctx, text=text, prior=prior)
        hidden = hidden.transpose(1, 2).reshape(bf, c, h, w)
        return self.proj_out(hidden) + x
