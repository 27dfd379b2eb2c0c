"""`genaug train` settings: one typed dataclass per stage, read from flags and YAML (flags win),
flags a stage does not read refused; the stages' defaults are the ones the CLI always had."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from clients.cli import main as genaug
from services.models.training import cli
from services.models.training.settings import (
    ClassifierSettings,
    LdmSettings,
    RecipeSettings,
    SeqSettings,
    VaeSettings,
)
from services.models.training.stages import run_stage


def _settings(*argv: str):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.settings_from(parser.parse_args(list(argv)))


def test_each_stage_gets_its_own_settings_with_its_defaults():
    vae = _settings("vae")
    assert type(vae) is VaeSettings and vae.out == Path("runs/train/vae")
    assert (vae.steps, vae.batch_size, vae.lr, vae.warmup_steps) == (2000, 32, 1e-3, 100)
    assert (vae.frame_source, vae.kl_weight, vae.grad_weight, vae.eval_frames) == (
        "slices", 1e-6, 0.5, 256
    )  # fmt: skip
    clf = _settings("classifier")
    assert type(clf) is ClassifierSettings
    assert (clf.steps, clf.batch_size, clf.lr, clf.warmup_steps, clf.widths, clf.dropout) == (
        600, 16, 2e-3, 30, [16, 32, 64], 0.1
    )  # fmt: skip
    ldm = _settings("ldm")
    assert type(ldm) is LdmSettings and (ldm.steps, ldm.batch_size, ldm.prior_drop) == (
        3000, 64, 0.5
    )  # fmt: skip
    assert (ldm.lr, ldm.vae_dir, ldm.text_drop) == (5e-4, Path("runs/train/vae/final"), 0.1)
    seq = _settings("seq")
    assert type(seq) is SeqSettings and (seq.steps, seq.batch_size, seq.eval_every) == (
        4000, 8, 500
    )  # fmt: skip
    assert seq.init_dir == Path("runs/train/ldm/final") and not seq.train_all
    assert (seq.dataset_root, seq.name, seq.weight_decay, seq.seed) == (
        Path("runs/data"), "Phantom", 1e-2, 3407
    )  # fmt: skip
    plan = _settings("all")
    assert type(plan) is RecipeSettings and plan.out == Path("runs/train")
    assert (plan.recipe_scale, plan.threads, plan.device, plan.progress) == (1.0, None, None, True)


def test_flags_override_the_yaml_file(tmp_path):
    config = tmp_path / "vae.yaml"
    config.write_text("steps: 5\nframe-source: clips\nno_such: 1\n")
    with pytest.raises(ValueError, match="vae.yaml: unknown option 'no_such'"):
        _settings("vae", "--config", str(config))
    config.write_text("steps: 5\nframe-source: clips\ndecoder_only: true\n")
    vae = _settings("vae", "--config", str(config), "--steps", "6", "--no-progress")
    assert (vae.steps, vae.frame_source, vae.decoder_only, vae.progress) == (
        6,
        "clips",
        True,
        False,
    )
    config.write_text("recipe_scale: 0.5\n")
    assert _settings("all", "--config", str(config)).recipe_scale == 0.5


def test_flags_a_stage_does_not_read_are_refused():
    with pytest.raises(SystemExit, match="genaug train vae: --widths not used by this stage"):
        _settings("vae", "--widths", "8")
    with pytest.raises(SystemExit, match="genaug train ldm: --init-dir, --train-all not used"):
        _settings("ldm", "--train-all", "--init-dir", "x")
    with pytest.raises(SystemExit, match="--recipe-scale applies to `genaug train all` only"):
        _settings("seq", "--recipe-scale", "0.1")
    with pytest.raises(SystemExit, match="genaug train all: --lr, --widths not allowed"):
        _settings("all", "--widths", "8", "--lr", "1")


def test_a_bad_yaml_value_is_one_line_and_exit_2(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text("steps: many\n")
    assert genaug(["train", "classifier", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genaug train: --steps expects an integer, got 'many' (steps in ")
    assert "Traceback" not in err


def test_run_stage_takes_only_the_stages_settings():
    with pytest.raises(TypeError, match="stage vae takes VaeSettings"):
        run_stage("vae", ClassifierSettings())
    with pytest.raises(ValueError, match="unknown training stage 'vea'"):
        run_stage("vea", VaeSettings())
