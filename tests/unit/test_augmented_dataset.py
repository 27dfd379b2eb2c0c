"""The PyTorch Dataset over a real training set and what `genaug augment` added to it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clients.dataset import AugmentedClips
from genaug.errors import InvalidArgument
from services.data import layout


def _write(root, name, records, value):
    folder = layout.dataset_dir(root, name)
    for i, record in enumerate(records):
        frames = np.full((4, 8, 8), value + i, np.uint8)
        layout.write_clip(folder / record["file_name"], frames, durable=False)
    layout.write_metadata(layout.metadata_path(root, name, "train"), records, durable=False)


@pytest.fixture
def roots(tmp_path):
    real, synthetic = tmp_path / "real", tmp_path / "aug"
    _write(
        real, "DS", [{"file_name": "p1.avi", "cls": "B"}, {"file_name": "p2.avi", "cls": "A"}], 0
    )
    _write(
        synthetic,
        "DS",
        [
            {
                "file_name": "s1.avi",
                "cls": "B",
                "synthetic": True,
                "source_clip": "p1.avi",
                "seed": 7,
            }
        ],
        255,
    )
    return real, synthetic


def test_real_and_synthetic_clips_with_labels_and_provenance(roots):
    clips = AugmentedClips(*roots, "DS")
    assert clips.classes == ["A", "B"] and len(clips) == 3
    assert clips.counts() == {"A": {"real": 1, "synthetic": 0}, "B": {"real": 1, "synthetic": 1}}
    real, synthetic = clips[0], clips[2]
    assert real["label"] == 1 and real["synthetic"] is False and "source_clip" not in real
    assert synthetic == {
        **synthetic,
        "label": 1,
        "synthetic": True,
        "source_clip": "p1.avi",
        "seed": 7,
    }
    assert synthetic["image"].shape == (1, 4, 8, 8) and synthetic["image"].dtype == torch.float32
    assert real["image"].min() == -1.0  # uint8 0 -> -1, the models' training input mapping
    assert synthetic["image"].max() == 1.0
    batch = next(iter(torch.utils.data.DataLoader(clips, batch_size=3)))
    assert batch["image"].shape == (3, 1, 4, 8, 8) and batch["label"].tolist() == [1, 0, 1]


def test_a_dict_transform_and_the_label_order_a_generator_gives(roots):
    def flip(sample):
        return {**sample, "image": sample["image"].flip(-1)}

    clips = AugmentedClips(*roots, "DS", classes=["B", "A", "C"], transform=flip)
    assert [clips[i]["label"] for i in range(3)] == [0, 1, 0]
    assert clips[0]["image"].shape == (1, 4, 8, 8)


def test_a_class_outside_the_given_ones_is_refused_by_name(roots):
    with pytest.raises(InvalidArgument, match=r"\['A'\] are not in \['B'\]"):
        AugmentedClips(*roots, "DS", classes=["B"])
    with pytest.raises(InvalidArgument, match="real_root"):
        AugmentedClips(None, None, "DS")
    assert len(AugmentedClips(None, roots[1], "DS")) == 1
