"""The filter's semantic-level video classifier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from services.models.classifier import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    VideoClassifier,
    VideoClassifierConfig,
    zscore,
)
from services.models.weights import CheckpointError

SMALL = VideoClassifierConfig(num_classes=3, widths=(8, 16, 32), groups=4)


@pytest.mark.parametrize(
    "shape",
    [(2, 8, 1, 32, 32), (1, 1, 1, 16, 16), (3, 5, 1, 33, 17), (1, 2, 1, 3, 4)],
    ids=["8x32x32", "single-frame", "odd-sizes", "tiny"],
)
def test_logits_shape_for_any_clip_size(shape: tuple[int, ...]) -> None:
    model = VideoClassifier(SMALL).eval()
    with torch.no_grad():
        logits = model(torch.rand(shape) * 2 - 1)
    assert logits.shape == (shape[0], 3) and torch.isfinite(logits).all()


def test_rejects_the_wrong_layout() -> None:
    with pytest.raises(ValueError, match="clips"):
        VideoClassifier(SMALL)(torch.zeros(2, 1, 8, 32, 32))  # (B, C, T, H, W) by mistake


def test_per_frame_zscore_ignores_brightness_and_contrast() -> None:
    x = torch.rand(2, 4, 1, 16, 16)
    scaled = x * torch.tensor([0.5, 2.0, 3.0, 0.1]).view(1, 4, 1, 1, 1) + 0.3
    torch.testing.assert_close(zscore(x, "frame"), zscore(scaled, "frame"), atol=1e-4, rtol=1e-4)
    normed = zscore(x, "frame")
    torch.testing.assert_close(normed.mean(dim=(2, 3, 4)), torch.zeros(2, 4), atol=1e-5, rtol=0)
    assert not zscore(torch.zeros(1, 2, 1, 4, 4), "clip").isnan().any()  # flat clip -> zeros


def test_save_reload_is_identical(tmp_path: Path) -> None:
    model = VideoClassifier(SMALL).eval()
    clips = torch.rand(2, 8, 1, 24, 24) * 2 - 1
    with torch.no_grad():
        before = model(clips)
    model.save_pretrained(tmp_path / "clf")
    assert json.loads((tmp_path / "clf" / CONFIG_NAME).read_text())["widths"] == [8, 16, 32]
    reloaded = VideoClassifier.from_pretrained(tmp_path / "clf")
    assert reloaded.config == SMALL and not reloaded.training
    with torch.no_grad():
        torch.testing.assert_close(reloaded(clips), before, rtol=0, atol=0)


def test_reload_with_a_mismatched_config_names_the_key(tmp_path: Path) -> None:
    VideoClassifier(SMALL).save_pretrained(tmp_path / "clf")
    config = json.loads((tmp_path / "clf" / CONFIG_NAME).read_text())
    config["num_classes"] = 5
    (tmp_path / "clf" / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"head\.weight: checkpoint \(3, 32\) vs model \(5, 32\)"
    ):
        VideoClassifier.from_pretrained(tmp_path / "clf")
    (tmp_path / "clf" / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        VideoClassifier.from_pretrained(tmp_path / "clf")


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        VideoClassifierConfig(num_classes=1)
    with pytest.raises(ValueError, match="multiples"):
        VideoClassifierConfig(widths=(8, 12), groups=8)
    with pytest.raises(ValueError, match="unknown classifier config keys"):
        VideoClassifierConfig.from_dict({"num_classes": 2, "depth": 50})


def _stripe_clips(n: int, vertical: bool, generator: torch.Generator) -> torch.Tensor:
    """Clips (n, 6, 1, 24, 24) of drifting stripes plus noise, in [-1, 1]."""
    t = torch.arange(6).view(1, 6, 1, 1, 1)
    coord = (
        torch.arange(24).view(1, 1, 1, 1, 24) if vertical else torch.arange(24).view(1, 1, 1, 24, 1)
    )
    phase = torch.rand(n, 1, 1, 1, 1, generator=generator) * 6.28
    clips = torch.sin(coord * 0.8 + t * 0.5 + phase).expand(n, 6, 1, 24, 24)
    return (clips + 0.3 * torch.randn(n, 6, 1, 24, 24, generator=generator)).clamp(-1, 1)


def test_overfits_two_synthetic_classes_quickly() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    clips = torch.cat([_stripe_clips(4, False, g), _stripe_clips(4, True, g)])
    labels = torch.tensor([0] * 4 + [1] * 4)
    model = VideoClassifier(VideoClassifierConfig(num_classes=2, widths=(8, 16), groups=4))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        loss = F.cross_entropy(model(clips), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(clips)
    assert (logits.argmax(1) == labels).all()
    assert F.cross_entropy(logits, labels).item() < 0.2
