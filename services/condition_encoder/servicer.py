"""Typed genaug.v1.ConditionEncoder API: EncodeImagePrior and EncodeText."""

from __future__ import annotations

from genaug import wire
from genaug.deadline import Deadline
from genaug.errors import InvalidArgument
from genaug.v1 import condition_encoder_pb2 as pb
from genaug.v1 import condition_encoder_pb2_grpc
from services.condition_encoder.encoder import ConditionEncoder


class ConditionEncoderServicer(condition_encoder_pb2_grpc.ConditionEncoderServicer):
    def __init__(self, encoder: ConditionEncoder):
        self.encoder = encoder

    def EncodeImagePrior(self, request, context):
        if not wire.is_set(request.frames):
            raise InvalidArgument("frames", "is not set: send UINT8 or FP32 frames (N,H,W)")
        frames = wire.from_proto(request.frames, "frames")
        prior = self.encoder.encode_image_prior(frames, Deadline.from_context(context), "frames")
        return pb.ImagePriorResponse(prior=wire.to_proto(prior))

    def EncodeText(self, request, context):
        embedding = self.encoder.encode_text(
            list(request.texts), Deadline.from_context(context), "texts"
        )
        return pb.TextResponse(embedding=wire.to_proto(embedding))
