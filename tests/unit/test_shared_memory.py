"""The shared-memory registry, the KServe servicer's use of it and the wire's windows, with
real POSIX shared-memory objects (the gRPC side is in tests/service/test_shared_memory.py)."""

from __future__ import annotations

import os
from multiprocessing import shared_memory

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from genaug import wire
from genaug.deadline import Deadline
from genaug.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from genaug.v1 import tensor_pb2
from services.common.kserve import InferenceServicer
from services.common.model import Model, TensorSpec
from services.common.shared_memory import SHM_ROOT, SharedMemoryRegistry


@pytest.fixture
def shm():
    """A 4 KiB POSIX shared-memory object, filled with 0..255, removed afterwards."""
    made = shared_memory.SharedMemory(create=True, size=4096)
    made.buf[:] = bytes(range(256)) * 16
    yield made
    made.close()
    made.unlink()


def test_a_registered_window_reads_the_objects_bytes(shm):
    registry = SharedMemoryRegistry()
    region = registry.register("r", f"/{shm.name}", offset=256, byte_size=512)
    assert bytes(registry.window("r", 1, 3, "w")) == bytes((1, 2, 3))  # offsets are the region's
    view = region.view(0, 512, "w")
    view[0] = 99
    assert shm.buf[256] == 99  # the same memory, both ways
    with pytest.raises(InvalidArgument, match=r"^w\.byte_size: bytes 500\.\.520 are outside"):
        registry.window("r", 500, 20, "w")
    with pytest.raises(InvalidArgument, match=r"^w\.region: no shared-memory region 'x'"):
        registry.window("x", 0, 1, "w")
    registry.unregister("r")
    assert view[0] == 99  # a view in use stays valid after its region is dropped
    assert registry.status() == []


def test_an_object_cut_after_registering_is_refused_not_touched(shm):
    registry = SharedMemoryRegistry()
    registry.register("r", shm.name, offset=1024, byte_size=2048)
    assert len(registry.window("r", 0, 2048, "w")) == 2048
    os.truncate(SHM_ROOT / shm.name, 2048)  # its owner shrinks it: the region's end is gone
    with pytest.raises(InvalidArgument, match=r"^w\.byte_size: the object behind region 'r'"):
        registry.window("r", 0, 16, "w")


def test_registering_refuses_bad_names_keys_and_sizes(shm, tmp_path):
    registry = SharedMemoryRegistry(max_regions=2)
    registry.register("a", shm.name, 0, 4096)  # "name" and "/name" are the same key
    with pytest.raises(FailedPrecondition, match="already registered"):
        registry.register("a", shm.name, 0, 16)
    for name, key, offset, size, error, field in [
        ("b c", shm.name, 0, 16, InvalidArgument, "name"),
        ("b", "/../etc/passwd", 0, 16, InvalidArgument, "key"),
        ("b", "/a/b", 0, 16, InvalidArgument, "key"),
        ("b", "/genaug_does_not_exist", 0, 16, NotFound, "key"),
        ("b", shm.name, 4000, 100, InvalidArgument, "byte_size"),
        ("b", shm.name, -1, 16, InvalidArgument, "offset"),
        ("b", shm.name, 0, 0, InvalidArgument, "byte_size"),
    ]:
        with pytest.raises(error) as info:
            registry.register(name, key, offset, size)
        assert str(info.value).startswith(f"{field}:"), (key, str(info.value))
    link = SHM_ROOT / f"genaug_test_link_{os.getpid()}"
    target = tmp_path / "secret"
    target.write_bytes(b"x" * 64)
    link.symlink_to(target)
    try:  # a link out of /dev/shm is not followed
        with pytest.raises(InvalidArgument, match="^key: cannot open"):
            registry.register("b", link.name, 0, 16)
    finally:
        link.unlink()
    registry.register("b", shm.name, 0, 16)
    with pytest.raises(ResourceExhausted, match="2 regions"):
        registry.register("c", shm.name, 0, 16)
    assert [r.name for r in registry.status()] == ["a", "b"]
    with pytest.raises(NotFound):
        registry.status("c")
    registry.unregister()  # empty name: all of them, as Triton does
    assert registry.status() == []


class _TwoOutputs(Model):
    name = "pair"
    inputs = (TensorSpec("a", "UINT8", (-1,)), TensorSpec("b", "UINT8", (-1,)))
    outputs = (TensorSpec("sum", "UINT8", (-1,)), TensorSpec("a", "UINT8", (-1,)))

    def __init__(self):
        super().__init__()
        self.ready = True

    def load(self) -> None:
        pass

    def predict(self, inputs, deadline: Deadline):
        return {"sum": inputs["a"] + inputs["b"], "a": inputs["a"]}


class _Context:
    def __init__(self, peer: str):
        self._peer = peer

    def peer(self) -> str:
        return self._peer

    def time_remaining(self):
        return None


def _shm_parameters(tensor, region: str, byte_size: int, offset: int = 0) -> None:
    tensor.parameters["shared_memory_region"].string_param = region
    tensor.parameters["shared_memory_byte_size"].int64_param = byte_size
    tensor.parameters["shared_memory_offset"].int64_param = offset


def _pair_request() -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="pair")
    _shm_parameters(request.inputs.add(name="a", datatype="UINT8", shape=[4]), "r", 4)
    request.inputs.add(name="b", datatype="UINT8", shape=[4])
    request.raw_input_contents.append(bytes((10, 10, 10, 10)))  # b's: the only raw input
    _shm_parameters(request.outputs.add(name="sum"), "r", 4, offset=64)
    request.outputs.add(name="a")
    return request


