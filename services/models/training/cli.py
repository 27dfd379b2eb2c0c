"""`genaug train {vae,ldm,seq,classifier}`: train one model of the generator or the filter;
`genaug train all`: the bundled models' whole recipe (`recipe.py`).

Settings come from, in increasing priority: the stage's defaults, a YAML file (`--config`, keys
are flag names with dashes or underscores) and the flags given on the command line. Every run
writes to `--out` (default `runs/train/<stage>`): `checkpoint/` (resumable), `loss.csv`,
`loss.png`, `eval.jsonl`, `summary.json` and `final/` (the model in the layout the services
load); `--export DIR` copies `final/` there too (e.g. `deploy/model-repository/vae`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import shutil
from pathlib import Path

import torch
import yaml

from .common import TrainSettings

logger = logging.getLogger(__name__)

STAGES = {
    "vae": "services.models.training.vae",
    "classifier": "services.models.training.classifier",
    "ldm": "services.models.training.ldm",
    "seq": "services.models.training.ldm",
}
# Defaults of the flags every stage shares (stage modules override some in their DEFAULTS).
COMMON_DEFAULTS = dict(
    dataset_root="runs/data",
    name="Phantom",
    out=None,
    export=None,
    config=None,
    **{
        f.name: f.default
        for f in dataclasses.fields(TrainSettings)
        if f.name not in ("extra",) and not isinstance(f.default, dataclasses._MISSING_TYPE)
    },
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Registers the flags. Every default is None so that YAML values are only overridden by
    flags actually given; `resolve` fills in the defaults."""
    parser.add_argument(
        "stage",
        choices=sorted(STAGES) + ["all"],
        help="what to train; all: conditions and every stage with the bundled recipe",
    )
    add = parser.add_argument
    add("--config", type=Path, help="YAML file of settings (flags override it)")
    add("--dataset-root", type=Path, help="prepared dataset root (default runs/data)")
    add("--name", help="dataset name <DS> (default Phantom)")
    add("--out", type=Path, help="run folder (default runs/train/<stage>)")
    add(
        "--export",
        type=Path,
        help="also copy the trained model folder here (all: the "
        "model repository to fill, e.g. deploy/model-repository)",
    )
    add("--recipe-scale", type=float, help="all: multiply every step count (smoke runs; 1)")
    g = parser.add_argument_group("optimisation (all stages)")
    g.add_argument("--steps", type=int, help="optimiser steps in total (a resumed run continues)")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float, help="peak AdamW learning rate")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 1e-2)")
    g.add_argument("--warmup-steps", type=int, help="linear warm-up before the cosine decay")
    g.add_argument("--grad-clip", type=float, help="max gradient norm, 0 = off (default 1)")
    g.add_argument("--seed", type=int, help="default 3407 (the reference's)")
    g.add_argument("--max-minutes", type=float, help="stop cleanly (and checkpoint) after this")
    g.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    g.add_argument("--log-every", type=int, help="steps per loss.csv row")
    g.add_argument("--eval-every", type=int, help="steps between evaluations (0: end only)")
    g.add_argument("--no-resume", dest="resume", action="store_const", const=False,
                   help="start over even if a checkpoint exists")  # fmt: skip
    g.add_argument("--device", help="auto (CUDA + bf16 autocast when present), cpu, cuda:N")
    g.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    g.add_argument("--no-progress", dest="progress", action="store_const", const=False)
    v = parser.add_argument_group("vae")
    v.add_argument("--vae-config", help="small (default) or full")
    v.add_argument("--frame-source", choices=["slices", "clips"], help="frames to train on")
    v.add_argument("--kl-weight", type=float)
    v.add_argument("--recon-loss", choices=["l1", "mse"], help="reconstruction term (l1)")
    v.add_argument("--grad-weight", type=float, help="weight of the image-gradient L1 term")
    v.add_argument("--eval-frames", type=int, help="held-out frames per periodic evaluation")
    v.add_argument(
        "--decoder-only",
        action="store_const",
        const=True,
        help="train only the decoder of the VAE in --init-dir (keeps its latents)",
    )
    c = parser.add_argument_group("classifier")
    c.add_argument("--widths", type=int, nargs="+", help="classifier stage widths")
    c.add_argument("--dropout", type=float)
    m = parser.add_argument_group("ldm / seq")
    m.add_argument("--vae-dir", type=Path, help="trained VAE (latents are encoded with it)")
    m.add_argument("--classifier-dir", type=Path, help="real-data classifier for class fidelity")
    m.add_argument(
        "--init-dir", type=Path, help="seq: the 2D model to inflate; vae: a VAE to continue"
    )
    m.add_argument("--preset", help="LDM preset (default small)")
    m.add_argument(
        "--train-all",
        action="store_const",
        const=True,
        help="seq: train every parameter, not only the reference's fine-tuning set",
    )
    m.add_argument("--text-drop", type=float, help="probability of the empty caption")
    m.add_argument("--prior-drop", type=float, help="ldm: probability of a zero image prior")
    m.add_argument("--eval-clips", type=int, help="seq: clips per class in each evaluation")
    m.add_argument("--eval-steps", type=int, help="seq: DDIM steps in each evaluation")
    m.add_argument("--eval-guidance", type=float, help="seq: guidance in each evaluation")
    m.add_argument("--save-dtype", choices=["float32", "float16"], help="dtype of final/ weights")


