"""The tensor wire contract: numpy arrays <-> `genaug.v1.Tensor` and ~1 MiB chunk streams.

Bytes are little-endian and row-major, as KServe v2 `raw_input_contents`. Decoding uses
`numpy.frombuffer`, so an inline tensor is viewed, not copied, and nothing is ever unpickled.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from genaug.v1 import tensor_pb2

DEFAULT_CHUNK_BYTES = 1 << 20
# A clip of 32 frames at 512x512 in float32 is 32 MiB; leave room for the envelope.
DEFAULT_MAX_MESSAGE_BYTES = 64 * (1 << 20) + (1 << 16)

DataType = tensor_pb2.DataType

_NUMPY_BY_PROTO: dict[int, np.dtype] = {
    tensor_pb2.DATA_TYPE_BOOL: np.dtype("?"),
    tensor_pb2.DATA_TYPE_UINT8: np.dtype("<u1"),
    tensor_pb2.DATA_TYPE_UINT16: np.dtype("<u2"),
    tensor_pb2.DATA_TYPE_UINT32: np.dtype("<u4"),
    tensor_pb2.DATA_TYPE_UINT64: np.dtype("<u8"),
    tensor_pb2.DATA_TYPE_INT8: np.dtype("<i1"),
    tensor_pb2.DATA_TYPE_INT16: np.dtype("<i2"),
    tensor_pb2.DATA_TYPE_INT32: np.dtype("<i4"),
    tensor_pb2.DATA_TYPE_INT64: np.dtype("<i8"),
    tensor_pb2.DATA_TYPE_FP16: np.dtype("<f2"),
    tensor_pb2.DATA_TYPE_FP32: np.dtype("<f4"),
    tensor_pb2.DATA_TYPE_FP64: np.dtype("<f8"),
}
_PROTO_BY_KIND = {(dt.kind, dt.itemsize): code for code, dt in _NUMPY_BY_PROTO.items()}

# KServe v2 / Triton datatype names for the same dtypes (BYTES is handled separately).
KSERVE_BY_NUMPY: dict[np.dtype, str] = {
    np.dtype("?"): "BOOL",
    np.dtype("<u1"): "UINT8",
    np.dtype("<u2"): "UINT16",
    np.dtype("<u4"): "UINT32",
    np.dtype("<u8"): "UINT64",
    np.dtype("<i1"): "INT8",
    np.dtype("<i2"): "INT16",
    np.dtype("<i4"): "INT32",
    np.dtype("<i8"): "INT64",
    np.dtype("<f2"): "FP16",
    np.dtype("<f4"): "FP32",
    np.dtype("<f8"): "FP64",
}
NUMPY_BY_KSERVE: dict[str, np.dtype] = {name: dt for dt, name in KSERVE_BY_NUMPY.items()}
_KSERVE_BY_KIND = {(dt.kind, dt.itemsize): name for dt, name in KSERVE_BY_NUMPY.items()}

SUPPORTED_DTYPES: tuple[np.dtype, ...] = tuple(_NUMPY_BY_PROTO.values())


class TensorFormatError(ValueError):
    """A tensor on the wire is malformed; `field` names the offending message field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class TensorTooLargeError(TensorFormatError):
    """A tensor declares more bytes than the receiver accepts."""


def numpy_dtype(code: int, field: str = "dtype") -> np.dtype:
    try:
        return _NUMPY_BY_PROTO[code]
    except KeyError:
        name = DataType.Name(code) if code in DataType.values() else str(code)
        raise TensorFormatError(field, f"unsupported dtype {name}") from None


def proto_dtype(dtype: np.dtype | type, field: str = "dtype") -> int:
    dt = np.dtype(dtype)
    code = _PROTO_BY_KIND.get((dt.kind, dt.itemsize))
    if code is None:
        raise TensorFormatError(field, f"numpy dtype {dt} has no wire representation")
    return code


def kserve_datatype(dtype: np.dtype | type) -> str:
    """KServe v2 datatype name of a numpy dtype ("BYTES" for strings and objects)."""
    dt = np.dtype(dtype)
    if dt.kind in "OSU":
        return "BYTES"
    try:
        return _KSERVE_BY_KIND[(dt.kind, dt.itemsize)]
    except KeyError:
        raise TensorFormatError("datatype", f"numpy dtype {dt} has no KServe v2 name") from None


