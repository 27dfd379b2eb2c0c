"""Typed genaug.v1.VaeCodec API: unary calls for small clips, chunk streams for large ones."""

from __future__ import annotations

from genaug import wire
from genaug.deadline import Deadline
from genaug.errors import InvalidArgument
from genaug.v1 import vae_codec_pb2, vae_codec_pb2_grpc
from services.models.vae_codec import VaeCodec


def _single_tensor(chunks, name: str, max_bytes: int):
    tensors = wire.assemble(chunks, max_tensor_bytes=max_bytes, field="request")
    if set(tensors) != {name}:
        raise InvalidArgument(
            "request", f"expected exactly one tensor named {name!r}, got {sorted(tensors)}"
        )
    return tensors[name]


class VaeCodecServicer(vae_codec_pb2_grpc.VaeCodecServicer):
    def __init__(self, codec: VaeCodec, max_tensor_bytes: int = 1 << 32):
        self.codec = codec
        self.max_tensor_bytes = max_tensor_bytes

    def Encode(self, request, context):
        frames = wire.from_proto(request.frames, "frames")
        latents = self.codec.encode(frames, Deadline.from_context(context))
        return vae_codec_pb2.EncodeResponse(latents=wire.to_proto(latents))

    def Decode(self, request, context):
        latents = wire.from_proto(request.latents, "latents")
        frames = self.codec.decode(latents, Deadline.from_context(context))
        return vae_codec_pb2.DecodeResponse(frames=wire.to_proto(frames))

    def EncodeStream(self, request_iterator, context):
        frames = _single_tensor(request_iterator, "frames", self.max_tensor_bytes)
        yield from wire.iter_chunks(
            "latents", self.codec.encode(frames, Deadline.from_context(context))
        )

    def DecodeStream(self, request_iterator, context):
        latents = _single_tensor(request_iterator, "latents", self.max_tensor_bytes)
        yield from wire.iter_chunks(
            "frames", self.codec.decode(latents, Deadline.from_context(context))
        )

    def GetCodecInfo(self, request, context):
        return vae_codec_pb2.CodecInfo(
            latent_channels=self.codec.latent_channels,
            downsample_factor=self.codec.factor,
            scaling_factor=self.codec.scaling_factor,
            weights=self.codec.provenance,
            config_name=self.codec.config_name,
        )
