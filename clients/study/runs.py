"""Train and evaluate every (regime, arm, seed) classifier, in worker processes.

A run is described by a small JSON-able spec (paths, ids, numbers); each worker reads the clips
itself, once per process, so nothing but the spec and the metrics crosses between processes.
A finished run's metrics are in `<out>/runs/<regime>/<arm>/seed<k>.json`; a re-run skips it.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clients.study.classify import (
    ClassifierRecipe,
    TrainingSet,
    evaluate,
    train_classifier,
    write_json,
)

logger = logging.getLogger(__name__)


@lru_cache(maxsize=16)
def _clips(root: str, name: str, split: str, classes: tuple[str, ...]):
    from services.models.training.data import load_clips

    clips = load_clips(Path(root), name, split, list(classes))
    return clips.frames, clips.labels, tuple(clips.file_names)


@lru_cache(maxsize=4)
def _pool(regime_dir: str, name: str, classes: tuple[str, ...]):
    from clients.study.synthesis import load_pool

    return load_pool(Path(regime_dir), name, list(classes))


def run_one(spec: dict) -> dict:
    """Train one classifier and evaluate it on every test set of the spec."""
    import torch

    torch.set_num_threads(int(spec.get("threads", 1)))
    classes = tuple(spec["classes"])
    frames, labels, _ = _clips(spec["view"], spec["name"], "train", classes)
    synthetic = np.zeros(len(labels), bool)
    if spec["synthetic_ids"]:
        pool = _pool(spec["pool"], spec["name"], classes)
        index = {clip_id: i for i, clip_id in enumerate(pool.ids)}
        picked = [index[i] for i in spec["synthetic_ids"]]
        frames = np.concatenate([frames, pool.frames[picked]])
        labels = np.concatenate([labels, pool.labels[picked]])
        synthetic = np.concatenate([synthetic, np.ones(len(picked), bool)])
    recipe = ClassifierRecipe(**{**spec["recipe"], "widths": tuple(spec["recipe"]["widths"])})
    work = Path(spec["result"]).with_suffix("")
    model, summary = train_classifier(
        TrainingSet(frames, labels, synthetic),
        len(classes),
        recipe,
        int(spec["seed"]),
        work,
        augment=bool(spec["augment"]),
    )
    shutil.rmtree(work, ignore_errors=True)  # the checkpoint and loss log are not needed
    result = {"regime": spec["regime"], "arm": spec["arm"], "seed": spec["seed"], **summary}
    for split, (root, name, split_name) in spec["tests"].items():
        x, y, _ = _clips(root, name, split_name, classes)
        result[split] = evaluate(model, x, y, list(classes))
    write_json(Path(spec["result"]), result)
    return result


def run_all(specs: list[dict], workers: int, progress: bool = True) -> list[dict]:
    """Every spec's result (finished ones read back), `workers` processes at a time."""
    results, todo = [], []
    for spec in specs:
        path = Path(spec["result"])
        if path.is_file():
            results.append(json.loads(path.read_text()))
        else:
            todo.append(spec)
    bar = tqdm(total=len(specs), initial=len(results), desc="classifiers", disable=not progress)
    if workers <= 1:
        for spec in todo:
            results.append(run_one(spec))
            bar.update()
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(run_one, spec) for spec in todo]
            for future in as_completed(futures):
                results.append(future.result())
                bar.update()
    bar.close()
    order = {(s["regime"], s["arm"], s["seed"]): i for i, s in enumerate(specs)}
    return sorted(results, key=lambda r: order[(r["regime"], r["arm"], r["seed"])])


def spec(
    *,
    regime: str,
    arm,
    seed: int,
    view: Path,
    regime_dir: Path,
    name: str,
    classes: list[str],
    synthetic_ids: list[str],
    recipe: ClassifierRecipe,
    tests: dict[str, tuple[Path, str, str]],
    out: Path,
    threads: int,
) -> dict:
    """The JSON-able description of one run."""
    return {
        "regime": regime,
        "arm": arm.name,
        "augment": arm.augment,
        "seed": seed,
        "view": str(view),
        "pool": str(regime_dir),
        "name": name,
        "classes": list(classes),
        "synthetic_ids": list(synthetic_ids),
        "recipe": {**asdict(recipe), "widths": list(recipe.widths)},
        "tests": {k: [str(r), n, s] for k, (r, n, s) in tests.items()},
        "result": str(out / "runs" / regime / arm.name / f"seed{seed}.json"),
        "threads": threads,
    }
