"""Every command that writes keeps its outputs inside its output root.

For prepare, conditions, augment, export-onnx and train --export: names that come from data
(class names, labels, metadata file names) and links planted inside the output root
(`<root>/<DS>_volume -> elsewhere`) never make a write land outside the root. Each test
snapshots everything next to the root (a folder with a canary file the links point at) and
requires it unchanged afterwards; a planted link is either replaced as a link (prepare's
atomic commit) or refused with an error naming the root's flag, before anything is written.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from clients.augment.job import run_job
from clients.cli import main as genaug
from genaug.errors import InvalidArgument
from services.data import layout
from services.data.phantoms import generate_phantom_dataset
from tests.unit import augment_support as fakes

HOSTILE_CLASS = "../../outside/evil"


@pytest.fixture
def sandbox(tmp_path):
    """(root, outside): the output root and a sibling folder holding a canary file."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "canary.npy").write_bytes(b"not yours")
    return root, outside


def _tree(top: Path, skip: Path) -> dict[str, tuple]:
    """Every entry under `top` but `skip`: links, sizes and content hashes."""
    entries = {}
    for directory, dirs, files in os.walk(top):
        here = Path(directory)
        dirs[:] = [d for d in dirs if here / d != skip]
        for name in dirs + files:
            path = here / name
            if path.is_symlink():
                entries[str(path.relative_to(top))] = ("link", os.readlink(path))
            elif path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                entries[str(path.relative_to(top))] = ("file", digest)
            else:
                entries[str(path.relative_to(top))] = ("dir",)
    return entries


class Outside:
    """What lies next to the root must be the same after the command."""

    def __init__(self, root: Path):
        self.top, self.root = root.parent, root
        self.before = _tree(self.top, root)

    def unchanged(self) -> None:
        assert _tree(self.top, self.root) == self.before


def _refused(argv: list[str], flag: str) -> bool:
    """The command refused (an error naming `flag`, or a non-zero exit)."""
    try:
        code = genaug(argv)
    except InvalidArgument as error:
        assert error.field == flag, error
        return True
    return code != 0


def _inside(root: Path) -> None:
    """Nothing under the root resolves outside it."""
    top = root.resolve()
    for path in root.rglob("*"):
        assert path.resolve().is_relative_to(top), path


def test_prepare_writes_only_inside_its_root(sandbox, tmp_path):
    root, outside = sandbox
    source = tmp_path / "src" / "Echo"
    source.mkdir(parents=True)
    shutil.copy(get_testdata_file("examples_ybr_color.dcm"), source / "a.dcm")
    labels = tmp_path / "labels.csv"
    labels.write_text(f"source,class,text\nEcho/a.dcm,{HOSTILE_CLASS},../../outside/x\n")
    (root / "Evil_volume").symlink_to(outside, target_is_directory=True)
    guard = Outside(root)
    argv = ["prepare", "--source", str(tmp_path / "src"), "--dataset-root", str(root)]
    argv += ["--labels", str(labels), "--size", "32", "--no-progress", "--overwrite"]
    assert genaug([*argv, "--name", "Evil"]) == 0
    guard.unchanged()  # the planted link was replaced (as a link), not written through
    assert not (root / "Evil_volume").is_symlink()
    (item,) = {i.cls for i in layout.load_dataset(root, "Evil", "train")}
    assert item == HOSTILE_CLASS  # a class name is data, never a path
    _inside(root)
    assert _refused([*argv, "--name", "../outside"], "--name")
    guard.unchanged()


def _tiny_dataset(root: Path, cls: str = "A") -> None:
    folder = layout.dataset_dir(root, "Tiny")
    rng = np.random.default_rng(0)
    records = []
    for i in range(2):
        name = layout.clip_file_name(f"tr-{i}", 0)
        layout.write_clip(folder / name, rng.integers(0, 255, (8, 32, 32), np.uint8))
        records.append({"file_name": name, "cls": cls})
    layout.write_metadata(layout.metadata_path(root, "Tiny", "train"), records)
    layout.write_metadata(layout.metadata_path(root, "Tiny", "test"), [])


