"""A model repository of several generators over real gRPC: the sampler serves each (its own
classes and VAE), lists them, loads a new version without a restart, keeps serving when a bad
one appears; the codec and the filter use the VAE and classifier of the generator named."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from clients import GenAugError
from clients.rpc.channel import ChannelSettings, open_channel
from clients.rpc.codec import VaeCodecClient
from clients.rpc.filter import FilterClient, PoolClip
from clients.rpc.sampler import SamplerClient, conditions_message
from genaug import wire
from services.common.config import ServerConfig
from services.filter.__main__ import build_server as build_filter
from services.models.repository import GeneratorCard, write_card
from services.sampler.__main__ import build_server as build_sampler
from services.sampler.backend import SamplerBackend
from services.vae_codec.__main__ import build_server as build_codec
from tests.service.conftest import running

BUNDLED = Path(__file__).resolve().parents[2] / "deploy" / "model-repository" / "phantom"
POLL_S = 0.3


def _seeded(folder: Path, classes: list[str]) -> None:
    """A generator version without weights (seeded small models) with its own classes."""
    (folder / "ldm").mkdir(parents=True)
    write_card(folder, GeneratorCard(name=folder.parent.name, class_names=tuple(classes)))


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    os.symlink(BUNDLED, root / "phantom")
    _seeded(root / "echo" / "1", ["A", "B"])
    (root / "repository.json").write_text(json.dumps({"default_model": "phantom"}))
    return root


@pytest.fixture(scope="module")
def sampler_server(repository):
    config = ServerConfig(service="sampler", port=0, metrics_port=None, model_dir=repository)
    with running(build_sampler(config, SamplerBackend(repository), poll_s=POLL_S)) as server:
        yield server


@pytest.fixture(scope="module")
def sampler(sampler_server):
    target = f"127.0.0.1:{sampler_server.port}"
    with open_channel(target, ChannelSettings(retry_attempts=1)) as channel:
        yield SamplerClient(channel)


def _conditions(frames=4, size=64):
    rng = np.random.default_rng(0)
    return conditions_message(
        image_prior=rng.standard_normal((256, 64, 64)).astype(np.float32),
        motion_field=rng.standard_normal((frames - 1, 2, size, size)).astype(np.float32),
    )


def _versions(client) -> dict[str, str]:
    return {info.name: info.version for info in client.list_models()}


def test_the_sampler_lists_every_generator_with_its_classes_and_the_default(sampler):
    infos = {info.name: info for info in sampler.list_models()}
    assert sorted(infos) == ["echo", "phantom"]
    assert list(infos["phantom"].class_names) == ["DCM", "HCM", "NOR"]
    assert infos["phantom"].is_default and not infos["echo"].is_default
    assert list(infos["echo"].class_names) == ["A", "B"] and infos["echo"].version == "1"
    assert json.loads(infos["phantom"].card_json)["figures"]["class_fidelity"] == 1.0


def test_each_generator_samples_with_its_own_classes(sampler):
    echo = sampler.generate(1, _conditions(), model="echo", seed=3, steps=2, timeout=120)
    phantom = sampler.generate(1, _conditions(), seed=3, steps=2, timeout=120)  # the default
    assert echo.frames.shape == phantom.frames.shape == (4, 1, 64, 64)
    assert not np.allclose(echo.latents, phantom.latents)  # another UNet
    assert sampler.generate(2, _conditions(), model="phantom", steps=2, timeout=120).frames.size
    with pytest.raises(GenAugError) as error:
        sampler.generate(2, _conditions(), model="echo", steps=2, timeout=60)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "class_id: 2 is not in [0, 2) of generator echo (A, B)" in str(error.value)
    with pytest.raises(GenAugError) as error:
        sampler.generate(0, _conditions(), model="ct", steps=2, timeout=60)
    assert error.value.code == grpc.StatusCode.NOT_FOUND
    assert "known: echo, phantom" in str(error.value)


def _generation_arrays(class_id: int, seed: int) -> tuple[dict, dict]:
    """A 2-step generation's scalar inputs, and its two condition tensors."""
    conditions = _conditions()
    scalars = {
        "class_id": np.array([class_id], np.int32),
        "seed": np.array([seed], np.int64),
        "steps": np.array([2], np.int32),
        "guidance_scale": np.array([0], np.float32),
    }
    tensors = {
        "image_prior": wire.from_proto(conditions.image_prior, "image_prior"),
        "motion_field": wire.from_proto(conditions.motion_field, "motion_field"),
    }
    return scalars, tensors


