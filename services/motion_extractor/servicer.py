"""Typed genaug.v1.MotionExtractor API: encoded video bytes or a frame tensor in."""

from __future__ import annotations

from genaug import wire
from genaug.deadline import Deadline
from genaug.errors import InvalidArgument
from genaug.v1 import motion_extractor_pb2 as pb
from genaug.v1 import motion_extractor_pb2_grpc
from services.models.motion.extractor import MotionExtractor

_METHODS = {
    pb.MOTION_METHOD_UNSPECIFIED: "codec",
    pb.MOTION_METHOD_CODEC_VECTORS: "codec",
    pb.MOTION_METHOD_OPTICAL_FLOW: "optical_flow",
}
_CODES = {"codec": pb.MOTION_METHOD_CODEC_VECTORS, "optical_flow": pb.MOTION_METHOD_OPTICAL_FLOW}


class MotionExtractorServicer(motion_extractor_pb2_grpc.MotionExtractorServicer):
    def __init__(self, extractor: MotionExtractor):
        self.extractor = extractor

    def ExtractMotion(self, request, context):
        method = _METHODS.get(request.method)
        if method is None:
            raise InvalidArgument("method", f"unknown motion method {request.method}")
        if request.trajectory_resolution < 0:
            raise InvalidArgument("trajectory_resolution", "must be >= 0")
        deadline = Deadline.from_context(context)
        source = request.WhichOneof("source")
        if source == "encoded_video":
            result = self.extractor.from_encoded(
                request.encoded_video, method, request.trajectory_resolution, deadline
            )
        elif source == "frames":
            frames = wire.from_proto(request.frames, "frames")
            result = self.extractor.from_frames(
                frames, method, request.trajectory_resolution, deadline
            )
        else:
            raise InvalidArgument("source", "set encoded_video or frames")
        return pb.ExtractMotionResponse(
            motion_field=wire.to_proto(result.motion_field),
            trajectories=wire.to_proto(result.trajectories),
            trajectory_mask=wire.to_proto(result.trajectory_mask),
            method_used=_CODES[result.method_used],
        )