def test_conditions_write_only_inside_the_dataset_root(sandbox):
    root, outside = sandbox
    _tiny_dataset(root)
    argv = ["conditions", "--dataset-root", str(root), "--name", "Tiny", "--what", "motion"]
    argv += ["--method", "optical_flow"]  # noise clips: the codec finds no motion vectors
    link = root / "Tiny_motion_field"
    link.symlink_to(outside, target_is_directory=True)
    guard = Outside(root)
    assert _refused(argv, "--dataset-root")
    guard.unchanged()
    link.unlink()
    meta = layout.metadata_path(root, "Tiny", "train")
    good = meta.read_text()
    meta.write_text('{"file_name": "../../outside/canary.npy", "cls": "A"}\n')
    assert _refused(argv, meta.name + ":1.file_name")
    guard.unchanged()
    meta.write_text(good)
    assert genaug(argv) == 0
    guard.unchanged()
    assert len(list((root / "Tiny_motion_field").glob("*.npy"))) == 2
    _inside(root)


@pytest.mark.parametrize("planted", ["Tiny_volume", ".augment", ".augment/pool", "report"])
def test_augment_refuses_a_link_out_of_its_output(sandbox, tmp_path, planted):
    root, outside = sandbox
    data = fakes.tiny_dataset(tmp_path / "data")
    link = root / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside, target_is_directory=True)
    guard = Outside(root)
    with pytest.raises(InvalidArgument) as info:
        run_job(
            fakes.options(data, root, report=True),
            fakes.FakePool(fakes.FakeSampler()),
            fakes.FakeFilter(),
        )
    assert info.value.field == "--out" and planted in str(info.value)
    guard.unchanged()


def test_augment_with_hostile_class_names_writes_only_inside_its_output(sandbox, tmp_path):
    root, _ = sandbox
    data = tmp_path / "data"
    _tiny_dataset(data, cls=HOSTILE_CLASS)
    guard = Outside(root)
    options = fakes.options(data, root, name="Tiny", per_class=2, report=True)
    result = run_job(options, fakes.FakePool(fakes.FakeSampler()), fakes.FakeFilter())
    guard.unchanged()
    assert result.written and all(
        "/" not in record["file_name"] for record in result.written.values()
    )
    _inside(root)


def test_export_onnx_writes_only_inside_its_out(sandbox, tmp_path):
    root, outside = sandbox
    argv = ["export-onnx", "--out", str(root), "--models", "vae_decode"]
    (tmp_path / "no-models").mkdir()
    argv += ["--model-dir", str(tmp_path / "no-models")]  # the seeded small VAE
    (root / "vae_decode.onnx").symlink_to(outside / "canary.npy")
    guard = Outside(root)
    assert _refused(argv, "--out")
    (root / "vae_decode").symlink_to(outside, target_is_directory=True)
    assert _refused([*argv, "--triton-layout"], "--out")
    guard.unchanged()
    (root / "vae_decode.onnx").unlink()
    (root / "vae_decode").unlink()
    assert genaug([*argv, "--triton-layout"]) == 0
    guard.unchanged()
    assert (root / "vae_decode" / "1" / "model.onnx").is_file()
    _inside(root)


def test_train_export_writes_only_inside_out_and_export(sandbox, tmp_path):
    root, _ = sandbox
    data = tmp_path / "data"
    generate_phantom_dataset(
        data, size=32, patients_per_class={"NOR": 2, "HCM": 2}, frames_per_clip=4
    )
    export = root / "repository" / "classifier"
    guard = Outside(root)
    argv = ["train", "classifier", "--dataset-root", str(data), "--out", str(root / "run")]
    argv += ["--export", str(export), "--steps", "1", "--batch-size", "2", "--widths", "8"]
    assert genaug([*argv, "--no-progress", "--threads", "1", "--eval-every", "0"]) == 0
    guard.unchanged()
    assert (export / "model.safetensors").is_file()
    assert sorted(p.name for p in export.parent.iterdir()) == ["classifier"]  # no .partial left
    _inside(root)
