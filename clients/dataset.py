"""A PyTorch `Dataset` over an augmented training set: the real training clips beside the
synthetic ones `genaug augment` wrote, each with its label and provenance.

Items are dicts, so MONAI's dictionary transforms (`keys=["image"]`) and plain callables
apply alike:

    clips = AugmentedClips("data/echo", "runs/echo-aug", "Echo")
    loader = DataLoader(clips, batch_size=8, shuffle=True)

`image` is float32 (1, T, H, W) in [-1, 1], the intensity mapping the project's models train on;
`label` indexes `clips.classes` (sorted class names, unless given).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from genaug.errors import InvalidArgument
from services.data import layout
from services.models.training.data import to_unit

PROVENANCE = ("source_clip", "seed", "cross_entropy", "vae_seq", "max_duplicate_similarity")


class AugmentedClips(torch.utils.data.Dataset):
    """Real and synthetic clips of one dataset, with labels and provenance.

    Args:
        real_root: the prepared dataset's root (`<root>/<name>_volume/`); None: synthetic only.
        synthetic_root: `genaug augment --out`; None: real only.
        name: the dataset name (`<DS>`).
        classes: class names in label order (default: sorted names of every clip here). A
            clip of another class is refused, naming it.
        split: the real split to read (synthetic clips are always `train`).
        transform: applied to each item dict (e.g. a MONAI `Compose` of dict transforms).
    """

    def __init__(
        self,
        real_root: str | os.PathLike | None,
        synthetic_root: str | os.PathLike | None,
        name: str,
        classes: Sequence[str] | None = None,
        split: str = "train",
        transform: Callable[[dict[str, Any]], Any] | None = None,
    ):
        if real_root is None and synthetic_root is None:
            raise InvalidArgument("real_root", "give a real or a synthetic dataset root (or both)")
        self.items: list[tuple[layout.Item, bool]] = []
        if real_root is not None:
            self.items += [(i, False) for i in layout.load_dataset(real_root, name, split)]
        if synthetic_root is not None:
            self.items += [(i, True) for i in layout.load_dataset(synthetic_root, name, "train")]
        present = sorted({item.cls for item, _ in self.items})
        self.classes = list(classes) if classes is not None else present
        unknown = [c for c in present if c not in self.classes]
        if unknown:
            raise InvalidArgument(
                "classes", f"clips of class(es) {unknown} are not in {self.classes}"
            )
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        item, synthetic = self.items[index]
        sample: dict[str, Any] = {
            "image": to_unit(layout.read_clip(item.path)).unsqueeze(0),
            "label": self.classes.index(item.cls),
            "class_name": item.cls,
            "synthetic": synthetic,
            "file_name": item.file_name,
        }
        for key in PROVENANCE:
            if key in item.extra:
                sample[key] = item.extra[key]
        return self.transform(sample) if self.transform is not None else sample

    def counts(self) -> dict[str, dict[str, int]]:
        """Clips per class, real and synthetic: what a training run will mix."""
        table = {c: {"real": 0, "synthetic": 0} for c in self.classes}
        for item, synthetic in self.items:
            table[item.cls]["synthetic" if synthetic else "real"] += 1
        return table
