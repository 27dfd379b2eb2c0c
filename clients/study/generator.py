"""A regime's own models: VAE, 2D LDM, sequence LDM and the filter's real-data classifier.

Every model is trained with the project's training code (`genaug train <stage>`) on a
training-only view of the dataset (`views.py`), so it sees the regime's training clips and
nothing else. `train_stage` is the ONE call into `services.models.training`: adapt it, and only
it, when that interface changes.

The VAE is a per-frame codec; it is trained once, on the low-data regime's view, and shared by
both regimes (it then saw a subset of each regime's training data, never more). The LDM stages
and the classifier are trained per regime.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from services.data.layout import atomic_write_bytes

logger = logging.getLogger(__name__)

SUMMARY = "summary.json"


@dataclass(frozen=True)
class GeneratorRecipe:
    """The reduced training recipe of a regime's models (the bundled recipe is in
    `services/models/training/recipe.py`; these are its step counts cut to the study budget)."""

    vae_steps: int = 400
    vae_batch: int = 8
    ldm_steps: int = 200
    ldm_batch: int = 32
    seq_steps: int = 650
    seq_batch: int = 8
    classifier_steps: int = 300
    classifier_batch: int = 16
    threads: int = 1

    def scaled(self, factor: float) -> GeneratorRecipe:
        """Every step count times `factor` (at least 1)."""
        steps = {k: max(1, round(v * factor)) for k, v in asdict(self).items() if "steps" in k}
        return GeneratorRecipe(**{**asdict(self), **steps})


def _flags(values: dict) -> list[str]:
    flags = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return flags


def finished(*runs: Path) -> bool:
    """Whether every run folder holds a finished stage (its `final/` and summary)."""
    return all((run / "final").is_dir() and (run / SUMMARY).is_file() for run in runs)


def train_stage(stage: str, view: Path, name: str, out: Path, **settings) -> dict:
    """Run `genaug train <stage>` on `view` into `out` (resumes; skipped when finished) and
    return its summary (steps, seconds, ...). The one call into the training code."""
    summary = out / SUMMARY
    if finished(out):
        return json.loads(summary.read_text())
    from services.models.training import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    argv = [stage, "--dataset-root", str(view), "--name", name, "--out", str(out)]
    argv += _flags({**settings, "no_progress": True})
    logger.info("study: genaug train %s", " ".join(argv))
    cli.run(parser.parse_args(argv))
    return json.loads(summary.read_text())


def train_vae(view: Path, name: str, out: Path, recipe: GeneratorRecipe) -> dict:
    """The shared VAE (see the module docstring)."""
    return train_stage(
        "vae",
        view,
        name,
        out,
        steps=recipe.vae_steps,
        batch_size=recipe.vae_batch,
        lr=1e-3,
        warmup_steps=min(50, recipe.vae_steps // 5),
        threads=recipe.threads,
    )


def train_regime_models(
    view: Path, name: str, out: Path, vae_dir: Path, recipe: GeneratorRecipe
) -> dict[str, dict]:
    """Train the regime's classifier, 2D LDM and sequence LDM on `view`; returns each
    stage's summary."""
    t = recipe.threads
    summaries = {
        "classifier": train_stage(
            "classifier",
            view,
            name,
            out / "classifier",
            steps=recipe.classifier_steps,
            batch_size=recipe.classifier_batch,
            threads=t,
        ),
        "ldm": train_stage(
            "ldm",
            view,
            name,
            out / "ldm",
            vae_dir=vae_dir,
            steps=recipe.ldm_steps,
            batch_size=recipe.ldm_batch,
            lr=5e-4,
            warmup_steps=min(50, recipe.ldm_steps // 5),
            threads=t,
        ),
        # No --classifier-dir: the in-training class-fidelity evaluation would need held-out
        # references, and a view has none.
        "seq": train_stage(
            "seq",
            view,
            name,
            out / "seq",
            vae_dir=vae_dir,
            init_dir=out / "ldm" / "final",
            classifier_dir=out / "no-classifier",
            train_all=True,
            steps=recipe.seq_steps,
            batch_size=recipe.seq_batch,
            lr=4e-4,
            warmup_steps=min(50, recipe.seq_steps // 5),
            threads=t,
        ),
    }
    return summaries


def model_repository(out: Path, vae_dir: Path, steps: int, guidance: float) -> Path:
    """Assemble `<out>/models` in the layout the services load (vae/, ldm/, classifier/,
    classes.json, sampling.json) from the trained stages; returns it."""
    repo = out / "models"
    if (repo / "sampling.json").is_file():
        return repo
    staging = out / "models.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(vae_dir, staging / "vae")
    shutil.copytree(out / "seq" / "final", staging / "ldm")
    shutil.copytree(out / "classifier" / "final", staging / "classifier")
    shutil.copyfile(out / "classifier" / "final" / "classes.json", staging / "classes.json")
    sampling = {"solver": "ddim", "steps": steps, "guidance": guidance, "note": "genaug study"}
    atomic_write_bytes(staging / "sampling.json", (json.dumps(sampling) + "\n").encode())
    shutil.rmtree(repo, ignore_errors=True)
    staging.rename(repo)
    return repo