def resolve(args: argparse.Namespace, stage_defaults: dict) -> argparse.Namespace:
    """Merges stage defaults < common defaults < YAML < given flags into one namespace."""
    merged = {**dict.fromkeys(vars(args)), **COMMON_DEFAULTS, **stage_defaults}
    if args.config is not None:
        data = yaml.safe_load(Path(args.config).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{args.config}: expected a mapping of settings")
        merged.update({str(k).replace("-", "_"): v for k, v in data.items()})
    merged.update({k: v for k, v in vars(args).items() if v is not None})
    if merged.get("out") is None:
        merged["out"] = f"runs/train/{args.stage}"
    for key in ("dataset_root", "out", "export", "vae_dir", "classifier_dir", "init_dir"):
        if merged.get(key) is not None:
            merged[key] = Path(merged[key])
    return argparse.Namespace(**merged)


def settings_from(args: argparse.Namespace) -> TrainSettings:
    names = {f.name for f in dataclasses.fields(TrainSettings)} - {"extra"}
    return TrainSettings(**{k: getattr(args, k) for k in names if hasattr(args, k)})


# The flags `genaug train all` passes on; the recipe owns every other setting.
ALL_FLAGS = ("stage", "dataset_root", "name", "out", "export", "recipe_scale", "threads",
             "device", "progress")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if args.stage == "all":
        given = sorted(k for k, v in vars(args).items() if v is not None and k not in ALL_FLAGS)
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise SystemExit(f"genaug train all: {flags} not allowed (the recipe sets them)")
        from . import recipe

        args.dataset_root = args.dataset_root or Path(COMMON_DEFAULTS["dataset_root"])
        args.name = args.name or COMMON_DEFAULTS["name"]
        return recipe.run_all(args)
    if args.recipe_scale is not None:
        raise SystemExit("--recipe-scale applies to `genaug train all` only")
    module = importlib.import_module(STAGES[args.stage])
    defaults = module.DEFAULTS if args.stage != "seq" else module.SEQ_DEFAULTS
    args = resolve(args, defaults)
    settings = settings_from(args)
    args.out.mkdir(parents=True, exist_ok=True)
    resolved = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=True))
    if settings.threads:
        torch.set_num_threads(settings.threads)
    summary = module.train(args, settings)
    if args.export is not None:
        export_folder(args.out / "final", args.export)
        logger.info("exported %s to %s", args.out / "final", args.export)
    print(json.dumps(summary))
    return 0


def export_folder(source: Path, target: Path) -> None:
    """Replaces `target` with a copy of `source`, only once the copy is complete (a crash leaves
    the old folder or the new one, never half of one)."""
    partial = target.parent / f".{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
