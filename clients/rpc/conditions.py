"""The reference conditions of a clip computed by the services over gRPC.

A `ConditionSource` (see `services.data.conditions`, matched by structure: this library imports
only the wire): the image prior from the condition encoder, motion from the motion extractor.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from clients.rpc.encoder import ConditionEncoderClient
from clients.rpc.motion import MotionExtractorClient

# Seconds per call, or a function giving them at each call (e.g. a request's remaining deadline).
Timeout = float | None | Callable[[], float | None]


class GrpcConditions:
    """Args:
    encoder, motion: clients of the two services; a None one leaves its kind out of `kinds`.
    method: motion method, "codec" or "optical_flow".
    timeout: per call.
    """

    def __init__(
        self,
        encoder: ConditionEncoderClient | None = None,
        motion: MotionExtractorClient | None = None,
        method: str = "codec",
        timeout: Timeout = 300.0,
    ):
        self._encoder, self._motion, self._method = encoder, motion, method
        self._timeout = timeout
        self.kinds = frozenset(
            kind for kind, client in (("prior", encoder), ("motion", motion)) if client is not None
        )

    def prior(self, frames: np.ndarray) -> np.ndarray:
        """float32 (256,64,64) image prior of `frames[0]` of uint8 (T,H,W) frames."""
        if self._encoder is None:
            raise ValueError("no condition encoder client to compute the image prior")
        return np.asarray(self._encoder.image_prior(frames[:1], timeout=self._seconds())[0])

    def motion(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(motion field, trajectories, trajectory mask) of uint8 (T,H,W) frames."""
        if self._motion is None:
            raise ValueError("no motion extractor client to compute motion")
        m = self._motion.extract(frames, method=self._method, timeout=self._seconds())
        return m.motion_field, m.trajectories, m.trajectory_mask

    def _seconds(self) -> float | None:
        return self._timeout() if callable(self._timeout) else self._timeout
