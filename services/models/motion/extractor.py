"""Clip -> motion field + trajectories: the one computation behind both APIs of the service."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genaug.deadline import Deadline
from genaug.slots import ComputeSlots
from services.data.video import decode_video, validate_frames
from services.models.motion.field import extract_motion
from services.models.motion.trajectories import compute_trajectories


@dataclass(frozen=True)
class MotionConditions:
    motion_field: np.ndarray  # float32 (T-1,2,H,W), channel 0 = x
    trajectories: np.ndarray  # int64 (T*R*R, 8+T, 3) of (t, row, col)
    trajectory_mask: np.ndarray  # bool (T*R*R, 8+T)
    method_used: str
    coverage: float


class MotionExtractor:
    """Computes the motion conditions of a clip.

    Args:
        latent_factor: trajectory grid = frame size / this (the VAE's downsampling, 8).
        max_concurrent: clips computed at once (encoding is CPU-bound).
        seed: seed of the trajectory collision draw (results are deterministic).
    """

    def __init__(self, latent_factor: int = 8, max_concurrent: int = 2, seed: int = 0):
        self.latent_factor = latent_factor
        self.seed = seed
        self._slots = ComputeSlots(max_concurrent)

    def from_encoded(
        self,
        data: bytes,
        method: str = "codec",
        resolution: int = 0,
        deadline: Deadline | None = None,
    ) -> MotionConditions:
        return self.from_frames(decode_video(data), method, resolution, deadline)

    def from_frames(
        self,
        frames: np.ndarray,
        method: str = "codec",
        resolution: int = 0,
        deadline: Deadline | None = None,
    ) -> MotionConditions:
        """frames uint8 (T,H,W) -> conditions; `resolution` 0 means H / latent_factor."""
        deadline = deadline or Deadline.none()
        frames = validate_frames(frames)
        with self._slots.turn(deadline, "motion extraction"):
            motion = extract_motion(frames, method)
            deadline.check("trajectory building")
            grid = resolution or max(1, frames.shape[1] // self.latent_factor)
            traj = compute_trajectories(
                motion.motion_field, resolution=grid, seed=self.seed, pad_length=frames.shape[0]
            )
        return MotionConditions(
            motion.motion_field,
            traj.trajectories,
            traj.trajectory_mask,
            motion.method_used,
            motion.coverage,
        )
