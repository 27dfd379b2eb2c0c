"""Property-based fuzzing of every RPC of every service over real gRPC on loopback.

Each service answers hostile requests (any message of its typed API, KServe v2 requests with
lying shapes and contents, bytes that are no message at all) with a specific status code, never
INTERNAL or UNKNOWN, and is SERVING afterwards. `GENAUG_FUZZ_EXAMPLES` sets the cases per RPC
(make soak runs 1000 or more per service).
"""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients.rpc.channel import ChannelSettings, open_channel
from genaug.v1 import (
    condition_encoder_pb2,
    filter_pb2,
    motion_extractor_pb2,
    sampler_pb2,
    vae_codec_pb2,
)
from services.common.memory import CUDA_DEFAULT_MIB, set_mmap_threshold
from tests.fuzz.harness import EXAMPLES, Tally
from tests.fuzz.messages import kserve_requests, messages
from tests.service.conftest import codec_server  # noqa: F401 (fixtures)
from tests.service.test_condition_encoder import encoder_server  # noqa: F401
from tests.service.test_filter import filter_server  # noqa: F401
from tests.service.test_motion_extractor import motion_server  # noqa: F401
from tests.service.test_sampler import sampler_server  # noqa: F401

KSERVE = "inference.GRPCInferenceService"
# service -> (fixture, typed service descriptor, KServe models, their input names)
SERVICES = {
    "vae_codec": (
        "codec_server",
        vae_codec_pb2,
        ["vae_encode", "vae_decode"],
        ["frames", "latents"],
    ),
    "condition_encoder": (
        "encoder_server",
        condition_encoder_pb2,
        ["image_prior", "text_embedding"],
        ["frames", "text"],
    ),
    "filter": ("filter_server", filter_pb2, ["vae_seq", "classifier"], ["clips"]),
    "motion_extractor": ("motion_server", motion_extractor_pb2, ["motion_field"], ["frames"]),
    "sampler": ("sampler_server", sampler_pb2, [], []),
}


def _typed_methods(module):
    (service,) = module.DESCRIPTOR.services_by_name.values()
    return [(f"/{service.full_name}/{m.name}", m) for m in service.methods]


def _callable(channel: grpc.Channel, path: str, method) -> tuple:
    input_cls = _message_class(method.input_type)
    output_cls = _message_class(method.output_type)
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(method.client_streaming, method.server_streaming)]
    fn = kind(
        path,
        request_serializer=input_cls.SerializeToString,
        response_deserializer=output_cls.FromString,
    )
    return fn, method.client_streaming


def _message_class(descriptor):
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


@pytest.fixture(scope="module", autouse=True)
def returned_heap():
    """The servers run in this process: a fixed mmap threshold (the CUDA default) returns
    freed request buffers to the OS, so the RSS bound measures what is kept, not glibc's
    fragmentation (tests/soak/test_load.py does the same)."""
    set_mmap_threshold(round(CUDA_DEFAULT_MIB * 2**20))


# A hostile request that is valid may generate until its 5 s deadline: make soak's thousands
# of sampler cases need more than pytest's 600 s default.
@pytest.mark.timeout(max(600, 6 * EXAMPLES))
@pytest.mark.parametrize("service", sorted(SERVICES))
def test_no_internal_on_hostile_input(service, request):
    fixture, module, models, inputs = SERVICES[service]
    server = request.getfixturevalue(fixture)
    target = f"127.0.0.1:{server.port}"
    tally = Tally(service)
    with open_channel(target, ChannelSettings(retry_attempts=1)) as channel:
        typed = [(path, *_callable(channel, path, m), m) for path, m in _typed_methods(module)]
        infer = channel.unary_unary(f"/{KSERVE}/ModelInfer")
        raw_paths = [path for path, *_ in typed] + ([f"/{KSERVE}/ModelInfer"] if models else [])

        def one_case(data):
            kind = data.draw(
                st.sampled_from(["typed", "kserve", "garbage"] if models else ["typed", "garbage"])
            )
            if kind == "typed":
                path, fn, streaming_in, method = data.draw(st.sampled_from(typed))
                if streaming_in:
                    body = data.draw(st.lists(messages(method.input_type), max_size=4))
                    tally.call(path, lambda r, timeout: fn(iter(r), timeout=timeout), body)
                else:
                    tally.call(path, fn, data.draw(messages(method.input_type)))
            elif kind == "kserve":
                request = data.draw(kserve_requests(models, inputs))
                tally.call("ModelInfer", infer, request.SerializeToString())
            else:
                path = data.draw(st.sampled_from(raw_paths))
                garbage = data.draw(st.binary(min_size=1, max_size=64))
                raw = channel.unary_unary(path)
                tally.call(f"{path} (bytes)", raw, garbage)

        def run_cases(count: int) -> None:
            def case(data):  # a fresh function each run: hypothesis decorates a function once
                one_case(data)

            given(st.data())(
                settings(
                    max_examples=count,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )(case)
            )()

        # A warm-up tenth first (models load, allocator pools fill), then the baseline.
        total = EXAMPLES * (len(typed) + 2)
        run_cases(max(10, total // 10))
        tally.warmed_up()
        tally.curve_every = max(1, total // 10)
        run_cases(total)
        summary = tally.report(channel)
    print(summary)
    assert tally.forbidden == [], tally.forbidden[:5]
    assert summary["health_after"] == "SERVING"
    assert summary["cases"] >= EXAMPLES
    # The servers run in this process: hostile input must not leave memory behind (measured
    # from after the warm-up, so model loading and allocator pools do not count; net of the
    # sampler's result cache, which keeps finished clips for retries within its byte bound).
    kept_after = summary["rss_kib_after"] - summary["result_cache_kib_after"]
    kept_before = summary["rss_kib_before"] - summary["result_cache_kib_before"]
    assert kept_after < 1.15 * kept_before, summary
