"""The open inference protocol (KServe v2 `inference.GRPCInferenceService`) over our models.

Uses the stubs that tritonclient ships, so `tritonclient.grpc.InferenceServerClient` and
`perf_analyzer` work against every service unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from genaug.deadline import Deadline
from genaug.errors import InvalidArgument, NotFound, Unavailable
from genaug.wire import (
    check_shape,
    decode_bytes_elements,
    encode_bytes_elements,
    encode_varint,
    expected_nbytes,
    kserve_datatype,
    read_varint,
)
from services.common.model import BYTES, Model, numpy_for_kserve
from services.common.registration import add_handlers, generated_handlers
from services.common.shared_memory import SharedMemoryRegistry, regions_for

SERVICE_NAME = "inference.GRPCInferenceService"
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


@dataclass(frozen=True)
class _Window:
    """Where a tensor's bytes lie in a registered shared-memory region (its parameters)."""

    region: str
    offset: int
    byte_size: int
    field: str  # "<tensor>.parameters", for messages

    @property
    def size_field(self) -> str:
        return f"{self.field}.shared_memory_byte_size"

    def view(self, regions: Callable[[str], SharedMemoryRegistry]) -> memoryview:
        region_field = f"{self.field}.shared_memory_region"
        region = regions(region_field).region(self.region, region_field)
        return region.view(self.offset, self.byte_size, self.size_field)


def shared_memory_window(parameters, field: str) -> _Window | None:
    """The shared-memory window a tensor's parameters name, or None when they name none."""
    if "shared_memory_region" not in parameters:
        return None
    region = parameters["shared_memory_region"].string_param
    if "shared_memory_byte_size" not in parameters:
        raise InvalidArgument(
            f"{field}.shared_memory_byte_size", "is required with shared_memory_region"
        )
    byte_size = _int_parameter(parameters["shared_memory_byte_size"])
    offset = 0
    if "shared_memory_offset" in parameters:
        offset = _int_parameter(parameters["shared_memory_offset"])
    for name, value in (("byte_size", byte_size), ("offset", offset)):
        if value < 0:
            raise InvalidArgument(f"{field}.shared_memory_{name}", f"must be >= 0, got {value}")
    return _Window(region, offset, byte_size, field)


def _int_parameter(parameter) -> int:
    # tritonclient sends int64_param; uint64_param is as valid a way to say the same.
    kind = parameter.WhichOneof("parameter_choice")
    return parameter.uint64_param if kind == "uint64_param" else parameter.int64_param


