"""The study's downstream classifier: one arm's training set in, test metrics out.

The network is the project's video classifier (`services.models.classifier`) trained with the
shared loop (`services.models.training.common.Trainer`: AdamW, warm-up + cosine, clipping),
class-balanced batches as `genaug train classifier` draws them (each class as often; within a
class, real and synthetic clips alike), a fixed number of steps for every arm (equal compute).
Only arm (b) augments: `conventional_augment` (the filter classifier's flips, time reversal,
shifts and gain/bias, plus temporal jitter and random crops). No test clip is ever passed here
for training; `evaluate` only predicts.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clients.study.metrics import scores
from services.models.classifier import VideoClassifier, VideoClassifierConfig
from services.models.training.classifier import augment as class_preserving_augment
from services.models.training.classifier import predict
from services.models.training.common import Trainer, TrainSettings
from services.models.training.data import to_unit


@dataclass(frozen=True)
class ClassifierRecipe:
    """How every arm's classifier is trained (the same for all arms)."""

    # 120, not 240: on PhantomHard's low-data regime the real-only classifier scored the same
    # at both (macro-F1 0.627 / 0.548 at 120 steps, 0.635 / 0.551 at 240, seeds 0 / 1), and the
    # 50 classifier runs were about 21 of the study's ~72 minutes at 240.
    steps: int = 120
    batch_size: int = 8
    lr: float = 2e-3
    warmup_steps: int = 20
    widths: tuple[int, ...] = (16, 32, 64)
    dropout: float = 0.1

    def as_dict(self) -> dict:
        data = asdict(self)
        data["widths"] = list(self.widths)
        return data


@dataclass
class TrainingSet:
    """Clips (N, T, H, W) uint8, labels (N,) int64, and which clips are synthetic (N,) bool."""

    frames: np.ndarray
    labels: np.ndarray
    synthetic: np.ndarray

    def __post_init__(self) -> None:
        if not len(self.frames) == len(self.labels) == len(self.synthetic):
            raise ValueError("frames, labels and synthetic must have the same length")


def to_model_input(frames: np.ndarray) -> torch.Tensor:
    """uint8 (N, T, H, W) -> float (N, T, 1, H, W) in [-1, 1]."""
    return to_unit(frames).unsqueeze(2)


def _temporal_jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per clip, shift time by -1..1 frames and repeat or skip one frame (edge frames held)."""
    b, t = x.shape[:2]
    base = torch.arange(t)
    out = []
    for i in range(b):
        shift = int(torch.randint(-1, 2, (), generator=generator))
        index = base + shift
        if t > 2 and float(torch.rand((), generator=generator)) < 0.5:
            at = int(torch.randint(1, t - 1, (), generator=generator))
            step = 1 if float(torch.rand((), generator=generator)) < 0.5 else -1
            index = torch.where(base >= at, index + step, index)
        out.append(x[i, index.clamp(0, t - 1)])
    return torch.stack(out)


def _random_crop(x: torch.Tensor, generator: torch.Generator, smallest: float = 0.8):
    """Per clip, crop 80-100% of each side at a random place and resize back."""
    b, t, c, h, w = x.shape
    out = []
    for i in range(b):
        side = float(smallest + (1 - smallest) * torch.rand((), generator=generator))
        ch, cw = max(2, round(h * side)), max(2, round(w * side))
        top = int(torch.randint(0, h - ch + 1, (), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (), generator=generator))
        crop = x[i, :, :, top : top + ch, left : left + cw]
        out.append(F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False))
    return torch.stack(out)


def conventional_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Arm (b): flips, time reversal, shifts, gain/bias (the filter classifier's), then
    temporal jitter and random crops. Clips (B, T, 1, H, W) in [-1, 1]."""
    x = class_preserving_augment(x, generator)
    x = _temporal_jitter(x, generator)
    return _random_crop(x, generator).clamp(-1, 1)


def train_classifier(
    data: TrainingSet,
    num_classes: int,
    recipe: ClassifierRecipe,
    seed: int,
    out_dir: Path,
    augment: bool = False,
) -> tuple[VideoClassifier, dict]:
    """Train one classifier from scratch; returns it (eval mode) and a training summary."""
    x = to_model_input(data.frames)
    y = torch.from_numpy(data.labels.astype(np.int64))
    by_class = [torch.nonzero(y == c).flatten() for c in range(num_classes)]
    present = [c for c in range(num_classes) if len(by_class[c])]
    if len(present) < 2:
        raise ValueError("a training set needs clips of at least two classes")
    config = VideoClassifierConfig(
        num_classes=num_classes, widths=tuple(recipe.widths), dropout=recipe.dropout
    )
    torch.manual_seed(seed)
    model = VideoClassifier(config)
    settings = TrainSettings(
        steps=recipe.steps,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        warmup_steps=recipe.warmup_steps,
        seed=seed,
        checkpoint_every=0,
        log_every=max(1, recipe.steps // 20),
        resume=False,
        device="cpu",
        progress=False,
    )
    generator = torch.Generator().manual_seed(seed + 1)
    classes = torch.tensor(present)

    def loss_fn(step: int) -> torch.Tensor:
        pick = classes[torch.randint(0, len(classes), (recipe.batch_size,), generator=generator)]
        idx = torch.stack(
            [by_class[c][torch.randint(0, len(by_class[c]), (), generator=generator)] for c in pick]
        )
        batch = x[idx]
        if augment:
            batch = conventional_augment(batch, generator)
        return F.cross_entropy(model(batch), y[idx])

    began = time.perf_counter()
    trainer = Trainer(model, list(model.parameters()), settings, out_dir, "study-classifier")
    summary = trainer.fit(loss_fn)
    summary["wall_seconds"] = round(time.perf_counter() - began, 2)
    summary["train_clips"] = int(len(y))
    summary["synthetic_clips"] = int(data.synthetic.sum())
    return model.eval(), summary


def evaluate(model: VideoClassifier, frames: np.ndarray, labels: np.ndarray, classes: list[str]):
    """Test metrics of a trained classifier (see `metrics.scores`)."""
    predicted = predict(model, to_model_input(frames)).argmax(1).numpy()
    return scores(labels, predicted, classes)


@torch.inference_mode()
def clip_features(model: VideoClassifier, frames: np.ndarray, batch: int = 64) -> np.ndarray:
    """(N, D) float64 features of the classifier's pooled last stage."""
    model.eval()
    x = to_model_input(frames)
    parts = [model.features(x[i : i + batch]).double().numpy() for i in range(0, len(x), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, model.config.widths[-1]))


def write_json(path: Path, data: dict) -> None:
    """Write `data` atomically enough for a resumable study (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
