"""Down, mid and up blocks of the inflated UNet: diffusers ResNets and samplers applied per frame.

Layout and parameter names mirror diffusers' `CrossAttnDownBlock2D` / `DownBlock2D`,
`UNetMidBlock2DCrossAttn` and `CrossAttnUpBlock2D` / `UpBlock2D`, so SD-1.4 UNet weights map by
name. Hidden states here are per frame, (B*F, C, h, w); text and prior tokens per clip, (B, L, D).
"""

from __future__ import annotations

import torch
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

from .attention import FrameContext, SequenceTransformer


def _resnet(in_ch: int, out_ch: int, temb: int, groups: int, eps: float) -> ResnetBlock2D:
    return ResnetBlock2D(
        in_channels=in_ch, out_channels=out_ch, temb_channels=temb, groups=groups, eps=eps
    )


def _transformers(
    channels: int, groups: int, num_layers: int, transformer_kwargs: dict | None
) -> nn.ModuleList | None:
    """One transformer per ResNet layer, or None for a block without attention."""
    if transformer_kwargs is None:
        return None
    return nn.ModuleList(
        [SequenceTransformer(channels, groups, **transformer_kwargs) for _ in range(num_layers)]
    )


class DownBlock(nn.Module):
    """ResNet (+ transformer) layers, then an optional stride-2 conv downsampler."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        add_downsample: bool,
        groups: int,
        eps: float,
        transformer_kwargs: dict | None,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                _resnet(in_ch, out_channels, temb_channels, groups, eps)
                for in_ch in [in_channels] + [out_channels] * (num_layers - 1)
            ]
        )
        self.attentions = _transformers(out_channels, groups, num_layers, transformer_kwargs)
        self.downsamplers = (
            nn.ModuleList(
                [Downsample2D(out_channels, use_conv=True, out_channels=out_channels, name="op")]
            )
            if add_downsample
            else None
        )

    def forward(self, x, temb, ctx: FrameContext, text=None, prior=None):
        """Returns the output and the skip tensors (one per layer, plus the downsampled one)."""
        skips: list[torch.Tensor] = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, ctx, text=text, prior=prior)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class MidBlock(nn.Module):
    """ResNet -> transformer -> ResNet at the lowest resolution."""

    def __init__(self, channels, temb_channels, groups, eps, transformer_kwargs: dict):
        super().__init__()
        self.resnets = nn.ModuleList(
            [_resnet(channels, channels, temb_channels, groups, eps) for _ in range(2)]
        )
        self.attentions = nn.ModuleList(
            [SequenceTransformer(channels, groups, **transformer_kwargs)]
        )

    def forward(self, x, temb, ctx: FrameContext, text=None, prior=None):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, ctx, text=text, prior=prior)
        return self.resnets[1](x, temb)


class UpBlock(nn.Module):
    """ResNet layers on [x, skip] (+ transformers), then an optional nearest x2 + conv upsampler."""

    def __init__(
        self,
        in_channels: int,
        prev_output_channels: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        add_upsample: bool,
        groups: int,
        eps: float,
        transformer_kwargs: dict | None,
    ):
        super().__init__()
        resnets = []
        for i in range(num_layers):
            skip_ch = in_channels if i == num_layers - 1 else out_channels
            res_in = prev_output_channels if i == 0 else out_channels
            resnets.append(_resnet(res_in + skip_ch, out_channels, temb_channels, groups, eps))
        self.resnets = nn.ModuleList(resnets)
        self.attentions = _transformers(out_channels, groups, num_layers, transformer_kwargs)
        self.upsamplers = (
            nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])
            if add_upsample
            else None
        )

    def forward(self, x, skips: list[torch.Tensor], temb, ctx: FrameContext, text=None, prior=None):
        """Consumes `skips` from the end (the most recent first); upsamples to the next skip."""
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, ctx, text=text, prior=prior)
        if self.upsamplers is not None:
            size = tuple(skips[-1].shape[-2:]) if skips else None
            x = self.upsamplers[0](x, output_size=size)
        return x
