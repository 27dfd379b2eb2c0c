"""The motion-trajectory extractor over real gRPC: typed RPC, open inference, bad input."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from clients.rpc.channel import ChannelSettings, open_channel
from clients.rpc.health import check
from genaug import wire
from genaug.v1 import motion_extractor_pb2 as pb
from genaug.v1 import motion_extractor_pb2_grpc
from services.common.config import ServerConfig
from services.motion_extractor.__main__ import build_server
from tests.service.conftest import running
from tests.unit.test_motion import avi_bytes, interior_median, translating_texture


@pytest.fixture(scope="module")
def motion_server():
    config = ServerConfig(service="motion_extractor", port=0, metrics_port=None)
    with running(build_server(config)) as server:
        yield server


@pytest.fixture
def stub(motion_server):
    target = f"127.0.0.1:{motion_server.port}"
    with open_channel(target, ChannelSettings(retry_attempts=1)) as channel:
        yield motion_extractor_pb2_grpc.MotionExtractorStub(channel), channel


@pytest.mark.parametrize("dx, dy", [(2, 1), (-3, 2)])
def test_encoded_video_gives_the_translation(stub, dx, dy):
    frames = translating_texture(64, 64, 8, dx, dy)
    request = pb.ExtractMotionRequest(encoded_video=avi_bytes(frames))
    reply = stub[0].ExtractMotion(request, timeout=60)
    field = wire.from_proto(reply.motion_field, "motion_field")
    assert field.shape == (7, 2, 64, 64) and field.dtype == np.float32
    np.testing.assert_allclose(interior_median(field, 12), [dx, dy], atol=0.5)
    assert reply.method_used == pb.MOTION_METHOD_CODEC_VECTORS
    traj = wire.from_proto(reply.trajectories, "trajectories")
    mask = wire.from_proto(reply.trajectory_mask, "trajectory_mask")
    assert traj.shape == (8 * 8 * 8, 8 + 8, 3) and traj.dtype == np.int64
    assert mask.shape == traj.shape[:2] and mask.dtype == np.bool_ and mask[:, 0].all()


def test_frames_with_optical_flow_are_reported_as_such(stub):
    frames = translating_texture(64, 64, 6, 1, -2)
    request = pb.ExtractMotionRequest(
        frames=wire.to_proto(frames), method=pb.MOTION_METHOD_OPTICAL_FLOW, trajectory_resolution=4
    )
    reply = stub[0].ExtractMotion(request, timeout=60)
    assert reply.method_used == pb.MOTION_METHOD_OPTICAL_FLOW
    np.testing.assert_allclose(
        interior_median(wire.from_proto(reply.motion_field), 12), [1, -2], atol=0.5
    )
    assert wire.from_proto(reply.trajectories).shape[0] == 6 * 4 * 4


@pytest.mark.parametrize(
    "request_kwargs, field",
    [
        (dict(encoded_video=b"\x00\x01not a video" * 10), "encoded_video"),
        (dict(frames=wire.to_proto(np.zeros((1, 64, 64), np.uint8))), "frames"),
        (dict(frames=wire.to_proto(np.zeros((4, 8, 64), np.uint8))), "frames.shape"),
        (dict(frames=wire.to_proto(np.zeros((4, 64, 64), np.float32))), "frames.dtype"),
        (dict(), "source"),
    ],
    ids=["corrupt-bytes", "one-frame", "absurd-size", "float-frames", "no-source"],
)
def test_bad_input_is_invalid_argument(stub, request_kwargs, field):
    with pytest.raises(grpc.RpcError) as info:
        stub[0].ExtractMotion(pb.ExtractMotionRequest(**request_kwargs), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field)
    assert check(stub[1], "motion_extractor") == "SERVING"


def test_tritonclient_motion_field_equals_typed_rpc(stub, motion_server):
    frames = translating_texture(64, 64, 8, 2, 1)
    typed = stub[0].ExtractMotion(pb.ExtractMotionRequest(frames=wire.to_proto(frames)), timeout=60)
    client = triton.InferenceServerClient(f"127.0.0.1:{motion_server.port}")
    inp = triton.InferInput("frames", list(frames.shape), "UINT8")
    inp.set_data_from_numpy(frames)
    result = client.infer("motion_field", [inp])
    np.testing.assert_array_equal(
        result.as_numpy("motion_field"), wire.from_proto(typed.motion_field)
    )
    np.testing.assert_array_equal(
        result.as_numpy("trajectories"), wire.from_proto(typed.trajectories)
    )
    np.testing.assert_array_equal(
        result.as_numpy("trajectory_mask"), wire.from_proto(typed.trajectory_mask)
    )
