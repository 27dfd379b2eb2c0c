"""`genaug train classifier`: the filter's real-data video classifier.

Trained on the train clips only, class-balanced batches (the minority class is drawn as often as
the others), with light augmentation that keeps the class: horizontal flip, a shift of up to 3
pixels, brightness/contrast jitter and time reversal. Reports test-split accuracy.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from services.models.classifier import VideoClassifier, VideoClassifierConfig

from .common import Trainer
from .data import load_clips, to_unit, write_classes
from .settings import ClassifierSettings

logger = logging.getLogger(__name__)


def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Class-preserving augmentation of clips (B, T, 1, H, W) in [-1, 1]."""
    b = x.shape[0]
    rand = torch.rand(b, 4, generator=generator)
    flip = rand[:, 0] < 0.5
    x = torch.where(flip[:, None, None, None, None], x.flip(-1), x)
    rev = rand[:, 1] < 0.5
    x = torch.where(rev[:, None, None, None, None], x.flip(1), x)
    shifts = torch.randint(-3, 4, (b, 2), generator=generator)
    x = torch.stack(
        [
            torch.roll(c, (int(s[0]), int(s[1])), dims=(-2, -1))
            for c, s in zip(x, shifts, strict=True)
        ]
    )
    gain = (0.8 + 0.4 * rand[:, 2])[:, None, None, None, None]
    bias = (0.2 * rand[:, 3] - 0.1)[:, None, None, None, None]
    return ((x + 1) * gain - 1 + bias).clamp(-1, 1)


@torch.inference_mode()
def predict(model: VideoClassifier, clips: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Logits (N, C) of clips (N, T, 1, H, W) in [-1, 1]."""
    model.eval()
    return torch.cat([model(clips[i : i + batch].to(next(model.parameters()).device)).cpu()
                      for i in range(0, len(clips), batch)])  # fmt: skip


def accuracy(model: VideoClassifier, clips: torch.Tensor, labels: torch.Tensor) -> dict:
    pred = predict(model, clips).argmax(1)
    per_class = {
        int(c): float((pred[labels == c] == c).float().mean()) for c in labels.unique().tolist()
    }
    return {"accuracy": float((pred == labels).float().mean()), "per_class": per_class}


def train(settings: ClassifierSettings) -> dict:
    out = Path(settings.out)
    train_set = load_clips(settings.dataset_root, settings.name, "train")
    test_set = load_clips(settings.dataset_root, settings.name, "test", train_set.classes)
    classes = train_set.classes
    x_train = to_unit(train_set.frames).unsqueeze(2)
    y_train = torch.from_numpy(train_set.labels)
    x_test = to_unit(test_set.frames).unsqueeze(2)
    y_test = torch.from_numpy(test_set.labels)
    by_class = [torch.nonzero(y_train == c).flatten() for c in range(len(classes))]

    config = VideoClassifierConfig(
        num_classes=len(classes), widths=tuple(settings.widths), dropout=settings.dropout
    )
    torch.manual_seed(settings.seed)
    model = VideoClassifier(config)

    def loss_fn(step: int) -> torch.Tensor:
        cls = torch.randint(0, len(classes), (settings.batch_size,))
        idx = torch.stack([by_class[c][torch.randint(0, len(by_class[c]), ())] for c in cls])
        x = augment(x_train[idx]).to(trainer.device)
        return F.cross_entropy(model(x), y_train[idx].to(trainer.device))

    def evaluate(step: int) -> dict:
        result = accuracy(model, x_test, y_test)
        model.train()
        return result

    trainer = Trainer(model, list(model.parameters()), settings, out, "classifier", evaluate)
    model.to(trainer.device)
    summary = trainer.fit(loss_fn)
    test = accuracy(model, x_test, y_test)
    train_acc = accuracy(model, x_train, y_train)
    summary.update(
        test_accuracy=round(test["accuracy"], 4),
        test_accuracy_per_class={classes[c]: round(a, 4) for c, a in test["per_class"].items()},
        train_accuracy=round(train_acc["accuracy"], 4),
        train_clips=len(x_train),
        test_clips=len(x_test),
        classes=classes,
    )
    final = out / "final"
    model.cpu().eval().save_pretrained(final)
    write_classes(final, classes)
    (final / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
