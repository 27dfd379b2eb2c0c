"""Condition dropout of the reference trainers, so classifier-free guidance has an
unconditional branch to contrast with.

`keep_and_drop` (sequence stage): with p=0.1 keep every condition, with p=0.1 drop both the
image prior and the motion field, otherwise drop each independently with p=0.5. Dropped inputs
become zeros. The class label and the trajectories are never dropped. Captions: the reference
always trains on ""; here the clip's caption is used and replaced by "" with probability
`text_drop`, raised to `text_drop_uncond` when prior and motion are both dropped, so the fully
unconditional input of guidance (empty text, zero prior, zero motion) is seen often enough.
"""

from __future__ import annotations

import torch

KEEP_ALL_P = 0.1
DROP_BOTH_P = 0.1
DROP_EACH_P = 0.5


def keep_and_drop(
    batch: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample drop flags (drop_prior, drop_motion), bool (batch,) each.

    Marginals: each condition is dropped with p = 0.1 + 0.8 x 0.5 = 0.5; both together with
    p = 0.1 + 0.8 x 0.25 = 0.3; neither with p = 0.1 + 0.8 x 0.25 = 0.3.
    """
    u = torch.rand(batch, generator=generator)
    each = torch.rand(batch, 2, generator=generator) < DROP_EACH_P
    keep_all = u < KEEP_ALL_P
    drop_both = (u >= KEEP_ALL_P) & (u < KEEP_ALL_P + DROP_BOTH_P)
    independent = ~(keep_all | drop_both)
    drop_prior = drop_both | (independent & each[:, 0])
    drop_motion = drop_both | (independent & each[:, 1])
    return drop_prior, drop_motion


def text_drop_flags(
    drop_prior: torch.Tensor,
    drop_motion: torch.Tensor,
    text_drop: float,
    text_drop_uncond: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Which captions become "" (bool, same shape as the flags)."""
    p = torch.where(drop_prior & drop_motion, text_drop_uncond, text_drop)
    return torch.rand(drop_prior.shape, generator=generator) < p


def apply_drop(x: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """Zeros the rows of `x` where `drop` is True."""
    keep = (~drop).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return x * keep.to(x.device)
