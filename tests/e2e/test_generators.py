"""The generator's card over real gRPC: the sampler lists its generator (ListModels), refuses
an unknown one, and `genaug augment` refuses a dataset whose classes the generator does not
know, before any work, until `--class-map` maps them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import pytest

from clients.local_cluster import available_services
from clients.rpc.channel import ChannelSettings, open_channel
from clients.rpc.errors import GenAugError
from clients.rpc.sampler import SamplerClient, conditions_message
from services.data import layout
from services.data.phantoms import PHANTOM_NAME, ensure_bundled_dataset
from services.models.repository import read_card
from tests.e2e.cluster import NEEDED, ROOT, augment

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not set(available_services()) >= NEEDED,
        reason=f"needs all five services, missing {sorted(NEEDED - set(available_services()))}",
    ),
]
BUNDLED = read_card(ROOT / "deploy" / "model-repository" / "phantom" / "1")


@pytest.fixture(scope="module")
def cluster(two_sampler_cluster):
    return two_sampler_cluster


@pytest.fixture(scope="module")
def sampler(cluster):
    main, _ = cluster
    with open_channel(main.targets()["sampler"], ChannelSettings(retry_attempts=1)) as channel:
        yield SamplerClient(channel)


@pytest.fixture(scope="module")
def renamed(tmp_path_factory):
    """The Phantom dataset with its class NOR named `B` (the user's own naming)."""
    root = ensure_bundled_dataset(tmp_path_factory.mktemp("phantom"))
    for split in ("train", "test"):
        path = layout.metadata_path(root, PHANTOM_NAME, split)
        records = layout.read_metadata(path)
        for record in records:
            record["cls"] = "B" if record["cls"] == "NOR" else record["cls"]
        layout.write_metadata(path, records)
    return root


def test_list_models_names_the_bundled_generator_and_its_classes(sampler):
    (info,) = sampler.list_models()
    assert info.name == "phantom" and info.is_default
    assert list(info.class_names) == ["DCM", "HCM", "NOR"]
    assert (info.num_frames, info.height, info.width, info.latent_channels) == (8, 64, 64, 8)
    assert info.dataset_name == PHANTOM_NAME
    assert info.dataset_fingerprint == BUNDLED.dataset_fingerprint
    assert json.loads(info.card_json)["figures"]["class_fidelity"] == 1.0


def test_generate_with_an_unknown_model_is_not_found(sampler):
    with pytest.raises(GenAugError) as info:
        sampler.generate(0, conditions_message(text="x"), steps=1, model="nope", timeout=30)
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert "model: 'nope'" in info.value.details and "phantom" in info.value.details


def _args(data: Path, out: Path, t: dict, *extra: str) -> list[str]:
    return [
        "--dataset-root", str(data), "--name", PHANTOM_NAME, "--out", str(out),
        "--per-class", "1", "--steps", "2", "--guidance", "3", "--concurrency", "1",
        "--no-progress", "--no-filter", "--sampler", t["sampler"],
        "--encoder", t["condition_encoder"], "--motion", t["motion_extractor"], *extra,
    ]  # fmt: skip


def test_augment_refuses_unknown_classes_before_any_work_then_maps_them(cluster, renamed, tmp_path):
    main, _ = cluster
    t = main.targets()
    out = tmp_path / "aug"
    run = augment(_args(renamed, out, t))
    output = run.communicate(timeout=120)[0]
    assert run.returncode == 2, output
    assert (
        "dataset class 'B' is not a class of generator 'phantom' (its classes: DCM, HCM, NOR; "
        "the dataset's: B, DCM, HCM); map names with --class-map FILE"
    ) in output
    assert not out.exists()  # refused before any work

    run = augment(_args(renamed, out, t, "--model", "nope"))
    output = run.communicate(timeout=120)[0]
    assert run.returncode == 2 and "serves no such generator (its generators: phantom)" in output
    assert not out.exists()

    class_map = tmp_path / "classes.json"
    class_map.write_text(json.dumps({"B": "NOR"}))
    run = augment(_args(renamed, out, t, "--class-map", str(class_map), "--model", "phantom"))
    output = run.communicate(timeout=300)[0]
    assert run.returncode == 0, output
    assert "with generator phantom" in output
    job = json.loads((out / ".augment" / "job.json").read_text())
    assert job["class_names"] == ["DCM", "HCM", "B"]  # B takes NOR's id, 2
    kept = layout.load_dataset(out, PHANTOM_NAME, "train")
    assert sorted(item.cls for item in kept) == ["B", "DCM", "HCM"]
    shutil.rmtree(out)
