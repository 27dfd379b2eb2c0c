"""`genaug train all`: the bundled models' whole recipe in one resumable command.

Runs, in order: the bundled Phantom dataset (generated only when `<root>/<DS>_volume` is missing),
the conditions step (in process; clips already done are skipped), then the `vae`, `classifier`,
`ldm` and `seq` stages with the settings of `deploy/model-repository/MODEL_CARD.md`, each in
`<out>/<stage>` and wired to the previous stages' `final/` folders, all through
`stages.run_stage`. Every stage resumes from its checkpoint, so re-running after an interruption
continues where it stopped. With `export` (a model folder `<repo>/<name>`) the results become
the next version `<repo>/<name>/<N>/` of that generator in the model repository the services
load (`vae/`, `ldm/`, `classifier/`, `classes.json`, `*_loss.png`) with its generator card
(`card.json`, `services.models.repository`: classes in id order, frames and
frame size of the training data, the dataset's fingerprint, the recipe that ran).
`recipe_scale` shrinks every step count (for smoke runs); the bundled weights use 1.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

from genaug.config import command_line
from genaug.errors import InvalidArgument

from .budget import plan_budget
from .data import require_split
from .settings import ConditionsSettings, RecipeSettings
from .stages import STAGES, export_folder, run_stage

logger = logging.getLogger(__name__)

# (stage, settings): the bundled models' settings (MODEL_CARD.md, "Training").
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
BUDGET_FILE = "budget.json"  # the run's budget plan (null without one), for the card


def stage_values(stage: str, settings: dict[str, object], plan, out: Path, scale: float) -> dict:
    """The settings of one recipe step that differ from the stage's defaults: the dataset and
    run folders of `plan` (a `RecipeSettings`), the wiring to the earlier stages, the recipe's
    values (step counts scaled) and the threads, device and progress `plan` passes on."""
    values: dict[str, object] = {"dataset_root": Path(plan.dataset_root), "name": plan.name,
                                 "out": out / stage}  # fmt: skip
    if stage in ("ldm", "seq"):
        values["vae_dir"] = out / "vae" / "final"
    if stage == "seq":
        values["init_dir"] = out / "ldm" / "final"
        values["classifier_dir"] = out / "classifier" / "final"
    for key, value in settings.items():
        values[key] = max(1, round(int(value) * scale)) if key in SCALED else value
    for key in ("threads", "device"):
        if getattr(plan, key, None) is not None:
            values[key] = getattr(plan, key)
    if plan.progress is False:
        values["progress"] = False
    return values


def stage_flags(stage: str, settings: dict[str, object], plan, out: Path, scale: float) -> list:
    """The `genaug train <stage>` command line of one recipe step (logged; MODEL_CARD.md)."""
    values = stage_values(stage, settings, plan, out, scale)
    return [stage, *command_line(STAGES[stage].settings, values)]


def run_all(plan: RecipeSettings) -> None:
    """Runs the whole recipe (see the module docstring)."""
    from services.data import layout, phantoms

    out, scale = Path(plan.out), float(plan.recipe_scale)
    if not scale > 0:
        raise ValueError(f"--recipe-scale must be > 0, got {scale}")
    root = Path(plan.dataset_root)
    if not (root / f"{plan.name}_volume").is_dir():
        if plan.name != phantoms.PHANTOM_NAME:
            raise FileNotFoundError(
                f"no dataset {plan.name!r} under {root}: run `genaug prepare` first"
            )
        logger.info("all: generating the bundled %s dataset under %s", plan.name, root)
        phantoms.ensure_bundled_dataset(root)
    for split in ("train", "test"):  # before the conditions' minutes, not after them
        require_split(layout.load_dataset(root, plan.name, split), root, plan.name, split)

    began = time.monotonic()
    logger.info("all: conditions (motion fields, trajectories, priors) for %s", plan.name)
    counts = run_stage("conditions", ConditionsSettings(root, plan.name, plan.progress))
    logger.info("all: %(computed)d clips computed, %(skipped)d already done", counts)
    budget = None
    if plan.budget_minutes:
        shape = layout.read_clip(layout.load_dataset(root, plan.name, "train")[0].path).shape
        budget = plan_budget(
            plan.budget_minutes, (time.monotonic() - began) / 60, tuple(shape), scale
        )
        scale = budget.recipe_scale
        logger.info("all: budget %s", budget)
    out.mkdir(parents=True, exist_ok=True)
    (out / BUDGET_FILE).write_text(json.dumps(budget.to_dict() if budget else None) + "\n")

    for stage, settings in RECIPE:
        if budget is not None:
            cap = budget.stage_minutes[stage]
            settings = {**settings, "max_minutes": min(cap, settings.get("max_minutes", cap))}
        kind, values = STAGES[stage].settings, stage_values(stage, settings, plan, out, scale)
        logger.info("all: genaug train %s %s", stage, " ".join(command_line(kind, values)))
        summary = run_stage(stage, kind(**values))
        print(json.dumps(summary))

    if plan.export is not None:
        export_version(out, Path(plan.export), plan)


def export_version(out: Path, model_folder: Path, plan=None) -> Path:
    """Adds the trained generator to a model repository as the next version of
    `model_folder` (`<repo>/<name>/<N>/`, `services.models.generators`), written beside it
    and renamed into place once complete: a sampler polling the repository never sees half a
    version. Returns the version folder.

    Raises:
        InvalidArgument: `model_folder` is a generator folder itself (the flat layout), or its
            name cannot name a generator.
    """
    from services.models.generators import is_generator_dir, next_version

    if is_generator_dir(model_folder):
        raise InvalidArgument(
            "export",
            f"{model_folder} holds a generator itself; export to a model folder "
            "<repository>/<name>, which gets the versions",
        )
    version = next_version(model_folder.parent, model_folder.name)
    partial = model_folder / f".{version.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    export(out, partial, plan, name=model_folder.name, version=version.name)
    partial.rename(version)
    logger.info("all: exported generator %s version %s to %s",
                model_folder.name, version.name, version)  # fmt: skip
    return version


def export(out: Path, repository: Path, plan=None, name: str = "", version: str = "1") -> None:
    """Copies the trained models into one generator's folder (each sub-folder replaced only
    once its copy is complete); with `plan` (the `RecipeSettings` that ran) it also writes the
    generator's `card.json` (named `name`, at `version`)."""
    repository.mkdir(parents=True, exist_ok=True)
    for stage, folder in EXPORTS.items():
        export_folder(out / stage / "final", repository / folder)
    shutil.copyfile(out / "classifier" / "final" / "classes.json", repository / "classes.json")
    for stage, plot_name in LOSS_PLOTS.items():
        plot = out / stage / "loss.png"
        if plot.is_file():
            shutil.copyfile(plot, repository / plot_name)
    if plan is not None:
        write_export_card(out, repository, plan, name, version)
    logger.info("all: exported vae/, ldm/, classifier/ and classes.json to %s", repository)