def _infer_inputs(arrays: dict[str, np.ndarray]) -> list:
    inputs = []
    for name, array in arrays.items():
        datatype = "BYTES" if array.dtype == object else np_to_triton_dtype(array.dtype)
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def test_kserve_v2_lists_each_generator_with_its_card_and_generates(sampler_server):
    client = triton.InferenceServerClient(f"127.0.0.1:{sampler_server.port}")
    metadata = client.get_model_metadata("echo", as_json=True)
    assert metadata["platform"] == "genaug_sequence_ldm" and metadata["versions"] == ["1"]
    assert {i["name"] for i in metadata["inputs"]} >= {"class_id", "image_prior", "motion_field"}
    params = client.get_model_config("phantom", as_json=True)["config"]["parameters"]
    assert json.loads(params["class_names"]["string_value"]) == ["DCM", "HCM", "NOR"]
    assert params["is_default"]["string_value"] == "true"
    assert params["dataset_name"]["string_value"] == "Phantom"
    scalars, tensors = _generation_arrays(class_id=1, seed=3)
    arrays = scalars | tensors
    inputs = _infer_inputs(arrays)
    result = client.infer("echo", inputs, model_version="1")
    assert result.as_numpy("frames").shape == (4, 1, 64, 64)
    arrays["class_id"] = np.array([2], np.int32)  # echo knows A, B
    inputs[0].set_data_from_numpy(arrays["class_id"])
    with pytest.raises(InferenceServerException) as error:
        client.infer("echo", inputs)
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "of generator echo (A, B)" in error.value.message()


def test_kserve_v2_generators_take_conditions_by_digest(sampler_server):
    client = triton.InferenceServerClient(f"127.0.0.1:{sampler_server.port}")
    config = client.get_model_config("echo", as_json=True)["config"]
    optional = {i["name"] for i in config["input"] if i.get("optional")}
    assert optional == {"image_prior", "motion_field", "conditions_digest"}
    scalars, tensors = _generation_arrays(class_id=0, seed=5)
    first = client.infer("echo", _infer_inputs(scalars | tensors))
    (digest,) = first.as_numpy("conditions_digest")
    assert digest.startswith(b"sha256:")
    by_digest = scalars | {"conditions_digest": np.array([digest], dtype=object)}
    again = client.infer("echo", _infer_inputs(by_digest))  # 4 MB fewer on the wire
    np.testing.assert_array_equal(again.as_numpy("frames"), first.as_numpy("frames"))
    assert again.as_numpy("conditions_digest")[0] == digest
    refused = {
        "conditions_digest": (
            scalars | {"conditions_digest": np.array([b"sha256:" + b"0" * 64], dtype=object)},
            "StatusCode.FAILED_PRECONDITION",
        ),
        "inputs[image_prior]": (scalars, "StatusCode.INVALID_ARGUMENT"),
        "inputs[motion_field]": (
            scalars | {"image_prior": tensors["image_prior"]},
            "StatusCode.INVALID_ARGUMENT",
        ),
    }
    for field, (arrays, status) in refused.items():
        with pytest.raises(InferenceServerException) as error:
            client.infer("echo", _infer_inputs(arrays))
        assert error.value.status() == status, error.value.message()
        assert field in error.value.message()


