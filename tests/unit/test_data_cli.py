"""What prepare says about the data, errors that name the item, and a CLI without tracebacks."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time

import nibabel.testing
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from clients import cli
from clients.augment import preflight
from clients.augment.options import AugmentOptions
from clients.augment.sampling_defaults import BUNDLED_MODEL_DIR, sampling_defaults
from genaug.errors import InvalidArgument, NotFound
from services.data import layout
from services.data.builder import DatasetWriter
from services.data.layout import Item
from services.data.prepare import PrepareConfig, prepare_dataset
from services.data.sampling import SamplingConfig
from services.data.split import keep_every_class_in_train, patient_classes, split_patients
from services.models.generators import generator_dir
from tests.unit.augment_support import NAME, tiny_dataset

ECHO = get_testdata_file("examples_ybr_color.dcm")
NIFTI_4D = os.path.join(nibabel.testing.data_path, "example4d.nii.gz")
QUICK = PrepareConfig(size=32, progress=False)


@pytest.fixture
def source(tmp_path):
    """Folder per class: an echo cine (30 frames) and a 2-frame NIfTI cine."""
    root = tmp_path / "src"
    (root / "Echo").mkdir(parents=True)
    (root / "Brain").mkdir()
    shutil.copy(ECHO, root / "Echo" / "echo.dcm")
    shutil.copy(NIFTI_4D, root / "Brain" / "fmri.nii.gz")
    return root


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# ------------------------------------------------------------------------------ sources


def test_relative_source_folder(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = prepare_dataset("src", "out", "Rel", config=QUICK)
    assert summary.clips["train"] == {"Brain": 1, "Echo": 2}


def test_a_stray_text_file_is_skipped_with_a_warning(source, tmp_path, caplog):
    (source / "Echo" / "notes.txt").write_text("call the ward")
    summary = prepare_dataset(source, tmp_path / "out", "Notes", config=QUICK)
    assert summary.clips["train"] == {"Brain": 1, "Echo": 2} and summary.skipped == 1
    assert "skipped Echo/notes.txt: not a video, image, NIfTI or DICOM file" in summary.warnings
    assert "Echo/notes.txt" in caplog.text


def test_labels_errors_name_file_and_line_and_skip_bad_skips_the_row(source, tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "source,class\nEcho/echo.dcm,Normal\nBrain/fmri.nii.gz,Other\nEcho/gone.dcm,Normal\n"
    )
    with pytest.raises(NotFound, match=r"labels: labels.csv line 4: no such file: Echo/gone"):
        prepare_dataset(source, tmp_path / "out", "Lab", labels=labels, config=QUICK)
    argv = ["prepare", "--source", str(source), "--out", str(tmp_path / "out"), "--name", "Lab",
            "--labels", str(labels), "--size", "32", "--no-progress"]  # fmt: skip
    code, text = _cli(capsys, *argv)
    assert code == 2 and "Traceback" not in text
    config = PrepareConfig(size=32, progress=False, skip_bad=True)
    summary = prepare_dataset(source, tmp_path / "out", "Lab", labels=labels, config=config)
    assert summary.skipped == 1 and summary.clips["train"] == {"Normal": 2, "Other": 1}
    assert any("labels.csv line 4: no such file: Echo/gone.dcm" in w for w in summary.warnings)
    labels.write_text('{"source": "Echo/echo.dcm", "cls": "A"}\nnot json\n')
    labels = labels.rename(tmp_path / "labels.jsonl")
    with pytest.raises(InvalidArgument, match="labels.jsonl line 2: not valid JSON"):
        prepare_dataset(source, tmp_path / "o2", "Lab", labels=labels, config=QUICK)


def test_a_bad_item_is_named_by_number_and_path_and_skip_bad_covers_it(source, tmp_path):
    (source / "Echo" / "broken.avi").write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(InvalidArgument) as info:
        prepare_dataset(source, tmp_path / "out", "Bad", config=QUICK)
    assert info.value.field == "source"
    assert "item 2 of 3 (Echo/broken.avi): cannot decode the video" in info.value.message
    config = PrepareConfig(size=32, progress=False, skip_bad=True)
    summary = prepare_dataset(source, tmp_path / "out", "Bad", config=config)
    assert summary.skipped == 1 and any("Echo/broken.avi" in w for w in summary.warnings)


# ------------------------------------------------------------------------------ what happens


def test_padding_is_a_warning_naming_the_item_and_min_frames_skips_it(source, tmp_path, caplog):
    summary = prepare_dataset(source, tmp_path / "out", "Pad", config=QUICK)
    (padded,) = [w for w in summary.warnings if "padded" in w]
    brain = next(i for i in layout.load_dataset(tmp_path / "out", "Pad") if i.cls == "Brain")
    assert padded.startswith(f"item 1 ({brain.extra['volume']}): 2 frames")
    assert "padded with 6 black frames to 8" in padded and padded in caplog.text
    assert "fmri" not in padded  # an ingested item is named by its pseudonym, not its path
    config = PrepareConfig(size=32, progress=False, min_frames=8)
    summary = prepare_dataset(source, tmp_path / "out2", "Min", config=config)
    assert summary.clips["train"] == {"Echo": 2} and summary.skipped == 1
    assert any("fewer than `min_frames` 8" in w for w in summary.warnings)


def test_modality_is_reported_per_item_and_overridable_per_item(source, tmp_path):
    summary = prepare_dataset(source, tmp_path / "out", "Mod", config=QUICK)
    assert (
        "class Brain, mr (NIfTI 0.5-99.5th percentiles 0..729: not Hounsfield" in (summary.items[0])
    )
    assert "class Echo, us (DICOM Modality US)" in summary.items[1]
    text = summary.format()
    assert summary.items[0] in text and "warnings (1):" in text
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        json.dumps({"source": "Brain/fmri.nii.gz", "cls": "B", "modality": "us"})
        + "\n"
        + json.dumps({"source": "Echo/echo.dcm", "cls": "E"})
        + "\n"
    )
    summary = prepare_dataset(source, tmp_path / "out", "Over", labels=labels, config=QUICK)
    assert "class B, us (given)" in summary.items[0]


def test_size_is_limited_and_enlarging_is_reported(source, tmp_path, capsys, caplog):
    argv = ["prepare", "--source", str(source), "--out", str(tmp_path / "o"), "--name", "S"]
    code, _ = _cli(capsys, *argv, "--size", "8192", "--no-progress")
    assert code == 2 and "--size: must be an even integer in [16, 1024]" in caplog.text
    assert not (tmp_path / "o").exists()
    config = PrepareConfig(size=1024, progress=False)
    summary = prepare_dataset(source / "Brain", tmp_path / "o", "S", config=config)
    assert any("128 px source enlarged 8.0x to `size` 1024" in w for w in summary.warnings)


def test_burned_in_text_masked_by_default_kept_or_refused_on_request(tmp_path):
    def name_area(mode: str) -> float:
        out = tmp_path / mode
        config = PrepareConfig(size=320, progress=False, burned_in=mode)
        summary = prepare_dataset(ECHO, out, "Echo", config=config)
        clip = layout.read_clip(layout.load_dataset(out, "Echo")[0].path)
        assert clip.shape == (8, 320, 320)
        return summary, float(clip[:, 40:52, 0:30].max())  # "PLA" (240 rows padded by 40)

    masked, brightest = name_area("mask")
    assert brightest < 30 and "masked 5699 px of burned-in text" in masked.items[0]
    kept, brightest = name_area("keep")
    assert brightest > 150 and any("may carry burned-in text" in w for w in kept.warnings)
    with pytest.raises(InvalidArgument) as info:
        prepare_dataset(ECHO, tmp_path / "r", "Echo", config=PrepareConfig(burned_in="refuse"))
    assert info.value.field == "burned_in" and "item 1 of 1" in info.value.message
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_a_class_only_ever_in_minority_keeps_a_training_patient(tmp_path):
    # Patients are stratified by their majority class: p1 (3 A clips, 1 B clip) is an A
    # patient, so with a seed that sends p1 to test, class B had no training clip at all.
    pairs = [("p1", "A")] * 3 + [("p1", "B")] + [(f"p{i}", "A") for i in range(2, 6)]
    seed = next(s for s in range(100) if split_patients(patient_classes(pairs), 0.4, s)["p1"]
                == "test")  # fmt: skip
    writer = DatasetWriter(tmp_path, "Minor", sampling=SamplingConfig(2, 0, 2, 1))
    frames = np.zeros((2, 16, 16), np.uint8)
    for n, (patient, cls) in enumerate(pairs):
        writer.add_sequence(frames, cls=cls, patient=patient, volume=f"{patient}-v{n}")
    summary = writer.commit(test_fraction=0.4, seed=seed)
    assert set(summary.clips["train"]) == {"A", "B"}
    assert any("class 'B': every patient holding it went to test" in w for w in summary.warnings)
    fixed, moved = keep_every_class_in_train(pairs, {p: "test" for p, _ in pairs})
    assert moved == ["A"] and fixed["p1"] == "train"  # the patient with most A clips


def test_augment_reports_classes_without_training_clips(tmp_path, caplog):
    root = tiny_dataset(tmp_path)
    caplog.set_level(logging.WARNING)
    missing = preflight.report_missing_classes(root, NAME, ["A", "B"], ["A", "B", "D"])
    assert missing == ["C", "D"] and "class 'C' has no training clip" in caplog.text


def test_padded_clips_are_not_references_while_their_class_has_others(tmp_path):
    def item(name, cls, n_pad):
        return Item(tmp_path / name, name, cls, extra={"n_pad": n_pad})

    items = [item("a0", "A", 0), item("a1", "A", 6), item("b0", "B", 6), item("a2", "A", 0)]
    assert [i.file_name for i in preflight.reference_items(items)] == ["a0", "b0", "a2"]


# ------------------------------------------------------------------------------ augment defaults


def test_sampling_defaults_come_from_the_generators_sampling_json(tmp_path, monkeypatch):
    bundled = json.loads((generator_dir(BUNDLED_MODEL_DIR) / "sampling.json").read_text())
    options = AugmentOptions()
    assert (options.steps, options.guidance, options.solver) == (
        bundled["steps"],
        bundled["guidance"],
        bundled["solver"],
    )
    (tmp_path / "sampling.json").write_text('{"steps": 12, "guidance": 2.5}')
    monkeypatch.setenv("GENAUG_MODEL_DIR", str(tmp_path))
    assert sampling_defaults().steps == 12
    assert AugmentOptions(steps=40).guidance == 2.5 and AugmentOptions(steps=40).steps == 40


def test_augment_fails_in_seconds_naming_an_unreachable_target(tmp_path, capsys):
    root = tiny_dataset(tmp_path / "data")
    began = time.monotonic()
    code, text = _cli(
        capsys, "augment", "--dataset-root", str(root), "--out", str(tmp_path / "aug"),
        "--per-class", "1", "--sampler", "127.0.0.1:1", "--filter", "127.0.0.1:2",
    )  # fmt: skip
    assert code == 1 and time.monotonic() - began < 20
    assert "--sampler 127.0.0.1:1 (sampler): unreachable" in text
    assert "--filter 127.0.0.1:2 (filter): unreachable" in text
    assert not (tmp_path / "aug").exists()


# ------------------------------------------------------------------------------ the CLI


def test_user_errors_are_one_line_with_flag_names(tmp_path, capsys):
    code, text = _cli(capsys, "conditions", "--dataset-root", str(tmp_path), "--name", "None")
    assert code == cli.EXIT_BAD_INPUT and "Traceback" not in text
    assert text.strip() == "genaug conditions: dataset: None_volume does not exist under the " \
        "dataset root"  # fmt: skip
    flags = {"ct_window": "--ct-window", "min_frames": "--min-frames"}
    error = InvalidArgument("ct_window", "needs LOW < HIGH; see `min_frames`")
    assert cli.user_message(error, flags) == "--ct-window: needs LOW < HIGH; see --min-frames"


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    import clients.conditions

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(clients.conditions, "run", interrupted)
    code, text = _cli(capsys, "conditions", "--dataset-root", ".", "--name", "X")
    assert code == cli.EXIT_INTERRUPTED == 130
    assert text.strip() == "genaug conditions: interrupted; re-run to continue"


def test_exit_codes_are_documented(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "exit codes: 0 done; 1 stopped by a failing service or disk" in text
    assert "2 bad input (nothing changed); 130 interrupted" in text
    assert all(f"    {code} " in cli.__doc__ for code in ("0", "1", "2", "130"))
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset-root", "--out", dest="dataset_root")
    assert cli.option_flags(parser)["dataset_root"] == "--dataset-root"
