"""The tensor wire contract without a network: dtypes, shapes, chunk streams, BYTES."""

import numpy as np
import pytest

from genaug import wire
from genaug.v1 import tensor_pb2


@pytest.mark.parametrize("dtype", wire.SUPPORTED_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (2, 3, 4)], ids=str)
def test_inline_round_trip_every_dtype_and_shape(dtype, shape):
    rng = np.random.default_rng(0)
    array = (rng.random(shape) * 100).astype(dtype)
    message = tensor_pb2.Tensor.FromString(wire.to_proto(array).SerializeToString())
    back = wire.from_proto(message)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_decoding_does_not_copy():
    message = wire.to_proto(np.arange(1000, dtype=np.float32))
    view = wire.from_proto(message)
    assert not view.flags.owndata and not view.flags.writeable


def test_big_endian_and_non_contiguous_inputs_are_normalised():
    array = np.arange(12, dtype=">i4").reshape(3, 4).T
    back = wire.from_proto(wire.to_proto(array))
    np.testing.assert_array_equal(back, array)
    assert back.dtype == np.dtype("<i4")


def test_byte_count_mismatch_names_the_field():
    message = wire.to_proto(np.zeros((2, 3), np.float32))
    message.shape[:] = [2, 4]
    with pytest.raises(wire.TensorFormatError, match=r"frames\.data: holds 24 bytes .* need 32"):
        wire.from_proto(message, "frames")


def test_unknown_dtype_and_negative_shape_are_rejected():
    with pytest.raises(wire.TensorFormatError, match=r"x\.dtype: unsupported dtype"):
        wire.from_proto(tensor_pb2.Tensor(dtype=0, shape=[1], data=b"\0"), "x")
    with pytest.raises(wire.TensorFormatError, match=r"x\.shape: negative"):
        wire.from_proto(
            tensor_pb2.Tensor(dtype=wire.DataType.Value("DATA_TYPE_UINT8"), shape=[-1], data=b""),
            "x",
        )
    with pytest.raises(wire.TensorFormatError):
        wire.to_proto(np.array(["text"]))


@pytest.mark.parametrize("chunk_bytes", [1, 7, 1 << 20])
def test_chunk_stream_round_trip_several_tensors(chunk_bytes):
    tensors = {
        "a": np.arange(50, dtype=np.int16).reshape(5, 10),
        "empty": np.zeros((0, 4), np.float64),
        "scalar": np.array(True),
    }
    chunks = list(wire.iter_tensors_as_chunks(tensors, chunk_bytes=chunk_bytes))
    assert all(len(c.data) <= chunk_bytes for c in chunks if c.WhichOneof("part") == "data")
    back = wire.assemble(chunks)
    assert set(back) == set(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(back[name], array)
        assert back[name].dtype == array.dtype


def test_chunk_stream_that_ends_early_is_rejected():
    chunks = list(wire.iter_chunks("x", np.zeros(1000, np.float32), chunk_bytes=1000))
    with pytest.raises(wire.TensorFormatError, match="stream ended after 3000 of 4000 bytes"):
        wire.assemble(chunks[:-1])


def test_chunk_stream_with_excess_bytes_is_rejected():
    chunks = list(wire.iter_chunks("x", np.zeros(10, np.uint8)))
    chunks.append(tensor_pb2.TensorChunk(data=b"\x01"))
    with pytest.raises(wire.TensorFormatError, match=r"chunks\[2\].*more bytes \(11\)"):
        wire.assemble(chunks)


def test_data_before_header_and_oversized_header_are_rejected():
    with pytest.raises(wire.TensorFormatError, match="before any header"):
        wire.assemble([tensor_pb2.TensorChunk(data=b"abc")])
    header = tensor_pb2.TensorHeader(name="x", dtype=wire.proto_dtype(np.float32), shape=[1 << 20])
    with pytest.raises(wire.TensorTooLargeError, match="over the limit"):
        wire.assemble([tensor_pb2.TensorChunk(header=header)], max_tensor_bytes=1024)


def test_bytes_elements_round_trip_and_validation():
    raw = wire.encode_bytes_elements(["a", b"", "ümlaut"])
    assert wire.decode_bytes_elements(raw, 3, "text") == [b"a", b"", "ümlaut".encode()]
    with pytest.raises(wire.TensorFormatError, match="runs past"):
        wire.decode_bytes_elements(raw[:-1], 3, "text")
    with pytest.raises(wire.TensorFormatError, match="trailing"):
        wire.decode_bytes_elements(raw, 2, "text")


# -- serialised chunks (the one-copy path) ---------------------------------------------------


@pytest.mark.parametrize("chunk_bytes", [1, 7, 300, 1 << 20])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(1000, dtype=np.float32).reshape(10, 100),
        np.zeros((0, 4), np.float64),
        np.array(True),
        np.arange(24, dtype=">i4").reshape(2, 3, 4),  # big-endian: sent little-endian
    ],
    ids=["fp32", "empty", "scalar", "big-endian"],
)
def test_chunk_bytes_are_the_serialised_messages(array, chunk_bytes):
    as_bytes = list(wire.iter_chunk_bytes("x", array, chunk_bytes=chunk_bytes))
    as_messages = list(wire.iter_chunks("x", array, chunk_bytes=chunk_bytes))
    assert as_bytes == [m.SerializeToString() for m in as_messages]
    assert [wire.serialize_chunk(c) for c in as_bytes + as_messages] == as_bytes * 2
    back = wire.assemble(as_bytes)["x"]
    assert back.dtype == array.dtype.newbyteorder("<") and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_assembler_takes_bytes_and_messages_mixed():
    array = np.arange(100, dtype=np.int64)
    chunks = list(wire.iter_chunk_bytes("x", array, chunk_bytes=64))
    mixed = [tensor_pb2.TensorChunk.FromString(c) if i % 2 else c for i, c in enumerate(chunks)]
    mixed[1] = bytearray(chunks[1])
    mixed[2] = memoryview(chunks[2])
    np.testing.assert_array_equal(wire.assemble(mixed)["x"], array)


