"""All five services as real processes on loopback, driven like a hospital platform would."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from clients import GenAugError
from clients.local_cluster import available_services
from clients.rpc.channel import open_channel
from clients.rpc.sampler import SamplerClient, conditions_message
from genaug.ports import DEFAULT_PORTS
from services.data import layout, phantoms
from tests.support import SMALL_LATENT_CHANNELS, metric_value, scrape

C = SMALL_LATENT_CHANNELS  # the bundled VAE is the `small` configuration

pytestmark = pytest.mark.skipif(
    set(available_services()) != set(DEFAULT_PORTS), reason="not every service is implemented"
)


@pytest.fixture(scope="module")
def cluster(two_sampler_cluster):
    return two_sampler_cluster[0]  # the five services (shared with the other e2e modules)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = phantoms.ensure_bundled_dataset(tmp_path_factory.mktemp("data"))
    dataset = layout.load_dataset(root, phantoms.PHANTOM_NAME, "train")
    item = dataset.items[0]
    return dataset.classes.index(item.cls), item, layout.read_clip(item.path)


@pytest.fixture(scope="module")
def sampler(cluster):
    with open_channel(cluster.services["sampler"].target) as channel:
        yield SamplerClient(channel)


def test_generate_from_a_reference_clip_with_ordered_progress(sampler, reference):
    class_id, item, frames = reference
    events = []
    clip = sampler.generate(
        class_id,
        conditions_message(reference_frames=frames, text=item.text),
        seed=1,
        steps=4,
        guidance_scale=3.0,
        on_event=events.append,
        timeout=300,
    )
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "result"
    steps = [e.progress.step for e in events if e.WhichOneof("event") == "progress"]
    assert steps == sorted(steps) and steps[-1] == 3
    assert clip.latents.shape == (8, C, 8, 8)
    assert clip.frames.shape == (8, 1, 64, 64) and np.abs(clip.frames).max() <= 1


def test_cancel_mid_run_ends_within_one_step(sampler, reference):
    class_id, item, frames = reference
    after_cancel = []
    cancelled_at: list[float] = []
    outcome = {}

    def on_event(event):
        if cancelled_at and event.WhichOneof("event") == "progress":
            after_cancel.append(event.progress.step)
        if event.WhichOneof("event") == "progress" and not cancelled_at:
            cancelled_at.append(time.monotonic())
            threading.Thread(target=sampler.cancel, args=("e2e-cancel",)).start()

    try:
        sampler.generate(
            class_id,
            conditions_message(reference_frames=frames),
            steps=500,
            request_id="e2e-cancel",
            on_event=on_event,
            timeout=300,
        )
    except GenAugError as error:
        outcome["error"] = error
    assert outcome["error"].code == grpc.StatusCode.CANCELLED
    assert len(after_cancel) <= 2  # the step running when Cancel arrived, at most one more


def test_same_request_id_twice_is_computed_once(sampler, reference, cluster):
    class_id, _, frames = reference
    port = cluster.services["sampler"].metrics_port
    labels = {"priority": "interactive"}
    before = metric_value(scrape(port), "genaug_sampler_clips_total", **labels)
    conditions = conditions_message(reference_frames=frames)
    first = sampler.generate(
        class_id, conditions, seed=5, steps=3, request_id="e2e-idem", timeout=300
    )
    second = sampler.generate(
        class_id, conditions, seed=5, steps=3, request_id="e2e-idem", timeout=300
    )
    np.testing.assert_array_equal(first.frames, second.frames)
    assert metric_value(scrape(port), "genaug_sampler_clips_total", **labels) == before + 1


def _infer(client, model, inputs):
    tensors = []
    for name, array, datatype in inputs:
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return client.infer(model, tensors)


def test_tritonclient_reaches_every_open_inference_model(cluster, reference):
    _, _, frames = reference
    clip = (frames[None, :, None].astype(np.float32) / 127.5 - 1).astype(np.float32)
    calls = {
        "condition_encoder": [
            ("image_prior", [("frames", frames[:1], "UINT8")], "prior", (1, 256, 64, 64)),
            (
                "text_embedding",
                [("text", np.array([b"thin wall"], dtype=object), "BYTES")],
                "embedding",
                None,
            ),
        ],
        "vae_codec": [
            ("vae_encode", [("frames", clip[0], "FP32")], "latents", (8, C, 8, 8)),
        ],
        "filter": [
            ("vae_seq", [("clips", clip, "FP32")], "score", (1,)),
            ("classifier", [("clips", clip, "FP32")], "logits", None),
        ],
        "motion_extractor": [
            ("motion_field", [("frames", frames, "UINT8")], "motion_field", (7, 2, 64, 64)),
        ],
    }
    for service, models in calls.items():
        client = triton.InferenceServerClient(cluster.services[service].target)
        assert client.is_server_ready()
        for model, inputs, output, shape in models:
            assert client.is_model_ready(model), model
            result = _infer(client, model, inputs).as_numpy(output)
            assert np.isfinite(result).all(), model
            if shape is not None:
                assert result.shape == shape, model
