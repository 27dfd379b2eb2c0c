"""Client of the motion-trajectory extractor."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np

from clients.rpc.errors import translate_errors
from genaug import wire
from genaug.v1 import motion_extractor_pb2 as pb
from genaug.v1 import motion_extractor_pb2_grpc

METHODS = {"codec": pb.MOTION_METHOD_CODEC_VECTORS, "optical_flow": pb.MOTION_METHOD_OPTICAL_FLOW}


@dataclass(frozen=True)
class Motion:
    motion_field: np.ndarray  # float32 (T-1,2,H,W), channel 0 = x
    trajectories: np.ndarray  # int64 (N,S,3) of (t, row, col)
    trajectory_mask: np.ndarray  # bool (N,S)
    method: str


class MotionExtractorClient:
    def __init__(self, channel: grpc.Channel):
        self._stub = motion_extractor_pb2_grpc.MotionExtractorStub(channel)

    @translate_errors
    def extract(
        self,
        frames: np.ndarray | None = None,
        encoded_video: bytes | None = None,
        method: str = "codec",
        resolution: int = 0,
        timeout: float | None = None,
    ) -> Motion:
        """Motion of uint8 (T,H,W) `frames` or of an encoded clip (exactly one of the two)."""
        if (frames is None) == (encoded_video is None):
            raise ValueError("pass exactly one of frames and encoded_video")
        request = pb.ExtractMotionRequest(method=METHODS[method], trajectory_resolution=resolution)
        if frames is not None:
            wire.to_proto(np.asarray(frames, np.uint8), request.frames)
        else:
            request.encoded_video = encoded_video
        reply = self._stub.ExtractMotion(request, timeout=timeout)
        used = {v: k for k, v in METHODS.items()}[reply.method_used]
        return Motion(
            wire.from_proto(reply.motion_field, "motion_field"),
            wire.from_proto(reply.trajectories, "trajectories"),
            wire.from_proto(reply.trajectory_mask, "trajectory_mask"),
            used,
        )
