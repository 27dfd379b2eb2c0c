"""Shared memory for chunk-stream calls to a service on this host.

Over loopback, gRPC's own copies are what limit large tensors (about half of raw TCP at best,
`python -m benchmarks.transport`). A caller on the server's host can skip them: it puts the
tensor in a POSIX shared-memory object, registers that once with the server as a region
(KServe v2 SystemSharedMemoryRegister, Triton's extension, which every service serves), and
sends only a window of it; the reply comes back the same way in a second region.

`SharedMemoryLane` holds those two regions for one server and makes one call at a time through
them; a call that finds it busy, or too small, goes as plain chunks instead.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Callable, Iterable
from multiprocessing import shared_memory

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from clients.rpc.errors import GenAugError
from genaug import wire
from genaug.v1 import tensor_pb2

REGISTER_TIMEOUT_S = 10.0


class SharedMemoryRegion:
    """A shared-memory object this process creates and registers with one server.

    The region's name and the object's key are two random names: the key is visible to anyone
    listing /dev/shm, the region's name only to the server (and to callers that may ask it for
    its regions). `close()` unregisters it and removes the object."""

    def __init__(self, channel: grpc.Channel, byte_size: int):
        if byte_size <= 0:
            raise ValueError(f"byte_size must be positive, got {byte_size}")
        self.name = f"genaug_{secrets.token_hex(16)}"
        self.key = f"genaug_{secrets.token_hex(16)}"
        self.byte_size = byte_size
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        self._shm = shared_memory.SharedMemory(self.key, create=True, size=byte_size)
        # Registering also allocates the object's pages (on a full /dev/shm that is
        # RESOURCE_EXHAUSTED here, not SIGBUS at the first write).
        try:
            self._stub.SystemSharedMemoryRegister(
                service_pb2.SystemSharedMemoryRegisterRequest(
                    name=self.name, key=f"/{self.key}", offset=0, byte_size=byte_size
                ),
                timeout=REGISTER_TIMEOUT_S,
            )
        except grpc.RpcError as error:
            self._remove()
            raise GenAugError.from_rpc_error(error) from None

    @property
    def memory(self) -> memoryview:
        return self._shm.buf

    def window(self, window: tensor_pb2.SharedMemoryWindow, field: str) -> memoryview:
        """The bytes of a window the server wrote into this region (a reply)."""
        if window.region != self.name:
            raise wire.TensorFormatError(
                f"{field}.region",
                f"names {window.region!r}, this call's reply region is {self.name!r}",
            )
        if window.offset + window.byte_size > self.byte_size:
            raise wire.TensorFormatError(
                f"{field}.byte_size",
                f"bytes {window.offset}..{window.offset + window.byte_size} are outside the "
                f"reply region ({self.byte_size} bytes)",
            )
        return self.memory[window.offset : window.offset + window.byte_size]

    def close(self) -> None:
        # A server that is gone or restarted holds no registration to drop.
        with contextlib.suppress(grpc.RpcError):
            self._stub.SystemSharedMemoryUnregister(
                service_pb2.SystemSharedMemoryUnregisterRequest(name=self.name),
                timeout=REGISTER_TIMEOUT_S,
            )
        self._remove()

    def _remove(self) -> None:
        self._shm.close()
        self._shm.unlink()


class SharedMemoryLane:
    """A request region and a reply region of `byte_size` each, registered with the server
    behind `channel`, for one chunk-stream call at a time.

    Raises GenAugError when the server refuses them (PERMISSION_DENIED from another host,
    UNIMPLEMENTED where it runs with --no-shared-memory)."""

    def __init__(self, channel: grpc.Channel, byte_size: int):
        self.byte_size = byte_size
        self.request = SharedMemoryRegion(channel, byte_size)
        try:
            self.reply = SharedMemoryRegion(channel, byte_size)
        except GenAugError:
            self.request.close()
            raise
        self._lock = threading.Lock()

    def fits(self, tensors: dict[str, np.ndarray]) -> bool:
        return sum(wire.aligned(a.nbytes) for a in tensors.values()) <= self.byte_size

    def try_call(
        self,
        stream: Callable[..., Iterable],
        tensors: dict[str, np.ndarray],
        timeout: float | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> dict[str, np.ndarray] | None:
        """Call chunk stream `stream` (raw replies) with `tensors` in the request region and
        the reply asked for in the reply region; the reply's tensors, copied out, so the
        regions are free for the next call. None when the lane is busy or too small."""
        if not self.fits(tensors) or not self._lock.acquire(blocking=False):
            return None
        try:
            # Built (copied into the region) before the call; all fit, so all are windows.
            chunks = list(
                wire.iter_tensors_in_region(tensors, self.request.name, self.request.memory)
            )
            metadata = (*metadata, (wire.REPLY_REGION_METADATA, self.reply.name))
            replies = stream(iter(chunks), timeout=timeout, metadata=metadata)
            return wire.assemble(replies, field="response", windows=self.reply.window)
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:  # not while a call still uses the regions
            self.request.close()
            self.reply.close()

    def __enter__(self) -> SharedMemoryLane:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
