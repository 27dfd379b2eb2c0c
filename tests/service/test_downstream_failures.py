"""A service whose dependency fails passes the failure on with its meaning, never INTERNAL.

The sampler decodes through the codec over gRPC: with the codec gone, Generate answers
UNAVAILABLE (the batch client retries that elsewhere, under the same request id); once the
codec is back, the retry replays the finished latents and only decodes again.
"""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from clients import GenAugError
from clients.rpc.channel import ChannelSettings, open_channel
from clients.rpc.health import check
from clients.rpc.sampler import SamplerClient
from services.common.config import ServerConfig
from services.sampler.__main__ import build_server
from services.sampler.backend import SamplerBackend
from services.vae_codec.__main__ import build_server as build_codec
from tests.service.conftest import codec_config, running
from tests.service.test_sampler import _conditions
from tests.support import free_port


def _clips() -> float:
    return REGISTRY.get_sample_value("genaug_sampler_clips_total", {"priority": "interactive"})


@pytest.fixture
def codec_port():
    return free_port()


def test_codec_down_is_unavailable_and_the_retry_decodes_the_cached_latents(tmp_path, codec_port):
    codec = build_codec(codec_config(tmp_path / "c", port=codec_port, metrics_port=None))
    codec.start()
    model_dir = tmp_path / "models"  # no weights: the seeded small models
    model_dir.mkdir()
    backend = SamplerBackend(model_dir, codec_target=f"127.0.0.1:{codec_port}")
    config = ServerConfig(service="sampler", port=0, metrics_port=None, model_dir=model_dir)
    with running(build_server(config, backend)) as sampler:
        codec.stop(grace=0)
        target = f"127.0.0.1:{sampler.port}"
        with open_channel(target, ChannelSettings(retry_attempts=1)) as channel:
            client = SamplerClient(channel)
            before = _clips() or 0.0
            with pytest.raises(GenAugError) as info:
                client.generate(1, _conditions(), seed=4, steps=2, request_id="r1", timeout=60)
            assert info.value.code == grpc.StatusCode.UNAVAILABLE, info.value.details
            assert "downstream call failed" in info.value.details
            assert check(channel, "", timeout=5) == "SERVING"

            again = build_codec(codec_config(tmp_path / "c", port=codec_port, metrics_port=None))
            with running(again):
                end = time.monotonic() + 30
                while True:  # the sampler's channel reconnects with backoff
                    try:
                        clip = client.generate(
                            1, _conditions(), seed=4, steps=2, request_id="r1", timeout=60
                        )
                        break
                    except GenAugError as error:
                        assert error.code == grpc.StatusCode.UNAVAILABLE
                        assert time.monotonic() < end, "the codec did not come back"
                        time.sleep(0.5)
            assert clip.frames.shape == (8, 1, 64, 64) and np.isfinite(clip.frames).all()
            assert _clips() == before + 1  # generated once, decoded twice
