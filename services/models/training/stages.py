"""Every training step as a function: `run_stage(stage, settings)`.

The steps are `conditions` (motion fields, trajectories and priors of a dataset, the first step
of `genaug train all`), `vae`, `classifier`, `ldm` and `seq`, each with its settings dataclass
(`settings.py`). `cli.py` and `recipe.py` build the settings and call `run_stage`.

A training stage writes to `settings.out`: `config.yaml` (the settings it ran with),
`checkpoint/` (resumable), `loss.csv`, `loss.png`, `eval.jsonl`, `summary.json` and `final/` (the
model in the layout the services load); with `settings.export` it copies `final/` there too.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from services.data.safety import check_outside

from . import classifier, ldm, vae
from .settings import (
    ClassifierSettings,
    ConditionsSettings,
    LdmSettings,
    SeqSettings,
    StageSettings,
    VaeSettings,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step: the settings class it takes, and the function that runs it."""

    settings: type
    run: Callable[[Any], dict]


def run_stage(stage: str, settings) -> dict:
    """Runs one step with its settings (an instance of `STAGES[stage].settings`); returns its
    summary."""
    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r} (one of {', '.join(STAGES)})")
    step = STAGES[stage]
    if not isinstance(settings, step.settings):
        raise TypeError(f"stage {stage} takes {step.settings.__name__}, not {type(settings)}")
    return step.run(settings)


def _training(train: Callable[[Any], dict]) -> Callable[[StageSettings], dict]:
    """A stage's `train(settings)` with what every stage does around it."""

    def run(settings: StageSettings) -> dict:
        # A run folder or export inside the dataset would mix model files into the data.
        check_outside(settings.out, "out", settings.dataset_root, "dataset_root")
        if settings.export is not None:
            check_outside(settings.export, "export", settings.dataset_root, "dataset_root")
        out = Path(settings.out)
        out.mkdir(parents=True, exist_ok=True)
        recorded = {"stage": settings.stage, **dataclasses.asdict(settings)}
        recorded = {k: str(v) if isinstance(v, Path) else v for k, v in recorded.items()}
        (out / "config.yaml").write_text(yaml.safe_dump(recorded, sort_keys=True))
        if settings.threads:
            torch.set_num_threads(settings.threads)
        summary = train(settings)
        if settings.export is not None:
            export_folder(out / "final", Path(settings.export))
            logger.info("exported %s to %s", out / "final", settings.export)
        return summary

    return run


def precompute_conditions(settings: ConditionsSettings) -> dict:
    """The condition files `genaug conditions` writes, computed in this process (clips already
    done are skipped); returns the counts of computed and skipped clips."""
    from services.data import conditions
    from services.models.conditions import InProcessConditions

    return conditions.precompute(
        Path(settings.dataset_root),
        settings.name,
        ["train", "test"],
        list(conditions.KINDS),
        InProcessConditions(),
        progress=settings.progress,
    )


def export_folder(source: Path, target: Path) -> None:
    """Replaces `target` with a copy of `source`, only once the copy is complete (a crash leaves
    the old folder or the new one, never half of one)."""
    partial = target.parent / f".{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


STAGES: dict[str, Stage] = {
    "conditions": Stage(ConditionsSettings, precompute_conditions),
    "vae": Stage(VaeSettings, _training(vae.train)),
    "classifier": Stage(ClassifierSettings, _training(classifier.train)),
    "ldm": Stage(LdmSettings, _training(ldm.train)),
    "seq": Stage(SeqSettings, _training(ldm.train)),
}
TRAINING_STAGES = ("vae", "classifier", "ldm", "seq")  # `genaug train <stage>`
