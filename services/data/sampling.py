"""Uniform clip sampling, as the reference's `sample_sequences.py` does it.

Stage 1 picks the largest `n` in `max_clips..1` with `n * frames_per_clip <= N` and places `n`
windows of `frames_per_clip` frames evenly: window `i` starts at `i * (frames_per_clip + gap)`
with `gap = (N - n * frames_per_clip) // (n - 1)` (0 when `n == 1`).
Stage 2 takes every `(clip_sampling_interval + 1)`-th frame of each window and keeps the first
`required_clip_num` of them (`required_clip_num` is a frame count per output clip, despite its
name).
A sequence shorter than one window becomes a single clip: all its frames, zero-padded at the
end to `required_clip_num`. Our extension for the case the reference never meets (more than
`required_clip_num` frames but fewer than a window): `required_clip_num` evenly spaced frames.

Reference settings: MosMed/MRNet/TUSC `15, 1, 8` (max 10 or 4), ACDC `8, 0, 8` (max 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genaug.errors import InvalidArgument


@dataclass(frozen=True)
class SamplingConfig:
    """Clip sampling parameters (defaults: the reference's MosMed/MRNet settings)."""

    frames_per_clip: int = 15
    clip_sampling_interval: int = 1
    required_clip_num: int = 8
    max_clips: int = 10

    def validate(self) -> SamplingConfig:
        """Raise InvalidArgument (naming the parameter) for inconsistent values."""
        if self.frames_per_clip < 1:
            raise InvalidArgument("frames_per_clip", "must be >= 1")
        if self.clip_sampling_interval < 0:
            raise InvalidArgument("clip_sampling_interval", "must be >= 0")
        if self.required_clip_num < 2:
            raise InvalidArgument("required_clip_num", "must be >= 2 frames per clip")
        if self.max_clips < 1:
            raise InvalidArgument("max_clips", "must be >= 1")
        available = len(range(0, self.frames_per_clip, self.clip_sampling_interval + 1))
        if available < self.required_clip_num:
            raise InvalidArgument(
                "required_clip_num",
                f"a window of {self.frames_per_clip} frames at interval "
                f"{self.clip_sampling_interval} holds only {available} frames",
            )
        return self


@dataclass(frozen=True)
class Clip:
    """One sampled clip: source frame indices, then `n_pad` zero frames."""

    start: int
    frame_indices: tuple[int, ...]
    n_pad: int = 0

    @property
    def length(self) -> int:
        """Frames in the output clip (`len(frame_indices) + n_pad`)."""
        return len(self.frame_indices) + self.n_pad


def window_starts(n_frames: int, frames_per_clip: int, max_clips: int) -> list[int]:
    """Stage 1: start indices of the evenly spaced windows (empty if none fits)."""
    for n_clip in range(max_clips, 0, -1):
        if n_clip * frames_per_clip <= n_frames:
            gap = (n_frames - n_clip * frames_per_clip) // (n_clip - 1) if n_clip > 1 else 0
            return [i * (frames_per_clip + gap) for i in range(n_clip)]
    return []


def sample_clips(n_frames: int, config: SamplingConfig | None = None) -> list[Clip]:
    """Sample clips from a sequence of `n_frames` frames.

    Args:
        n_frames: frames (or slices) in the sequence, >= 1.
        config: sampling parameters; defaults to `SamplingConfig()`.

    Returns:
        The clips in order; each has exactly `config.required_clip_num` frames after padding.
    """
    cfg = (config or SamplingConfig()).validate()
    if n_frames < 1:
        raise InvalidArgument("n_frames", "a sequence needs at least one frame")
    required = cfg.required_clip_num
    starts = window_starts(n_frames, cfg.frames_per_clip, cfg.max_clips)
    if not starts:  # shorter than one window
        if n_frames <= required:
            indices = tuple(range(n_frames))
            return [Clip(0, indices, required - n_frames)]
        spaced = np.round(np.linspace(0, n_frames - 1, required)).astype(int)
        return [Clip(0, tuple(int(i) for i in spaced), 0)]
    step = cfg.clip_sampling_interval + 1
    return [
        Clip(start, tuple(range(start, start + cfg.frames_per_clip, step))[:required], 0)
        for start in starts
    ]


def assemble_clip(frames: np.ndarray, clip: Clip) -> np.ndarray:
    """Gather a clip's frames from a (T, H, W) array and append its zero padding."""
    picked = frames[list(clip.frame_indices)]
    if clip.n_pad:
        pad = np.zeros((clip.n_pad, *frames.shape[1:]), dtype=frames.dtype)
        picked = np.concatenate([picked, pad], axis=0)
    return picked
