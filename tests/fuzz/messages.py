"""Hypothesis strategies for hostile requests: any protobuf message of the project's APIs.

`messages(descriptor)` fills every field from its type, with the values that break servers:
`Tensor`s with wrong, huge, negative, 0-d or overflowing shapes, byte counts that lie, NaN/Inf,
unknown dtypes; integers at their type's edges; very long or non-ASCII strings; oneofs in any
state. KServe v2 requests get their own strategy (datatype names, contents and raw bytes).
"""

from __future__ import annotations

import math

import numpy as np
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from genaug.v1 import tensor_pb2

INT32_EDGES = [0, 1, 2, -1, 7, 8, 64, 1000, 1001, 2**31 - 1, -(2**31)]
DIMS = st.one_of(
    st.integers(0, 4),
    st.sampled_from([8, 16, 64, 256, 2**16, 2**31 - 1, 2**32, 2**62, -1, -(2**40)]),
)
SMALL = st.sampled_from([1, 2, 3, 7, 8, 9, 16, 64])
# Near-valid shapes reach past the first check: clips, frames, priors, embeddings, trajectories.
PLAUSIBLE_SHAPES = st.one_of(
    st.tuples(SMALL, st.sampled_from([1, 2]), SMALL, SMALL),
    st.tuples(SMALL, SMALL, SMALL),
    st.tuples(st.sampled_from([1, 2]), SMALL, st.sampled_from([1, 2]), SMALL, SMALL),
    st.just((256, 64, 64)),
    st.tuples(SMALL, st.sampled_from([2, 3]), SMALL, SMALL),
    st.tuples(SMALL, st.sampled_from([16, 384, 96])),
).map(list)
SHAPES = st.one_of(st.lists(DIMS, max_size=6), PLAUSIBLE_SHAPES, PLAUSIBLE_SHAPES)
KSERVE_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32"]
KSERVE_DATATYPES += ["INT64", "FP16", "FP32", "FP64", "BYTES", "BF16", "", "FP8", "fp32"]
SPECIAL_FLOATS = np.array([np.nan, np.inf, -np.inf, 0.0, 1e38, -1e38], np.float32)


@st.composite
def tensor_bytes(draw, shape: list[int], itemsize: int) -> bytes:
    """Bytes that match the shape, or lie about it; floats may be NaN/Inf."""
    count = math.prod(shape) if all(0 <= d < 2**16 for d in shape) else 0
    honest = count * itemsize
    size = draw(
        st.sampled_from([honest, honest, 0, honest + 1, max(0, honest - 1), 3])
        if honest <= 1 << 20
        else st.sampled_from([0, 7])
    )
    if draw(st.booleans()) and size % 4 == 0 and size:
        values = draw(st.lists(st.sampled_from(list(SPECIAL_FLOATS)), min_size=1, max_size=4))
        pattern = np.array(values, np.float32).tobytes()
        return (pattern * (size // len(pattern) + 1))[:size]
    return draw(st.binary(min_size=min(size, 64), max_size=min(size, 64))).ljust(size, b"\x01")


@st.composite
def tensors(draw) -> tensor_pb2.Tensor:
    common = [tensor_pb2.DATA_TYPE_FP32, tensor_pb2.DATA_TYPE_UINT8, tensor_pb2.DATA_TYPE_INT64]
    dtype = draw(
        st.one_of(st.sampled_from(common), st.sampled_from([*tensor_pb2.DataType.values(), 99]))
    )
    shape = draw(SHAPES)
    itemsize = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 2, 8: 4, 9: 8, 10: 2, 11: 4, 12: 8}
    data = draw(tensor_bytes(shape, itemsize.get(dtype, 4)))
    message = tensor_pb2.Tensor()
    message.dtype = dtype  # proto3 enums are open: unknown values reach the server
    _set_dims(message.shape, shape)
    message.data = data
    return message


def _set_dims(repeated, dims: list[int]) -> None:
    for d in dims:
        repeated.append(max(-(2**63), min(d, 2**63 - 1)))


def _scalar(field: FieldDescriptor):
    t = field.type
    if t in (
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
    ):
        return st.sampled_from(INT32_EDGES)
    if t in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return st.sampled_from([*INT32_EDGES, 2**63 - 1, -(2**63)])
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.sampled_from([0, 1, 8, 2**32 - 1])
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.sampled_from([0, 1, 66, 2**63, 2**64 - 1])
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.sampled_from([0.0, 1.0, 3.0, -1.0, 1e9, float("nan"), float("inf"), -1e-9])
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_STRING:
        return st.one_of(
            st.text(max_size=20), st.sampled_from(["ddim", "dpmsolver++", "x" * 100_000])
        )
    if t == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.just(b"RIFF" + bytes(200)))
    if t == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values] + [77])
    raise AssertionError(f"no strategy for field type {t}")