def write_export_card(
    out: Path, repository: Path, plan, name: str = "", version: str = "1"
) -> Path:
    """The exported repository's `card.json`: the training data's domain and fingerprint,
    the recipe as planned (scaled; with `--budget-minutes` its budget plan) and as it ran
    (each stage's steps and seconds), and the classifier's measured test accuracy."""
    from services.models.repository import training_card, write_card

    budget = _json_file(out / BUDGET_FILE)
    scale = float(budget["recipe_scale"] if budget else plan.recipe_scale)
    recipe = {
        "recipe_scale": scale,
        "stages": {
            stage: stage_values_for_card(stage, settings, scale) for stage, settings in RECIPE
        },
        "ran": {stage: _json_file(out / stage / "summary.json") for stage, _ in RECIPE},
    }
    if budget:
        recipe["budget"] = budget
    figures = {}
    metrics = out / "classifier" / "final" / "metrics.json"
    if metrics.is_file():
        measured = json.loads(metrics.read_text())
        figures = {k: measured[k] for k in ("test_accuracy", "test_clips") if k in measured}
    card = training_card(
        repository, plan.dataset_root, plan.name, name=name or None, recipe=recipe, figures=figures
    )
    return write_card(repository, replace(card, version=version))


def _json_file(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def stage_values_for_card(stage: str, settings: dict[str, object], scale: float) -> dict:
    """One recipe step's settings as they ran (step counts scaled)."""
    return {k: max(1, round(int(v) * scale)) if k in SCALED else v for k, v in settings.items()}
