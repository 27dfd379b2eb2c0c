"""Token auth covers every RPC a service serves (typed, KServe v2, reflection); health is exempt."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from tritonclient.grpc import service_pb2

from clients.rpc.channel import ChannelSettings, open_channel
from genaug.v1 import sampler_pb2, vae_codec_pb2
from tests.service.conftest import codec_config, codec_with_echo, running

TOKEN = "s3cret-token"


def _all_methods():
    """(path, request message, client streaming) of every RPC the codec process serves."""
    reflection_service = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
    services = [
        vae_codec_pb2.DESCRIPTOR.services_by_name["VaeCodec"],
        service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
        reflection_service,
    ]
    for service in services:
        for method in service.methods:
            if method.name == "ModelStreamInfer":
                continue  # registered only by servers with decoupled models
            yield f"/{service.full_name}/{method.name}", method


def _call(channel, path: str, method) -> grpc.StatusCode:
    from google.protobuf import message_factory

    request = message_factory.GetMessageClass(method.input_type)()
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(method.client_streaming, method.server_streaming)]
    fn = kind(path, request_serializer=type(request).SerializeToString)
    try:
        reply = fn(iter([request]) if method.client_streaming else request, timeout=10)
        if method.server_streaming:
            list(reply)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    config = codec_config(tmp_path_factory.mktemp("codec"), auth_token=TOKEN, metrics_port=None)
    with running(codec_with_echo(config)) as server:
        yield f"127.0.0.1:{server.port}"


@pytest.mark.parametrize("path, method", list(_all_methods()), ids=lambda v: getattr(v, "name", v))
def test_every_rpc_needs_the_token(secured, path, method):
    for token in (None, "wrong", TOKEN[:-1]):
        with open_channel(secured, ChannelSettings(token=token, retry_attempts=1)) as ch:
            assert _call(ch, path, method) == grpc.StatusCode.UNAUTHENTICATED, token
    with open_channel(secured, ChannelSettings(token=TOKEN, retry_attempts=1)) as ch:
        assert _call(ch, path, method) != grpc.StatusCode.UNAUTHENTICATED


def test_health_is_exempt_for_probes(secured):
    with open_channel(secured, ChannelSettings(retry_attempts=1)) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def secured_sampler(tmp_path_factory):
    from services.common.config import ServerConfig
    from services.sampler.__main__ import build_server
    from services.sampler.backend import SamplerBackend

    model_dir = tmp_path_factory.mktemp("sampler")
    config = ServerConfig(
        service="sampler", port=0, metrics_port=None, model_dir=model_dir, auth_token=TOKEN
    )
    with running(build_server(config, SamplerBackend(model_dir))) as server:
        yield f"127.0.0.1:{server.port}"


def _sampler_methods():
    service = sampler_pb2.DESCRIPTOR.services_by_name["Sampler"]
    for method in service.methods:
        yield f"/{service.full_name}/{method.name}", method


@pytest.mark.parametrize(
    "path, method", list(_sampler_methods()), ids=lambda v: getattr(v, "name", v)
)
def test_every_sampler_rpc_needs_the_token(secured_sampler, path, method):
    """ListModels included: the generators' cards are not for anonymous callers."""
    for token in (None, "wrong"):
        with open_channel(secured_sampler, ChannelSettings(token=token, retry_attempts=1)) as ch:
            assert _call(ch, path, method) == grpc.StatusCode.UNAUTHENTICATED, token
    with open_channel(secured_sampler, ChannelSettings(token=TOKEN, retry_attempts=1)) as ch:
        assert _call(ch, path, method) != grpc.StatusCode.UNAUTHENTICATED