@st.composite
def messages(draw, descriptor: Descriptor, depth: int = 0):
    """Any message of `descriptor`'s type, each field set or not."""
    cls = _message_class(descriptor)
    if descriptor.full_name == "genaug.v1.Tensor":
        return draw(tensors())
    message = cls()
    oneof_choice = {
        o.name: draw(st.sampled_from([None, *[f.name for f in o.fields]]))
        for o in descriptor.oneofs
    }
    for field in descriptor.fields:
        if (
            field.containing_oneof is not None
            and oneof_choice[field.containing_oneof.name] != field.name
        ):
            continue
        if field.containing_oneof is None and not draw(st.booleans()):
            continue
        repeated = field.label == FieldDescriptor.LABEL_REPEATED
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth > 3:
                continue
            values = draw(
                st.lists(messages(field.message_type, depth + 1), max_size=3)
                if repeated
                else st.lists(messages(field.message_type, depth + 1), min_size=1, max_size=1)
            )
            target = getattr(message, field.name)
            for value in values:
                (target.add() if repeated else target).CopyFrom(value)
        else:
            values = (
                draw(st.lists(_scalar(field), max_size=4)) if repeated else [draw(_scalar(field))]
            )
            if repeated:
                getattr(message, field.name).extend(values)
            else:
                setattr(message, field.name, values[0])
    return message


def _message_class(descriptor: Descriptor):
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


@st.composite
def kserve_requests(draw, models: list[str], inputs: list[str]) -> service_pb2.ModelInferRequest:
    """Open-inference requests: real and unknown models and inputs, lying shapes and bytes."""
    request = service_pb2.ModelInferRequest(
        model_name=draw(st.one_of(st.sampled_from(models), st.sampled_from(["nope", ""]))),
        model_version=draw(st.sampled_from(["", "", "1", "2"])),
    )
    raw = draw(st.booleans())
    for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2, 3]))):
        datatype = draw(
            st.one_of(
                st.sampled_from(["FP32", "UINT8", "BYTES"]), st.sampled_from(KSERVE_DATATYPES)
            )
        )
        shape = draw(SHAPES)
        tensor = request.inputs.add(
            name=draw(st.one_of(st.sampled_from(inputs), st.just("nope"))), datatype=datatype
        )
        _set_dims(tensor.shape, shape)
        if raw:
            request.raw_input_contents.append(draw(tensor_bytes(shape, 4)))
        else:
            _typed_contents(draw, tensor, datatype, shape)
    if draw(st.booleans()):
        request.outputs.add(name=draw(st.sampled_from(["latents", "frames", "nope"])))
    return request


def _typed_contents(draw, tensor, datatype: str, shape: list[int]) -> None:
    count = math.prod(shape) if all(0 <= d <= 64 for d in shape) else draw(st.integers(0, 3))
    count = min(count, 4096)
    contents = tensor.contents
    if datatype in ("FP32", "FP16", "BF16"):
        contents.fp32_contents.extend(
            draw(st.lists(st.sampled_from(list(SPECIAL_FLOATS)), min_size=count, max_size=count))
        )
    elif datatype.startswith("UINT"):
        contents.uint_contents.extend([draw(st.sampled_from([0, 255, 10**9, 2**32 - 1]))] * count)
    elif datatype.startswith("INT"):
        contents.int_contents.extend([draw(st.sampled_from([0, -1, 2**31 - 1]))] * count)
    elif datatype == "BYTES":
        contents.bytes_contents.extend([draw(st.binary(max_size=8))] * count)
    elif datatype == "BOOL":
        contents.bool_contents.extend([True] * count)
