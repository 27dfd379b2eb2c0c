"""What a chunk-stream servicer reads from and replies through, shared memory included.

A caller on this host may send a tensor as a window of a region it registered with this
server (KServe v2 SystemSharedMemoryRegister) instead of data chunks, and ask for the reply in
another region by naming it in the `genaug-reply-region` metadata. Servicers read with
`wire.assemble(..., windows=windows_of(context))` and answer with `reply_chunks(context, ...)`;
both fall back to plain chunks when the call does not use shared memory (or is in process).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from genaug import wire
from genaug.v1 import tensor_pb2
from services.common.shared_memory import Region, SharedMemoryRegistry, regions_for


class StreamContext:
    """A servicer context that also reads and writes the stream's shared memory; every other
    attribute is the gRPC context's."""

    __slots__ = ("_context", "_registry", "_reply_region")

    def __init__(self, context, registry: SharedMemoryRegistry | None):
        self._context = context
        self._registry = registry
        self._reply_region: Region | None = None

    def __getattr__(self, name):
        return getattr(self._context, name)

    def _regions(self, field: str) -> SharedMemoryRegistry:
        return regions_for(self._registry, self._context.peer(), field)

    def check_reply_region(self) -> None:
        """Find the reply region the call names, if any, before any work is done for it."""
        name = dict(self._context.invocation_metadata() or ()).get(wire.REPLY_REGION_METADATA)
        if name:
            field = f"metadata[{wire.REPLY_REGION_METADATA}]"
            self._reply_region = self._regions(field).region(str(name), field)

    def read_window(self, window: tensor_pb2.SharedMemoryWindow, field: str) -> memoryview:
        return self._regions(field).window(window.region, window.offset, window.byte_size, field)

    def reply(self, tensors: dict[str, np.ndarray]) -> Iterator[bytes]:
        region = self._reply_region
        if region is None:
            yield from wire.iter_tensors_as_chunk_bytes(tensors)
            return
        memory = region.view(0, region.byte_size, f"metadata[{wire.REPLY_REGION_METADATA}]")
        yield from wire.iter_tensors_in_region(tensors, region.name, memory)


def windows_of(context) -> wire.WindowResolver | None:
    """What reads a stream's shared-memory windows (None in process: windows are refused)."""
    return context.read_window if isinstance(context, StreamContext) else None


def reply_chunks(context, tensors: dict[str, np.ndarray]) -> Iterator[bytes]:
    """The reply's tensors: in the caller's reply region when it named one, else as chunks."""
    if isinstance(context, StreamContext):
        return context.reply(tensors)
    return wire.iter_tensors_as_chunk_bytes(tensors)


def with_stream_context(behaviour, registry: SharedMemoryRegistry | None):
    """A stream-stream handler behaviour whose servicer gets a `StreamContext`."""

    def handle(request_iterator, context):
        stream = StreamContext(context, registry)
        stream.check_reply_region()
        yield from behaviour(request_iterator, stream)

    return handle
