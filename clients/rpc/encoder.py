"""Client of the condition encoder (MedSAM image prior, text embedding)."""

from __future__ import annotations

import grpc
import numpy as np

from clients.rpc.errors import translate_errors
from genaug import wire
from genaug.v1 import condition_encoder_pb2 as pb
from genaug.v1 import condition_encoder_pb2_grpc


class ConditionEncoderClient:
    def __init__(self, channel: grpc.Channel):
        self._stub = condition_encoder_pb2_grpc.ConditionEncoderStub(channel)

    @translate_errors
    def image_prior(self, frames: np.ndarray, timeout: float | None = None) -> np.ndarray:
        """Grey frames uint8 or float32 (N,H,W) -> priors float32 (N,256,64,64)."""
        request = pb.ImagePriorRequest(frames=wire.to_proto(np.asarray(frames)))
        return wire.from_proto(self._stub.EncodeImagePrior(request, timeout=timeout).prior, "prior")

    @translate_errors
    def text(self, texts: list[str], timeout: float | None = None) -> np.ndarray:
        """Texts -> embeddings float32 (N,L,D)."""
        reply = self._stub.EncodeText(pb.TextRequest(texts=texts), timeout=timeout)
        return wire.from_proto(reply.embedding, "embedding")
