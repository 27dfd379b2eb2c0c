"""The VAE codec service: typed API vs open inference protocol, metrics, stream path."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from clients import VaeCodecClient
from clients.rpc.channel import ChannelSettings, open_channel
from genaug import wire
from genaug.v1 import tensor_pb2, vae_codec_pb2, vae_codec_pb2_grpc
from tests.support import SMALL_LATENT_CHANNELS, metric_value, scrape

MIB = 1 << 20


def _clip(frames=4, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (frames, 1, size, size)).astype(np.float32)


def _triton(server):
    return triton.InferenceServerClient(f"127.0.0.1:{server.port}")


def test_tritonclient_infer_equals_typed_rpc(channel, codec_server):
    frames = _clip()
    client = VaeCodecClient(channel)
    typed_latents = client.encode(frames, timeout=30)
    typed_frames = client.decode(typed_latents, timeout=30)

    tc = _triton(codec_server)
    assert tc.is_server_live() and tc.is_server_ready()
    assert tc.is_model_ready("vae_encode") and tc.is_model_ready("vae_decode")
    enc_in = triton.InferInput("frames", list(frames.shape), "FP32")
    enc_in.set_data_from_numpy(frames)
    latents = tc.infer("vae_encode", [enc_in]).as_numpy("latents")
    dec_in = triton.InferInput("latents", list(latents.shape), "FP32")
    dec_in.set_data_from_numpy(latents)
    decoded = tc.infer("vae_decode", [dec_in]).as_numpy("frames")

    assert latents.shape == (4, SMALL_LATENT_CHANNELS, 8, 8) and decoded.shape == frames.shape
    np.testing.assert_array_equal(latents, typed_latents)
    np.testing.assert_array_equal(decoded, typed_frames)


def test_model_metadata_and_config_report_the_weights(codec_server):
    tc = _triton(codec_server)
    meta = tc.get_model_metadata("vae_encode", as_json=True)
    assert meta["inputs"][0] == {
        "name": "frames",
        "datatype": "FP32",
        "shape": ["-1", "1", "-1", "-1"],
    }
    config = tc.get_model_config("vae_decode", as_json=True)["config"]
    assert config["parameters"]["weights"]["string_value"] == "seeded-initialisation"
    # On the CPU, "auto" serves the parity-checked ONNX export on onnxruntime.
    assert config["parameters"]["runtime"]["string_value"] == "onnxruntime"
    assert tc.get_server_metadata().name == "genaug-vae_codec"


def test_tritonclient_bad_input_is_invalid_argument(codec_server):
    tc = _triton(codec_server)
    bad = triton.InferInput("frames", [1, 1, 64, 64], "FP64")
    bad.set_data_from_numpy(np.zeros((1, 1, 64, 64), np.float64))
    try:
        tc.infer("vae_encode", [bad])
    except triton.InferenceServerException as error:
        assert error.status() == "StatusCode.INVALID_ARGUMENT"
        assert "inputs[frames].datatype" in error.message()
    else:
        raise AssertionError("FP64 frames were accepted")
    try:
        tc.infer("no_such_model", [bad])
    except triton.InferenceServerException as error:
        assert error.status() == "StatusCode.NOT_FOUND"
    assert tc.is_server_ready()


def test_metrics_count_requests_per_rpc_and_model(channel, codec_server):
    labels = dict(service="vae_codec", method="ModelInfer", model="vae_encode")
    before = metric_value(scrape(codec_server.metrics_port), "genaug_rpc_requests_total", **labels)
    tc = _triton(codec_server)
    frames = _clip(1)
    for _ in range(3):
        inp = triton.InferInput("frames", list(frames.shape), "FP32")
        inp.set_data_from_numpy(frames)
        tc.infer("vae_encode", [inp])
    text = scrape(codec_server.metrics_port)
    assert metric_value(text, "genaug_rpc_requests_total", **labels) == before + 3
    assert metric_value(text, "genaug_rpc_latency_seconds_count", **labels) >= before + 3
    assert metric_value(text, "genaug_service_serving", service="vae_codec") == 1.0


def test_large_clip_takes_the_stream_path_and_matches_unary(channel):
    client = VaeCodecClient(channel)
    frames = _clip(frames=80, size=128, seed=3)  # 5 MiB: over the stream threshold
    assert frames.nbytes > 4 << 20
    streamed = client.encode(frames, timeout=120)
    unary = np.concatenate(
        [client.encode(frames[i : i + 16], timeout=60) for i in range(0, 80, 16)]
    )
    np.testing.assert_array_equal(streamed, unary)


def test_codec_info(channel):
    info = VaeCodecClient(channel).info(timeout=10)
    assert (info.latent_channels, info.downsample_factor) == (SMALL_LATENT_CHANNELS, 8)
    assert info.weights == "seeded-initialisation"
    # As the KServe parameters: on the CPU "auto" serves the parity-checked ONNX export.
    assert (info.runtime, info.runtime_note) == ("onnxruntime", "")


def _raw_infer(codec_server, request):
    from tritonclient.grpc import service_pb2_grpc

    with open_channel(f"127.0.0.1:{codec_server.port}", ChannelSettings(retry_attempts=1)) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=10)
        return info.value


def test_kserve_overflowing_shape_and_out_of_range_contents_are_invalid_argument(codec_server):
    from tritonclient.grpc import service_pb2

    overflow = service_pb2.ModelInferRequest(model_name="vae_encode")
    overflow.inputs.add(name="frames", datatype="FP32", shape=[1 << 32, 1 << 32, 0])
    overflow.raw_input_contents.append(b"")
    error = _raw_infer(codec_server, overflow)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[frames].shape" in error.details()

    uint8 = service_pb2.ModelInferRequest(model_name="vae_encode")
    tensor = uint8.inputs.add(name="frames", datatype="UINT8", shape=[1])
    tensor.contents.uint_contents.append(10**9)
    error = _raw_infer(codec_server, uint8)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs[frames].contents.uint_contents" in error.details()
    assert "out of range for uint8" in error.details()
    assert _triton(codec_server).is_server_ready()


def test_typed_overflowing_shape_is_invalid_argument(channel):
    from genaug.v1 import vae_codec_pb2, vae_codec_pb2_grpc

    request = vae_codec_pb2.EncodeRequest()
    request.frames.dtype = tensor_pb2.DATA_TYPE_FP32
    request.frames.shape[:] = [1 << 32, 1 << 32]
    with pytest.raises(grpc.RpcError) as info:
        vae_codec_pb2_grpc.VaeCodecStub(channel).Encode(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "frames.shape" in info.value.details()


def test_unparseable_request_bytes_are_invalid_argument(channel, codec_server):
    garbage = b"\xff\xff\xff\xff\x0f"  # a truncated varint: no message parses from it
    calls = {
        "/genaug.v1.VaeCodec/Encode": channel.unary_unary("/genaug.v1.VaeCodec/Encode"),
        "/inference.GRPCInferenceService/ModelInfer": channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer"
        ),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as info:
            call(garbage, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert info.value.details() == "request: 5 bytes are not a valid message"
    stream = channel.stream_stream("/genaug.v1.VaeCodec/EncodeStream")
    with pytest.raises(grpc.RpcError) as info:
        list(stream(iter([garbage]), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request[0]" in info.value.details()
    assert _triton(codec_server).is_server_ready()


# -- the chunk streams: raw chunk bytes in, serialised chunks out --------------------------


def _raw_stream(channel, method):
    """The codec stream with serialised chunks both ways (the client library's path)."""
    return channel.stream_stream(
        f"/genaug.v1.VaeCodec/{method}",
        request_serializer=wire.serialize_chunk,
        response_deserializer=None,
    )


def test_large_clip_streams_both_ways_as_bytes_or_messages_and_match_unary(channel):
    """The server takes raw chunk bytes and sends serialised chunks: the client library (bytes
    both ways) and the generated stub (TensorChunk messages both ways) get the unary result."""
    client, stub = VaeCodecClient(channel), vae_codec_pb2_grpc.VaeCodecStub(channel)
    frames = _clip(frames=80, size=128, seed=4)  # 5 MiB: over the threshold, 5 chunks
    assert frames.nbytes > 4 * MIB
    request = vae_codec_pb2.EncodeRequest(frames=wire.to_proto(frames))
    latents = wire.from_proto(stub.Encode(request, timeout=120).latents)
    np.testing.assert_array_equal(client.encode(frames, timeout=120), latents)
    messages = list(stub.EncodeStream(wire.iter_chunks("frames", frames), timeout=120))
    assert all(isinstance(m, tensor_pb2.TensorChunk) for m in messages)
    np.testing.assert_array_equal(wire.assemble(messages)["latents"], latents)

    request = vae_codec_pb2.DecodeRequest(latents=wire.to_proto(latents))
    decoded = wire.from_proto(stub.Decode(request, timeout=120).frames)
    assert decoded.nbytes == 5 * MIB
    np.testing.assert_array_equal(client.decode(latents, timeout=120), decoded)
    stream = _raw_stream(channel, "DecodeStream")
    replies = list(stream(wire.iter_chunk_bytes("latents", latents), timeout=120))
    assert all(isinstance(r, bytes) for r in replies) and len(replies) == 1 + 5
    # Byte for byte what the message path sent before.
    assert replies == [m.SerializeToString() for m in wire.iter_chunks("frames", decoded)]
    messages = list(stub.DecodeStream(wire.iter_chunks("latents", latents), timeout=120))
    np.testing.assert_array_equal(wire.assemble(messages)["frames"], decoded)


def _stream_error(channel, method, chunks) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        list(_raw_stream(channel, method)(iter(chunks), timeout=30))
    return info.value


def _chunk_bytes(name, array):
    return list(wire.iter_chunk_bytes(name, array, chunk_bytes=1024))


@pytest.mark.parametrize("method, name", [("EncodeStream", "frames"), ("DecodeStream", "latents")])
def test_bad_raw_chunks_are_invalid_argument_naming_the_field(channel, codec_server, method, name):
    shape = (2, 1, 64, 64) if name == "frames" else (2, SMALL_LATENT_CHANNELS, 8, 8)
    good = _chunk_bytes(name, np.zeros(shape, np.float32))
    assert len(good) > 2
    bad_dtype = tensor_pb2.TensorChunk(header=tensor_pb2.TensorHeader(name=name, dtype=99))
    cases = [
        ([b"\xff\xff\xff\xff\x0f"], "request[0]: 5 bytes are not a valid message"),
        ([good[0], b"\x12\x09ab"], "request[1]: "),  # a data chunk shorter than it says
        ([b""], "request[0]: chunk has neither header nor data"),
        ([bad_dtype.SerializeToString()], "request[0].header.dtype: unsupported dtype"),
        (good[:-1], "request: stream ended after"),
        ([*good, b"\x12\x04\0\0\0\0"], f"request[{len(good)}]: tensor {name!r} receives more"),
        (_chunk_bytes("other", np.zeros(shape, np.float32)), "request: expected exactly one"),
        ([*good, *_chunk_bytes("extra", np.zeros(3, np.float32))], "request: expected exactly"),
        ([], "request: expected exactly one tensor"),
        (_chunk_bytes(name, np.zeros(shape, np.float64)), f"{name}.dtype: "),
        (
            _chunk_bytes(name, np.zeros((2, 3, 64, 64) if name == "frames" else (2, 7), "f4")),
            f"{name}.shape: ",
        ),  # fmt: skip
    ]
    for chunks, details in cases:
        error = _stream_error(channel, method, chunks)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (details, error.details())
        assert error.details().startswith(details), (details, error.details())
    assert _triton(codec_server).is_server_ready()


def test_a_stream_tensor_over_the_size_limit_is_refused_from_its_header(channel):
    """A header declaring more than the servicer's `max_tensor_bytes` (4 GiB) is refused as it
    arrives, naming the field (RESOURCE_EXHAUSTED, as for every TensorTooLargeError)."""
    header = tensor_pb2.TensorHeader(
        name="frames", dtype=tensor_pb2.DATA_TYPE_FP32, shape=[1 << 20, 1, 64, 64]
    )
    chunk = tensor_pb2.TensorChunk(header=header).SerializeToString()
    for method in ("EncodeStream", "DecodeStream"):
        error = _stream_error(channel, method, [chunk])
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.details().startswith("request[0].header.shape: ")
        assert "over the limit" in error.details()


def test_raw_streams_are_counted_and_follow_the_model_metadata(channel, codec_server):
    """The interceptors count raw-byte streams like any call; the `genaug-model` metadata
    still picks the generator (an unknown one: NOT_FOUND)."""
    model = VaeCodecClient(channel).info(timeout=10).model
    frames = _chunk_bytes("frames", np.zeros((1, 1, 64, 64), np.float32))
    labels = dict(service="vae_codec", method="EncodeStream", model="")
    text = scrape(codec_server.metrics_port)
    before = metric_value(text, "genaug_rpc_requests_total", **labels)
    failed = metric_value(text, "genaug_rpc_failures_total", **labels, code="NOT_FOUND")
    stream = _raw_stream(channel, "EncodeStream")
    for metadata in (None, (("genaug-model", model),)):
        replies = list(stream(iter(frames), timeout=30, metadata=metadata))
        assert wire.assemble(replies)["latents"].shape == (1, SMALL_LATENT_CHANNELS, 8, 8)
    with pytest.raises(grpc.RpcError) as info:
        list(stream(iter(frames), timeout=30, metadata=(("genaug-model", "no-such-model"),)))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    text = scrape(codec_server.metrics_port)
    assert metric_value(text, "genaug_rpc_requests_total", **labels) == before + 3
    assert metric_value(text, "genaug_rpc_failures_total", **labels, code="NOT_FOUND") == failed + 1


def test_reflection_still_lists_the_codec(channel):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (reply,) = stub.ServerReflectionInfo(iter([request]), timeout=10)
    names = {s.name for s in reply.list_services_response.service}
    assert "genaug.v1.VaeCodec" in names
