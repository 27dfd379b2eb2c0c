"""Condition dropout frequencies (seeded) and the cosine schedule with warm-up."""

import pytest
import torch

from services.models.training.common import cosine_with_warmup
from services.models.training.conditioning import apply_drop, keep_and_drop, text_drop_flags

N = 200_000


def test_keep_and_drop_frequencies():
    g = torch.Generator().manual_seed(0)
    drop_prior, drop_motion = keep_and_drop(N, g)
    both = (drop_prior & drop_motion).float().mean().item()
    neither = (~drop_prior & ~drop_motion).float().mean().item()
    # keep all 0.1 + 0.8 x 0.25; drop both 0.1 + 0.8 x 0.25; each alone 0.8 x 0.25.
    assert drop_prior.float().mean().item() == pytest.approx(0.5, abs=0.006)
    assert drop_motion.float().mean().item() == pytest.approx(0.5, abs=0.006)
    assert both == pytest.approx(0.3, abs=0.006)
    assert neither == pytest.approx(0.3, abs=0.006)
    only_prior = (drop_prior & ~drop_motion).float().mean().item()
    assert only_prior == pytest.approx(0.2, abs=0.006)


def test_keep_and_drop_is_seeded():
    a = keep_and_drop(64, torch.Generator().manual_seed(7))
    b = keep_and_drop(64, torch.Generator().manual_seed(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_text_is_dropped_more_often_when_prior_and_motion_are():
    g = torch.Generator().manual_seed(1)
    drop_prior, drop_motion = keep_and_drop(N, g)
    text = text_drop_flags(drop_prior, drop_motion, 0.1, 0.5, generator=g)
    both = drop_prior & drop_motion
    assert text[both].float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert text[~both].float().mean().item() == pytest.approx(0.1, abs=0.01)


def test_apply_drop_zeros_rows():
    x = torch.ones(3, 2, 4)
    out = apply_drop(x, torch.tensor([False, True, False]))
    assert out[1].abs().sum() == 0 and out[0].sum() == 8 and out[2].sum() == 8


def test_cosine_with_warmup():
    f = cosine_with_warmup(10, 110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.05 + 0.95 * 0.5)
    assert f(110) == pytest.approx(0.05) and f(500) == pytest.approx(0.05)
