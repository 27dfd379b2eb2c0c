"""System shared memory over real gRPC on loopback: KServe v2 with tritonclient's own
utilities and the typed chunk streams, with every bad window refused by name and nothing
half-written."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.utils.shared_memory as triton_shm
from tritonclient.utils import InferenceServerException

from clients import GenAugError, VaeCodecClient
from clients.rpc import codec as codec_client
from clients.rpc.channel import ChannelSettings, open_channel
from clients.rpc.shared_memory import SharedMemoryLane, SharedMemoryRegion
from genaug import wire
from genaug.v1 import tensor_pb2
from tests.service.conftest import codec_config, codec_with_echo, running
from tests.support import echo_chunk_bytes_stub

SHM = Path("/dev/shm")
FRAMES = np.random.default_rng(7).uniform(-1, 1, (2, 1, 64, 64)).astype(np.float32)


@pytest.fixture
def region():
    """A tritonclient-made shared-memory object of 1 MiB, removed afterwards."""
    key = f"/genaug_test_{os.getpid()}_{os.urandom(4).hex()}"
    handle = triton_shm.create_shared_memory_region("test", key, 1 << 20)
    yield key, handle
    triton_shm.destroy_shared_memory_region(handle)


def _triton(server):
    return triton.InferenceServerClient(f"127.0.0.1:{server.port}")


def _encode_plain(tc) -> np.ndarray:
    inp = triton.InferInput("frames", list(FRAMES.shape), "FP32")
    inp.set_data_from_numpy(FRAMES)
    return tc.infer("vae_encode", [inp]).as_numpy("latents")


def _status_code(error: InferenceServerException) -> str:
    return str(error.status())


def test_tritonclient_shared_memory_infer_equals_the_plain_call(codec_server, region):
    key, handle = region
    tc = _triton(codec_server)
    assert "system_shared_memory" in tc.get_server_metadata().extensions
    plain = _encode_plain(tc)
    out_offset = 1 << 19
    triton_shm.set_shared_memory_region(handle, [FRAMES])
    tc.register_system_shared_memory("in", key, FRAMES.nbytes)
    tc.register_system_shared_memory("out", key, plain.nbytes, offset=out_offset)
    try:
        status = tc.get_system_shared_memory_status()
        assert {r: status.regions[r].key for r in status.regions} == {"in": key, "out": key}
        inp = triton.InferInput("frames", list(FRAMES.shape), "FP32")
        inp.set_shared_memory("in", FRAMES.nbytes)
        out = triton.InferRequestedOutput("latents")
        out.set_shared_memory("out", plain.nbytes)
        result = tc.infer("vae_encode", [inp], outputs=[out])
        assert result.get_response().raw_output_contents == []
        shape = list(result.get_output("latents").shape)
        got = triton_shm.get_contents_as_numpy(handle, np.float32, shape, offset=out_offset)
        np.testing.assert_allclose(got, plain, atol=1e-6)
    finally:
        tc.unregister_system_shared_memory()
    assert len(tc.get_system_shared_memory_status().regions) == 0


def test_bad_shared_memory_requests_name_the_field(codec_server, region):
    key, handle = region
    tc = _triton(codec_server)
    cases = [
        ("nope", FRAMES.nbytes, "inputs[frames].parameters.shared_memory_region"),
        ("in", FRAMES.nbytes + 4, "inputs[frames].parameters.shared_memory_byte_size"),  # past end
        ("in", FRAMES.nbytes - 4, "inputs[frames].parameters.shared_memory_byte_size"),  # too few
    ]
    tc.register_system_shared_memory("in", key, FRAMES.nbytes)
    try:
        for name, size, field in cases:
            inp = triton.InferInput("frames", list(FRAMES.shape), "FP32")
            inp.set_shared_memory(name, size)
            with pytest.raises(InferenceServerException) as info:
                tc.infer("vae_encode", [inp])
            assert _status_code(info.value) == "StatusCode.INVALID_ARGUMENT", field
            assert field in info.value.message(), info.value.message()
        with pytest.raises(InferenceServerException) as info:
            tc.register_system_shared_memory("in", key, 16)
        assert _status_code(info.value) == "StatusCode.FAILED_PRECONDITION"
        for bad_key, code in [
            ("/../etc/passwd", "StatusCode.INVALID_ARGUMENT"),
            ("/genaug_no_such_object", "StatusCode.NOT_FOUND"),
        ]:
            with pytest.raises(InferenceServerException) as info:
                tc.register_system_shared_memory("other", bad_key, 16)
            assert _status_code(info.value) == code and "key" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            tc.register_system_shared_memory("other", key, 2 << 20)
        assert "byte_size" in info.value.message()
    finally:
        tc.unregister_system_shared_memory()


def test_an_output_that_does_not_fit_writes_nothing(codec_server, region):
    key, handle = region
    tc = _triton(codec_server)
    plain = _encode_plain(tc)
    sentinel = np.full(plain.size, 7.0, np.float32)
    triton_shm.set_shared_memory_region(handle, [sentinel])
    tc.register_system_shared_memory("out", key, plain.nbytes - 4)
    try:
        inp = triton.InferInput("frames", list(FRAMES.shape), "FP32")
        inp.set_data_from_numpy(FRAMES)
        out = triton.InferRequestedOutput("latents")
        out.set_shared_memory("out", plain.nbytes - 4)
        with pytest.raises(InferenceServerException) as info:
            tc.infer("vae_encode", [inp], outputs=[out])
        assert _status_code(info.value) == "StatusCode.INVALID_ARGUMENT"
        assert "outputs[latents].parameters.shared_memory_byte_size" in info.value.message()
        after = triton_shm.get_contents_as_numpy(handle, np.float32, [plain.size])
        np.testing.assert_array_equal(after, sentinel)
    finally:
        tc.unregister_system_shared_memory()


def test_typed_stream_through_a_shared_memory_lane(codec_server, channel):
    stream = echo_chunk_bytes_stub(channel)
    array = np.random.default_rng(3).random((3, 100_003)).astype(np.float32)
    with SharedMemoryLane(channel, 4 << 20) as lane:
        names = {lane.request.key, lane.reply.key}
        assert names <= {p.name for p in SHM.iterdir()}
        assert not {lane.request.name, lane.reply.name} & {p.name for p in SHM.iterdir()}
        got = lane.try_call(stream, {"a": array, "b": array[:1] * 2})
        np.testing.assert_array_equal(got["a"], array)
        np.testing.assert_array_equal(got["b"], array[:1] * 2)
        assert got["a"].base is not None and not np.shares_memory(got["a"], lane.reply.memory)
        too_big = np.zeros(5 << 20, np.uint8)
        assert lane.try_call(stream, {"x": too_big}) is None  # the caller sends chunks
    assert not names & {p.name for p in SHM.iterdir()}  # unregistered and removed
    assert codec_server.shared_memory.status() == []


def test_codec_client_over_shared_memory_equals_chunks(codec_server, channel, monkeypatch):
    # Small clips, so the test is quick: streamed both ways from 1 KiB on.
    monkeypatch.setattr(codec_client, "STREAM_THRESHOLD_BYTES", 1024)
    answered = []  # what each shared-memory call returned (None: it fell back to chunks)
    real_try_call = SharedMemoryLane.try_call

    def spy(self, *args, **kwargs):
        answered.append(real_try_call(self, *args, **kwargs))
        return answered[-1]

    monkeypatch.setattr(SharedMemoryLane, "try_call", spy)
    frames = np.random.default_rng(4).uniform(-1, 1, (2, 1, 128, 128)).astype(np.float32)
    plain = VaeCodecClient(channel).encode(frames, timeout=60)
    client = VaeCodecClient(channel, shared_memory_bytes=8 << 20)
    try:
        np.testing.assert_allclose(client.encode(frames, timeout=60), plain, atol=1e-6)
        assert len(codec_server.shared_memory.status()) == 2
        decoded = client.decode(plain, timeout=60)
        np.testing.assert_allclose(decoded, VaeCodecClient(channel).decode(plain), atol=1e-5)
    finally:
        client.close()
    assert [sorted(got) for got in answered] == [["latents"], ["frames"]]
    assert codec_server.shared_memory.status() == []


def _window_request(region: str, offset: int, byte_size: int, shape=(4,)) -> list[bytes]:
    header = tensor_pb2.TensorHeader(name="x", dtype=tensor_pb2.DATA_TYPE_UINT8, shape=shape)
    window = tensor_pb2.SharedMemoryWindow(region=region, offset=offset, byte_size=byte_size)
    return [
        tensor_pb2.TensorChunk(header=header).SerializeToString(),
        tensor_pb2.TensorChunk(shared_memory=window).SerializeToString(),
    ]


def test_bad_windows_on_a_typed_stream_name_the_field(codec_server, channel):
    stream = echo_chunk_bytes_stub(channel)
    region = SharedMemoryRegion(channel, 4096)
    try:
        cases = [
            (("nope", 0, 4), "request[1].shared_memory.region"),
            ((region.name, 4094, 4), "request[1].shared_memory.byte_size"),
            ((region.name, 0, 5), "request[1].shared_memory.byte_size"),
        ]
        for args, field in cases:
            with pytest.raises(grpc.RpcError) as info:
                list(stream(iter(_window_request(*args)), timeout=10))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
            assert field in info.value.details(), info.value.details()
        ok = list(stream(iter(_window_request(region.name, 0, 4)), timeout=10))
        assert wire.assemble(ok)["x"].shape == (4,)
        # A reply region that is not registered: the metadata key is named.
        with pytest.raises(grpc.RpcError) as info:
            metadata = ((wire.REPLY_REGION_METADATA, "nope"),)
            list(stream(iter(_window_request(region.name, 0, 4)), timeout=10, metadata=metadata))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert wire.REPLY_REGION_METADATA in info.value.details()
    finally:
        region.close()


def test_a_server_without_shared_memory_refuses_it(tmp_path, region):
    key, _ = region
    config = codec_config(tmp_path, shared_memory=False)
    with running(codec_with_echo(config)) as server:
        assert server.shared_memory is None
        settings = ChannelSettings(retry_attempts=1)
        with open_channel(f"127.0.0.1:{server.port}", settings) as ch:
            before = set(os.listdir(SHM))
            with pytest.raises(GenAugError) as info:
                SharedMemoryRegion(ch, 4096)
            assert info.value.code == grpc.StatusCode.UNIMPLEMENTED
            assert "--no-shared-memory" in info.value.details
            assert set(os.listdir(SHM)) <= before  # the refused object was removed again
            stream = echo_chunk_bytes_stub(ch)
            with pytest.raises(grpc.RpcError) as rpc_info:
                list(stream(iter(_window_request("any", 0, 4)), timeout=10))
            assert rpc_info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        tc = _triton(server)
        assert "system_shared_memory" not in tc.get_server_metadata().extensions
        with pytest.raises(InferenceServerException) as kserve_info:
            tc.register_system_shared_memory("in", key, 16)
        assert _status_code(kserve_info.value) == "StatusCode.UNIMPLEMENTED"
        assert "--no-shared-memory" in kserve_info.value.message()
