"""The sampler refuses requests over its limits at once, naming the field and the limit."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from clients.rpc.channel import ChannelSettings, open_channel
from genaug import wire
from genaug.v1 import sampler_pb2 as pb
from genaug.v1 import sampler_pb2_grpc
from tests.service.test_sampler import sampler_server  # noqa: F401 (fixture)


@pytest.fixture
def stub(sampler_server):  # noqa: F811
    target = f"127.0.0.1:{sampler_server.port}"
    with open_channel(target, ChannelSettings(retry_attempts=1)) as channel:
        yield sampler_pb2_grpc.SamplerStub(channel)


def _refusal(stub, request) -> tuple[grpc.RpcError, float]:
    start = time.perf_counter()
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Generate(request, timeout=30))
    return info.value, time.perf_counter() - start


def _conditions(**arrays) -> pb.Conditions:
    return pb.Conditions(**{name: wire.to_proto(a) for name, a in arrays.items()})


@pytest.mark.parametrize(
    "request_, field, message",
    [
        (pb.GenerateRequest(num_frames=2**31 - 1, steps=1), "num_frames", "limit of 64"),
        (pb.GenerateRequest(num_frames=-3, steps=1), "num_frames", "negative"),
        (
            pb.GenerateRequest(
                steps=1, conditions=_conditions(reference_frames=np.zeros((2, 8, 4096), np.uint8))
            ),
            "conditions",
            "side 4096 px are over the limit of 512",
        ),
        (
            pb.GenerateRequest(
                steps=1,
                conditions=_conditions(motion_field=np.zeros((80, 2, 8, 8), np.float32)),
            ),
            "conditions.motion_field.shape",
            "81 frames are over the limit of 64",
        ),
        (
            pb.GenerateRequest(
                steps=1,
                guidance_scale=1.0,
                conditions=_conditions(text_embedding=np.zeros((4, 7), np.float32)),
            ),
            "conditions.text_embedding",
            "must be FP32 (L, 384)",
        ),
        (
            pb.GenerateRequest(steps=1, conditions=pb.Conditions(text="x" * 5000)),
            "conditions.text",
            "over the limit of 4096",
        ),
    ],
)
def test_over_the_limit_is_invalid_argument_naming_field_and_limit(stub, request_, field, message):
    error, _ = _refusal(stub, request_)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"{field}: ") and message in error.details()


def test_a_huge_request_is_refused_without_work(stub):
    # 100k frames would need tens of GB of latents: the refusal comes before any allocation.
    error, seconds = _refusal(stub, pb.GenerateRequest(num_frames=100_000, steps=1))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert seconds < 1.0


@pytest.mark.parametrize(
    "name, array",
    [
        ("motion_field", np.zeros((), np.float32)),
        ("motion_field", np.zeros((3, 2, 8), np.float32)),
        ("reference_frames", np.zeros((0, 8, 8), np.uint8)),
        ("trajectories", np.zeros((4, 3), np.int64)),
        ("image_prior", np.zeros((256,), np.float32)),
    ],
)
def test_condition_tensors_of_the_wrong_rank_are_invalid_argument(stub, name, array):
    # Found by tests/fuzz: a 0-d motion field was an IndexError (INTERNAL) in the backend.
    error, _ = _refusal(stub, pb.GenerateRequest(steps=1, conditions=_conditions(**{name: array})))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(f"conditions.{name}: must be a non-empty")
