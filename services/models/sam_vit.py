"""SAM ViT image encoder (ViT-B for MedSAM), written for inference.

Module names and shapes follow the `image_encoder.*` part of SAM / MedSAM checkpoints
(`medsam_vit_b.pth`), so that part loads with `strict=True`:

- `patch_embed.proj`: 16x16 stride-16 conv, 3 -> 768 channels (1024x1024 -> 64x64 tokens);
- `pos_embed`: absolute position embedding (1, 64, 64, 768);
- `blocks.{i}`: pre-norm transformer blocks with decomposed relative position bias
  (`attn.rel_pos_h`, `attn.rel_pos_w`), windowed (14x14) except the global blocks 2, 5, 8, 11;
- `neck`: 1x1 conv -> LayerNorm2d -> 3x3 conv -> LayerNorm2d, giving (256, 64, 64).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from services.models.tiny_vit import LayerNorm2d

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamViTConfig:
    """Hyperparameters of a SAM ViT image encoder; the defaults are ViT-B (MedSAM).

    Attributes:
        img_size: Input side (square).
        patch_size: Patch side; the embedding grid is `img_size // patch_size`.
        embed_dim: Token width.
        depth: Transformer blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width over token width.
        out_chans: Channels of the output embedding.
        window_size: Side of the attention window in windowed blocks.
        global_attn_indexes: Blocks that attend over the whole grid.
    """

    img_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_chans: int = 256
    window_size: int = 14
    global_attn_indexes: Sequence[int] = field(default=(2, 5, 8, 11))

    @property
    def grid(self) -> int:
        """Side of the token grid (and of the output embedding)."""
        return self.img_size // self.patch_size


def _relative_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Gathers the relative-position table (q_size, k_size, C) for one axis.

    The stored table has `2 * max(q, k) - 1` rows; a table of another length is resized linearly.
    """
    rows = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != rows:
        rel_pos = F.interpolate(rel_pos.T[None], size=rows, mode="linear")[0].T
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


class Attention(nn.Module):
    """Multi-head attention with decomposed (height + width) relative position bias.

    Args:
        dim: Token width.
        num_heads: Attention heads.
        grid: Side of the (square) token grid the block attends over: the window side for
            windowed blocks, the whole grid for global ones.
    """

    def __init__(self, dim: int, num_heads: int, grid: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid - 1, self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attends over a (B, H, W, C) grid and returns the same shape."""
        b, h, w, c = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, HW, hd)
        rh = _relative_table(h, h, self.rel_pos_h).to(q.dtype)  # (H, H, hd)
        rw = _relative_table(w, w, self.rel_pos_w).to(q.dtype)  # (W, W, hd)
        rq = q.reshape(b, self.num_heads, h, w, self.head_dim)
        bias_h = torch.einsum("bnhwc,hkc->bnhwk", rq, rh)  # (B, heads, H, W, kH)
        bias_w = torch.einsum("bnhwc,wkc->bnhwk", rq, rw)  # (B, heads, H, W, kW)
        bias = (bias_h[..., :, None] + bias_w[..., None, :]).reshape(
            b, self.num_heads, h * w, h * w
        )
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, c))


class MLPBlock(nn.Module):
    """Two-layer MLP with GELU (keys `lin1`, `lin2`)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class Block(nn.Module):
    """Pre-norm transformer block on a (B, H, W, C) grid, windowed when `window_size > 0`."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, grid: int
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, window_size if window_size > 0 else grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        ws = self.window_size
        if ws > 0:
            b, h, w, c = x.shape
            pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
            if pad_h or pad_w:
                x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
            ph, pw = h + pad_h, w + pad_w
            x = x.view(b, ph // ws, ws, pw // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
            x = self.attn(x.reshape(-1, ws, ws, c))
            x = x.view(b, ph // ws, pw // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
            x = x.reshape(b, ph, pw, c)[:, :h, :w]
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection; returns channels-last (B, H/p, W/p, C)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class SamViTEncoder(nn.Module):
    """SAM ViT image encoder: (B, 3, S, S) in [0, 1] -> (B, out_chans, S/16, S/16).

    Args:
        config: Hyperparameters; the default is ViT-B as in MedSAM.
    """

    def __init__(self, config: SamViTConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or SamViTConfig()
        self.patch_embed = PatchEmbed(cfg.patch_size, 3, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid, cfg.grid, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                cfg.embed_dim,
                cfg.num_heads,
                cfg.mlp_ratio,
                0 if i in cfg.global_attn_indexes else cfg.window_size,
                cfg.grid,
            )
            for i in range(cfg.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.embed_dim, cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encodes preprocessed images (B, 3, S, S) into embeddings (B, out_chans, S/16, S/16)."""
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