def _from_raw(tensor, raw, raw_field: str, shape: tuple[int, ...]) -> tuple[np.ndarray, str]:
    """An input's array from its raw little-endian bytes (a view of them, not a copy)."""
    field = f"inputs[{tensor.name}]"
    if tensor.datatype == BYTES:
        items = decode_bytes_elements(raw, math.prod(shape), raw_field)
        return np.array(items, dtype=object).reshape(shape), BYTES
    dtype = numpy_for_kserve(tensor.datatype, f"{field}.datatype")
    want = expected_nbytes(dtype, shape)
    if len(raw) != want:
        raise InvalidArgument(
            raw_field,
            f"holds {len(raw)} bytes but {tensor.datatype} {list(shape)} needs {want}",
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    array.flags.writeable = False  # a caller's shared memory, or the received message
    return array, tensor.datatype


def _decode_input(
    request, index: int, raw_index: int, regions: Callable[[str], SharedMemoryRegistry]
) -> tuple[np.ndarray, str]:
    """Input `index`, from shared memory when it names a region, else from raw contents
    entry `raw_index` (those hold only the inputs not in shared memory) or typed contents."""
    tensor = request.inputs[index]
    field = f"inputs[{tensor.name}]"
    shape = check_shape(tensor.shape, f"{field}.shape")
    count = math.prod(shape)
    window = shared_memory_window(tensor.parameters, f"{field}.parameters")
    if window is not None:
        view = window.view(regions)
        return _from_raw(tensor, view, window.size_field, shape)
    if request.raw_input_contents:
        if raw_index >= len(request.raw_input_contents):
            raise InvalidArgument("raw_input_contents", f"has no entry for input {index}")
        raw = request.raw_input_contents[raw_index]
        return _from_raw(tensor, raw, f"raw_input_contents[{raw_index}]", shape)
    contents_field = _CONTENTS_FIELD.get(tensor.datatype)
    if contents_field is None:
        raise InvalidArgument(f"{field}.datatype", f"{tensor.datatype} needs raw_input_contents")
    values = list(getattr(tensor.contents, contents_field))
    if len(values) != count:
        raise InvalidArgument(f"{field}.contents", f"has {len(values)} values, shape needs {count}")
    if tensor.datatype == BYTES:
        return np.array(values, dtype=object).reshape(shape), BYTES
    dtype = numpy_for_kserve(tensor.datatype, f"{field}.datatype")
    _check_range(values, dtype, f"{field}.contents.{contents_field}")
    return np.asarray(values, dtype=dtype).reshape(shape), tensor.datatype


def _check_range(values: list, dtype: np.dtype, field: str) -> None:
    """Typed contents travel in wider protobuf fields (uint_contents is uint32 for UINT8)."""
    if dtype.kind not in "iu" or not values:
        return
    info = np.iinfo(dtype)
    low, high = min(values), max(values)
    if low < info.min or high > info.max:
        bad = low if low < info.min else high
        raise InvalidArgument(field, f"value {bad} is out of range for {dtype.name}")


def _encode_output(name: str, array: np.ndarray):
    """The output's metadata and its raw little-endian bytes: a bytes object, or a zero-copy
    view of the array's memory when it is contiguous little-endian already (the serializer
    copies it once, into the reply)."""
    datatype = kserve_datatype(array.dtype)
    meta = service_pb2.ModelInferResponse.InferOutputTensor(
        name=name, datatype=datatype, shape=array.shape
    )
    if datatype == BYTES:
        return meta, encode_bytes_elements(array.reshape(-1).tolist())
    array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    if array.ndim == 0:  # memoryview of a 0-d array has no length
        array = array.reshape(1)
    return meta, memoryview(array).cast("B")


# Big `bytes` fields through protobuf (upb) are slow: parsing copies them into the message's
# arena and every read copies them out again; serialising a 16 MiB ModelInferResponse took
# ~44 ms here (about 30 memcpy's worth). ModelInfer's raw contents are therefore read from and
# written to the wire by hand: top-level fields are length-delimited records in any order, so
# a message is (everything else, through protobuf) + (the raw records, one copy each).
_RAW_INPUT_FIELD = service_pb2.ModelInferRequest.DESCRIPTOR.fields_by_name[
    "raw_input_contents"
].number
_RAW_OUTPUT_FIELD = service_pb2.ModelInferResponse.DESCRIPTOR.fields_by_name[
    "raw_output_contents"
].number


# A real request has a handful of top-level records per input (its metadata, its raw contents).
_MAX_SPLIT_RECORDS = 4096


def _split_raw_field(raw: memoryview, field: int) -> tuple[bytes, list[memoryview]]:
    """(the message without field `field`, that repeated bytes field's values as views).

    Raises ValueError for anything it does not read exactly as protobuf does (groups, field 0,
    records running past the end) and for more than `_MAX_SPLIT_RECORDS` top-level records
    (walking a hostile message of millions of tiny records in Python would cost seconds; C
    protobuf parses it in milliseconds); the caller then leaves the whole message to protobuf."""
    rest = bytearray()
    values: list[memoryview] = []
    offset, end = 0, len(raw)
    records = 0
    while offset < end:
        records += 1
        if records > _MAX_SPLIT_RECORDS:
            raise ValueError("too many records to split in Python")
        start = offset
        tag, offset = read_varint(raw, offset)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire_type == 0:
            _, offset = read_varint(raw, offset)
        elif wire_type == 1:
            offset += 8
        elif wire_type == 5:
            offset += 4
        elif wire_type == 2:
            length, offset = read_varint(raw, offset)
            if number == field:
                if offset + length > end:
                    raise ValueError("record runs past the end")
                values.append(raw[offset : offset + length])
                offset += length
                continue
            offset += length
        else:
            raise ValueError(f"wire type {wire_type}")
        if offset > end:
            raise ValueError("record runs past the end")
        rest += raw[start:offset]
    return bytes(rest), values


class InferRequest:
    """A parsed ModelInferRequest whose `raw_input_contents` are views of the received bytes
    (no copy); every other attribute is the message's."""

    __slots__ = ("message", "raw_input_contents")

    def __init__(self, message, raw_input_contents):
        self.message = message
        self.raw_input_contents = raw_input_contents

    def __getattr__(self, name):
        return getattr(self.message, name)

    @classmethod
    def parse(cls, raw: bytes) -> InferRequest | service_pb2.ModelInferRequest:
        """gRPC request deserializer for ModelInfer (raises on bytes protobuf cannot parse)."""
        view = memoryview(raw).cast("B")
        try:
            rest, contents = _split_raw_field(view, _RAW_INPUT_FIELD)
        except ValueError:
            return service_pb2.ModelInferRequest.FromString(raw)  # its own verdict
        return cls(service_pb2.ModelInferRequest.FromString(rest), contents)


class InferReply:
    """A ModelInferResponse with its raw output contents kept outside the message."""

    __slots__ = ("message", "raw_output_contents")

    def __init__(self, message, raw_output_contents):
        self.message = message
        self.raw_output_contents = raw_output_contents

    def serialize(self) -> bytes:
        """The wire form of the complete response, each raw output copied once."""
        tag = encode_varint((_RAW_OUTPUT_FIELD << 3) | 2)
        parts = [self.message.SerializeToString()]
        for raw in self.raw_output_contents:
            parts += (tag, encode_varint(len(raw)), raw)
        return b"".join(parts)

    def to_message(self) -> service_pb2.ModelInferResponse:
        message = service_pb2.ModelInferResponse()
        message.CopyFrom(self.message)
        message.raw_output_contents.extend(bytes(raw) for raw in self.raw_output_contents)
        return message


def serialize_infer_reply(reply: InferReply | service_pb2.ModelInferResponse) -> bytes:
    if isinstance(reply, InferReply):
        return reply.serialize()
    return reply.SerializeToString()


def _tensor_metadata(spec):
    return service_pb2.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.shape
    )


