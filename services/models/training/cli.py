"""`genaug train {vae,classifier,ldm,seq}`: train one model of the generator or the filter;
`genaug train all`: the bundled models' whole recipe (`recipe.py`).

The flags are the fields of the stage's settings (`settings.py`); each value comes from, in
increasing priority: the stage's defaults, a YAML file (`--config`, keys are flag names with
dashes or underscores) and the flags given on the command line (`genaug.config`). A flag or key
the stage does not read is an error. Every run writes to `--out` (default `runs/train/<stage>`):
`config.yaml`, `checkpoint/` (resumable), `loss.csv`, `loss.png`, `eval.jsonl`, `summary.json`
and `final/` (the model in the layout the services load); `--export DIR` copies `final/` there
too (e.g. `deploy/model-repository/vae`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from genaug.config import add_flags, flags_of, resolve

from . import recipe
from .settings import RecipeSettings
from .stages import STAGES, TRAINING_STAGES, run_stage

# `genaug train <stage>` -> its settings class.
SETTINGS: dict[str, type] = {
    **{stage: STAGES[stage].settings for stage in TRAINING_STAGES},
    "all": RecipeSettings,
}
NOT_SETTINGS = ("stage", "config")  # the namespace's other entries


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Registers the flags of every stage; `settings_from` refuses those the chosen stage does
    not read."""
    parser.add_argument(
        "stage",
        choices=sorted(SETTINGS),
        help="what to train; all: conditions and every stage with the bundled recipe",
    )
    parser.add_argument("--config", type=Path, help="YAML file of settings (flags override it)")
    add_flags(parser, *SETTINGS.values())


def settings_from(args: argparse.Namespace):
    """The chosen stage's settings from the flags given and the YAML file."""
    kind = SETTINGS[args.stage]
    stray = sorted(set(vars(args)) - set(NOT_SETTINGS) - set(flags_of(kind)))
    if stray:
        flags = ", ".join(flags_of(*SETTINGS.values())[name] for name in stray)
        if args.stage == "all":
            raise SystemExit(f"genaug train all: {flags} not allowed (the recipe sets them)")
        if "recipe_scale" in stray:
            raise SystemExit("--recipe-scale applies to `genaug train all` only")
        raise SystemExit(f"genaug train {args.stage}: {flags} not used by this stage")
    return resolve(kind, args, yaml_file=args.config)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    if args.stage == "all":
        recipe.run_all(settings)
    else:
        print(json.dumps(run_stage(args.stage, settings)))
    return 0
