"""services.common over real gRPC on loopback: limits, chunks, errors, deadlines, auth, TLS."""

from __future__ import annotations

import argparse
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import GenAugError, VaeCodecClient
from clients.rpc.channel import ChannelSettings, open_channel
from clients.rpc.health import check
from genaug import wire
from genaug.v1 import tensor_pb2, vae_codec_pb2, vae_codec_pb2_grpc
from services.common.config import ServerConfig
from services.common.server import ModelServer
from tests.service.conftest import codec_config, codec_with_echo, running
from tests.service.identity import identity_service, who
from tests.support import (
    SMALL_LATENT_CHANNELS,
    echo_bytes_stub,
    echo_chunk_bytes_stub,
    echo_stubs,
    make_certificates,
    metric_value,
    scrape,
)

MIB = 1 << 20


@pytest.mark.parametrize("dtype", wire.SUPPORTED_DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("shape", [(), (0,), (0, 5), (2, 3, 4)], ids=str)
def test_tensor_round_trip_over_grpc(channel, dtype, shape):
    unary, stream = echo_stubs(channel)
    array = (np.random.default_rng(1).random(shape) * 50).astype(dtype)
    back = wire.from_proto(unary(wire.to_proto(array), timeout=10))
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    back = wire.assemble(stream(wire.iter_chunks("t", array), timeout=10))["t"]
    np.testing.assert_array_equal(back, array)


def test_64_mib_tensor_through_the_chunked_path(channel):
    _, stream = echo_stubs(channel)
    array = np.random.default_rng(2).integers(0, 255, size=64 * MIB, dtype=np.uint8)
    replies = list(stream(wire.iter_chunks("big", array), timeout=120))
    assert max(len(r.data) for r in replies) == MIB
    np.testing.assert_array_equal(wire.assemble(replies)["big"], array)


def test_serialised_chunk_stream_round_trip_and_bad_bytes(channel):
    stream = echo_chunk_bytes_stub(channel)
    array = np.random.default_rng(3).random((3, 5 * MIB // 8 + 3))  # a short last chunk
    replies = list(stream(wire.iter_chunk_bytes("x", array), timeout=60))
    assert all(isinstance(r, bytes) for r in replies)
    np.testing.assert_array_equal(wire.assemble(replies)["x"], array)
    header, *data = wire.iter_chunk_bytes("x", np.zeros(4, np.uint8))
    for chunks, where in (([b"\xff\xff"], "request[0]"), ([header, b"\x12\x09ab"], "request[1]")):
        with pytest.raises(grpc.RpcError) as info:
            list(stream(iter(chunks), timeout=10))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details().startswith(f"{where}: ")


def test_the_bytes_echo_returns_each_message_as_sent(channel):
    # The transport bench's ceiling: if it dropped or merged messages, the ceiling would lie.
    pieces = [bytes([i]) * (MIB if i < 3 else 7) for i in range(4)]
    assert list(echo_bytes_stub(channel)(iter(pieces), timeout=30)) == pieces
    assert list(echo_bytes_stub(channel, whole=True)(iter(pieces), timeout=30)) == pieces


def test_unary_message_over_the_limit_is_resource_exhausted(tmp_path):
    config = codec_config(tmp_path, max_message_bytes=MIB + MIB // 2, metrics_port=None)
    with running(codec_with_echo(config)) as server:
        with open_channel(f"127.0.0.1:{server.port}", ChannelSettings(retry_attempts=1)) as ch:
            unary, stream = echo_stubs(ch)
            with pytest.raises(grpc.RpcError) as info:
                unary(wire.to_proto(np.zeros(2 * MIB, np.uint8)), timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "larger than max" in info.value.details()
            # The same bytes fit through the chunk stream, whatever the message limit.
            back = wire.assemble(stream(wire.iter_chunks("x", np.ones(2 * MIB, np.uint8))))
            assert back["x"].sum() == 2 * MIB


def _raw_stream(stub, chunks):
    return list(stub.EncodeStream(iter(chunks), timeout=30))


def test_chunk_stream_ending_early_or_oversized_is_invalid_argument(channel, codec_server):
    stub = vae_codec_pb2_grpc.VaeCodecStub(channel)
    frames = np.zeros((2, 1, 64, 64), np.float32)
    chunks = list(wire.iter_chunks("frames", frames, chunk_bytes=8192))
    with pytest.raises(grpc.RpcError) as info:
        _raw_stream(stub, chunks[:-1])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "stream ended after" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        _raw_stream(stub, [*chunks, tensor_pb2.TensorChunk(data=b"\0" * 4)])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more bytes" in info.value.details()
    assert check(channel, "vae_codec") == "SERVING"


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda t: setattr(t, "dtype", wire.proto_dtype(np.float64)), "frames.data"),
        (lambda t: t.shape.__setitem__(slice(None), [2, 1, 64]), "frames.data"),
        (lambda t: setattr(t, "data", t.data[:-4]), "frames.data"),
    ],
    ids=["dtype", "shape", "bytes"],
)
def test_malformed_tensor_is_invalid_argument_naming_the_field(channel, mutate, field):
    stub = vae_codec_pb2_grpc.VaeCodecStub(channel)
    tensor = wire.to_proto(np.zeros((2, 1, 64, 64), np.float32))
    mutate(tensor)
    with pytest.raises(grpc.RpcError) as info:
        stub.Encode(vae_codec_pb2.EncodeRequest(frames=tensor), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field)
    assert check(channel, "vae_codec") == "SERVING"


@pytest.mark.parametrize(
    "frames, field",
    [
        (np.zeros((2, 1, 64, 64), np.float64), "frames.dtype"),
        (np.zeros((2, 3, 64, 64), np.float32), "frames.shape"),
        (np.zeros((2, 1, 60, 64), np.float32), "frames.shape"),
        (np.zeros((0, 1, 64, 64), np.float32), "frames.shape"),
        (np.full((1, 1, 64, 64), np.nan, np.float32), "frames"),
    ],
    ids=["float64", "rgb", "not-multiple-of-8", "no-frames", "nan"],
)
def test_wrong_frames_are_rejected_by_the_codec(channel, frames, field):
    stub = vae_codec_pb2_grpc.VaeCodecStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Encode(vae_codec_pb2.EncodeRequest(frames=wire.to_proto(frames)), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(field + ":")


def test_deadline_shorter_than_the_work_then_next_call_succeeds(channel, codec_server):
    client = VaeCodecClient(channel)
    frames = np.zeros((400, 1, 64, 64), np.float32)
    with pytest.raises(GenAugError) as info:
        client.encode(frames, timeout=0.2)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    latents = client.encode(frames[:2], timeout=30)
    assert latents.shape == (2, SMALL_LATENT_CHANNELS, 8, 8)


def test_server_abandons_work_past_the_deadline(channel, codec_server):
    text = scrape(codec_server.metrics_port)
    labels = dict(service="vae_codec", method="Encode", model="", code="DEADLINE_EXCEEDED")
    before = metric_value(text, "genaug_rpc_failures_total", **labels)
    stub = vae_codec_pb2_grpc.VaeCodecStub(channel)
    request = vae_codec_pb2.EncodeRequest(frames=wire.to_proto(np.zeros((800, 1, 64, 64), "f4")))
    with pytest.raises(grpc.RpcError):
        stub.Encode(request, timeout=0.3)
    # The server stops at the next micro-batch, long before 800 frames (~6 s) would be done.
    for _ in range(60):
        after = metric_value(
            scrape(codec_server.metrics_port), "genaug_rpc_failures_total", **labels
        )
        if after > before:
            break
        time.sleep(0.05)
    assert after == before + 1


def test_internal_errors_hide_the_trace(channel, codec_server, monkeypatch):
    codec = codec_server.models["vae_encode"].codec

    def broken(*args, **kwargs):
        raise RuntimeError("secret stack detail")

    monkeypatch.setattr(codec, "_encode_batch", broken)
    with pytest.raises(GenAugError) as info:
        VaeCodecClient(channel).encode(np.zeros((1, 1, 64, 64), np.float32), timeout=10)
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert "secret" not in info.value.details and "request id" in info.value.details


def test_typed_calls_are_unavailable_until_the_models_are_loaded(tmp_path):
    """The port is bound while models load: a caller that does not wait for SERVING (a replica
    retrying onto a restarted service) gets a retryable UNAVAILABLE, never INTERNAL."""
    server = codec_with_echo(codec_config(tmp_path, metrics_port=None))
    server.start(load=False)
    try:
        frames = np.zeros((1, 1, 64, 64), np.float32)
        with open_channel(f"127.0.0.1:{server.port}", ChannelSettings(retry_attempts=1)) as ch:
            with pytest.raises(GenAugError) as info:
                VaeCodecClient(ch).encode(frames, timeout=10)
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
            assert "vae_codec is loading its models" in info.value.details
            _, stream = echo_stubs(ch)
            with pytest.raises(grpc.RpcError) as raw:  # a streaming method, too
                list(stream(wire.iter_chunks("x", np.zeros(3)), timeout=10))
            assert raw.value.code() == grpc.StatusCode.UNAVAILABLE
            assert check(ch, "") == "NOT_SERVING"
            server.load_models()
            assert VaeCodecClient(ch).encode(frames, timeout=10).shape[1] == SMALL_LATENT_CHANNELS
            assert check(ch, "") == "SERVING"
    finally:
        server.stop(grace=0)


def test_bearer_token_auth_with_health_exempt(tmp_path):
    config = codec_config(tmp_path, auth_token="s3cret", metrics_port=None)
    with running(codec_with_echo(config)) as server:
        target = f"127.0.0.1:{server.port}"
        frames = np.zeros((1, 1, 64, 64), np.float32)
        with open_channel(target, ChannelSettings(retry_attempts=1)) as ch:
            with pytest.raises(GenAugError) as info:
                VaeCodecClient(ch).encode(frames, timeout=10)
            assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with open_channel(target, ChannelSettings(token="wrong", retry_attempts=1)) as ch:
            _, stream = echo_stubs(ch)
            with pytest.raises(grpc.RpcError) as info:
                list(stream(wire.iter_chunks("x", np.zeros(3)), timeout=10))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with open_channel(target, ChannelSettings(token="s3cret")) as ch:
            latents = VaeCodecClient(ch).encode(frames, timeout=10)
            assert latents.shape == (1, SMALL_LATENT_CHANNELS, 8, 8)


def test_mutual_tls_round_trip(tmp_path):
    certs = make_certificates(tmp_path)
    config = codec_config(
        tmp_path,
        metrics_port=None,
        tls_cert=certs["server_cert"],
        tls_key=certs["server_key"],
        tls_client_ca=certs["ca_cert"],
    )
    with running(codec_with_echo(config)) as server:
        target = f"localhost:{server.port}"
        mutual = ChannelSettings(
            ca_cert=certs["ca_cert"],
            client_cert=certs["client_cert"],
            client_key=certs["client_key"],
            retry_attempts=1,
        )
        with open_channel(target, mutual) as ch:
            frames = np.random.default_rng(0).uniform(-1, 1, (2, 1, 64, 64)).astype(np.float32)
            latents = VaeCodecClient(ch).encode(frames, timeout=30)
            assert latents.shape == (2, SMALL_LATENT_CHANNELS, 8, 8) and np.isfinite(latents).all()
        # Without a client certificate the handshake is refused.
        with open_channel(
            target, ChannelSettings(ca_cert=certs["ca_cert"], retry_attempts=1)
        ) as ch:
            with pytest.raises(GenAugError) as info:
                VaeCodecClient(ch).encode(frames, timeout=5)
            assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_augment_connection_flags_reach_a_mutual_tls_token_service(tmp_path):
    """`genaug augment --tls-* --auth-token-file` settings open working channels."""
    from clients.augment.options import add_arguments, channel_settings, resolve

    certs = make_certificates(tmp_path)
    config = codec_config(
        tmp_path,
        metrics_port=None,
        auth_token="s3cret",
        tls_cert=certs["server_cert"],
        tls_key=certs["server_key"],
        tls_client_ca=certs["ca_cert"],
    )
    (tmp_path / "token").write_text("s3cret\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    tls = ["--tls-ca", str(certs["ca_cert"]), "--tls-cert", str(certs["client_cert"]),
           "--tls-key", str(certs["client_key"])]  # fmt: skip
    base = ["--dataset-root", "d", "--out", "o", "--balance", *tls]
    frames = np.zeros((1, 1, 64, 64), np.float32)
    with running(codec_with_echo(config)) as server:
        target = f"localhost:{server.port}"
        for argv, ok in (
            (base, False),
            ([*base, "--auth-token-file", str(tmp_path / "token")], True),
        ):
            settings = channel_settings(resolve(parser.parse_args(argv), env={}), env={})
            settings.retry_attempts = 1
            with open_channel(target, settings) as ch:
                if ok:
                    assert VaeCodecClient(ch).encode(frames, timeout=10).shape[0] == 1
                else:
                    with pytest.raises(GenAugError) as info:
                        VaeCodecClient(ch).encode(frames, timeout=10)
                    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_a_multi_address_target_is_balanced_round_robin_unless_told_otherwise():
    """A headless Service name resolves to every replica; the channel spreads calls over them."""
    a, b = (
        ModelServer(ServerConfig(service="identity"), typed_services=[identity_service(name)])
        for name in "ab"
    )
    with running(a), running(b):
        target = f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"
        with open_channel(target, ChannelSettings(retry_attempts=1)) as ch:
            seen = set()
            for _ in range(50):
                seen.add(who(ch)[0])
                if seen == {"a", "b"}:
                    break
            assert seen == {"a", "b"}
        pick_first = ChannelSettings(retry_attempts=1, load_balancing="pick_first")
        with open_channel(target, pick_first) as ch:
            assert len({who(ch)[0] for _ in range(10)}) == 1
        with open_channel(f"dns:///localhost:{b.port}", ChannelSettings(retry_attempts=1)) as ch:
            assert who(ch)[0] == "b"


def test_open_health_watchers_do_not_delay_checks(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="vae_codec")
    watchers = [stub.Watch(request, timeout=30) for _ in range(8)]  # more than the Watch pool
    try:
        time.sleep(0.3)  # each open Watch now holds a thread, or waits for one
        began = time.perf_counter()
        assert check(channel, "vae_codec", timeout=1.0) == "SERVING"
        assert time.perf_counter() - began < 0.5
    finally:
        for watcher in watchers:
            watcher.cancel()
