"""System shared memory over real gRPC on loopback: KServe v2 with tritonclient's own
utilities, with every bad window refused by name and nothing half-written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.utils.shared_memory as triton_shm
from tritonclient.utils import InferenceServerException

from tests.service.conftest import codec_config, codec_with_echo, running

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


def test_a_server_without_shared_memory_refuses_it(tmp_path, region):
    key, _ = region
    config = codec_config(tmp_path, shared_memory=False)
    with running(codec_with_echo(config)) as server:
        assert server.shared_memory is None
        tc = _triton(server)
        assert "system_shared_memory" not in tc.get_server_metadata().extensions
        with pytest.raises(InferenceServerException) as info:
            tc.register_system_shared_memory("in", key, 16)
        assert _status_code(info.value) == "StatusCode.UNIMPLEMENTED"
        assert "--no-shared-memory" in info.value.message()
