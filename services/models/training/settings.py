"""The settings of each training step, one dataclass per stage (`stages.run_stage` takes them).

`cli.py` reads them from flags and a YAML file (`genaug.config`); `recipe.py` fills them in for
`genaug train all`. A stage's class redefines the optimisation defaults that differ for it
(`steps: int = 2000`); its flag and help stay those of `TrainSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from genaug.config import setting

OPTIMISATION = "optimisation (all stages)"
LATENT = "ldm / seq"


@dataclass
class TrainSettings:
    """Optimisation settings common to every stage (what `common.Trainer` reads)."""

    steps: int = setting(
        1000, group=OPTIMISATION, help="optimiser steps in total (a resumed run continues)"
    )
    batch_size: int = setting(16, group=OPTIMISATION)
    lr: float = setting(1e-4, group=OPTIMISATION, help="peak AdamW learning rate")
    weight_decay: float = setting(
        1e-2, group=OPTIMISATION, help="AdamW weight decay (default 1e-2)"
    )
    warmup_steps: int = setting(
        100, group=OPTIMISATION, help="linear warm-up before the cosine decay"
    )
    grad_clip: float = setting(
        1.0, group=OPTIMISATION, help="max gradient norm, 0 = off (default 1)"
    )
    seed: int = setting(3407, group=OPTIMISATION, help="default 3407 (the reference's)")
    max_minutes: float | None = setting(
        None, group=OPTIMISATION, help="stop cleanly (and checkpoint) after this"
    )
    checkpoint_every: int = setting(200, group=OPTIMISATION, help="steps between checkpoints")
    log_every: int = setting(10, group=OPTIMISATION, help="steps per loss.csv row")
    eval_every: int = setting(0, group=OPTIMISATION, help="steps between evaluations (0: end only)")
    resume: bool = setting(True, group=OPTIMISATION, help="start over even if a checkpoint exists")
    device: str = setting(
        "auto", group=OPTIMISATION, help="auto (CUDA + bf16 autocast when present), cpu, cuda:N"
    )
    threads: int | None = setting(
        None, group=OPTIMISATION, help="torch CPU threads (default: torch's)"
    )
    progress: bool = setting(True, group=OPTIMISATION)
    extra: dict = setting({}, cli=False)


@dataclass
class RunSettings:
    """Where a run reads its dataset and writes its results."""

    dataset_root: Path = setting(
        Path("runs/data"), help="prepared dataset root (default runs/data)"
    )
    name: str = setting("Phantom", help="dataset name <DS> (default Phantom)")
    out: Path = setting(Path("runs/train"), help="run folder (default runs/train/<stage>)")
    export: Path | None = setting(
        None,
        help="also copy the trained model folder here (all: a model folder <repo>/<name> of a "
        "model repository, which gets the generator as its next version <repo>/<name>/<N>, "
        "e.g. deploy/model-repository/phantom)",
    )


@dataclass
class StageSettings(RunSettings, TrainSettings):
    """One training stage: its run folder and its optimisation."""

    stage: ClassVar[str]


def _init_dir(default: Path | None) -> Path | None:
    return setting(
        default, group=LATENT, help="seq: the 2D model to inflate; vae: a VAE to continue"
    )


@dataclass
class VaeSettings(StageSettings):
    """`genaug train vae` (see `vae.py`)."""

    stage: ClassVar[str] = "vae"
    out: Path = Path("runs/train/vae")
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    vae_config: str = setting("small", group="vae", help="small (default) or full")
    frame_source: str = setting(
        "slices", group="vae", choices=("slices", "clips"), help="frames to train on"
    )
    kl_weight: float = setting(1e-6, group="vae")
    recon_loss: str = setting(
        "l1", group="vae", choices=("l1", "mse"), help="reconstruction term (l1)"
    )
    grad_weight: float = setting(0.5, group="vae", help="weight of the image-gradient L1 term")
    eval_frames: int = setting(256, group="vae", help="held-out frames per periodic evaluation")
    decoder_only: bool = setting(
        False,
        group="vae",
        help="train only the decoder of the VAE in --init-dir (keeps its latents)",
    )
    init_dir: Path | None = _init_dir(None)


@dataclass
class ClassifierSettings(StageSettings):
    """`genaug train classifier` (see `classifier.py`)."""

    stage: ClassVar[str] = "classifier"
    out: Path = Path("runs/train/classifier")
    steps: int = 600
    lr: float = 2e-3
    warmup_steps: int = 30
    widths: list[int] = setting([16, 32, 64], group="classifier", help="classifier stage widths")
    dropout: float = setting(0.1, group="classifier")


@dataclass
class LatentSettings(StageSettings):
    """What the 2D LDM and the sequence model share (see `ldm.py`)."""

    lr: float = 5e-4
    preset: str = setting("small", group=LATENT, help="LDM preset (default small)")
    vae_dir: Path = setting(
        Path("runs/train/vae/final"),
        group=LATENT,
        help="trained VAE (latents are encoded with it)",
    )
    text_drop: float = setting(0.1, group=LATENT, help="probability of the empty caption")
    save_dtype: str = setting(
        "float32", group=LATENT, choices=("float32", "float16"), help="dtype of final/ weights"
    )


@dataclass
class LdmSettings(LatentSettings):
    """`genaug train ldm`: the 2D pretraining."""

    stage: ClassVar[str] = "ldm"
    out: Path = Path("runs/train/ldm")
    steps: int = 3000
    batch_size: int = 64
    prior_drop: float = setting(0.5, group=LATENT, help="ldm: probability of a zero image prior")


@dataclass
class SeqSettings(LatentSettings):
    """`genaug train seq`: the sequence model, inflated from the 2D one."""

    stage: ClassVar[str] = "seq"
    out: Path = Path("runs/train/seq")
    steps: int = 4000
    batch_size: int = 8
    eval_every: int = 500
    init_dir: Path | None = _init_dir(Path("runs/train/ldm/final"))
    classifier_dir: Path | None = setting(
        Path("runs/train/classifier/final"),
        group=LATENT,
        help="real-data classifier for class fidelity",
    )
    train_all: bool = setting(
        False,
        group=LATENT,
        help="seq: train every parameter, not only the reference's fine-tuning set",
    )
    eval_clips: int = setting(4, group=LATENT, help="seq: clips per class in each evaluation")
    eval_steps: int = setting(25, group=LATENT, help="seq: DDIM steps in each evaluation")
    eval_guidance: float = setting(3.0, group=LATENT, help="seq: guidance in each evaluation")


@dataclass
class ConditionsSettings:
    """The conditions step of `genaug train all`: motion fields, trajectories and priors of
    every clip of a dataset (clips already done are skipped)."""

    stage: ClassVar[str] = "conditions"
    dataset_root: Path = Path("runs/data")
    name: str = "Phantom"
    progress: bool = True


@dataclass
class RecipeSettings(RunSettings):
    """`genaug train all`: the recipe sets everything else (`recipe.RECIPE`)."""

    out: Path = Path("runs/train")
    recipe_scale: float = setting(1.0, help="all: multiply every step count (smoke runs; 1)")
    budget_minutes: float | None = setting(
        None,
        help="all: fit the whole run in this many minutes: the recipe's steps scaled to the "
        "time left after the conditions, each stage capped at its share (the card records "
        "what ran; the full recipe is about 80 min on 2 cores for 8x64x64 clips)",
    )
    threads: int | None = None  # None: each stage's default
    device: str | None = None
    progress: bool = True
