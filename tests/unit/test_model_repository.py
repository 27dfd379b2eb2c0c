"""Generator cards (`services.models.repository`): read, write, derive, refuse malformed ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from genaug.errors import InvalidArgument
from services.data.phantoms import PHANTOM_NAME, ensure_bundled_dataset
from services.models.repository import (
    CARD_FILE,
    GeneratorCard,
    dataset_fingerprint,
    derive_card,
    read_card,
    training_card,
    write_card,
)

REPO = Path(__file__).resolve().parents[2] / "deploy" / "model-repository" / "phantom" / "1"


def test_a_written_card_reads_back_the_same(tmp_path):
    card = GeneratorCard(
        "echo", ("B", "A"), modality="us", num_frames=16, height=128, width=128,
        latent_channels=4, dataset_name="Echo", dataset_fingerprint="ab" * 32,
        recipe={"recipe_scale": 0.5}, figures={"test_accuracy": 0.9},
    )  # fmt: skip
    path = write_card(tmp_path, card)
    assert path == tmp_path / CARD_FILE and json.loads(path.read_text())["format"] == 1
    assert read_card(tmp_path) == card
    assert list(read_card(tmp_path).class_names) == ["B", "A"]  # id order, not sorted


def test_without_a_card_one_is_derived_from_the_configs(tmp_path):
    for name in ("classes.json", "ldm/config.json", "vae/config.json", "vae/provenance.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, tmp_path / name)
    card = read_card(tmp_path)
    assert card == derive_card(tmp_path)
    assert card.name == "phantom" and card.class_names == ("DCM", "HCM", "NOR")
    assert (card.height, card.width, card.latent_channels) == (64, 64, 8)
    assert card.dataset_name == "Phantom"
    assert card.num_frames == 0 and card.dataset_fingerprint == ""  # unknown, not guessed


@pytest.mark.parametrize(
    "change, field",
    [
        ({"class_names": "DCM"}, "class_names"),
        ({"class_names": ["A", "A"]}, "class_names"),
        ({"num_frames": -1}, "num_frames"),
        ({"height": "64"}, "height"),
        ({"name": "../x"}, "name"),
        ({"format": 2}, "format"),
        ({"clases": []}, "unknown keys"),
    ],
)
def test_a_malformed_card_is_refused_naming_the_field(tmp_path, change, field):
    data = {**GeneratorCard("g", ("A", "B")).to_dict(), **change}
    (tmp_path / CARD_FILE).write_text(json.dumps(data))
    with pytest.raises(InvalidArgument, match=field):
        read_card(tmp_path)


def test_a_card_that_disagrees_with_classes_json_is_refused(tmp_path):
    write_card(tmp_path, GeneratorCard("g", ("A", "B")))
    (tmp_path / "classes.json").write_text('["B", "A"]')
    with pytest.raises(InvalidArgument, match="classes.json"):
        read_card(tmp_path)


def test_the_bundled_card_matches_the_bundled_models_and_dataset(tmp_path):
    card = read_card(REPO)
    assert card.name == "phantom"
    assert list(card.class_names) == json.loads((REPO / "classes.json").read_text())
    assert (card.num_frames, card.height, card.width, card.latent_channels) == (8, 64, 64, 8)
    assert card.modality == "us" and card.dataset_name == PHANTOM_NAME
    root = ensure_bundled_dataset(tmp_path)  # deterministic: the fingerprint is stable
    assert card.dataset_fingerprint == dataset_fingerprint(root, PHANTOM_NAME)
    fresh = training_card(REPO, root, PHANTOM_NAME, name="phantom")
    for field in ("class_names", "num_frames", "height", "width", "latent_channels"):
        assert getattr(fresh, field) == getattr(card, field), field