def test_a_new_version_is_loaded_without_a_restart_and_a_broken_one_is_not(
    sampler, sampler_server, repository
):
    before = sampler.generate(0, _conditions(), model="echo", steps=2, seed=5, timeout=120)
    broken = repository / "echo" / "3"
    (broken / "ldm").mkdir(parents=True)
    (broken / "card.json").write_text('{"name": "echo", "class_names": "A"}')  # malformed
    time.sleep(4 * POLL_S)
    assert _versions(sampler)["echo"] == "1"  # still served, the error is logged
    after = sampler.generate(0, _conditions(), model="echo", steps=2, seed=5, timeout=120)
    assert np.array_equal(before.latents, after.latents)
    _seeded(repository / "echo" / "4", ["A", "B", "C"])
    deadline = time.monotonic() + 30
    while _versions(sampler)["echo"] != "4" and time.monotonic() < deadline:
        time.sleep(POLL_S)
    infos = {info.name: info for info in sampler.list_models()}
    assert infos["echo"].version == "4" and list(infos["echo"].class_names) == ["A", "B", "C"]
    kserve = triton.InferenceServerClient(f"127.0.0.1:{sampler_server.port}")
    assert kserve.get_model_metadata("echo", as_json=True)["versions"] == ["4"]
    assert sampler.generate(2, _conditions(), model="echo", steps=2, timeout=120).frames.size


def test_the_codec_decodes_with_the_named_generators_vae(repository):
    config = ServerConfig(service="vae_codec", port=0, metrics_port=None, model_dir=repository)
    with running(build_codec(config)) as server:
        with open_channel(f"127.0.0.1:{server.port}", ChannelSettings(retry_attempts=1)) as ch:
            codec = VaeCodecClient(ch)
            default, echo = codec.info(), codec.info(model="echo", model_version="1")
            assert (default.model, default.model_version, default.weights) == (
                "phantom",
                "1",
                "trained",
            )
            assert (echo.model, echo.weights) == ("echo", "seeded-initialisation")
            rng = np.random.default_rng(2)
            latents = rng.standard_normal((2, default.latent_channels, 8, 8)).astype(np.float32)
            frames = codec.decode(latents)
            assert frames.shape == (2, 1, 64, 64)
            assert np.array_equal(codec.decode(latents, model="phantom"), frames)
            assert not np.allclose(codec.decode(latents, model="echo"), frames)  # its own VAE
            big = np.zeros((40, default.latent_channels, 32, 32), np.float32)  # a stream
            streamed = codec.decode(big, model="echo", model_version="1")
            assert streamed.shape == (40, 1, 256, 256)
            assert not np.allclose(codec.decode(big), streamed)
            for model, version in (("nope", ""), ("echo", "9")):
                with pytest.raises(GenAugError) as error:
                    codec.decode(big, model=model, model_version=version)  # stream metadata
                assert error.value.code == grpc.StatusCode.NOT_FOUND


def test_the_filter_scores_with_the_named_generators_classifier(repository):
    config = ServerConfig(service="filter", port=0, metrics_port=None, model_dir=repository)
    with running(build_filter(config, num_classes=2)) as server:
        with open_channel(f"127.0.0.1:{server.port}", ChannelSettings(retry_attempts=1)) as ch:
            client = FilterClient(ch)
            rng = np.random.default_rng(1)
            clips = [
                PoolClip(f"c{i}", f"case{i}", 2, rng.uniform(-1, 1, (4, 1, 64, 64)))
                for i in range(4)
            ]
            result = client.filter_pool(clips, model="phantom")  # 3 classes: label 2 is known
            assert len(result.verdicts) == 4
            with pytest.raises(GenAugError) as error:
                client.filter_pool(clips, model="echo", model_version="1")  # seeded, 2 classes
            assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "clips[0].label" in str(error.value)
            with pytest.raises(GenAugError) as error:
                client.filter_pool(clips, model="nope")
            assert error.value.code == grpc.StatusCode.NOT_FOUND
