"""Typed genaug.v1.VaeCodec API: unary calls for small clips, chunk streams for large ones.

Each call is answered by the VAE of the generator it names (`model`, `model_version`; the
`genaug-model` / `genaug-model-version` metadata on streams), loaded on first use.

The streams take their chunks as the bytes received and reply with serialised chunks (see
`add_to_server`): one copy per ~1 MiB chunk each way instead of protobuf's four."""

from __future__ import annotations

from genaug import wire
from genaug.deadline import Deadline
from genaug.errors import InvalidArgument
from genaug.v1 import vae_codec_pb2, vae_codec_pb2_grpc
from services.common.chunk_streams import reply_chunks, windows_of
from services.common.registration import with_chunk_streams
from services.models.per_generator import PerGenerator
from services.models.vae_codec import VaeCodec

MODEL_KEY, VERSION_KEY = "genaug-model", "genaug-model-version"
CHUNK_STREAMS = ("EncodeStream", "DecodeStream")


def _single_tensor(chunks, name: str, max_bytes: int, context):
    # Chunks are raw bytes from the server (messages when called in process): `assemble`
    # takes either, and names a bad one request[i] (INVALID_ARGUMENT). Callers on this host
    # may send the tensor as a shared-memory window instead (`chunk_streams`).
    tensors = wire.assemble(
        chunks, max_tensor_bytes=max_bytes, field="request", windows=windows_of(context)
    )
    if set(tensors) != {name}:
        raise InvalidArgument(
            "request", f"expected exactly one tensor named {name!r}, got {sorted(tensors)}"
        )
    return tensors[name]


def _named(context) -> tuple[str, str]:
    """The generator a stream names in its metadata."""
    metadata = dict(context.invocation_metadata() or ())
    return str(metadata.get(MODEL_KEY, "")), str(metadata.get(VERSION_KEY, ""))


class VaeCodecServicer(vae_codec_pb2_grpc.VaeCodecServicer):
    def __init__(self, codecs: PerGenerator[VaeCodec], max_tensor_bytes: int = 1 << 32):
        self.codecs = codecs
        self.max_tensor_bytes = max_tensor_bytes

    def Encode(self, request, context):
        codec = self.codecs.get(request.model, request.model_version)
        frames = wire.from_proto(request.frames, "frames")
        latents = codec.encode(frames, Deadline.from_context(context))
        return vae_codec_pb2.EncodeResponse(latents=wire.to_proto(latents))

    def Decode(self, request, context):
        codec = self.codecs.get(request.model, request.model_version)
        latents = wire.from_proto(request.latents, "latents")
        frames = codec.decode(latents, Deadline.from_context(context))
        return vae_codec_pb2.DecodeResponse(frames=wire.to_proto(frames))

    def EncodeStream(self, request_iterator, context):
        codec = self.codecs.get(*_named(context))
        frames = _single_tensor(request_iterator, "frames", self.max_tensor_bytes, context)
        latents = codec.encode(frames, Deadline.from_context(context))
        yield from reply_chunks(context, {"latents": latents})

    def DecodeStream(self, request_iterator, context):
        codec = self.codecs.get(*_named(context))
        latents = _single_tensor(request_iterator, "latents", self.max_tensor_bytes, context)
        frames = codec.decode(latents, Deadline.from_context(context))
        yield from reply_chunks(context, {"frames": frames})

    def GetCodecInfo(self, request, context):
        entry = self.codecs.view.resolve(request.model, request.model_version)
        codec = self.codecs.get(entry.name, entry.version)
        return vae_codec_pb2.CodecInfo(
            latent_channels=codec.latent_channels,
            downsample_factor=codec.factor,
            scaling_factor=codec.scaling_factor,
            weights=codec.provenance,
            config_name=codec.config_name,
            model=entry.name,
            model_version=entry.version,
            runtime=codec.runtime,
            runtime_note=codec.runtime_note,
        )


# The generated registration, except that EncodeStream/DecodeStream take raw chunk bytes and
# send serialised chunks (`wire.serialize_chunk`); the bytes on the wire are unchanged, so
# clients sending TensorChunk messages (the generated stub) keep working.
add_to_server = with_chunk_streams(vae_codec_pb2_grpc.add_VaeCodecServicer_to_server, CHUNK_STREAMS)
