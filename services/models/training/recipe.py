"""`genaug train all`: the bundled models' whole recipe in one resumable command.

Runs, in order: the bundled Phantom dataset (generated only when `<root>/<DS>_volume` is missing),
`genaug conditions` (in process; clips already done are skipped), then `genaug train vae`,
`classifier`, `ldm` and `seq` with the settings of `deploy/model-repository/MODEL_CARD.md`, each
in `<out>/<stage>` and wired to the previous stages' `final/` folders. Every stage resumes from its
checkpoint, so re-running after an interruption continues where it stopped. With `--export DIR`
the results are copied into the model-repository layout the services load (`vae/`, `ldm/`,
`classifier/`, `classes.json`, `*_loss.png`). `--recipe-scale` shrinks every step count (for
smoke runs); the bundled weights use 1.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from . import cli

logger = logging.getLogger(__name__)

# (stage, flags): the bundled models' settings (MODEL_CARD.md, "Training").
RECIPE: tuple[tuple[str, dict[str, object]], ...] = (
    ("vae", {"steps": 1500, "batch_size": 8, "lr": 1e-3, "warmup_steps": 50}),
    ("classifier", {"steps": 400, "batch_size": 16}),
    ("ldm", {"steps": 700, "batch_size": 32, "lr": 5e-4, "warmup_steps": 50, "max_minutes": 10}),
    (
        "seq",
        {
            "train_all": True,
            "steps": 2000,
            "batch_size": 8,
            "lr": 4e-4,
            "warmup_steps": 50,
            "max_minutes": 45,
            "eval_every": 400,
        },
    ),
)
SCALED = ("steps", "warmup_steps", "eval_every")
# Run-folder file -> model-repository name.
LOSS_PLOTS = {"vae": "vae_loss.png", "classifier": "classifier_loss.png",
              "ldm": "ldm2d_loss.png", "seq": "seq_loss.png"}  # fmt: skip
EXPORTS = {"vae": "vae", "classifier": "classifier", "seq": "ldm"}


def stage_flags(stage: str, settings: dict[str, object], args, out: Path, scale: float) -> list:
    """The `genaug train <stage>` argument list of one recipe step."""
    values = dict(settings)
    for key in SCALED:
        if key in values:
            values[key] = max(1, round(int(values[key]) * scale))
    flags = [stage, "--dataset-root", str(args.dataset_root), "--name", args.name,
             "--out", str(out / stage)]  # fmt: skip
    if stage in ("ldm", "seq"):
        flags += ["--vae-dir", str(out / "vae" / "final")]
    if stage == "seq":
        flags += ["--init-dir", str(out / "ldm" / "final"),
                  "--classifier-dir", str(out / "classifier" / "final")]  # fmt: skip
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    for key in ("threads", "device"):
        if getattr(args, key, None) is not None:
            flags += ["--" + key, str(getattr(args, key))]
    if args.progress is False:
        flags.append("--no-progress")
    return flags


def run_all(args: argparse.Namespace) -> int:
    """Runs the whole recipe (see the module docstring); returns 0."""
    from services.data import conditions, phantoms
    from services.models.conditions import InProcessConditions

    out = Path(args.out or "runs/train")
    scale = float(args.recipe_scale or 1.0)
    if not scale > 0:
        raise ValueError(f"--recipe-scale must be > 0, got {scale}")
    root = Path(args.dataset_root)
    if not (root / f"{args.name}_volume").is_dir():
        if args.name != phantoms.PHANTOM_NAME:
            raise FileNotFoundError(
                f"no dataset {args.name!r} under {root}: run `genaug prepare` first"
            )
        logger.info("all: generating the bundled %s dataset under %s", args.name, root)
        phantoms.ensure_bundled_dataset(root)

    logger.info("all: conditions (motion fields, trajectories, priors) for %s", args.name)
    counts = conditions.precompute(
        root, args.name, ["train", "test"], list(conditions.KINDS), InProcessConditions()
    )
    logger.info("all: %(computed)d clips computed, %(skipped)d already done", counts)

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    for stage, settings in RECIPE:
        flags = stage_flags(stage, settings, args, out, scale)
        logger.info("all: genaug train %s", " ".join(flags))
        cli.run(parser.parse_args(flags))

    if args.export is not None:
        export(out, Path(args.export))
    return 0


def export(out: Path, repository: Path) -> None:
    """Copies the trained models into the model-repository layout (each folder replaced only
    once its copy is complete)."""
    repository.mkdir(parents=True, exist_ok=True)
    for stage, folder in EXPORTS.items():
        cli.export_folder(out / stage / "final", repository / folder)
    shutil.copyfile(out / "classifier" / "final" / "classes.json", repository / "classes.json")
    for stage, name in LOSS_PLOTS.items():
        plot = out / stage / "loss.png"
        if plot.is_file():
            shutil.copyfile(plot, repository / name)
    logger.info("all: exported vae/, ldm/, classifier/ and classes.json to %s", repository)
