"""An echo service over the wire contract: tensors in, the same tensors out.

The transport benchmark measures the runtime's unary and chunk-stream paths with it, and the
service tests use it to exercise the runtime without a model. It is registered only by those.
"""

from __future__ import annotations

import grpc

from genaug import wire
from genaug.v1 import tensor_pb2
from services.common.chunk_streams import reply_chunks, windows_of, with_stream_context
from services.common.server import TypedService
from services.common.shared_memory import SharedMemoryRegistry

ECHO_SERVICE = "genaug.test.Echo"


class EchoServicer:
    """A test-only typed service: tensors in, the same tensors out, through the wire contract."""

    def echo_tensor(self, request, context):
        return wire.to_proto(wire.from_proto(request, "tensor"))

    def echo_chunks(self, request_iterator, context):
        # Serialised chunks both ways (see `wire.iter_chunk_bytes`): one copy per chunk each way;
        # or, for a caller on this host, shared-memory windows (`chunk_streams`).
        tensors = wire.assemble(request_iterator, field="request", windows=windows_of(context))
        yield from reply_chunks(context, tensors)

    def echo_bytes(self, request_iterator, context):
        # No wire format at all: gRPC's own cost of moving these messages, the ceiling of
        # any stream of messages this size.
        yield from request_iterator

    def echo_bytes_whole(self, request_iterator, context):
        # The same, but every message is in before the first goes back, as a service that
        # computes on the whole tensor answers (the chunk echo assembles it first).
        yield from list(request_iterator)


def _register_echo(
    servicer: EchoServicer, server: grpc.Server, shared_memory: SharedMemoryRegistry | None = None
) -> None:
    handlers = {
        "EchoTensor": grpc.unary_unary_rpc_method_handler(
            servicer.echo_tensor,
            request_deserializer=tensor_pb2.Tensor.FromString,
            response_serializer=tensor_pb2.Tensor.SerializeToString,
        ),
        # Requests arrive as bytes, parsed by `wire.assemble` (bad bytes: INVALID_ARGUMENT
        # naming request[i]); replies may be messages or serialised chunks.
        "EchoChunks": grpc.stream_stream_rpc_method_handler(
            with_stream_context(servicer.echo_chunks, shared_memory),
            request_deserializer=None,
            response_serializer=wire.serialize_chunk,
        ),
        "EchoBytes": grpc.stream_stream_rpc_method_handler(
            servicer.echo_bytes, request_deserializer=None, response_serializer=None
        ),
        "EchoBytesWhole": grpc.stream_stream_rpc_method_handler(
            servicer.echo_bytes_whole, request_deserializer=None, response_serializer=None
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ECHO_SERVICE, handlers),))


_register_echo.takes_shared_memory = True


def echo_service() -> TypedService:
    return TypedService(ECHO_SERVICE, EchoServicer(), _register_echo)


def echo_stubs(channel: grpc.Channel):
    """(unary echo, stream echo) callables for the test echo service.

    The stream takes TensorChunk messages or serialised chunks and answers messages."""
    unary = channel.unary_unary(
        f"/{ECHO_SERVICE}/EchoTensor",
        request_serializer=tensor_pb2.Tensor.SerializeToString,
        response_deserializer=tensor_pb2.Tensor.FromString,
    )
    stream = channel.stream_stream(
        f"/{ECHO_SERVICE}/EchoChunks",
        request_serializer=wire.serialize_chunk,
        response_deserializer=tensor_pb2.TensorChunk.FromString,
    )
    return unary, stream


def echo_chunk_bytes_stub(channel: grpc.Channel):
    """The stream echo with serialised chunks both ways (`wire.iter_chunk_bytes` in, bytes
    out for `wire.assemble`): the fast path, one copy per chunk on each side."""
    return channel.stream_stream(
        f"/{ECHO_SERVICE}/EchoChunks",
        request_serializer=wire.serialize_chunk,
        response_deserializer=None,
    )


def echo_bytes_stub(channel: grpc.Channel, whole: bool = False):
    """The stream echo of opaque byte messages, each sent back as it arrives (`whole`: once
    every one has arrived)."""
    method = "EchoBytesWhole" if whole else "EchoBytes"
    return channel.stream_stream(
        f"/{ECHO_SERVICE}/{method}", request_serializer=None, response_deserializer=None
    )
