"""Calibrate the hard phantom benchmark's difficulty on the real-only classifier.

For each difficulty given, generate the benchmark, draw the study's low-data regime, train the
study's real-only classifier (arm (a): no augmentation, the study recipe) for a few seeds and
report in-domain and out-of-domain macro-F1. Target: low-data in-domain macro-F1 about
0.55-0.85. No augmentation is involved; this fixes the benchmark before any augmentation result.

    python -m benchmarks.hard_phantom_calibration --separation 0.3 0.5 --spread 1.5 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clients.study.classify import ClassifierRecipe, TrainingSet, evaluate, train_classifier
from clients.study.regimes import select_regime
from services.data import layout
from services.data.phantoms_hard import HARD_NAME, Difficulty, generate_hard_benchmark, ood_name
from services.models.training.data import load_clips


def _subset(clips, file_names):
    keep = np.isin(np.asarray(clips.file_names), list(file_names))
    return clips.frames[keep], clips.labels[keep]


def calibrate(difficulty: Difficulty, seeds: int, fraction: float, recipe, work: Path) -> dict:
    root = work / f"s{difficulty.separation:g}-w{difficulty.spread:g}"
    generate_hard_benchmark(root, difficulty=difficulty)
    train = layout.load_dataset(root, HARD_NAME, "train")
    regime = select_regime(train, "low", fraction, seed=0)
    train_clips = load_clips(root, HARD_NAME, "train")
    classes = train_clips.classes
    test = load_clips(root, HARD_NAME, "test", classes)
    ood = load_clips(root, ood_name(HARD_NAME), "test", classes)
    frames, labels = _subset(train_clips, regime.file_names)
    runs = []
    for seed in range(seeds):
        began = time.perf_counter()
        model, _ = train_classifier(
            TrainingSet(frames, labels, np.zeros(len(labels), bool)),
            len(classes),
            recipe,
            seed,
            work / "runs" / root.name / str(seed),
        )
        runs.append(
            {
                "seed": seed,
                "in_domain": evaluate(model, test.frames, test.labels, classes),
                "out_of_domain": evaluate(model, ood.frames, ood.labels, classes),
                "seconds": round(time.perf_counter() - began, 1),
            }
        )
    summary = {
        "difficulty": {"separation": difficulty.separation, "spread": difficulty.spread},
        "low_data_clips": len(labels),
        "low_data_patients": regime.patients,
        "test_clips": len(test.labels),
        "ood_clips": len(ood.labels),
    }
    for split in ("in_domain", "out_of_domain"):
        f1 = [r[split]["macro_f1"] for r in runs]
        acc = [r[split]["accuracy"] for r in runs]
        summary[split] = {
            "macro_f1_mean": round(float(np.mean(f1)), 3),
            "macro_f1": [round(v, 3) for v in f1],
            "accuracy_mean": round(float(np.mean(acc)), 3),
            "recall_DCM": [round(r[split]["recall"].get("DCM", float("nan")), 3) for r in runs],
        }
    summary["seconds_per_run"] = round(float(np.mean([r["seconds"] for r in runs])), 1)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--separation", type=float, nargs="+", default=[0.3])
    parser.add_argument("--spread", type=float, nargs="+", default=[1.5])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=ClassifierRecipe.steps)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/hard_phantom_calibration.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = ClassifierRecipe(steps=args.steps)
    results = []
    with tempfile.TemporaryDirectory() as work:
        for separation in args.separation:
            for spread in args.spread:
                result = calibrate(
                    Difficulty(separation, spread), args.seeds, args.fraction, recipe, Path(work)
                )
                print(json.dumps(result), flush=True)
                results.append(result)
    document = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    document["runs"] += results
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
