"""Training data: frames, clips and their precomputed conditions as in-memory tensors.

The bundled dataset is small (a few MB of pixels, about 760 MB of image priors in fp32), so each
stage reads everything once and samples batches from memory.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genaug.errors import InvalidArgument
from services.data import layout
from services.data.conditions import condition_paths, load_motion, load_prior
from services.models.repository import CLASSES_FILE

logger = logging.getLogger(__name__)


def to_unit(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 grey -> float32 in [-1, 1]."""
    return torch.as_tensor(np.asarray(frames), dtype=torch.float32) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float in [-1, 1] -> uint8 (clipped)."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().byte().cpu().numpy()


def class_names(root: Path, name: str) -> list[str]:
    """Sorted class names of the train split; class ids are indices in this list."""
    return layout.load_dataset(root, name, "train").classes


def write_classes(directory: Path, classes: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CLASSES_FILE).write_text(json.dumps(list(classes)) + "\n")


def load_frames(root: Path, name: str, split: str, source: str = "slices") -> np.ndarray:
    """All frames of a split as uint8 (N, H, W): `slices` from `<DS>_data`, or `clips` (every
    frame of every `<DS>_volume` clip)."""
    if source == "slices":
        items = layout.load_dataset(root, name, split, kind="data")
        require_split(items, root, name, split)
        return np.stack([layout.read_slice(item.path) for item in items])
    if source == "clips":
        frames = load_clips(root, name, split).frames
        return frames.reshape(-1, *frames.shape[2:])
    raise ValueError(f"unknown frame source {source!r} (slices or clips)")


def require_split(items, root: Path, name: str, split: str) -> None:
    """Every stage trains on `train` and measures on `test`: an empty split is the data's
    problem, said in the data's terms (not a numpy error)."""
    if not len(items):
        hint = (
            ": `genaug prepare` puts whole patients in the test split, so a class needs at "
            "least 2 patients (sources) to have one"
            if split == "test"
            else ""
        )
        raise InvalidArgument(
            "dataset_root", f"dataset {name} under {root} has no {split} clips{hint}"
        )


@dataclass
class ClipSet:
    """The clips of one split.

    Attributes:
        frames: uint8 (N, T, H, W).
        labels: int64 (N,) class ids (index in `classes`).
        classes: Sorted class names (of the train split).
        texts: Caption per clip.
        file_names: Clip file names (keys of the condition files).
    """

    frames: np.ndarray
    labels: np.ndarray
    classes: list[str]
    texts: list[str]
    file_names: list[str]


def load_clips(root: Path, name: str, split: str, classes: list[str] | None = None) -> ClipSet:
    items = layout.load_dataset(root, name, split)
    require_split(items, root, name, split)
    classes = classes or class_names(root, name)
    frames = np.stack([layout.read_clip(item.path) for item in items])
    labels = np.array([classes.index(item.cls) for item in items], dtype=np.int64)
    return ClipSet(
        frames, labels, classes, [item.text for item in items], [i.file_name for i in items]
    )


@dataclass
class ConditionSet:
    """Reference conditions of a `ClipSet`, in its order.

    Attributes:
        priors: float32 (N, 256, 64, 64) image prior of each clip's first frame.
        motion: float32 (N, 2, T-1, H, W) motion fields (channel 0 = x), as the UNet takes them.
        trajectories: int64 (N, P, S, 3) (t, row, col) at latent resolution.
        trajectory_mask: bool (N, P, S).
    """

    priors: torch.Tensor
    motion: torch.Tensor
    trajectories: torch.Tensor
    trajectory_mask: torch.Tensor


def load_conditions(root: Path, name: str, clips: ClipSet) -> ConditionSet:
    """Reads the files written by `genaug conditions` for every clip.

    Raises:
        FileNotFoundError: A clip has no precomputed conditions (run `genaug conditions`).
    """
    priors, motion, traj, mask = [], [], [], []
    for file_name in clips.file_names:
        paths = condition_paths(Path(root), name, file_name)
        if not (paths.has("prior") and paths.has("motion")):
            raise FileNotFoundError(
                f"conditions of {file_name} missing under {root}: run `genaug conditions`"
            )
        field, t, m = load_motion(paths)
        priors.append(load_prior(paths).astype(np.float32))
        motion.append(np.ascontiguousarray(field.transpose(1, 0, 2, 3)))
        traj.append(t.astype(np.int64))
        mask.append(m.astype(bool))
    return ConditionSet(
        torch.from_numpy(np.stack(priors)),
        torch.from_numpy(np.stack(motion)).float(),
        torch.from_numpy(np.stack(traj)),
        torch.from_numpy(np.stack(mask)),
    )