def test_serialised_data_chunk_in_an_unusual_encoding_is_read_as_protobuf_reads_it():
    header = tensor_pb2.TensorChunk(
        header=tensor_pb2.TensorHeader(name="x", dtype=wire.proto_dtype(np.uint8), shape=[3])
    ).SerializeToString()
    # Two data fields in one message (the last one wins) and a non-minimal length varint.
    twice = b"\x12\x02ab" + b"\x12\x03xyz"
    padded = b"\x12\x83\x00xyz"
    for data in (twice, padded):
        assert bytes(wire.assemble([header, data])["x"]) == b"xyz"


def test_serialised_chunk_streams_are_validated_like_messages():
    chunks = list(wire.iter_chunk_bytes("x", np.zeros(1000, np.float32), chunk_bytes=1000))
    with pytest.raises(wire.TensorFormatError, match="stream ended after 3000 of 4000 bytes"):
        wire.assemble(chunks[:-1])
    with pytest.raises(wire.TensorFormatError, match=r"resp\[5\].*more bytes \(4001\)"):
        wire.assemble([*chunks, b"\x12\x01\x00"], field="resp")
    with pytest.raises(wire.TensorFormatError, match=r"resp\[1\].*more bytes \(5000\)"):
        wire.assemble([chunks[0], b"\x12\x88\x27" + bytes(5000)], field="resp")
    with pytest.raises(wire.TensorFormatError, match=r"request\[0\]: 2 bytes are not a valid"):
        wire.assemble([b"\xff\xff"], field="request")
    with pytest.raises(wire.TensorFormatError, match=r"request\[1\]: 5 bytes are not a valid"):
        wire.assemble([chunks[0], b"\x12\x05ab\x00"], field="request")  # length past the end
    with pytest.raises(wire.TensorFormatError, match="before any header"):
        wire.assemble([b"\x12\x01\x00"])
    with pytest.raises(wire.TensorFormatError, match="neither header nor data"):
        wire.assemble([b""])


def test_a_stream_that_fails_returns_nothing_half_written():
    assembler = wire.ChunkAssembler(field="request")
    chunks = list(wire.iter_chunk_bytes("x", np.ones(10, np.uint8), chunk_bytes=4))
    assert [assembler.feed(c) for c in chunks[:-1]] == [None] * 3  # header + 8 bytes
    with pytest.raises(wire.TensorFormatError, match=r"request\[3\].*more bytes \(12\)"):
        assembler.feed(b"\x12\x04" + bytes(4))  # 8 + 4 > 10: refused before any byte is written
    with pytest.raises(wire.TensorFormatError, match="stream ended after 8 of 10 bytes"):
        assembler.close()
