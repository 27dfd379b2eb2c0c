"""A hospital's own data, end to end on real files: `genaug prepare` of real DICOM and NIfTI
files (pydicom's and nibabel's test data: a colour ultrasound cine, an MR series and a 4D NIfTI)
into classes of the user's naming, `genaug train all` at a tiny scale exporting generator `own`
into a model repository beside the bundled `phantom`, both served by one set of services, and
`genaug augment` with each (the own dataset with `own`, the bundled one with `phantom`): the
classes, the refusal of a dataset the generator does not know, and the report."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import nibabel.testing
import pydicom
import pytest
from pydicom.data import get_testdata_file

from clients import cli
from clients.local_cluster import LocalCluster, available_services
from clients.rpc.channel import ChannelSettings, open_channel
from clients.rpc.sampler import SamplerClient
from services.data import layout
from services.data.phantoms import PHANTOM_NAME, ensure_bundled_dataset
from services.models.repository import dataset_fingerprint
from tests.e2e.cluster import NEEDED, ROOT, augment

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not set(available_services()) >= NEEDED,
        reason=f"needs all five services, missing {sorted(NEEDED - set(available_services()))}",
    ),
]
NAME = "Own"
DICOM = {"Echo": "examples_ybr_color.dcm", "Mri": "emri_small.dcm"}
PATIENTS = 2  # per class: prepare keeps whole patients in the test split
TIMINGS: dict[str, float] = {}


def _sources(root: Path) -> Path:
    """Per class, real DICOM files as three patients (their own PatientID) and, for Mri, a
    2-frame 4D NIfTI too."""
    for cls, file_name in DICOM.items():
        (root / cls).mkdir(parents=True)
        for i in range(PATIENTS):
            ds = pydicom.dcmread(get_testdata_file(file_name))
            ds.PatientID = f"{cls}-{i}"
            ds.save_as(root / cls / f"{i}.dcm")
    shutil.copy(os.path.join(nibabel.testing.data_path, "example4d.nii.gz"), root / "Mri")
    return root


def _timed(label: str, argv: list[str]) -> None:
    began = time.perf_counter()
    assert cli.main(argv) == 0, label
    TIMINGS[label] = round(time.perf_counter() - began, 1)


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """(dataset root, model repository): prepared real files, and `own` trained from them
    beside the bundled generator."""
    work = tmp_path_factory.mktemp("own")
    data, repository = work / "data", work / "repository"
    _timed(
        "prepare",
        ["prepare", "--source", str(_sources(work / "src")), "--out", str(data),
         "--name", NAME, "--size", "32", "--no-progress"],
    )  # fmt: skip
    _timed(
        "train all",
        ["train", "all", "--dataset-root", str(data), "--name", NAME, "--out", str(work / "runs"),
         "--export", str(repository / "own"), "--recipe-scale", "0.001", "--budget-minutes", "6",
         "--threads", "1", "--no-progress"],
    )  # fmt: skip
    os.symlink(ROOT / "deploy" / "model-repository" / "phantom", repository / "phantom")
    (repository / "repository.json").write_text(json.dumps({"default_model": "phantom"}))
    return data, repository


@pytest.fixture(scope="module")
def cluster(own, tmp_path_factory):
    _, repository = own
    with LocalCluster(sorted(NEEDED), repository, tmp_path_factory.mktemp("logs")) as services:
        yield services.targets()


def _args(data: Path, out: Path, t: dict, *extra: str) -> list[str]:
    return [
        "--dataset-root", str(data), "--name", NAME, "--out", str(out),
        "--per-class", "1", "--steps", "2", "--guidance", "3", "--concurrency", "2",
        "--no-progress", "--sampler", t["sampler"], "--filter", t["filter"],
        "--encoder", t["condition_encoder"], "--motion", t["motion_extractor"], *extra,
    ]  # fmt: skip


def _run(args: list[str], timeout: float = 600) -> tuple[int, str]:
    began = time.perf_counter()
    run = augment(args)
    output = run.communicate(timeout=timeout)[0]
    TIMINGS.setdefault("augment", round(time.perf_counter() - began, 1))
    return run.returncode, output


def test_one_repository_serves_the_trained_generator_beside_the_bundled_one(own, cluster, capsys):
    data, _ = own
    assert cli.main(["generators", "--sampler", cluster["sampler"]]) == 0
    listing = capsys.readouterr().out
    print(listing)
    assert "own (version 1)\n  classes (id order): Echo, Mri\n" in listing
    assert "phantom (version 1), the default\n  classes (id order): DCM, HCM, NOR" in listing
    assert "frames x H x W 8 x 32 x 32" in listing and "class_fidelity 1.0" in listing
    with open_channel(cluster["sampler"], ChannelSettings(retry_attempts=1)) as channel:
        infos = {info.name: info for info in SamplerClient(channel).list_models()}
    assert sorted(infos) == ["own", "phantom"] and infos["phantom"].is_default
    mine = infos["own"]
    assert (mine.version, list(mine.class_names)) == ("1", ["Echo", "Mri"])
    assert (mine.num_frames, mine.height, mine.width) == (8, 32, 32)
    assert mine.modality == ""  # ultrasound and MR: mixed
    assert (mine.dataset_name, mine.dataset_fingerprint) == (NAME, dataset_fingerprint(data, NAME))
    recipe = json.loads(mine.card_json)["recipe"]
    assert recipe["recipe_scale"] == 0.001  # the budget would have allowed more
    assert recipe["budget"]["budget_minutes"] == 6 and recipe["budget"]["conditions_minutes"] > 0
    assert sum(recipe["budget"]["stage_minutes"].values()) < 6
    assert {stage: ran["steps"] for stage, ran in recipe["ran"].items()} == {
        "vae": 2, "classifier": 1, "ldm": 1, "seq": 2
    }  # fmt: skip


def test_augment_with_the_trained_generator_keeps_the_datasets_classes(own, cluster, tmp_path):
    data, _ = own
    out = tmp_path / "aug"
    code, output = _run(_args(data, out, cluster, "--model", "own"))
    assert code == 0, output
    assert "with generator own" in output and "out of domain" not in output.lower()
    job = json.loads((out / ".augment" / "job.json").read_text())
    assert job["class_names"] == ["Echo", "Mri"]
    records = layout.read_metadata(layout.metadata_path(out, NAME, "train"))
    assert {r["cls"] for r in records} <= {"Echo", "Mri"}
    report = (out / "report" / "index.html").read_text()
    assert "own" in report and "Echo" in report and "trained on" in report
    print("own-data timings (s):", TIMINGS)


def test_the_bundled_generator_refuses_the_dataset_until_mapped_and_allowed(own, cluster, tmp_path):
    data, _ = own
    out = tmp_path / "aug"
    code, output = _run(_args(data, out, cluster, "--model", "phantom"), timeout=120)
    assert code == 2, output
    assert (
        "dataset class 'Echo' is not a class of generator 'phantom' (its classes: DCM, HCM, NOR; "
        "the dataset's: Echo, Mri)"
    ) in output
    assert not out.exists()  # refused before any work
    class_map = tmp_path / "classes.json"
    class_map.write_text(json.dumps({"Echo": "DCM", "Mri": "HCM"}))
    mapped = ["--model", "phantom", "--class-map", str(class_map)]
    code, output = _run(_args(data, out, cluster, *mapped), timeout=120)
    assert code == 2 and "frames of 32x32 (generator: 64x64)" in output, output
    assert "--allow-out-of-domain" in output and not out.exists()


def test_the_bundled_generator_augments_its_own_dataset_through_the_same_services(
    cluster, tmp_path
):
    data = ensure_bundled_dataset(tmp_path / "phantom")
    out = tmp_path / "aug"
    args = _args(data, out, cluster, "--model", "phantom")
    args[args.index(NAME)] = PHANTOM_NAME  # --name
    code, output = _run(args)
    assert code == 0, output
    assert "with generator phantom" in output
    records = layout.read_metadata(layout.metadata_path(out, PHANTOM_NAME, "train"))
    assert {r["cls"] for r in records} <= {"DCM", "HCM", "NOR"}
    assert "phantom" in (out / "report" / "index.html").read_text()
