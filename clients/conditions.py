"""`genaug conditions`: precompute the reference conditions of a prepared dataset.

Writes, per clip of `<DS>_volume/`:
- `<DS>_motion_field/<clip>.npy`: float32 (T-1,2,H,W) motion field, channel 0 = x;
- `<DS>_motion_field_trajectory/<clip>.npz`: `trajectories` int64 (N,S,3), `trajectory_mask`
  bool (N,S) (plain arrays; the official code pickled a dict of tensors);
- `<DS>_data_emb/<clip>.npy`: float32 (256,64,64) MedSAM prior of the clip's first frame.

Each file is written to a temporary name and renamed, so a file that exists is complete: a re-run
skips it (resumable). The work is done by the services over gRPC when their addresses are
given, otherwise in this process with the same code the services run.
"""

from __future__ import annotations

import argparse
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from services.data import layout
from services.data.safety import output_within

logger = logging.getLogger(__name__)

KINDS = ("motion", "prior")


@dataclass(frozen=True)
class ConditionPaths:
    motion_field: Path
    trajectory: Path
    prior: Path


def condition_paths(root: Path, name: str, clip_file: str) -> ConditionPaths:
    stem = Path(clip_file).stem
    return ConditionPaths(
        root / f"{name}_motion_field" / f"{stem}.npy",
        root / f"{name}_motion_field_trajectory" / f"{stem}.npz",
        root / f"{name}_data_emb" / f"{stem}.npy",
    )


def save_motion(paths: ConditionPaths, field, trajectories, mask) -> None:
    layout.save_npy(paths.motion_field, field)
    layout.save_npz(paths.trajectory, trajectories=trajectories, trajectory_mask=mask)


def load_motion(paths: ConditionPaths) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    field = np.load(paths.motion_field, allow_pickle=False)
    with np.load(paths.trajectory, allow_pickle=False) as archive:
        return field, archive["trajectories"], archive["trajectory_mask"]


class InProcessBackend:
    """The services' computations, loaded in this process."""

    def __init__(self, method: str, image_encoder: str = "litemedsam", checkpoint=None):
        from services.models.motion.extractor import MotionExtractor

        self._motion = MotionExtractor()
        self._method = method
        self._encoder_args = (image_encoder, checkpoint)
        self._encoder = None

    def motion(self, frames: np.ndarray):
        result = self._motion.from_frames(frames, self._method)
        return result.motion_field, result.trajectories, result.trajectory_mask

    def prior(self, frame: np.ndarray) -> np.ndarray:
        if self._encoder is None:
            from services.models.medsam import load_image_prior_encoder

            kind, checkpoint = self._encoder_args
            self._encoder = load_image_prior_encoder(kind, checkpoint)
        return self._encoder.encode(frame[None])[0]


class GrpcBackend:
    """The same computations through the motion-extractor and condition-encoder services."""

    def __init__(
        self,
        motion_target: str | None,
        encoder_target: str | None,
        method: str,
        timeout: float = 300.0,
    ):
        from clients.rpc.channel import open_channel
        from clients.rpc.encoder import ConditionEncoderClient
        from clients.rpc.motion import MotionExtractorClient

        self._method, self._timeout = method, timeout
        self._motion = MotionExtractorClient(open_channel(motion_target)) if motion_target else None
        self._encoder = (
            ConditionEncoderClient(open_channel(encoder_target)) if encoder_target else None
        )

    def motion(self, frames: np.ndarray):
        if self._motion is None:
            raise ValueError("--motion-target is needed to compute motion over gRPC")
        m = self._motion.extract(frames, method=self._method, timeout=self._timeout)
        return m.motion_field, m.trajectories, m.trajectory_mask

    def prior(self, frame: np.ndarray) -> np.ndarray:
        if self._encoder is None:
            raise ValueError("--encoder-target is needed to compute priors over gRPC")
        return self._encoder.image_prior(frame[None], timeout=self._timeout)[0]


def precompute(
    root: Path,
    name: str,
    splits: list[str],
    kinds: list[str],
    backend,
    workers: int = 1,
    overwrite: bool = False,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Compute the missing condition files; returns counts of computed and skipped clips."""
    items = [item for split in splits for item in layout.load_dataset(root, name, split)]
    items = items[:limit] if limit else items
    for folder in vars(condition_paths(root, name, "clip.avi")).values():
        output_within(root, Path(folder).parent, "--dataset-root")
    counts = {"computed": 0, "skipped": 0}

    def one(item) -> bool:
        paths = condition_paths(root, name, item.file_name)
        todo_motion = "motion" in kinds and (
            overwrite or not (paths.motion_field.exists() and paths.trajectory.exists())
        )
        todo_prior = "prior" in kinds and (overwrite or not paths.prior.exists())
        if not (todo_motion or todo_prior):
            return False
        frames = layout.read_clip(item.path)
        if todo_motion:
            save_motion(paths, *backend.motion(frames))
        if todo_prior:
            prior = backend.prior(frames[0])
            layout.save_npy(paths.prior, prior.astype(np.float32))
        return True

    bar = tqdm(total=len(items), desc=f"conditions {name}", unit="clip", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for computed in pool.map(one, items):
            counts["computed" if computed else "skipped"] += 1
            bar.update()
    bar.close()
    return counts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset-root", type=Path, required=True, help="prepared dataset root")
    parser.add_argument("--name", required=True, help="dataset name (<DS>)")
    parser.add_argument("--splits", nargs="+", default=["train", "test"], choices=layout.SPLITS)
    parser.add_argument(
        "--what",
        nargs="+",
        default=list(KINDS),
        choices=KINDS,
        help="which conditions (default: motion and prior)",
    )
    parser.add_argument(
        "--method",
        default="codec",
        choices=["codec", "optical_flow"],
        help="motion method (default: codec motion vectors)",
    )
    parser.add_argument("--motion-target", help="motion extractor address (else in-process)")
    parser.add_argument("--encoder-target", help="condition encoder address (else in-process)")
    parser.add_argument(
        "--image-encoder",
        default="litemedsam",
        choices=["litemedsam", "medsam_vit_b"],
        help="in-process prior encoder",
    )
    parser.add_argument("--medsam-checkpoint", type=Path, help="medsam_vit_b.pth (ViT-B only)")
    parser.add_argument("--workers", type=int, default=1, help="clips in parallel (default 1)")
    parser.add_argument("--limit", type=int, help="only the first N clips")
    parser.add_argument("--overwrite", action="store_true", help="recompute existing files")


def run(args: argparse.Namespace) -> int:
    if args.motion_target or args.encoder_target:
        backend = GrpcBackend(args.motion_target, args.encoder_target, args.method)
    else:
        backend = InProcessBackend(args.method, args.image_encoder, args.medsam_checkpoint)
    counts = precompute(
        args.dataset_root,
        args.name,
        args.splits,
        args.what,
        backend,
        args.workers,
        args.overwrite,
        args.limit,
    )
    print(f"{args.name}: {counts['computed']} clips computed, {counts['skipped']} already done")
    return 0
