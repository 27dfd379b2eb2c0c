"""Quality of the bundled generator: class fidelity, VAE PSNR and sampling time.

For each class, `--clips-per-class` held-out (test split) reference clips guide one generated
clip each (their class, caption, image prior, motion field and trajectories; the generator's
`sampling.json` solver, steps and classifier-free guidance unless flags say otherwise); the
real-data classifier then says which class each generated clip
looks like. `class_fidelity` is the share assigned to the conditioned class. `vae_psnr_db` is the
VAE's reconstruction PSNR on every held-out frame. Prints ONE JSON line and writes
`benchmarks/results/generator_quality.{json,png}` (the PNG: real reference vs generated clip,
per class).

    python -m benchmarks.generator_quality --clips-per-class 10 [--solver ddim --steps 25]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine_facts, write_results
from clients.augment.sampling_defaults import sampling_defaults
from services.models.generators import generator_dir

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path("deploy/model-repository")


def _ensure_data(root: Path, name: str) -> None:
    from services.data.conditions import precompute
    from services.data.phantoms import PHANTOM_NAME, ensure_bundled_dataset
    from services.models.conditions import InProcessConditions

    if name == PHANTOM_NAME:
        ensure_bundled_dataset(root)
    # Only the test split is needed; existing files are skipped (a few minutes the first time).
    precompute(root, name, ["test"], ["motion", "prior"], InProcessConditions("codec"))


def contact_sheet(path: Path, rows: list[tuple[str, np.ndarray]]) -> Path:
    """One labelled row of frames (T, H, W) uint8 per entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mosaic = np.concatenate([np.concatenate(list(clip), axis=1) for _, clip in rows], axis=0)
    h = rows[0][1].shape[1]
    fig, ax = plt.subplots(figsize=(mosaic.shape[1] / 64, mosaic.shape[0] / 64 + 0.3), dpi=64)
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255)
    ax.set_yticks([h * i + h / 2 for i in range(len(rows))])
    ax.set_yticklabels([label for label, _ in rows], fontsize=9)
    ax.set_xticks([])
    ax.set_title("real reference (test split) vs generated, per class", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--generator", default="", help="generator to measure (default: default)")
    parser.add_argument("--dataset-root", type=Path, default=Path("runs/data"))
    parser.add_argument("--name", default="Phantom")
    parser.add_argument("--clips-per-class", type=int, default=10)
    # Defaults: the generator's sampling.json, the settings its card's figures are measured at.
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--steps", type=int, help="denoising steps")
    parser.add_argument("--solver", choices=("ddim", "dpmsolver++"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-text", action="store_true", help="generate with empty captions")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    from services.models.classifier import VideoClassifier
    from services.models.ldm import SequenceUNet
    from services.models.training import evaluation
    from services.models.training.data import load_clips, load_conditions
    from services.models.training.ldm import text_embeddings
    from services.models.training.vae import psnr_db
    from services.models.vae import load_vae

    _ensure_data(args.dataset_root, args.name)
    folder = generator_dir(args.model_dir, args.generator)
    defaults = sampling_defaults(args.model_dir, args.generator)
    args.guidance = defaults.guidance if args.guidance is None else args.guidance
    args.steps = args.steps or defaults.steps
    args.solver = args.solver or defaults.solver
    classes = json.loads((folder / "classes.json").read_text())
    vae = load_vae(folder / "vae").eval()
    unet = SequenceUNet.from_pretrained(folder / "ldm")
    classifier = VideoClassifier.from_pretrained(folder / "classifier")

    test = load_clips(args.dataset_root, args.name, "test", classes)
    cond = load_conditions(args.dataset_root, args.name, test)
    with tempfile.TemporaryDirectory() as tmp:
        texts = text_embeddings(test.texts, Path(tmp) / "text.safetensors")
    if args.no_text:
        texts = {t: texts[""] for t in texts}
    picked = evaluation.pick_per_class(test.labels, args.clips_per_class, seed=args.seed)
    refs = evaluation.references(test, cond, picked, texts)
    labels = test.labels[picked]

    load_before = machine_facts()
    generated, seconds = evaluation.generate(
        unet, vae, refs, texts[""], args.guidance, args.steps, seed=args.seed, solver=args.solver
    )
    pred = evaluation.classify(classifier, generated)
    fid = evaluation.fidelity(pred, labels, classes)
    real_pred = evaluation.classify(classifier, test.frames)
    frames = test.frames.reshape(-1, *test.frames.shape[2:])
    psnr = psnr_db(vae, frames)

    result = {
        "class_fidelity": fid["class_fidelity"],
        "class_fidelity_per_class": fid["per_class"],
        "vae_psnr_db": round(psnr, 3),
        "seconds_per_clip": round(seconds, 3),
        "classifier_accuracy_real_test": round(float((real_pred == test.labels).mean()), 4),
        "clips_per_class": args.clips_per_class,
        "guidance": args.guidance,
        "steps": args.steps,
        "solver": args.solver,
        "text": not args.no_text,
        "seed": args.seed,
        "psnr_frames": int(len(frames)),
        "threads": torch.get_num_threads(),
        "machine_before": load_before,
        "machine_after": machine_facts(),
    }
    write_results(args.out, "generator_quality", result)
    rows = []
    for c, cls in enumerate(classes):
        first = int(np.flatnonzero(labels == c)[0])
        rows.append((f"{cls} real", test.frames[picked[first]]))
        rows.append((f"{cls} gen -> {classes[pred[first]]}", generated[first]))
    contact_sheet(args.out / "generator_quality.png", rows)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