def _little_endian(array: np.ndarray) -> np.ndarray:
    """Contiguous little-endian view of `array` (a copy only when needed)."""
    dt = array.dtype
    if dt.byteorder == ">" or (dt.byteorder == "=" and np.little_endian is False):
        array = array.astype(dt.newbyteorder("<"))
    # Not np.ascontiguousarray: it turns a 0-d array into shape (1,).
    return array if array.flags.c_contiguous else array.copy(order="C")


# numpy needs the product of the non-zero dimensions to fit its index type, even for an empty
# array; no tensor this project exchanges comes near either bound.
MAX_DIMS = 32
MAX_ELEMENTS = 1 << 48


def check_shape(shape: Iterable[int], field: str) -> tuple[int, ...]:
    """A shape's dimensions, refused when negative or when numpy could not represent them."""
    dims = tuple(int(d) for d in shape)
    if len(dims) > MAX_DIMS:
        raise TensorFormatError(field, f"has {len(dims)} dimensions, over the limit of {MAX_DIMS}")
    if any(d < 0 for d in dims):
        raise TensorFormatError(field, f"negative dimension in shape {list(dims)}")
    if math.prod(d for d in dims if d) > MAX_ELEMENTS:
        raise TensorFormatError(
            field, f"shape {list(dims)} declares more than {MAX_ELEMENTS} elements"
        )
    return dims