def _config_io(spec, cls):
    data_type = model_config_pb2.DataType.Value(
        "TYPE_STRING" if spec.datatype == BYTES else f"TYPE_{spec.datatype}"
    )
    io = cls(name=spec.name, data_type=data_type, dims=spec.shape)
    if spec.optional:  # inputs only: outputs are never optional
        io.optional = True
    return io


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """KServe v2 data plane over the registered models.

    Args:
        server_name: reported in ServerMetadata.
        models: the models this service registers, by name.
        is_ready: whether the whole server reports ready (false while loading or draining).
    """

    def __init__(
        self,
        server_name: str,
        models: dict[str, Model],
        is_ready: Callable[[], bool],
        shared_memory: SharedMemoryRegistry | None = None,
    ):
        self._name = server_name
        self._models = models
        self._is_ready = is_ready
        self._shared_memory = shared_memory

    def _regions(self, context, field: str) -> SharedMemoryRegistry:
        """The shared-memory registry, for a caller on this host of a server that offers it."""
        peer = context.peer() if context is not None else "unix:in-process"
        return regions_for(self._shared_memory, peer, field)

    def _model(self, name: str, version: str = "") -> Model:
        model = self._models.get(name)
        if model is None:
            raise NotFound(
                f"model_name: unknown model {name!r}; this server has {sorted(self._models)}"
            )
        if version and version != model.version:
            raise NotFound(f"model_version: model {name!r} has version {model.version!r}")
        return model

    def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self._is_ready())

    def ModelReady(self, request, context):
        model = self._model(request.name, request.version)
        return service_pb2.ModelReadyResponse(ready=model.ready and self._is_ready())

    def ServerMetadata(self, request, context):
        extensions = [] if self._shared_memory is None else ["system_shared_memory"]
        return service_pb2.ServerMetadataResponse(
            name=self._name, version="1", extensions=extensions
        )

    def SystemSharedMemoryRegister(self, request, context):
        self._regions(context, "name").register(
            request.name, request.key, request.offset, request.byte_size
        )
        return service_pb2.SystemSharedMemoryRegisterResponse()

    def SystemSharedMemoryStatus(self, request, context):
        response = service_pb2.SystemSharedMemoryStatusResponse()
        for region in self._regions(context, "name").status(request.name):
            response.regions[region.name].CopyFrom(
                service_pb2.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=region.name,
                    key=region.key,
                    offset=region.offset,
                    byte_size=region.byte_size,
                )
            )
        return response

    def SystemSharedMemoryUnregister(self, request, context):
        self._regions(context, "name").unregister(request.name)
        return service_pb2.SystemSharedMemoryUnregisterResponse()

    def ModelMetadata(self, request, context):
        model = self._model(request.name, request.version)
        return service_pb2.ModelMetadataResponse(
            name=model.name,
            versions=[model.version],
            platform=model.platform,
            inputs=[_tensor_metadata(s) for s in model.inputs],
            outputs=[_tensor_metadata(s) for s in model.outputs],
        )

    def ModelConfig(self, request, context):
        model = self._model(request.name, request.version)
        config = model_config_pb2.ModelConfig(
            name=model.name,
            platform=model.platform,
            max_batch_size=0,
            input=[_config_io(s, model_config_pb2.ModelInput) for s in model.inputs],
            output=[_config_io(s, model_config_pb2.ModelOutput) for s in model.outputs],
        )
        for key, value in model.parameters().items():
            config.parameters[key].string_value = value
        return service_pb2.ModelConfigResponse(config=config)

    def ModelInfer(self, request, context):
        return self.infer(request, context).to_message()

    def infer(self, request, context) -> InferReply:
        """ModelInfer, answering an `InferReply` (`serialize_infer_reply` writes it); `request`
        is a ModelInferRequest or an `InferRequest`."""
        model = self._model(request.model_name, request.model_version)
        if not (model.ready and self._is_ready()):
            raise Unavailable(f"model {model.name!r} is not ready")
        names = [t.name for t in request.inputs]
        if len(set(names)) != len(names):
            raise InvalidArgument("inputs", f"duplicate input names in {names}")

        def regions(field: str) -> SharedMemoryRegistry:
            return self._regions(context, field)

        decoded, raw_index = {}, 0
        for i, tensor in enumerate(request.inputs):
            decoded[tensor.name] = _decode_input(request, i, raw_index, regions)
            if "shared_memory_region" not in tensor.parameters:
                raw_index += 1
        # Output windows are checked before the model runs, so a bad one costs no compute.
        windows = {
            o.name: shared_memory_window(o.parameters, f"outputs[{o.name}].parameters")
            for o in request.outputs
        }
        placed = {name: (w, w.view(regions)) for name, w in windows.items() if w is not None}
        inputs = model.validate_inputs(decoded)
        outputs = model.predict(inputs, Deadline.from_context(context))
        wanted = [o.name for o in request.outputs] or list(outputs)
        response = service_pb2.ModelInferResponse(
            model_name=model.name, model_version=model.version, id=request.id
        )
        encoded = []
        for name in wanted:
            if name not in outputs:
                raise InvalidArgument(
                    f"outputs[{name}]", f"model {model.name!r} has no such output"
                )
            encoded.append((name, *_encode_output(name, outputs[name])))
        # Every output must fit its window before any is written: nothing half-written.
        for name, _, raw in encoded:
            if name in placed and len(raw) > len(placed[name][1]):
                window = placed[name][0]
                raise InvalidArgument(
                    window.size_field,
                    f"output {name!r} is {len(raw)} bytes, its window holds {window.byte_size}",
                )
        mixed = len(placed) < len(encoded)
        contents = []
        for name, meta, raw in encoded:
            if name in placed:
                window, view = placed[name]
                view[: len(raw)] = raw
                meta.parameters["shared_memory_region"].string_param = window.region
                meta.parameters["shared_memory_byte_size"].int64_param = len(raw)
                meta.parameters["shared_memory_offset"].int64_param = window.offset
                if mixed:  # tritonclient finds raw outputs by position among all outputs
                    contents.append(b"")
            else:
                contents.append(raw)
            response.outputs.append(meta)
        return InferReply(response, contents)


def add_to_server(servicer: InferenceServicer, server) -> None:
    """Register the KServe v2 service as tritonclient's generated code does, except that
    ModelInfer reads and writes its raw contents without protobuf's extra copies."""
    _, handlers = generated_handlers(
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server, servicer
    )
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(
        servicer.infer,
        request_deserializer=InferRequest.parse,
        response_serializer=serialize_infer_reply,
    )
    add_handlers(server, SERVICE_NAME, handlers)
