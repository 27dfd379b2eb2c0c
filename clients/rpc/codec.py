"""Client of the VAE codec: unary for small clips, chunk streams for large ones."""

from __future__ import annotations

import threading

import grpc
import numpy as np

from clients.rpc.errors import translate_errors
from clients.rpc.shared_memory import SharedMemoryLane
from genaug import wire
from genaug.v1 import vae_codec_pb2, vae_codec_pb2_grpc

# Above this size the ~1 MiB chunk stream is faster than one message (`python -m
# benchmarks.transport`; its figures are in benchmarks/results/transport.json).
STREAM_THRESHOLD_BYTES = 4 << 20


def _chunk_bytes_stream(channel: grpc.Channel, method: str):
    # The generated stub's streams take and give TensorChunk messages, which protobuf copies
    # about four times per chunk; these carry the same bytes serialised (`wire.iter_chunk_bytes`
    # out, `wire.assemble` on the raw replies): one copy per chunk each way.
    return channel.stream_stream(
        f"/genaug.v1.VaeCodec/{method}",
        request_serializer=wire.serialize_chunk,
        response_deserializer=None,
    )


class VaeCodecClient:
    """Args:
    channel: to the codec service.
    shared_memory_bytes: for a codec on this host, streamed calls whose tensors fit this
        many bytes go through shared memory (`clients.rpc.shared_memory`) instead of gRPC's
        copies; 0 (the default) never uses it. The regions are made and registered on the
        first such call (GenAugError PERMISSION_DENIED from another host); `close()` frees
        them.
    """

    def __init__(self, channel: grpc.Channel, shared_memory_bytes: int = 0):
        self._channel = channel
        self._stub = vae_codec_pb2_grpc.VaeCodecStub(channel)
        self._encode_stream = _chunk_bytes_stream(channel, "EncodeStream")
        self._decode_stream = _chunk_bytes_stream(channel, "DecodeStream")
        self._shared_memory_bytes = shared_memory_bytes
        self._lane: SharedMemoryLane | None = None
        self._lane_lock = threading.Lock()

    def _streamed(self, stream, name: str, array: np.ndarray, metadata, timeout, reply: str):
        """One tensor through a chunk stream: shared memory when set up and free, else chunks."""
        if self._shared_memory_bytes:
            with self._lane_lock:
                if self._lane is None:
                    self._lane = SharedMemoryLane(self._channel, self._shared_memory_bytes)
            got = self._lane.try_call(stream, {name: array}, timeout=timeout, metadata=metadata)
            if got is not None:
                return got[reply]
        replies = stream(wire.iter_chunk_bytes(name, array), timeout=timeout, metadata=metadata)
        return wire.assemble(replies, field="response")[reply]

    def close(self) -> None:
        """Free the shared-memory regions, if any (the channel is the caller's)."""
        with self._lane_lock:
            lane, self._lane = self._lane, None
        if lane is not None:
            lane.close()

    @translate_errors
    def encode(
        self,
        frames: np.ndarray,
        timeout: float | None = None,
        model: str = "",
        model_version: str = "",
    ) -> np.ndarray:
        """frames float32 (T,1,H,W) in [-1,1] -> scaled latents float32 (T,C,H/f,W/f), with the
        VAE of generator `model` ("" = the default) at `model_version` ("" = the latest)."""
        frames = np.asarray(frames, dtype=np.float32)
        if frames.nbytes > STREAM_THRESHOLD_BYTES:
            metadata = _model_metadata(model, model_version)
            return self._streamed(
                self._encode_stream, "frames", frames, metadata, timeout, reply="latents"
            )
        request = vae_codec_pb2.EncodeRequest(
            frames=wire.to_proto(frames), model=model, model_version=model_version
        )
        return wire.from_proto(self._stub.Encode(request, timeout=timeout).latents, "latents")

    @translate_errors
    def decode(
        self,
        latents: np.ndarray,
        timeout: float | None = None,
        model: str = "",
        model_version: str = "",
    ) -> np.ndarray:
        """Scaled latents float32 (T,C,h,w) -> frames float32 (T,1,h*f,w*f) in [-1,1], with the
        VAE of generator `model` ("" = the default) at `model_version` ("" = the latest)."""
        latents = np.asarray(latents, dtype=np.float32)
        if latents.nbytes * 16 > STREAM_THRESHOLD_BYTES:  # the reply is 16x larger
            metadata = _model_metadata(model, model_version)
            return self._streamed(
                self._decode_stream, "latents", latents, metadata, timeout, reply="frames"
            )
        request = vae_codec_pb2.DecodeRequest(
            latents=wire.to_proto(latents), model=model, model_version=model_version
        )
        return wire.from_proto(self._stub.Decode(request, timeout=timeout).frames, "frames")

    @translate_errors
    def info(
        self, timeout: float | None = None, model: str = "", model_version: str = ""
    ) -> vae_codec_pb2.CodecInfo:
        """The VAE of generator `model` ("" = the default) at `model_version` ("" = the
        latest): latent channels, downsample and scaling factors, weights, and `runtime`
        ("torch" or "onnxruntime"; `runtime_note` says why onnxruntime is not used, if so)."""
        request = vae_codec_pb2.GetCodecInfoRequest(model=model, model_version=model_version)
        return self._stub.GetCodecInfo(request, timeout=timeout)


def _model_metadata(model: str, version: str) -> tuple[tuple[str, str], ...]:
    """A stream's generator, as metadata (its messages are raw tensor chunks)."""
    pairs = (("genaug-model", model), ("genaug-model-version", version))
    return tuple((key, value) for key, value in pairs if value)