def expected_nbytes(dtype: np.dtype, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * dtype.itemsize


def to_proto(array: np.ndarray, out: tensor_pb2.Tensor | None = None) -> tensor_pb2.Tensor:
    """Fill (or create) a Tensor message with `array`'s raw bytes."""
    array = _little_endian(np.asarray(array))
    message = out if out is not None else tensor_pb2.Tensor()
    message.dtype = proto_dtype(array.dtype)
    message.shape[:] = array.shape
    message.data = array.tobytes()
    return message


def from_proto(message: tensor_pb2.Tensor, field: str = "tensor") -> np.ndarray:
    """View a Tensor message as a read-only numpy array, validating dtype, shape and size."""
    dtype = numpy_dtype(message.dtype, f"{field}.dtype")
    shape = check_shape(message.shape, f"{field}.shape")
    want = expected_nbytes(dtype, shape)
    if len(message.data) != want:
        raise TensorFormatError(
            f"{field}.data",
            f"holds {len(message.data)} bytes but dtype {dtype.name} and shape {list(shape)} "
            f"need {want}",
        )
    return np.frombuffer(message.data, dtype=dtype).reshape(shape)


def is_set(message: tensor_pb2.Tensor) -> bool:
    """Whether an optional Tensor field was filled in (an unset one has no dtype)."""
    return message.dtype != tensor_pb2.DATA_TYPE_UNSPECIFIED


def _chunk_header(name: str, array: np.ndarray) -> tensor_pb2.TensorChunk:
    header = tensor_pb2.TensorHeader(name=name, dtype=proto_dtype(array.dtype), shape=array.shape)
    return tensor_pb2.TensorChunk(header=header)


def _raw_view(array: np.ndarray) -> memoryview:
    """The bytes of a contiguous little-endian array, as a flat byte view (no copy)."""
    return memoryview(array.reshape(-1).view(np.uint8)) if array.size else memoryview(b"")


def iter_chunks(
    name: str, array: np.ndarray, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[tensor_pb2.TensorChunk]:
    """A header, then the raw bytes of `array` in chunks of at most `chunk_bytes`.

    Yields messages; `iter_chunk_bytes` yields the same chunks already serialised, with one copy
    per chunk instead of about four (use it where the stub's serializer is `serialize_chunk`).
    """
    array = _little_endian(np.asarray(array))
    yield _chunk_header(name, array)
    raw = _raw_view(array)
    for start in range(0, len(raw), chunk_bytes):
        yield tensor_pb2.TensorChunk(data=raw[start : start + chunk_bytes].tobytes())


def iter_tensors_as_chunks(
    tensors: dict[str, np.ndarray], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[tensor_pb2.TensorChunk]:
    for name, array in tensors.items():
        yield from iter_chunks(name, array, chunk_bytes)


# A data chunk on the wire is exactly: tag of field 2 (`data`, length-delimited), a varint
# length, the bytes. Writing and reading that by hand lets a chunk's bytes go from the array
# into the outgoing message, and from the incoming message into the tensor, in one copy each;
# through protobuf (upb) a 1 MiB bytes field is copied on construction, on serialisation
# (twice: into its arena, then into Python bytes), on parsing and again on reading `.data`.
_DATA_TAG = 0x12


def encode_varint(value: int) -> bytes:
    """A non-negative int as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(raw: memoryview, offset: int) -> tuple[int, int]:
    """(the varint at `offset`, the offset after it); ValueError if truncated or over 10 bytes."""
    value, shift = 0, 0
    while True:
        if offset >= len(raw) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = raw[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, offset
        shift += 7


def iter_chunk_bytes(
    name: str, array: np.ndarray, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[bytes]:
    """`iter_chunks`, serialised: each item is the wire form of the same `TensorChunk`.

    A data chunk is built with one copy, straight from the array's memory. Send these through
    a stub whose request serializer is `serialize_chunk` (or None); any TensorChunk parser
    reads them, and `assemble` takes them as they are.
    """
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    array = _little_endian(np.asarray(array))
    yield _chunk_header(name, array).SerializeToString()
    raw = _raw_view(array)
    total = len(raw)
    full = bytes((_DATA_TAG,)) + encode_varint(chunk_bytes)
    for start in range(0, total, chunk_bytes):
        size = min(chunk_bytes, total - start)
        prefix = full if size == chunk_bytes else bytes((_DATA_TAG,)) + encode_varint(size)
        yield b"".join((prefix, raw[start : start + size]))


def iter_tensors_as_chunk_bytes(
    tensors: dict[str, np.ndarray], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[bytes]:
    for name, array in tensors.items():
        yield from iter_chunk_bytes(name, array, chunk_bytes)


def iter_window_chunks(
    name: str, array: np.ndarray, region: str, memory: memoryview, offset: int = 0
) -> Iterator[bytes]:
    """`iter_chunk_bytes` through shared memory: copy `array` into `memory` (the bytes of
    registered region `region`, from `offset` on) and yield its header and the window that
    points there, serialised. ValueError if it does not fit."""
    array = _little_endian(np.asarray(array))
    raw = _raw_view(array)
    if offset < 0 or offset + len(raw) > len(memory):
        raise ValueError(
            f"tensor {name!r} ({len(raw)} bytes at {offset}) does not fit region {region!r} "
            f"({len(memory)} bytes)"
        )
    memory[offset : offset + len(raw)] = raw
    window = tensor_pb2.SharedMemoryWindow(region=region, offset=offset, byte_size=len(raw))
    yield _chunk_header(name, array).SerializeToString()
    yield tensor_pb2.TensorChunk(shared_memory=window).SerializeToString()


def iter_tensors_in_region(
    tensors: dict[str, np.ndarray], region: str, memory: memoryview
) -> Iterator[bytes]:
    """`iter_tensors_as_chunk_bytes` through shared memory: the tensors one after another in
    `memory` (the bytes of registered region `region`), each at a multiple of WINDOW_ALIGN,
    with its header and window; one that no longer fits goes as data chunks instead."""
    offset = 0
    for name, array in tensors.items():
        array = np.asarray(array)
        if offset + array.nbytes > len(memory):
            yield from iter_chunk_bytes(name, array)
            continue
        yield from iter_window_chunks(name, array, region, memory, offset)
        offset += aligned(array.nbytes)


def serialize_chunk(chunk: tensor_pb2.TensorChunk | bytes | bytearray | memoryview) -> bytes:
    """A gRPC serializer for chunk streams: messages are serialised, serialised chunks (from
    `iter_chunk_bytes`) pass through unchanged."""
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    return chunk.SerializeToString()


def _data_payload(raw: memoryview) -> memoryview | None:
    """The `data` bytes of a serialised chunk that holds exactly one data field and nothing
    else (what every sender writes), as a view; None for anything else (headers, unusual but
    valid encodings, garbage), which is left to the protobuf parser."""
    end = len(raw)
    if end < 2 or raw[0] != _DATA_TAG:
        return None
    try:
        length, offset = read_varint(raw, 1)
    except ValueError:
        return None
    if offset + length != end:
        return None
    return raw[offset:]


# Metadata of a chunk stream asking for its reply in a shared-memory region the caller
# registered with the server (the region's name): see `iter_window_chunks`.
REPLY_REGION_METADATA = "genaug-reply-region"
# Tensors placed one after another in a region start at multiples of this (cache lines).
WINDOW_ALIGN = 64


def aligned(nbytes: int) -> int:
    """`nbytes` rounded up to a multiple of WINDOW_ALIGN."""
    return -(-nbytes // WINDOW_ALIGN) * WINDOW_ALIGN


# Reads a SharedMemoryWindow (message, field name for errors) as the bytes it points at;
# raises TensorFormatError (or another InvalidArgument) naming the field when it cannot.
WindowResolver = Callable[[tensor_pb2.SharedMemoryWindow, str], memoryview]


@dataclass
class _Pending:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    buffer: np.ndarray  # uint8, nbytes long, written only through `view`
    view: memoryview  # of `buffer`: slice assignment through it is one memcpy
    filled: int = 0


class ChunkAssembler:
    """Reassembles tensors from a TensorChunk stream, checking every declared size.

    Chunks may be messages or their serialised bytes (a stub whose response deserializer is
    None, fed by `iter_chunk_bytes` on the other end): a data chunk's bytes are then copied
    once, from the received message into the tensor's buffer, allocated once from its header.

    Args:
        max_tensor_bytes: reject a header that declares more than this many bytes.
        field: the request field the stream arrives in, used in error messages.
    """

    def __init__(
        self,
        max_tensor_bytes: int = 1 << 34,
        field: str = "chunks",
        windows: WindowResolver | None = None,
    ):
        self.max_tensor_bytes = max_tensor_bytes
        self.field = field
        self.windows = windows
        self._pending: _Pending | None = None
        self._last_done: _Pending | None = None
        self._index = 0

    def feed(
        self, chunk: tensor_pb2.TensorChunk | bytes | bytearray | memoryview
    ) -> tuple[str, np.ndarray] | None:
        """Take one chunk (a message or its serialised bytes); return (name, array) when it
        completes a tensor."""
        where = f"{self.field}[{self._index}]"
        self._index += 1
        if isinstance(chunk, (bytes, bytearray, memoryview)):
            raw = memoryview(chunk).cast("B")
            data = _data_payload(raw)
            if data is not None:
                return self._append(data, where)
            chunk = _parse_chunk(raw, where)
        part = chunk.WhichOneof("part")
        if part == "header":
            if self._pending is not None:
                p = self._pending
                raise TensorFormatError(
                    where,
                    f"new header before tensor {p.name!r} was complete "
                    f"({p.filled} of {len(p.buffer)} bytes)",
                )
            return self._open(chunk.header, where)
        if part == "data":
            return self._append(chunk.data, where)
        if part == "shared_memory":
            return self._append_window(chunk.shared_memory, where)
        raise TensorFormatError(where, "chunk has neither header nor data")

    def _append_window(self, window: tensor_pb2.SharedMemoryWindow, where: str):
        """A whole tensor's bytes from shared memory: copied once, like a data chunk, so the
        sender may reuse its region as soon as the call returns."""
        p = self._pending
        if self.windows is None:
            raise TensorFormatError(
                f"{where}.shared_memory", "shared memory is not offered on this stream"
            )
        if p is None or p.filled:
            raise TensorFormatError(
                f"{where}.shared_memory", "a window must follow its tensor's header directly"
            )
        if window.byte_size != len(p.buffer):
            raise TensorFormatError(
                f"{where}.shared_memory.byte_size",
                f"is {window.byte_size}, tensor {p.name!r} has {len(p.buffer)} bytes",
            )
        return self._append(self.windows(window, f"{where}.shared_memory"), where)

    def _open(self, header: tensor_pb2.TensorHeader, where: str):
        dtype = numpy_dtype(header.dtype, f"{where}.header.dtype")
        shape = check_shape(header.shape, f"{where}.header.shape")
        nbytes = expected_nbytes(dtype, shape)
        if nbytes > self.max_tensor_bytes:
            raise TensorTooLargeError(
                f"{where}.header.shape",
                f"tensor {header.name!r} declares {nbytes} bytes, over the limit of "
                f"{self.max_tensor_bytes}",
            )
        # Not zero-filled: only the bytes received are ever read, once all have arrived. numpy
        # backs a large buffer with huge pages where the kernel allows (far fewer page faults
        # than a bytearray's 4 KiB pages, each zeroed on first touch).
        buffer = np.empty(nbytes, np.uint8)
        self._pending = _Pending(header.name, dtype, shape, buffer, memoryview(buffer))
        self._last_done = None
        return self._complete_if_full()

    def _append(self, data: bytes | memoryview, where: str):
        p = self._pending
        if p is None and self._last_done is not None:
            done = self._last_done
            raise TensorFormatError(
                where,
                f"tensor {done.name!r} receives more bytes ({len(done.buffer) + len(data)}) than "
                f"dtype {done.dtype.name} and shape {list(done.shape)} declare "
                f"({len(done.buffer)})",
            )
        if p is None:
            raise TensorFormatError(where, "data chunk before any header")
        end = p.filled + len(data)
        if end > len(p.buffer):
            raise TensorFormatError(
                where,
                f"tensor {p.name!r} receives more bytes ({end}) than dtype {p.dtype.name} "
                f"and shape {list(p.shape)} declare ({len(p.buffer)})",
            )
        p.view[p.filled : end] = data
        p.filled = end
        return self._complete_if_full()

    def _complete_if_full(self):
        p = self._pending
        if p is None or p.filled < len(p.buffer):
            return None
        self._pending, self._last_done = None, p
        p.view.release()
        return p.name, p.buffer.view(p.dtype).reshape(p.shape)

    def close(self) -> None:
        """Call when the stream ends: an unfinished tensor is an error."""
        p = self._pending
        if p is not None:
            raise TensorFormatError(
                self.field,
                f"stream ended after {p.filled} of {len(p.buffer)} bytes of tensor {p.name!r}",
            )


def _parse_chunk(raw: memoryview, where: str) -> tensor_pb2.TensorChunk:
    try:
        return tensor_pb2.TensorChunk.FromString(raw)
    except Exception:  # noqa: BLE001 - protobuf raises DecodeError and others
        raise TensorFormatError(where, f"{len(raw)} bytes are not a valid message") from None


def assemble(
    chunks: Iterable[tensor_pb2.TensorChunk | bytes],
    max_tensor_bytes: int = 1 << 34,
    field: str = "chunks",
    windows: WindowResolver | None = None,
) -> dict[str, np.ndarray]:
    """Collect every tensor of a chunk stream (messages or serialised chunks) by name;
    `windows` reads shared-memory windows (without it, a stream that sends one is refused)."""
    assembler = ChunkAssembler(max_tensor_bytes, field, windows)
    tensors: dict[str, np.ndarray] = {}
    for chunk in chunks:
        done = assembler.feed(chunk)
        if done is not None:
            name, array = done
            if name in tensors:
                raise TensorFormatError(field, f"tensor {name!r} sent twice")
            tensors[name] = array
    assembler.close()
    return tensors


def encode_bytes_elements(items: Iterable[bytes | str]) -> bytes:
    """KServe v2 BYTES tensor body: each element prefixed by its 4-byte little-endian length."""
    out = bytearray()
    for item in items:
        raw = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        out += struct.pack("<I", len(raw)) + raw
    return bytes(out)


def decode_bytes_elements(raw: bytes, count: int, field: str) -> list[bytes]:
    """Inverse of `encode_bytes_elements`, checking lengths against the buffer."""
    items, offset = [], 0
    for index in range(count):
        if offset + 4 > len(raw):
            raise TensorFormatError(field, f"BYTES element {index} has no length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise TensorFormatError(field, f"BYTES element {index} runs past the buffer")
        items.append(bytes(raw[offset : offset + length]))
        offset += length
    if offset != len(raw):
        raise TensorFormatError(field, f"{len(raw) - offset} trailing bytes after {count} elements")
    return items
