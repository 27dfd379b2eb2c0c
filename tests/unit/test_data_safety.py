"""Nothing a command does can damage its inputs: each command that writes, on a real dataset."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from clients.augment.job import run_job
from clients.cli import main
from clients.conditions import precompute
from genaug.errors import InvalidArgument
from services.data import layout
from services.data.prepare import PrepareConfig, prepare_dataset
from services.data.safety import check_outside, is_within
from tests.unit.augment_support import (
    NAME,
    FakeFilter,
    FakePool,
    FakeSampler,
    options,
    tiny_dataset,
)
from tests.unit.augment_support import data_tree as tree_bytes

ECHO = get_testdata_file("examples_ybr_color.dcm")


def snapshot(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_is_within_and_check_outside(tmp_path):
    assert is_within(tmp_path, tmp_path) and is_within(tmp_path / "a" / "b", tmp_path)
    sibling = tmp_path.parent / f"{tmp_path.name}x"  # a shared prefix is not containment
    assert not is_within(tmp_path.parent, tmp_path) and not is_within(sibling, tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert is_within(tmp_path / "link" / "out", tmp_path / "real")  # through a symlink
    with pytest.raises(InvalidArgument) as info:
        check_outside(tmp_path / "real", "out", tmp_path, "dataset_root")
    assert info.value.field == "out" and "`dataset_root`" in info.value.message


@pytest.mark.parametrize("out", [".", "sub"], ids=["at-the-root", "inside-the-root"])
def test_augment_refuses_an_output_at_or_inside_the_dataset_root(tmp_path, out, capsys):
    root = tiny_dataset(tmp_path / "data")
    before = snapshot(root)
    argv = ["augment", "--dataset-root", str(root), "--name", NAME, "--out", str(root / out)]
    assert main([*argv, "--per-class", "2", "--no-filter", "--no-progress"]) == 2
    assert "--out: is at or inside --dataset-root" in capsys.readouterr().out
    assert snapshot(root) == before  # the real training metadata is untouched
    with pytest.raises(InvalidArgument) as info:  # the job's own API refuses it too
        run_job(options(root, root / out), FakePool(FakeSampler()), FakeFilter())
    assert info.value.field == "out"
    assert snapshot(root) == before


@pytest.mark.parametrize("flag", ["--out", "--export"])
def test_train_refuses_a_run_or_export_folder_inside_the_dataset_root(tmp_path, flag, capsys):
    root = tiny_dataset(tmp_path / "data")
    before = snapshot(root)
    folders = {"--out": tmp_path / "run", "--export": tmp_path / "export"}
    folders[flag] = root / "models"
    argv = ["train", "vae", "--dataset-root", str(root), "--name", NAME, "--steps", "1"]
    argv += ["--out", str(folders["--out"]), "--export", str(folders["--export"])]
    assert main(argv) == 2
    assert f"{flag}: is at or inside --dataset-root" in capsys.readouterr().err
    assert snapshot(root) == before


def test_augment_next_to_the_dataset_keeps_every_real_file(tmp_path):
    root = tiny_dataset(tmp_path / "data")
    before = snapshot(root)
    run_job(options(root, tmp_path / "aug"), FakePool(FakeSampler()), FakeFilter())
    assert snapshot(root) == before
    assert tree_bytes(tmp_path / "aug")  # and the output was written


def test_prepare_refuses_an_output_inside_its_source(tmp_path):
    source = tmp_path / "src" / "Echo"
    source.mkdir(parents=True)
    shutil.copy(ECHO, source / "echo.dcm")
    before = snapshot(tmp_path / "src")
    config = PrepareConfig(size=32, progress=False)
    for out in (tmp_path / "src", tmp_path / "src" / "prepared"):
        with pytest.raises(InvalidArgument) as info:
            prepare_dataset(tmp_path / "src", out, "E", config=config)
        assert info.value.field == "dataset_root"
    assert snapshot(tmp_path / "src") == before and sorted(p.name for p in source.parent.iterdir())
    # A single-file source next to its output is fine: the output cannot replace it.
    prepare_dataset(source / "echo.dcm", source, "E", config=config)
    assert (source / "echo.dcm").read_bytes() == before["Echo/echo.dcm"]


def test_prepare_overwrite_refuses_a_source_inside_the_dataset_it_replaces(tmp_path):
    root = tmp_path / "data"
    prepare_dataset(ECHO, root, "E", config=PrepareConfig(size=32, progress=False))
    before = snapshot(root)
    config = PrepareConfig(size=32, progress=False, overwrite=True)
    with pytest.raises(InvalidArgument) as info:  # re-ingesting its own clips in place
        prepare_dataset(root / "E_volume", root, "E", config=config)
    assert info.value.field == "source" and "`name`" in info.value.message
    assert snapshot(root) == before


class _Backend:
    """Conditions of the right shapes, without the models (the writing is what is tested)."""

    kinds = ("motion", "prior")

    def motion(self, frames):
        t, h, w = frames.shape
        traj = np.zeros((4, t + 8, 3), np.int64)
        return np.zeros((t - 1, 2, h, w), np.float32), traj, np.ones((4, t + 8), bool)

    def prior(self, frame):
        return np.zeros((256, 64, 64), np.float32)


def test_conditions_only_add_their_own_folders_to_the_dataset_root(tmp_path):
    # `genaug conditions` writes inside the dataset root by design (the seed layout's
    # <DS>_motion_field/, <DS>_motion_field_trajectory/, <DS>_data_emb/): a merge that leaves
    # every clip and metadata line as it was.
    root = tiny_dataset(tmp_path / "data")
    before = snapshot(root)
    counts = precompute(root, NAME, ["train", "test"], ["motion", "prior"], _Backend(), 1,
                        progress=False)  # fmt: skip
    assert counts == {"computed": 14, "skipped": 0}
    after = snapshot(root)
    assert {k: after[k] for k in before} == before
    added = {k.split("/")[0] for k in after.keys() - before.keys()}
    assert added == {f"{NAME}_motion_field", f"{NAME}_motion_field_trajectory", f"{NAME}_data_emb"}
    assert len(layout.load_dataset(root, NAME, "train")) == 10
