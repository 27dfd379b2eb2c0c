"""The reference conditions computed in this process, with the code the services run.

A `services.data.conditions.ConditionSource`: motion by `MotionExtractor` (the motion
extractor's algorithm), the image prior by the condition encoder's MedSAM encoder (loaded on
first use, once).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from services.data.conditions import KINDS, Motion
from services.models.motion.extractor import MotionExtractor


class InProcessConditions:
    """Args:
    method: motion method, "codec" (motion vectors) or "optical_flow".
    image_encoder: "litemedsam" or "medsam_vit_b"; checkpoint: its weights (ViT-B only).
    """

    kinds = KINDS

    def __init__(
        self,
        method: str = "codec",
        image_encoder: str = "litemedsam",
        checkpoint: str | Path | None = None,
    ):
        self._motion = MotionExtractor()
        self._method = method
        self._encoder_args = (image_encoder, checkpoint)
        self._encoder = None
        self._lock = threading.Lock()

    def motion(self, frames: np.ndarray) -> Motion:
        result = self._motion.from_frames(frames, self._method)
        return result.motion_field, result.trajectories, result.trajectory_mask

    def prior(self, frames: np.ndarray) -> np.ndarray:
        return self._image_encoder().encode(np.asarray(frames)[:1])[0]

    def _image_encoder(self):
        with self._lock:  # workers share one encoder
            if self._encoder is None:
                from services.models.medsam import load_image_prior_encoder

                self._encoder = load_image_prior_encoder(*self._encoder_args)
            return self._encoder
