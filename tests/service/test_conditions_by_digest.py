"""Generate requests that name their conditions by digest, over real gRPC.

The sampler keeps the conditions it received and says under which digest; `SamplerClient`
then sends that digest instead of the megabytes, and sends them in full again where the
sampler no longer holds them.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from clients.rpc.channel import ChannelSettings, open_channel
from clients.rpc.sampler import SamplerClient
from genaug.digests import conditions_digest
from genaug.v1 import sampler_pb2 as pb
from genaug.v1 import sampler_pb2_grpc
from services.common.config import ServerConfig
from services.sampler.__main__ import build_server
from services.sampler.backend import SamplerBackend
from services.sampler.conditions_cache import ConditionsCache
from tests.service.conftest import running
from tests.service.test_sampler import _conditions


def lookups(result: str) -> float:
    return (
        REGISTRY.get_sample_value("genaug_sampler_conditions_cache_total", {"result": result})
        or 0.0
    )


def clips() -> float:
    return (
        REGISTRY.get_sample_value("genaug_sampler_clips_total", {"priority": "interactive"}) or 0.0
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("models")  # no weights: the seeded small model
    config = ServerConfig(service="sampler", port=0, metrics_port=None, model_dir=model_dir)
    with running(build_server(config, SamplerBackend(model_dir))) as server:
        yield server


@pytest.fixture
def channel(server):
    with open_channel(f"127.0.0.1:{server.port}", ChannelSettings(retry_attempts=1)) as channel:
        yield channel


def generate(client: SamplerClient, seed: int, **kw):
    return client.generate(1, _conditions(), seed=seed, steps=2, decode=False, timeout=60, **kw)


def test_the_second_request_sends_the_digest_and_samples_the_same(channel):
    client = SamplerClient(channel)
    hits = lookups("hit")
    first = generate(client, seed=11)
    assert lookups("hit") == hits  # sent in full: nothing to look up
    again = generate(client, seed=11)
    assert lookups("hit") == hits + 1
    np.testing.assert_array_equal(again.latents, first.latents)


def test_no_digest_is_computed_until_the_sampler_keeps_something(channel, monkeypatch):
    import clients.rpc.sampler as sampler_module

    hashed = []

    def counting(conditions):
        hashed.append(1)
        return conditions_digest(conditions)

    monkeypatch.setattr(sampler_module, "conditions_digest", counting)
    client = SamplerClient(channel)
    hits = lookups("hit")
    generate(client, seed=5)
    assert hashed == []  # nothing kept yet: sent in full without hashing
    generate(client, seed=5)
    assert hashed == [1] and lookups("hit") == hits + 1


def test_a_sampler_that_no_longer_holds_them_gets_them_in_full(server, channel):
    client = SamplerClient(channel)
    generate(client, seed=1)
    server.runtime.servicer.conditions = ConditionsCache()  # as after a restart
    misses, hits = lookups("miss"), lookups("hit")
    generate(client, seed=2)  # by digest, refused, then in full
    generate(client, seed=3)  # by digest again, held again
    assert (lookups("miss"), lookups("hit")) == (misses + 1, hits + 1)


def test_reuse_off_always_sends_the_conditions(channel):
    client = SamplerClient(channel, reuse_conditions=False)
    hits = lookups("hit")
    for seed in (4, 5):
        generate(client, seed=seed)
    assert lookups("hit") == hits


def test_raw_requests_by_digest(channel):
    stub = sampler_pb2_grpc.SamplerStub(channel)

    def call(**fields):
        request = pb.GenerateRequest(class_id=1, steps=2, **fields)
        return list(stub.Generate(request, timeout=60))[-1]

    unknown = conditions_digest(pb.Conditions(text="never sent"))
    with pytest.raises(grpc.RpcError) as info:
        call(request_id="u", conditions_digest=unknown)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details().startswith("conditions_digest")
    with pytest.raises(grpc.RpcError) as info:
        call(request_id="m", conditions_digest="sha256:xyz")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("conditions_digest")

    before = clips()
    sent = call(request_id="same", conditions=_conditions()).result
    assert sent.conditions_digest == conditions_digest(_conditions())
    # The same request id by digest is the same request: answered, not computed again.
    again = call(request_id="same", conditions_digest=sent.conditions_digest).result
    assert again.latents == sent.latents and clips() == before + 1
