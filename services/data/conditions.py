"""The reference conditions of a clip: one file layout, one schema, one cache.

Under a root (a prepared dataset, or a job's cache folder) and for dataset name `<DS>`, a clip
`<stem>.<ext>` has:
- `<DS>_motion_field/<stem>.npy`: float32 (T-1,2,H,W) motion field, channel 0 = x;
- `<DS>_motion_field_trajectory/<stem>.npz`: `trajectories` int64 (N,S,3) of (t, row, col) and
  `trajectory_mask` bool (N,S) (plain arrays; the official code pickled a dict of tensors);
- `<DS>_data_emb/<stem>.npy`: float32 (256,64,64) image prior of the clip's first frame.

Files are written atomically (a file that exists is complete) and read without unpickling.
What computes missing conditions is a `ConditionSource`: in process (`services.models.conditions`)
or over gRPC (`clients.rpc.conditions`); `CachedConditions` puts files in front of one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from genaug.errors import InvalidArgument
from services.data import layout

KINDS = ("motion", "prior")

# (motion field, trajectories, trajectory mask), as the sampler's Conditions carries them.
Motion = tuple[np.ndarray, np.ndarray, np.ndarray]
Frames = Callable[[], np.ndarray]  # reads the clip's uint8 (T,H,W) frames when first needed


class ConditionSource(Protocol):
    """Computes the conditions of a clip's uint8 (T,H,W) frames."""

    kinds: Collection[str]  # which of KINDS it can compute

    def prior(self, frames: np.ndarray) -> np.ndarray:
        """float32 (256,64,64) image prior of `frames[0]`."""

    def motion(self, frames: np.ndarray) -> Motion:
        """Motion field and trajectories of the clip."""


@dataclass(frozen=True)
class ConditionPaths:
    motion_field: Path
    trajectory: Path
    prior: Path

    def files(self) -> tuple[Path, Path, Path]:
        return self.motion_field, self.trajectory, self.prior

    def has(self, kind: str) -> bool:
        if kind == "motion":
            return self.motion_field.is_file() and self.trajectory.is_file()
        if kind == "prior":
            return self.prior.is_file()
        raise InvalidArgument("kind", f"{kind!r} is not one of {', '.join(KINDS)}")


def condition_paths(root: str | Path, name: str, clip_file: str) -> ConditionPaths:
    stem = Path(clip_file).stem
    root = Path(root)
    return ConditionPaths(
        root / f"{name}_motion_field" / f"{stem}.npy",
        root / f"{name}_motion_field_trajectory" / f"{stem}.npz",
        root / f"{name}_data_emb" / f"{stem}.npy",
    )


def save_motion(paths: ConditionPaths, field, trajectories, mask) -> None:
    layout.save_npy(paths.motion_field, field)
    layout.save_npz(paths.trajectory, trajectories=trajectories, trajectory_mask=mask)


def load_motion(paths: ConditionPaths) -> Motion:
    field = np.load(paths.motion_field, allow_pickle=False)
    with np.load(paths.trajectory, allow_pickle=False) as archive:
        return field, archive["trajectories"], archive["trajectory_mask"]


def save_prior(paths: ConditionPaths, prior) -> None:
    layout.save_npy(paths.prior, np.asarray(prior, np.float32))


def load_prior(paths: ConditionPaths) -> np.ndarray:
    return np.load(paths.prior, allow_pickle=False)


class CachedConditions:
    """A clip's conditions from the first root that has them, else computed and stored.

    Each lookup returns `(value, where)`: `where` is the label of the root it was read from,
    "source" when `source` computed it (it is then written under `store`), or None when no root
    has it and the source cannot compute it (value None; the frames were not read).

    Args:
        name: the dataset name `<DS>`, which names the folders under every root.
        lookups: (label, root) pairs read in order, e.g. the dataset, then a job's cache.
        source: computes what no root has (None: nothing is computed).
        store: the root computed conditions are written to (None: not stored).
    """

    def __init__(
        self,
        name: str,
        lookups: Sequence[tuple[str, str | Path]],
        source: ConditionSource | None = None,
        store: str | Path | None = None,
    ):
        self.name = name
        self.lookups = [(label, Path(root)) for label, root in lookups]
        self.source = source
        self.store = None if store is None else Path(store)

    def prior(self, clip_file: str, frames: Frames) -> tuple[np.ndarray | None, str | None]:
        return self._get("prior", clip_file, frames, load_prior, save_prior)

    def motion(self, clip_file: str, frames: Frames) -> tuple[Motion | None, str | None]:
        return self._get("motion", clip_file, frames, load_motion, lambda p, m: save_motion(p, *m))

    def _get(self, kind, clip_file, frames, load, save):
        for label, root in self.lookups:
            paths = condition_paths(root, self.name, clip_file)
            if paths.has(kind):
                return load(paths), label
        if self.source is None or kind not in self.source.kinds:
            return None, None
        value = getattr(self.source, kind)(frames())
        if self.store is not None:
            save(condition_paths(self.store, self.name, clip_file), value)
        return value, "source"


def precompute(
    root: Path,
    name: str,
    splits: list[str],
    kinds: list[str],
    source: ConditionSource,
    workers: int = 1,
    overwrite: bool = False,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Write the missing condition files of a dataset's clips (resumable: a clip whose files
    exist is skipped); returns the counts of computed and skipped clips.

    Raises:
        InvalidArgument: `source` cannot compute one of `kinds`.
    """
    unable = sorted(set(kinds) - set(source.kinds))
    if unable:
        raise InvalidArgument("kinds", f"the condition source cannot compute {', '.join(unable)}")
    items = [item for split in splits for item in layout.load_dataset(root, name, split)]
    items = items[:limit] if limit else items
    files = CachedConditions(name, [] if overwrite else [("dataset", root)], source, store=root)

    def one(item) -> bool:
        frames = functools.cache(lambda: layout.read_clip(item.path))
        wheres = [
            getattr(files, kind)(item.file_name, frames)[1] for kind in KINDS if kind in kinds
        ]
        return "source" in wheres

    counts = {"computed": 0, "skipped": 0}
    bar = tqdm(total=len(items), desc=f"conditions {name}", unit="clip", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for computed in pool.map(one, items):
            counts["computed" if computed else "skipped"] += 1
            bar.update()
    bar.close()
    return counts