def test_shared_memory_and_raw_inputs_and_outputs_mix(shm):
    registry = SharedMemoryRegistry()
    registry.register("r", shm.name, 0, 128)
    servicer = InferenceServicer("t", {"pair": _TwoOutputs()}, lambda: True, registry)
    reply = servicer.infer(_pair_request(), _Context("ipv4:127.0.0.1:1"))
    assert bytes(shm.buf[64:68]) == bytes((10, 11, 12, 13))  # a (0..3) + b (10s), in place
    # tritonclient finds raw outputs by position: the shared-memory one keeps an empty place.
    assert [bytes(r) for r in reply.raw_output_contents] == [b"", bytes((0, 1, 2, 3))]
    sent = reply.message.outputs[0].parameters
    assert sent["shared_memory_region"].string_param == "r"
    assert sent["shared_memory_byte_size"].int64_param == 4


def test_shared_memory_from_another_host_or_when_off_is_refused(shm):
    registry = SharedMemoryRegistry()
    registry.register("r", shm.name, 0, 128)
    servicer = InferenceServicer("t", {"pair": _TwoOutputs()}, lambda: True, registry)
    with pytest.raises(PermissionDenied, match=r"^inputs\[a\]\.parameters\.shared_memory_region"):
        servicer.infer(_pair_request(), _Context("ipv4:10.1.2.3:5555"))
    with pytest.raises(PermissionDenied):
        servicer.SystemSharedMemoryStatus(
            service_pb2.SystemSharedMemoryStatusRequest(), _Context("ipv6:[2001:db8::1]:1")
        )
    assert bytes(shm.buf[64:68]) == bytes((64, 65, 66, 67))  # nothing was written
    off = InferenceServicer("t", {"pair": _TwoOutputs()}, lambda: True, None)
    with pytest.raises(Exception, match="--no-shared-memory") as info:
        off.infer(_pair_request(), _Context("unix:x"))
    assert type(info.value).__name__ == "Unimplemented"


def _window_chunks(window: tensor_pb2.SharedMemoryWindow, shape=(4,)) -> list:
    header = tensor_pb2.TensorHeader(name="x", dtype=tensor_pb2.DATA_TYPE_UINT8, shape=shape)
    return [tensor_pb2.TensorChunk(header=header), tensor_pb2.TensorChunk(shared_memory=window)]


def test_the_wire_reads_and_writes_windows():
    memory = memoryview(bytearray(256))
    array = np.arange(10, dtype=np.float32)
    chunks = list(wire.iter_window_chunks("x", array, "r", memory, offset=64))
    assert len(chunks) == 2
    window = tensor_pb2.TensorChunk.FromString(chunks[1]).shared_memory
    assert (window.region, window.offset, window.byte_size) == ("r", 64, 40)

    def resolve(w, field):
        return memory[w.offset : w.offset + w.byte_size]

    got = wire.assemble(chunks, windows=resolve)["x"]
    np.testing.assert_array_equal(got, array)
    memory[64:68] = b"\0\0\0\0"
    assert got[0] == 0.0 and got[1] == 1.0  # assembled: a copy, not the caller's memory
    with pytest.raises(ValueError, match="does not fit"):
        list(wire.iter_window_chunks("x", array, "r", memory, offset=240))
    assert wire.aligned(1) == 64 and wire.aligned(64) == 64 and wire.aligned(0) == 0


def test_tensors_placed_in_a_region_one_after_another_or_as_chunks():
    memory = memoryview(bytearray(128))
    first, second = np.arange(5, dtype=np.uint8), np.arange(100, dtype=np.uint8)
    chunks = list(wire.iter_tensors_in_region({"a": first, "b": second}, "r", memory))
    parts = [tensor_pb2.TensorChunk.FromString(c).WhichOneof("part") for c in chunks]
    # a at 0; b would start at 64 and end past 128: it goes as a data chunk.
    assert parts == ["header", "shared_memory", "header", "data"]
    assert bytes(memory[:5]) == first.tobytes() and not any(memory[64:])

    def resolve(w, field):
        return memory[w.offset : w.offset + w.byte_size]

    got = wire.assemble(chunks, windows=resolve)
    np.testing.assert_array_equal(got["a"], first)
    np.testing.assert_array_equal(got["b"], second)


@pytest.mark.parametrize(
    ("chunks", "field"),
    [
        # No resolver: in process, or a stream that does not offer shared memory.
        (None, "chunks[1].shared_memory"),
        # A window before any header.
        ([tensor_pb2.TensorChunk(shared_memory=tensor_pb2.SharedMemoryWindow(byte_size=4))],
         "chunks[0].shared_memory"),
        # A window after some data chunks of the same tensor.
        ("after-data", "chunks[2].shared_memory"),
        # A window of another size than the tensor's.
        (_window_chunks(tensor_pb2.SharedMemoryWindow(region="r", byte_size=5)),
         "chunks[1].shared_memory.byte_size"),
    ],
)  # fmt: skip
def test_the_wire_refuses_misplaced_windows(chunks, field):
    memory = memoryview(bytearray(64))

    def resolve(w, where):
        return memory[w.offset : w.offset + w.byte_size]

    windows = resolve
    if chunks is None:
        chunks, windows = _window_chunks(tensor_pb2.SharedMemoryWindow(byte_size=4)), None
    elif chunks == "after-data":
        first = _window_chunks(tensor_pb2.SharedMemoryWindow(byte_size=4))
        chunks = [first[0], tensor_pb2.TensorChunk(data=b"ab"), first[1]]
    with pytest.raises(wire.TensorFormatError) as info:
        wire.assemble(chunks, windows=windows)
    assert info.value.field == field
