"""KServe v2 ModelInfer's hand-written raw contents: the same messages protobuf would read/write."""

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2

from services.common import kserve


def _request(*raws: bytes) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="echo", id="r1")
    for index, raw in enumerate(raws):
        request.inputs.add(name=f"x{index}", datatype="UINT8", shape=[len(raw)])
    request.outputs.add(name="x0")
    request.parameters["k"].string_param = "v"
    request.raw_input_contents.extend(raws)
    return request


@pytest.mark.parametrize("raws", [(), (b"",), (b"abc", bytes(range(256)) * 5000)])
def test_parsed_request_matches_protobuf(raws):
    request = _request(*raws)
    parsed = kserve.InferRequest.parse(request.SerializeToString())
    assert [bytes(r) for r in parsed.raw_input_contents] == list(raws)
    assert parsed.model_name == "echo" and parsed.id == "r1"
    assert [t.name for t in parsed.inputs] == [t.name for t in request.inputs]
    assert parsed.parameters["k"].string_param == "v"
    assert len(parsed.message.raw_input_contents) == 0


def test_unparseable_request_still_raises():
    with pytest.raises(DecodeError):
        kserve.InferRequest.parse(b"\xff\xff\xff\xff\x0f")
    # A raw record whose length runs past the end is left to protobuf, which refuses it.
    with pytest.raises(DecodeError):
        kserve.InferRequest.parse(b"\x3a\x10abc")


@pytest.mark.parametrize(
    "output",
    [np.arange(12, dtype=np.float32).reshape(3, 4), np.array(7, np.int64), np.zeros(0, np.uint8)],
    ids=["fp32", "scalar", "empty"],
)
def test_reply_serialises_as_the_message_would(output):
    meta, raw = kserve._encode_output("y", output)
    reply = kserve.InferReply(service_pb2.ModelInferResponse(model_name="m", outputs=[meta]), [raw])
    parsed = service_pb2.ModelInferResponse.FromString(kserve.serialize_infer_reply(reply))
    assert parsed == reply.to_message()
    assert parsed.raw_output_contents[0] == output.astype(output.dtype.newbyteorder("<")).tobytes()
    message = reply.to_message()
    assert kserve.serialize_infer_reply(message) == message.SerializeToString()


def test_a_request_of_many_tiny_records_is_left_to_protobuf():
    # Walking millions of records in Python would take seconds; past the cap, C protobuf does it.
    request = _request(b"abc")
    for i in range(kserve._MAX_SPLIT_RECORDS):
        request.outputs.add(name=f"o{i}")
    parsed = kserve.InferRequest.parse(request.SerializeToString())
    assert isinstance(parsed, service_pb2.ModelInferRequest)
    assert list(parsed.raw_input_contents) == [b"abc"] and len(parsed.outputs) > 4096
