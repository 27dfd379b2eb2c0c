"""`genaug train {vae,classifier,ldm,seq}` on a tiny phantom dataset: a few steps each, loadable
safetensors out, resume from the checkpoint step, YAML settings overridden by flags."""

import argparse
import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from clients.cli import main as genaug
from genaug.errors import InvalidArgument
from services.data import layout
from services.data.conditions import condition_paths, save_motion
from services.data.phantoms import generate_phantom_dataset
from services.models.classifier import VideoClassifier
from services.models.generators import scan
from services.models.ldm import WEIGHTS_NAME, SequenceUNet, identity_trajectories
from services.models.repository import dataset_fingerprint, read_card
from services.models.training import recipe
from services.models.training.settings import ClassifierSettings
from services.models.training.stages import run_stage
from services.models.vae import load_vae
from tests.unit.test_ldm_model import write_legacy_checkpoint

SIZE, FRAMES = 32, 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """3 classes x 2 patients of 32x32, 4-frame clips, with stand-in conditions (random prior,
    zero motion, identity trajectories) so no MedSAM or codec work is needed."""
    root = tmp_path_factory.mktemp("tiny")
    generate_phantom_dataset(
        root, size=SIZE, patients_per_class={"NOR": 2, "HCM": 2, "DCM": 2}, frames_per_clip=FRAMES
    )
    rng = np.random.default_rng(0)
    traj, mask = identity_trajectories(FRAMES, SIZE // 8, SIZE // 8)
    for split in ("train", "test"):
        for item in layout.load_dataset(root, "Phantom", split):
            paths = condition_paths(root, "Phantom", item.file_name)
            field = np.zeros((FRAMES - 1, 2, SIZE, SIZE), np.float32)
            save_motion(paths, field, traj.numpy(), mask.numpy())
            paths.prior.parent.mkdir(parents=True, exist_ok=True)
            np.save(paths.prior, rng.standard_normal((256, 64, 64)).astype(np.float32))
    return root


def _train(stage: str, dataset: Path, out: Path, *extra: str) -> int:
    return genaug(
        ["train", stage, "--dataset-root", str(dataset), "--out", str(out), "--no-progress",
         "--threads", "1", "--log-every", "1", "--warmup-steps", "1", *extra]
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    assert _train("vae", dataset, runs / "vae", "--steps", "2", "--batch-size", "4") == 0
    assert _train(
        "classifier", dataset, runs / "classifier", "--steps", "2", "--batch-size", "4",
        "--widths", "8", "16",
    ) == 0  # fmt: skip
    common = ["--vae-dir", str(runs / "vae/final"), "--batch-size", "2", "--steps", "2"]
    assert _train("ldm", dataset, runs / "ldm", *common) == 0
    assert _train(
        "seq", dataset, runs / "seq", *common, "--init-dir", str(runs / "ldm/final"),
        "--classifier-dir", str(runs / "classifier/final"), "--eval-clips", "1",
        "--eval-steps", "2", "--eval-every", "1", "--save-dtype", "float16",
    ) == 0  # fmt: skip
    return runs


def test_every_stage_writes_loadable_safetensors(trained):
    vae = load_vae(trained / "vae/final")
    assert (trained / "vae/final/provenance.json").is_file()
    assert vae.config.scaling_factor > 0
    clf = VideoClassifier.from_pretrained(trained / "classifier/final")
    assert clf.config.num_classes == 3
    assert json.loads((trained / "classifier/final/classes.json").read_text()) == [
        "DCM", "HCM", "NOR"
    ]  # fmt: skip
    ldm = SequenceUNet.from_pretrained(trained / "ldm/final")
    assert not ldm.config.sequence
    seq = SequenceUNet.from_pretrained(trained / "seq/final")
    assert seq.config.sequence and seq.dtype == torch.float32
    # The LDM is built for the VAE's latent channels (8 for the small VAE, not the preset's).
    assert ldm.config.in_channels == seq.config.out_channels == vae.config.latent_channels == 8
    assert load_file(str(trained / "seq/final" / WEIGHTS_NAME))["conv_in.weight"].dtype == (
        torch.float16
    )
    for stage in ("vae", "classifier", "ldm", "seq"):
        assert (trained / stage / "loss.png").is_file()
        assert (trained / stage / "checkpoint/model.safetensors").is_file()
        rows = (trained / stage / "loss.csv").read_text().splitlines()
        assert rows[0].startswith("step,loss") and len(rows) == 3


def test_seq_trains_only_the_finetuning_set_by_default(trained):
    summary = json.loads((trained / "seq/final/training.json").read_text())
    assert not summary["train_all"]
    assert summary["trainable_parameters"] < summary["parameters"]
    evals = [json.loads(line) for line in (trained / "seq/eval.jsonl").read_text().splitlines()]
    assert evals and {"class_fidelity", "per_class", "s_per_clip"} <= set(evals[-1])


@pytest.mark.parametrize("legacy", [False, True], ids=["diffusers", "pre-diffusers"])
def test_seq_refuses_a_2d_model_of_other_latent_channels(
    trained, dataset, tmp_path, legacy, capsys
):
    model = SequenceUNet.from_preset(
        "small", num_classes=3, sequence=False, in_channels=4, out_channels=4
    )
    if legacy:  # an old --init-dir is still read (converted in memory), and checked the same
        write_legacy_checkpoint(model, tmp_path / "ldm4")
    else:
        model.save_pretrained(tmp_path / "ldm4")
    code = _train(
        "seq", dataset, tmp_path / "seq", "--vae-dir", str(trained / "vae/final"),
        "--init-dir", str(tmp_path / "ldm4"), "--steps", "1", "--batch-size", "2",
    )  # fmt: skip
    # A user error: one line naming both flags, exit 2, no traceback (clients/cli.py).
    assert code == 2
    assert "has 4 latent channels, the VAE in --vae-dir has 8" in capsys.readouterr().err


def test_resume_continues_from_the_checkpoint_step(dataset, tmp_path):
    out = tmp_path / "cls"
    args = ["--batch-size", "2", "--widths", "8", "--checkpoint-every", "1"]
    assert _train("classifier", dataset, out, "--steps", "2", *args) == 0
    state = json.loads((out / "checkpoint/state.json").read_text())
    assert state["step"] == 2
    before = load_file(str(out / "checkpoint/model.safetensors"))
    assert _train("classifier", dataset, out, "--steps", "3", *args) == 0
    assert json.loads((out / "checkpoint/state.json").read_text())["step"] == 3
    steps = [int(r.split(",")[0]) for r in (out / "loss.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3]  # one new step, none repeated
    after = load_file(str(out / "checkpoint/model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_yaml_settings_are_overridden_by_flags(dataset, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"steps": 1, "lr": 0.01, "batch-size": 2, "widths": [8]}))
    out = tmp_path / "cls"
    assert _train("classifier", dataset, out, "--config", str(config), "--lr", "0.02") == 0
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["lr"] == 0.02 and resolved["steps"] == 1 and resolved["batch_size"] == 2


def test_a_stage_runs_as_a_function_of_its_settings(dataset, tmp_path):
    settings = ClassifierSettings(
        dataset_root=dataset, out=tmp_path / "cls", export=tmp_path / "exported", steps=1,
        batch_size=2, warmup_steps=1, widths=[8], threads=1, progress=False,
    )  # fmt: skip
    summary = run_stage("classifier", settings)
    assert summary["classes"] == ["DCM", "HCM", "NOR"] and summary["steps"] == 1
    assert VideoClassifier.from_pretrained(tmp_path / "exported").config.num_classes == 3
    recorded = yaml.safe_load((tmp_path / "cls/config.yaml").read_text())
    assert recorded["stage"] == "classifier" and recorded["widths"] == [8]
    assert recorded["dataset_root"] == str(dataset)


def test_decoder_only_vae_keeps_the_encoder_and_scaling(trained, dataset, tmp_path):
    out = tmp_path / "dec"
    base = trained / "vae/final"
    args = ["--init-dir", str(base), "--decoder-only", "--steps", "1", "--batch-size", "2"]
    assert _train("vae", dataset, out, *args) == 0
    before, after = load_vae(base), load_vae(out / "final")
    assert after.config.scaling_factor == before.config.scaling_factor
    a, b = before.state_dict(), after.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("encoder.", "quant_conv.")))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))


def test_train_all_runs_the_recipe_and_fills_a_model_repository(dataset, tmp_path):
    model_folder = tmp_path / "repo" / "mine"
    assert genaug(
        ["train", "all", "--dataset-root", str(dataset), "--out", str(tmp_path / "runs"),
         "--export", str(model_folder), "--recipe-scale", "0.001", "--threads", "1",
         "--no-progress"]
    ) == 0  # fmt: skip
    repository = model_folder / "1"  # the first version of generator `mine`
    vae = load_vae(repository / "vae")
    unet = SequenceUNet.from_pretrained(repository / "ldm")
    assert unet.config.sequence and unet.config.in_channels == vae.config.latent_channels
    assert json.loads((repository / "ldm/training.json").read_text())["train_all"]
    classes = json.loads((repository / "classes.json").read_text())
    assert classes == ["DCM", "HCM", "NOR"]
    assert VideoClassifier.from_pretrained(repository / "classifier").config.num_classes == 3
    for plot in ("vae_loss.png", "classifier_loss.png", "ldm2d_loss.png", "seq_loss.png"):
        assert (repository / plot).is_file()
    assert not list(repository.glob(".*partial"))
    # The recipe's step counts, scaled: 1500 -> 2 VAE steps, 2000 -> 2 sequence steps.
    assert json.loads((repository / "vae/provenance.json").read_text())["steps"] == 2
    assert json.loads((repository / "ldm/training.json").read_text())["steps"] == 2
    # The generator card: the classes in id order, the training data's domain and fingerprint.
    card = read_card(repository)
    assert (repository / "card.json").is_file() and list(card.class_names) == classes
    first = layout.load_dataset(dataset, "Phantom", "train")[0]
    assert (card.num_frames, card.height, card.width) == layout.read_clip(first.path).shape
    assert card.latent_channels == vae.config.latent_channels
    assert card.dataset_name == "Phantom"
    assert card.dataset_fingerprint == dataset_fingerprint(dataset, "Phantom")
    assert card.recipe["recipe_scale"] == 0.001 and card.recipe["stages"]["seq"]["steps"] == 2
    assert (card.name, card.version) == ("mine", "1")
    # Exporting again adds version 2, which the repository then serves; nothing half-written.
    plan = recipe.RecipeSettings(dataset_root=dataset, name="Phantom", recipe_scale=0.001)
    assert recipe.export_version(tmp_path / "runs", model_folder, plan) == model_folder / "2"
    assert sorted(p.name for p in model_folder.iterdir()) == ["1", "2"]
    (entry,) = scan(tmp_path / "repo").values()
    assert (entry.name, entry.version, entry.card.version) == ("mine", "2", "2")
    with pytest.raises(InvalidArgument, match="holds a generator itself"):
        recipe.export_version(tmp_path / "runs", repository, plan)


def test_train_all_refuses_per_stage_flags(dataset, tmp_path):
    with pytest.raises(SystemExit, match="--steps not allowed"):
        genaug(["train", "all", "--dataset-root", str(dataset), "--steps", "5"])


def test_model_card_commands_are_the_recipe():
    """The per-stage commands written out in MODEL_CARD.md are what `genaug train all` runs."""
    card = (
        Path(__file__).resolve().parents[2] / "deploy/model-repository/phantom/1/MODEL_CARD.md"
    ).read_text()
    documented = {}
    for line in card.splitlines():
        if line.startswith("genaug train "):
            words = line.split()
            documented[words[2]] = words[3:]
    args = argparse.Namespace(
        dataset_root=Path("runs/data"), name="Phantom", threads=1, device=None, progress=None
    )
    for stage, settings in recipe.RECIPE:
        flags = recipe.stage_flags(stage, settings, args, Path("runs/train"), 1.0)
        flags = flags[flags.index("--out") :]  # the card relies on the default dataset
        assert sorted(_pairs(flags)) == sorted(_pairs(documented[stage])), stage


def _pairs(flags: list[str]) -> list[tuple[str, str]]:
    """`--flag value` / `--switch` -> (flag, value or ""), numbers compared as numbers."""
    pairs = []
    for i, word in enumerate(flags):
        if word.startswith("--"):
            value = flags[i + 1] if i + 1 < len(flags) and not flags[i + 1].startswith("--") else ""
            with contextlib.suppress(ValueError):
                value = repr(float(value))
            pairs.append((word, value))
    return pairs
