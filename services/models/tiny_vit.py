"""TinyViT image encoder as used by LiteMedSAM (distilled MedSAM), written without timm.

The module names and parameter shapes follow the `image_encoder.*` part of `lite_medsam.pth`
exactly, so that state dict loads with `strict=True`. Inference only: stochastic depth
(DropPath) is the identity at inference and is therefore left out; there are no parameters for it.

Layout for the LiteMedSAM configuration (256x256 input):

- patch embedding: two 1x1 conv+BN (stride 1), 3 -> 32 -> 64 channels, at 256x256;
- stage 0: 2 MBConv blocks (64 ch, 256x256), then patch merging (stride 2) -> 128 ch, 128x128;
- stage 1: 2 TinyViT blocks (window 7), merging (stride 2) -> 160 ch, 64x64;
- stage 2: 6 TinyViT blocks (window 14), merging (stride 1) -> 320 ch, 64x64;
- stage 3: 2 TinyViT blocks (window 7);
- neck: 1x1 conv -> LayerNorm2d -> 3x3 conv -> LayerNorm2d, giving (256, 64, 64).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


class ConvBN(nn.Sequential):
    """Bias-free convolution followed by BatchNorm (keys `c.*` and `bn.*`)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.add_module(
            "c", nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, groups=groups, bias=False)
        )
        self.add_module("bn", nn.BatchNorm2d(out_ch))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) map."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PatchEmbed(nn.Module):
    """Pointwise stem: conv+BN -> GELU -> conv+BN, keeping the input resolution."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(in_chans, embed_dim // 2), nn.GELU(), ConvBN(embed_dim // 2, embed_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand -> 3x3 depthwise -> 1x1 project, plus the shortcut."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.act1 = nn.GELU()
        self.conv2 = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = ConvBN(hidden, dim)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Downsampling between stages; returns tokens (B, L, out_dim).

    Args:
        resolution: (H, W) of the incoming feature map.
        dim: Incoming channels.
        out_dim: Outgoing channels.
        stride: Stride of the depthwise 3x3 conv (1 keeps the resolution).
    """

    def __init__(self, resolution: tuple[int, int], dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.act = nn.GELU()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            h, w = self.resolution
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside one window, with a learned bias per relative offset.

    The bias table holds one value per head and per absolute offset (|dy|, |dx|) inside the
    window; the qkv projection is laid out per head as [q, k, v].

    Args:
        dim: Token width.
        num_heads: Attention heads (head width `dim // num_heads`).
        window_size: Side of the square window.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        coords = torch.stack(
            torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
        ).flatten(1)  # (2, N)
        offsets = (coords[:, :, None] - coords[:, None, :]).abs()  # (2, N, N)
        self.register_buffer("bias_index", offsets[0] * window_size + offsets[1], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.head_dim, dim=-1)
        bias = self.attention_biases[:, self.bias_index].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
    """Pre-norm two-layer MLP with GELU."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention -> depthwise 3x3 conv+BN -> MLP, on tokens (B, H*W, C).

    The map is zero-padded to a multiple of the window before attention (padded tokens take
    part in attention, as in the original) and cropped afterwards.
    """

    def __init__(
        self,
        dim: int,
        resolution: tuple[int, int],
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int = 3,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.window_size = window_size
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        pad = local_conv_size // 2
        self.local_conv = ConvBN(dim, dim, local_conv_size, 1, pad, groups=dim)

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        ws = self.window_size
        b, n, c = x.shape
        if h == ws and w == ws:
            return self.attn(x)
        x = x.view(b, h, w, c)
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        x = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        x = self.attn(x)
        x = x.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        return x[:, :h, :w].reshape(b, n, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, n, c = x.shape
        if n != h * w:
            raise ValueError(f"expected {h}x{w}={h * w} tokens, got {n}")
        x = x + self._windowed_attention(x)
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w))
        x = x.view(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    """Stage 0: MBConv blocks then patch merging."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class TransformerStage(nn.Module):
    """Stages 1-3: TinyViT blocks then (except the last stage) patch merging."""

    def __init__(self, blocks: list[TinyViTBlock], downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """TinyViT image encoder with the SAM neck (LiteMedSAM's `image_encoder`).

    Args:
        img_size: Input side (square), 256 for LiteMedSAM.
        in_chans: Input channels (3; grey frames are replicated).
        embed_dims: Channels of the four stages.
        depths: Blocks per stage.
        num_heads: Attention heads of stages 1-3 (entry 0 is unused: stage 0 is convolutional).
        window_sizes: Attention windows of stages 1-3 (entry 0 unused).
        mlp_ratio: MLP hidden width over token width.
        mbconv_expand_ratio: Expansion of the stage-0 MBConv blocks.
        out_chans: Channels of the output embedding.

    Input (B, 3, img_size, img_size) -> output (B, out_chans, img_size / 4, img_size / 4).
    """

    def __init__(
        self,
        img_size: int = 256,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        if len(embed_dims) != 4 or len(depths) != 4:
            raise ValueError("TinyViT here has exactly four stages")
        # Stage resolutions: full, /2, /4, /4 (the last merge keeps the resolution).
        sides = [img_size, img_size // 2, img_size // 4, img_size // 4]
        self.out_side = sides[-1]
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        self.layers = nn.ModuleList()
        for i in range(4):
            res = (sides[i], sides[i])
            merge = None
            if i < 3:
                stride = sides[i] // sides[i + 1]
                merge = PatchMerging(res, embed_dims[i], embed_dims[i + 1], stride)
            if i == 0:
                self.layers.append(ConvStage(embed_dims[0], depths[0], mbconv_expand_ratio, merge))
                continue
            blocks = [
                TinyViTBlock(embed_dims[i], res, num_heads[i], window_sizes[i], mlp_ratio)
                for _ in range(depths[i])
            ]
            self.layers.append(TransformerStage(blocks, merge))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encodes preprocessed images (B, 3, S, S) into embeddings (B, out_chans, S/4, S/4)."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        x = x.view(b, self.out_side, self.out_side, c).permute(0, 3, 1, 2)
        return self.neck(x)


def build_litemedsam_encoder() -> TinyViT:
    """Returns the TinyViT configured as LiteMedSAM's image encoder (random weights)."""
    return TinyViT()
