"""The open-inference model `motion_field` (codec motion vectors, the method's default)."""

from __future__ import annotations

import numpy as np

from genaug.deadline import Deadline
from services.common.model import Model, TensorSpec
from services.models.motion.extractor import MotionExtractor


class MotionFieldModel(Model):
    name = "motion_field"
    platform = "python"
    inputs = (TensorSpec("frames", "UINT8", (-1, -1, -1)),)
    outputs = (
        TensorSpec("motion_field", "FP32", (-1, 2, -1, -1)),
        TensorSpec("trajectories", "INT64", (-1, -1, 3)),
        TensorSpec("trajectory_mask", "BOOL", (-1, -1)),
    )

    def __init__(self, extractor: MotionExtractor):
        super().__init__()
        self.extractor = extractor

    def load(self) -> None:
        """Nothing to load: the codec and the extractor are libraries."""

    def warmup(self) -> None:
        # First use loads libx264 and the extractor's shared objects. A smooth pattern moving
        # 1 px per frame, so that the codec finds vectors (pure noise would be intra-coded).
        axis = np.arange(48, dtype=np.float32)
        pattern = 128 + 100 * np.sin(axis / 3)[None, :] * np.cos(axis / 4)[:, None]
        frames = np.stack([np.roll(pattern, t, axis=1) for t in range(4)]).astype(np.uint8)
        self.extractor.from_frames(frames, "optical_flow")
        self.extractor.from_frames(frames, "codec")

    def parameters(self) -> dict[str, str]:
        return {"method": "codec", "latent_factor": str(self.extractor.latent_factor)}

    def predict(self, inputs, deadline: Deadline):
        result = self.extractor.from_frames(inputs["frames"], "codec", 0, deadline)
        return {
            "motion_field": result.motion_field,
            "trajectories": result.trajectories,
            "trajectory_mask": result.trajectory_mask,
        }
