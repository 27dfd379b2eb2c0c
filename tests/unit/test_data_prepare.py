"""`genaug prepare` end to end on real files: echo cine, 4D NIfTI, privacy, bad inputs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil

import nibabel.testing
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from clients.prepare import add_arguments, run
from genaug.errors import InvalidArgument
from services.data import layout, video
from services.data.prepare import PrepareConfig, prepare_dataset
from tests.unit.test_data_readers import _dicom

ECHO = get_testdata_file("examples_ybr_color.dcm")
NIFTI_4D = os.path.join(nibabel.testing.data_path, "example4d.nii.gz")
SECRETS = ("DOE", "JANE", "MRN98765X", "98765", "Example Hospital", "20160503", "PLA")


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def source(tmp_path):
    """Folder-per-class source; the echo file carries identifying names inside and outside."""
    root = tmp_path / "src"
    (root / "Echo").mkdir(parents=True)
    (root / "Brain").mkdir()
    ds = pydicom.dcmread(ECHO)
    ds.PatientName, ds.PatientID = "DOE^JANE", "MRN98765X"
    ds.InstitutionName = "Example Hospital"
    ds.save_as(root / "Echo" / "DOE_JANE_MRN98765X.dcm")
    shutil.copy(NIFTI_4D, root / "Brain" / "JANE_DOE_fmri.nii.gz")
    return root


def test_prepare_cli_writes_the_seed_layout(source, tmp_path, caplog):
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG)
    argv = ["--source", str(source), "--out", str(out), "--name", "Mixed", "--size", "64"]
    assert run(_args(*argv, "--no-progress", "--test-fraction", "0.2")) == 0

    train = layout.load_dataset(out, "Mixed", "train")
    test = layout.load_dataset(out, "Mixed", "test")
    assert len(test) == 0  # one patient per class: each class keeps it for training
    # Echo: 30 frames = 2 windows of 15, every second frame; NIfTI middle slice: 2 time
    # points, shorter than a window, so one clip zero-padded to 8.
    assert train.class_counts() == {"Brain": 1, "Echo": 2}
    echo = sorted((i for i in train if i.cls == "Echo"), key=lambda i: i.extra["frames"][0])
    assert [i.extra["frames"] for i in echo] == [list(range(0, 15, 2)), list(range(15, 30, 2))]
    assert echo[1].file_name.endswith("_s15.avi") and echo[0].extra["modality"] == "us"
    (brain,) = (i for i in train if i.cls == "Brain")
    assert brain.extra["frames"] == [0, 1] and brain.extra["n_pad"] == 6
    for item in train:
        clip = layout.read_clip(item.path)
        assert clip.shape == (8, 64, 64)
    padded = layout.read_clip(brain.path)
    assert padded[:2].any() and not padded[2:].any()
    slices = layout.load_dataset(out, "Mixed", "train", kind="data")
    assert len(slices) == 16 + 2  # unique sampled frames
    assert layout.read_slice(slices[0].path).shape == (64, 64)
    for split in layout.SPLITS:
        for kind in layout.KINDS:
            text = layout.metadata_path(out, "Mixed", split, kind).read_text()
            assert all(json.loads(line)["cls"] for line in text.splitlines())
    manifest = json.loads((out / "Mixed_volume" / "manifest.json").read_text())
    assert manifest["sampling"]["frames_per_clip"] == 15 and manifest["size"] == 64

    # Privacy: no identifying string in any output name, text file, binary file or log line.
    for path in out.rglob("*"):
        assert not any(s in path.name for s in SECRETS), path.name
        if path.is_file():
            data = path.read_bytes()
            assert not any(s.encode() in data for s in SECRETS if len(s) >= 5), path.name
            if path.suffix in (".jsonl", ".json"):
                assert not any(s in data.decode() for s in SECRETS), path.name
    assert not any(s in caplog.text for s in SECRETS)


def test_same_patient_id_shares_a_pseudonym_and_split_side(source, tmp_path):
    shutil.copy(source / "Echo" / "DOE_JANE_MRN98765X.dcm", source / "Echo" / "second.dcm")
    config = PrepareConfig(size=32, progress=False, test_fraction=0.5)
    prepare_dataset(source, tmp_path / "out", "Twice", config=config)
    items = [
        item
        for split in layout.SPLITS
        for item in layout.load_dataset(tmp_path / "out", "Twice", split)
        if item.cls == "Echo"
    ]
    assert len(items) == 4 and len({i.extra["patient"] for i in items}) == 1
    assert len({i.extra["volume"] for i in items}) == 2


def test_labels_file_and_text(source, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "source,class,text\n"
        "Echo/DOE_JANE_MRN98765X.dcm,Normal,Apical four-chamber view.\n"
        "Brain/JANE_DOE_fmri.nii.gz,Other,\n"
    )
    config = PrepareConfig(size=32, progress=False, nifti_4d="per-slice")
    summary = prepare_dataset(source, tmp_path / "out", "Lab", labels=labels, config=config)
    assert summary.clips["train"] == {"Normal": 2, "Other": 24}
    texts = {i.cls: i.text for i in layout.load_dataset(tmp_path / "out", "Lab", "train")}
    assert texts == {"Normal": "Apical four-chamber view.", "Other": ""}
    labels.write_text("source,class\n../elsewhere.dcm,X\n")
    with pytest.raises(InvalidArgument) as info:
        prepare_dataset(source, tmp_path / "out2", "Lab", labels=labels, config=config)
    assert info.value.field == "labels"


def _leftovers(out):
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def test_bad_source_fails_cleanly_and_leaves_nothing(source, tmp_path):
    (source / "Echo" / "broken.avi").write_bytes(np.random.default_rng(0).bytes(3000))
    out = tmp_path / "out"
    with pytest.raises(InvalidArgument) as info:
        prepare_dataset(source, out, "Bad", config=PrepareConfig(size=32, progress=False))
    assert info.value.field == "source"
    assert _leftovers(out) == []
    argv = ["--source", str(source), "--out", str(out), "--name", "Bad", "--no-progress"]
    assert run(_args(*argv)) == 2
    assert _leftovers(out) == []
    # With --skip-bad the rest is ingested and the skip is counted.
    summary = prepare_dataset(
        source, out, "Bad", config=PrepareConfig(size=32, progress=False, skip_bad=True)
    )
    assert summary.skipped == 1 and summary.clips["train"] == {"Brain": 1, "Echo": 2}
    assert _leftovers(out) == ["Bad_data", "Bad_volume"]
    # An existing dataset is kept unless --overwrite.
    with pytest.raises(InvalidArgument) as info:
        prepare_dataset(source, out, "Bad", config=PrepareConfig(size=32, progress=False))
    assert info.value.field == "name"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (["--frames-per-clip", "0"], "--frames-per-clip"),
        (["--ct-window", "400", "-1000"], "--ct-window"),
        (["--size", "30", "--test-fraction", "1.5"], "--test-fraction"),
        (["--size", "31"], "--size"),
    ],
)
def test_bad_flags_are_named(source, tmp_path, extra, field, caplog):
    argv = ["--source", str(source), "--out", str(tmp_path / "o"), "--name", "F", *extra]
    assert run(_args(*argv, "--no-progress")) == 2
    assert f"{field}:" in caplog.text
    assert _leftovers(tmp_path / "o") == []


def _bad_dicom(path, **attrs):
    _dicom(path, **{"Rows": 16, "Columns": 16, **attrs})


def _one_frame_clip(path):
    video.encode_i420_avi(path, np.zeros((1, 16, 16), np.uint8), 2.5)


@pytest.mark.parametrize(
    ("name", "make", "field"),
    [
        ("corrupt.avi", lambda p: p.write_bytes(b"RIFF" + bytes(2000)), "source"),
        ("nopixels.dcm", lambda p: _bad_dicom(p, NumberOfFrames=4), "dicom.PixelData"),
        ("single.avi", _one_frame_clip, "source"),
        ("huge.dcm", lambda p: _bad_dicom(p, Rows=9000, PixelData=b"\0" * 64), "dicom.Rows"),
    ],
)
def test_each_bad_input_is_named_and_leaves_no_output(source, tmp_path, name, make, field):
    make(source / "Echo" / name)
    out = tmp_path / "out"
    with pytest.raises(InvalidArgument) as info:
        prepare_dataset(source, out, "Bad", config=PrepareConfig(size=32, progress=False))
    assert info.value.field == field
    assert _leftovers(out) == []
