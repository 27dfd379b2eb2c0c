"""`genaug demo` (what `make demo` runs): the embedded main job on bundled models and data.

Starts the five services as local processes with the bundled weights, makes sure the bundled
Phantom dataset exists, and builds an augmented dataset with `genaug augment`: reference
conditions fetched from the encoder and motion services (cached), generation on the sampler,
the pool filtered by the filter service, the kept clips written in the seed layout with a
report. Then it stops the services.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from clients.local_cluster import LocalCluster, available_services
from genaug.ports import DEFAULT_PORTS
from services.models.generators import generator_dir

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path("deploy/model-repository")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)"
    )
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="model repository (default: the bundled one)"
    )
    parser.add_argument(
        "--per-class", type=int, default=10, help="synthetic clips per class (default 10)"
    )
    parser.add_argument("--steps", type=int, help="denoising steps (default: model card, else 25)")
    parser.add_argument("--guidance", type=float, help="CFG scale (default: model card, else 3)")
    parser.add_argument("--concurrency", type=int, default=4, help="generations in flight")
    parser.add_argument("--fresh", action="store_true", help="start the augmented set anew")


def sampling_defaults(model_dir: Path) -> tuple[int, float, str]:
    """(steps, guidance, where they came from): the model repository's `sampling.json`
    (written with the bundled weights: the settings their quality figures were measured with),
    else 25 DDIM steps at guidance 3 (`clients.augment.sampling_defaults`)."""
    from clients.augment.sampling_defaults import sampling_defaults as read_defaults

    defaults = read_defaults(model_dir)
    return defaults.steps, defaults.guidance, defaults.source


def models_fingerprint(model_dir: Path) -> str:
    """Names, sizes and times of the weight files: a re-run with other weights starts anew."""
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and p.suffix != ".md")
    return json.dumps(
        [[str(p.relative_to(model_dir)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    )


def run(args: argparse.Namespace) -> int:
    from clients.augment import run_options
    from clients.augment.options import AugmentOptions, validate
    from clients.augment.replicas import JobFailed
    from clients.augment.report import summary_lines
    from services.data import layout
    from services.data.phantoms import PHANTOM_NAME, ensure_bundled_dataset

    began = time.perf_counter()
    model_dir = args.model_dir or DEFAULT_MODEL_DIR
    steps, guidance, source = sampling_defaults(model_dir)
    steps, guidance = args.steps or steps, args.guidance or guidance
    # The default generator's class ids, when its folder has them.
    classes = generator_dir(model_dir) / "classes.json"
    names = available_services()
    missing = [n for n in DEFAULT_PORTS if n not in names]
    print(f"starting services: {', '.join(names)}")
    if missing:
        print(f"  not available in this checkout (skipped): {', '.join(missing)}")
    data = ensure_bundled_dataset(args.out / "data")
    out = args.out / "augmented"
    models = models_fingerprint(model_dir)
    stamp = out / ".augment" / "demo-models.json"
    if out.exists() and (args.fresh or not stamp.is_file() or stamp.read_text() != models):
        import shutil

        if not args.fresh:
            print("  the bundled models changed since the last demo: starting the set anew")
        shutil.rmtree(out)
    layout.atomic_write_bytes(stamp, models.encode())
    # A seeded classifier must know the dataset's classes (a trained one brings its own).
    n_classes = len(layout.load_dataset(data, PHANTOM_NAME, "train").classes)
    extra = {"filter": ["--num-classes", str(n_classes)]} if "filter" in names else {}
    with LocalCluster(names, args.model_dir, args.out / "logs", extra_args=extra) as cluster:
        targets = cluster.targets()
        print(f"  all SERVING after {time.perf_counter() - began:.0f}s: {targets}")
        options = AugmentOptions(
            dataset_root=data,
            name=PHANTOM_NAME,
            out=out,
            per_class=args.per_class,
            steps=steps,
            guidance=guidance,
            sampler=[targets["sampler"]],
            encoder=targets.get("condition_encoder"),
            motion=targets.get("motion_extractor"),
            filter=targets.get("filter"),
            no_filter="filter" not in targets,
            concurrency=args.concurrency,
            classes_file=classes if classes.is_file() else None,
            shard_index=0,
            shard_count=1,
        )
        validate(options)
        print(
            f"augmenting {PHANTOM_NAME}: {args.per_class} per class, {steps} steps, "
            f"guidance {guidance:g} ({source})"
        )
        try:
            result = run_options(options)
        except JobFailed as error:
            print(f"demo stopped: {error}; run it again to continue")
            return 1
        except ValueError as error:
            print(f"demo: {error}\n(`genaug demo --fresh` starts the augmented set anew)")
            return 2
    for line in summary_lines(result):
        print(line)
    print(f"  conditions from: {result.condition_sources or 'cache'}")
    print(
        f"  output:  {out} ({result.metadata_records} clips; "
        f"load_dataset('{out}', '{PHANTOM_NAME}', 'train'))"
    )
    print(f"  report:  {result.report_path}")
    print(f"  logs:    {args.out / 'logs'}; total {time.perf_counter() - began:.0f}s")
    return 0
