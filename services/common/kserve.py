"""The open inference protocol (KServe v2 `inference.GRPCInferenceService`) over our models.

Uses the stubs that tritonclient ships, so `tritonclient.grpc.InferenceServerClient` and
`perf_analyzer` work against every service unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from genaug.deadline import Deadline
from genaug.errors import InvalidArgument, NotFound, Unavailable
from genaug.wire import (
    check_shape,
    decode_bytes_elements,
    encode_bytes_elements,
    expected_nbytes,
    kserve_datatype,
)
from services.common.model import BYTES, Model, numpy_for_kserve

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


def _decode_input(request, index: int) -> tuple[np.ndarray, str]:
    tensor = request.inputs[index]
    field = f"inputs[{tensor.name}]"
    shape = check_shape(tensor.shape, f"{field}.shape")
    count = math.prod(shape)
    if request.raw_input_contents:
        if index >= len(request.raw_input_contents):
            raise InvalidArgument("raw_input_contents", f"has no entry for input {index}")
        raw = request.raw_input_contents[index]
        raw_field = f"raw_input_contents[{index}]"
        if tensor.datatype == BYTES:
            items = decode_bytes_elements(raw, count, raw_field)
            return np.array(items, dtype=object).reshape(shape), BYTES
        dtype = numpy_for_kserve(tensor.datatype, f"{field}.datatype")
        want = expected_nbytes(dtype, shape)
        if len(raw) != want:
            raise InvalidArgument(
                raw_field,
                f"holds {len(raw)} bytes but {tensor.datatype} {list(shape)} needs {want}",
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape), tensor.datatype
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
    datatype = kserve_datatype(array.dtype)
    meta = service_pb2.ModelInferResponse.InferOutputTensor(
        name=name, datatype=datatype, shape=array.shape
    )
    if datatype == BYTES:
        return meta, encode_bytes_elements(array.reshape(-1).tolist())
    return meta, np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _tensor_metadata(spec):
    return service_pb2.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.shape
    )


def _config_io(spec, cls):
    data_type = model_config_pb2.DataType.Value(
        "TYPE_STRING" if spec.datatype == BYTES else f"TYPE_{spec.datatype}"
    )
    return cls(name=spec.name, data_type=data_type, dims=spec.shape)


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """KServe v2 data plane over the registered models.

    Args:
        server_name: reported in ServerMetadata.
        models: the models this service registers, by name.
        is_ready: whether the whole server reports ready (false while loading or draining).
    """

    def __init__(self, server_name: str, models: dict[str, Model], is_ready: Callable[[], bool]):
        self._name = server_name
        self._models = models
        self._is_ready = is_ready

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
        return service_pb2.ServerMetadataResponse(name=self._name, version="1", extensions=[])

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
        model = self._model(request.model_name, request.model_version)
        if not (model.ready and self._is_ready()):
            raise Unavailable(f"model {model.name!r} is not ready")
        names = [t.name for t in request.inputs]
        if len(set(names)) != len(names):
            raise InvalidArgument("inputs", f"duplicate input names in {names}")
        decoded = {t.name: _decode_input(request, i) for i, t in enumerate(request.inputs)}
        inputs = model.validate_inputs(decoded)
        outputs = model.predict(inputs, Deadline.from_context(context))
        wanted = [o.name for o in request.outputs] or list(outputs)
        response = service_pb2.ModelInferResponse(
            model_name=model.name, model_version=model.version, id=request.id
        )
        for name in wanted:
            if name not in outputs:
                raise InvalidArgument(
                    f"outputs[{name}]", f"model {model.name!r} has no such output"
                )
            meta, raw = _encode_output(name, outputs[name])
            response.outputs.append(meta)
            response.raw_output_contents.append(raw)
        return response
