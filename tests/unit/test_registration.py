"""services.common.registration: a generated servicer with its chunk streams on raw bytes."""

from __future__ import annotations

import pytest

from genaug import wire
from genaug.v1 import vae_codec_pb2, vae_codec_pb2_grpc
from services.common.chunk_streams import StreamContext
from services.common.registration import generated_handlers, with_chunk_streams
from services.common.shared_memory import SharedMemoryRegistry
from services.vae_codec.servicer import CHUNK_STREAMS, VaeCodecServicer, add_to_server


class _FakeServer:
    def __init__(self):
        self.generic = []
        self.registered = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service, handlers) -> None:
        self.registered[service] = dict(handlers)


class _Context:
    def invocation_metadata(self):
        return ()


class _Recording(VaeCodecServicer):
    """Records what its streams are called with."""

    def EncodeStream(self, request_iterator, context):
        self.seen = ("EncodeStream", request_iterator, context)
        return iter(())

    def DecodeStream(self, request_iterator, context):
        self.seen = ("DecodeStream", request_iterator, context)
        return iter(())


def test_the_codec_streams_take_bytes_and_the_unary_methods_keep_protobuf():
    servicer = _Recording(codecs=None)
    server = _FakeServer()
    registry = SharedMemoryRegistry()
    assert add_to_server.takes_shared_memory
    add_to_server(servicer, server, registry)
    _, generated = generated_handlers(vae_codec_pb2_grpc.add_VaeCodecServicer_to_server, servicer)
    handlers = server.registered["genaug.v1.VaeCodec"]
    assert set(handlers) == set(generated) and set(CHUNK_STREAMS) < set(handlers)
    for method in CHUNK_STREAMS:
        handler = handlers[method]
        assert handler.request_deserializer is None
        assert handler.response_serializer is wire.serialize_chunk
        # The servicer's own method, given the call's context with the server's shared memory.
        requests, context = iter(()), _Context()
        assert list(handler.stream_stream(requests, context)) == []
        name, got_requests, got_context = servicer.seen
        assert (name, got_requests) == (method, requests)
        assert isinstance(got_context, StreamContext) and got_context._context is context
        assert got_context._registry is registry
    encode = handlers["Encode"]
    assert encode.request_deserializer == vae_codec_pb2.EncodeRequest.FromString
    assert encode.response_serializer == vae_codec_pb2.EncodeResponse.SerializeToString
    assert handlers["GetCodecInfo"] == generated["GetCodecInfo"]
    # The generic path (calls that are not registered methods) gets the same handlers.
    (generic,) = server.generic
    details = type("Details", (), {"method": "/genaug.v1.VaeCodec/EncodeStream"})()
    assert generic.service(details) == handlers["EncodeStream"]


@pytest.mark.parametrize("method", ["Encode", "NoSuchMethod"])
def test_only_stream_methods_can_be_chunk_streams(method):
    register = with_chunk_streams(vae_codec_pb2_grpc.add_VaeCodecServicer_to_server, [method])
    with pytest.raises(ValueError, match=f"genaug.v1.VaeCodec/{method} is not a stream-stream"):
        register(VaeCodecServicer(codecs=None), _FakeServer())


def test_generated_code_that_registers_otherwise_is_refused():
    def old_style(servicer, server):
        server.add_generic_rpc_handlers(())

    with pytest.raises(RuntimeError, match="add_registered_method_handlers"):
        generated_handlers(old_style, object())
