"""`genaug study`: does generative augmentation help? Arms with confidence intervals.

For two sizes of the real training set (a low-data fraction and the full set), train the video
classifier with several seeds on: (a) real clips only; (b) real + conventional augmentation;
(c) real + unfiltered synthetic clips; (d) real + synthetic clips the reference's filter keeps;
(e) the same with the per-class VAE-Seq band and with a band from the real clips' own VAE-Seq.
Each regime's generator, VAE and filter classifier are trained on that regime's training clips
only; its synthetic clips are made through the services (`genaug augment`). Evaluated in-domain
(the dataset's test split) and out-of-domain (another dataset's test split), with paired 95%
intervals of every arm's difference to (a); plus generation quality and a memorisation audit.
Writes `<out>/report/index.md` (+ PNGs, results.json) and prints the main table.

On the bundled benchmark (generated when no dataset is given; `make study`):

    genaug study --out runs/study

On your own data (prepared with `genaug prepare`; an out-of-domain set is optional, e.g. the
same protocol from another scanner or site, prepared the same way):

    genaug study --dataset-root data --name Echo --ood-root data --ood-name EchoSiteB \\
        --out runs/study-echo --budget-minutes 120

Every phase resumes from what it wrote under `--out`; `--budget-minutes` scales the training
steps and pool sizes of the 60-minute plan (2 CPU cores).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

PLAN_MINUTES = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.epilog = "\n".join(__doc__.splitlines()[2:])
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    a = parser.add_argument
    a("--dataset-root", type=Path, help="prepared dataset root (default: the bundled benchmark)")
    a("--name", help="dataset name <DS> (default PhantomHard)")
    a("--ood-root", type=Path, help="root of the out-of-domain dataset (default: --dataset-root)")
    a(
        "--ood-name",
        help="out-of-domain dataset, evaluated on its test split (bundled: "
        "PhantomHardOOD); none: in-domain only",
    )
    a("--out", type=Path, default=Path("runs/study"), help="study folder (default runs/study)")
    a(
        "--budget-minutes",
        type=float,
        default=PLAN_MINUTES,
        help="scale training steps and pools to this many minutes of the 2-core plan (60)",
    )
    a("--seeds", type=int, default=5, help="seeds per arm and regime (default 5)")
    a(
        "--low-fraction",
        type=float,
        default=0.25,
        help="low-data share of each class's training patients (at least 2; default 0.25)",
    )
    a(
        "--arms",
        nargs="+",
        help="arms to run (default a-real b-conventional c-unfiltered "
        "d-filtered e-class-band e-real-band; f-memorisation adds the memorisation level)",
    )
    a(
        "--pool-per-class",
        type=int,
        nargs=2,
        metavar=("LOW", "FULL"),
        help="synthetic clips generated per class and regime (default 20 30, budget-scaled)",
    )
    a("--synthetic-cap", type=int, help="at most this many synthetic clips per class and arm")
    a("--steps", type=int, default=25, help="DDIM steps per generated clip (default 25)")
    a("--guidance", type=float, default=3.0, help="classifier-free guidance (default 3)")
    a("--classifier-steps", type=int, help="downstream classifier steps (default 120, scaled)")
    a(
        "--workers",
        type=int,
        default=2,
        help="processes for the parallel phases: VAE beside the conditions, the regimes' "
        "models, the classifiers (default 2)",
    )
    a("--threads", type=int, default=1, help="torch threads per process (default 1)")
    a("--no-progress", dest="progress", action="store_false", help="no progress bars")


def config_from(args: argparse.Namespace):
    """The StudyConfig of the flags (generating the bundled benchmark when needed)."""
    from clients.study.arms import DEFAULT_ARMS
    from clients.study.classify import ClassifierRecipe
    from clients.study.generator import GeneratorRecipe
    from clients.study.pipeline import StudyConfig

    if args.budget_minutes <= 0:
        raise ValueError("--budget-minutes must be > 0")
    scale = args.budget_minutes / PLAN_MINUTES
    root, name, ood_root, ood_name = args.dataset_root, args.name, args.ood_root, args.ood_name
    if root is None:
        from services.data import phantoms_hard

        root = args.out / "data"
        name = name or phantoms_hard.HARD_NAME
        if not (root / f"{name}_volume").is_dir():
            phantoms_hard.generate_hard_benchmark(root, name=name)
        ood_name = ood_name or phantoms_hard.ood_name(name)
    elif not name:
        raise ValueError("--name is needed with --dataset-root")
    pools = args.pool_per_class or (20, 30)
    if args.pool_per_class is None:
        pools = tuple(max(1, round(p * min(1.0, scale))) for p in pools)
    classifier_steps = args.classifier_steps or max(1, round(ClassifierRecipe.steps * scale))
    return StudyConfig(
        dataset_root=Path(root),
        name=name,
        out=args.out,
        ood_root=Path(ood_root or root) if ood_name else None,
        ood_name=ood_name,
        low_fraction=args.low_fraction,
        seeds=args.seeds,
        arms=tuple(args.arms or DEFAULT_ARMS),
        pool_per_class={"low": pools[0], "full": pools[1]},
        synthetic_cap=args.synthetic_cap,
        sampling_steps=args.steps,
        guidance=args.guidance,
        generator=GeneratorRecipe(threads=args.threads).scaled(scale),
        classifier=ClassifierRecipe(steps=classifier_steps),
        workers=args.workers,
        threads=args.threads,
        progress=args.progress,
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from clients.study.pipeline import run_study
    from clients.study.report import summary_lines

    try:
        config = config_from(args)
    except ValueError as error:
        print(f"genaug study: {error}")
        return 2
    torch.set_num_threads(args.threads)
    path = run_study(config)
    for line in summary_lines(path.parent):
        print(line)
    print(f"report: {path}")
    return 0
