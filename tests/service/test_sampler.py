"""The sampler service over real gRPC: progress stream, decode, cancel, idempotency, errors."""

from __future__ import annotations

import json
import threading

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from clients import GenAugError
from clients.rpc.channel import ChannelSettings, open_channel
from clients.rpc.sampler import SamplerClient, conditions_message
from services.common.config import ServerConfig
from services.sampler.__main__ import build_server
from services.sampler.backend import SamplerBackend
from tests.service.conftest import running
from tests.support import SMALL_LATENT_CHANNELS


@pytest.fixture(scope="module")
def sampler_server(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("models")  # no weights: the seeded small model
    config = ServerConfig(service="sampler", port=0, metrics_port=None, model_dir=model_dir)
    with running(build_server(config, SamplerBackend(model_dir), max_batch_size=4)) as server:
        yield server


@pytest.fixture
def client(sampler_server):
    target = f"127.0.0.1:{sampler_server.port}"
    with open_channel(target, ChannelSettings(retry_attempts=1)) as channel:
        yield SamplerClient(channel)


def _conditions(frames=8, size=64):
    rng = np.random.default_rng(0)
    return conditions_message(
        image_prior=rng.standard_normal((256, 64, 64)).astype(np.float32),
        motion_field=rng.standard_normal((frames - 1, 2, size, size)).astype(np.float32),
        text="Thick myocardial wall with strong uniform contraction; small cavity.",
    )


def test_progress_in_order_then_a_decoded_result(client):
    events = []
    clip = client.generate(
        1,
        _conditions(),
        seed=3,
        steps=5,
        guidance_scale=3.0,
        preview_every=2,
        on_event=events.append,
        timeout=120,
    )
    progress = [e.progress for e in events if e.WhichOneof("event") == "progress"]
    assert [p.step for p in progress] == [1, 2, 3, 4]  # the 5th step arrives as the result
    assert all(p.total == 5 for p in progress)
    assert progress[1].preview.shape == [8, 8, 8]
    assert clip.latents.shape == (8, SMALL_LATENT_CHANNELS, 8, 8)
    assert clip.frames.shape == (8, 1, 64, 64)
    assert np.abs(clip.frames).max() <= 1.0


def test_same_request_id_twice_is_one_computation(client):
    def clips():
        labels = {"priority": "interactive"}
        return REGISTRY.get_sample_value("genaug_sampler_clips_total", labels) or 0.0

    before = clips()
    first = client.generate(0, _conditions(), seed=9, steps=3, request_id="idem-1", timeout=120)
    second = client.generate(0, _conditions(), seed=9, steps=3, request_id="idem-1", timeout=120)
    np.testing.assert_array_equal(first.latents, second.latents)
    np.testing.assert_array_equal(first.frames, second.frames)
    assert clips() == before + 1
    with pytest.raises(GenAugError) as info:
        client.generate(0, _conditions(), seed=10, steps=3, request_id="idem-1", timeout=60)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details.startswith("request_id")


def test_cancel_mid_run_ends_the_stream_with_cancelled(client):
    progressed = threading.Event()
    errors = []

    def run():
        try:
            client.generate(
                2,
                _conditions(),
                steps=400,
                request_id="to-cancel",
                timeout=120,
                on_event=lambda e: progressed.set(),
            )
        except GenAugError as error:
            errors.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    assert progressed.wait(60)
    assert client.cancel("to-cancel")
    worker.join(30)
    assert not worker.is_alive()
    assert errors and errors[0].code == grpc.StatusCode.CANCELLED


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(class_id=9), "class_id"),
        (dict(class_id=0, steps=5000), "steps"),
        (dict(class_id=0, solver="euler"), "solver"),
    ],
)
def test_bad_requests_are_invalid_argument(client, kwargs, field):
    with pytest.raises(GenAugError) as info:
        client.generate(conditions=_conditions(), timeout=30, **kwargs)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details.startswith(field)


def test_mismatched_conditions_are_invalid_argument(client):
    bad = conditions_message(motion_field=np.zeros((3, 2, 60, 64), np.float32))
    with pytest.raises(GenAugError) as info:
        client.generate(0, bad, steps=2, timeout=30)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_reference_frames_without_the_services_name_the_missing_condition(client):
    """No condition encoder or motion extractor is wired to this sampler: it cannot fetch."""
    frames = np.zeros((4, 64, 64), np.uint8)
    prior = np.zeros((256, 64, 64), np.float32)
    for conditions, field in (
        (conditions_message(reference_frames=frames), "conditions.image_prior"),
        (conditions_message(reference_frames=frames, image_prior=prior), "conditions.motion_field"),
    ):
        with pytest.raises(GenAugError) as info:
            client.generate(0, conditions, steps=1, timeout=30)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert (
            info.value.details.startswith(field) and "service is configured" in info.value.details
        )


def test_list_models_names_the_generator_and_its_classes(client, sampler_server):
    (info,) = client.list_models()
    # No card.json, no classes.json: a card derived from the seeded model.
    assert info.is_default and info.name
    assert list(info.class_names) == ["0", "1", "2"]
    assert (info.height, info.width) == (64, 64)
    assert info.latent_channels == SMALL_LATENT_CHANNELS
    assert json.loads(info.card_json)["class_names"] == ["0", "1", "2"]
    # Naming the default explicitly is the same as naming none.
    clip = client.generate(1, _conditions(), steps=1, decode=False, model=info.name, timeout=60)
    assert clip.latents.shape[0] == 8


def test_an_unknown_model_is_not_found_naming_the_known_ones(client):
    (info,) = client.list_models()
    with pytest.raises(GenAugError) as info_error:
        client.generate(0, _conditions(), steps=1, model="nope", timeout=30)
    assert info_error.value.code == grpc.StatusCode.NOT_FOUND
    details = info_error.value.details
    assert details.startswith("model: 'nope'") and info.name in details
