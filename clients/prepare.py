"""`genaug prepare`: the command line of `services.data.prepare` and of the bundled phantoms.

The data layer names its own parameters in errors (`size`, `ct_window`); this module shows them
as flags (`--size`, `--ct-window`) through `clients.cli.user_message`.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from clients.cli import EXIT_BAD_INPUT, EXIT_OK, option_flags, user_message
from genaug.errors import GenaugError, InvalidArgument
from services.data import builder, phantoms
from services.data.burned_in import BURNED_IN_MODES
from services.data.geometry import DEFAULT_SIZE, MAX_SIZE
from services.data.intensity import IntensityConfig
from services.data.prepare import DEFAULT_SEED, MODALITY_CHOICES, PrepareConfig, prepare_dataset
from services.data.privacy import DEFAULT_SALT
from services.data.readers import NIFTI_4D_MODES
from services.data.sampling import SamplingConfig

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the `genaug prepare` flags."""
    parser.add_argument("--source", help="file or folder to ingest (folder per class allowed)")
    parser.add_argument(
        "--dataset-root", "--out", dest="dataset_root", required=True, help="output root"
    )
    parser.add_argument("--name", help="dataset name DS (default Phantom with --phantoms)")
    parser.add_argument(
        "--modality",
        choices=MODALITY_CHOICES,
        default="auto",
        help="auto (default): DICOM tag, NIfTI header or intensities, reported per item",
    )
    parser.add_argument(
        "--labels", help="CSV or JSONL: source -> class (cls), optional text and modality"
    )
    parser.add_argument("--class-name", help="class for unlabelled sources (default unlabelled)")
    parser.add_argument(
        "--size", type=int, help=f"square output side, even, 16-{MAX_SIZE} (256; phantoms 64)"
    )
    parser.add_argument("--frames-per-clip", type=int, help="window length (15; phantoms 8)")
    parser.add_argument("--clip-sampling-interval", type=int, default=1, help="(default 1)")
    parser.add_argument(
        "--required-clip-num", type=int, default=8, help="frames per output clip (default 8)"
    )
    parser.add_argument("--max-clips", type=int, default=10, help="max clips/volume (10)")
    parser.add_argument(
        "--min-frames",
        type=int,
        default=2,
        help="skip sources with fewer frames (default 2); shorter than --required-clip-num "
        "they are padded with black frames, with a warning",
    )
    parser.add_argument(
        "--burned-in",
        choices=BURNED_IN_MODES,
        default="mask",
        help="text drawn into ultrasound or video pixels outside any ultrasound region: mask "
        "(default) what the static-overlay detector finds, refuse such items, or keep it",
    )
    parser.add_argument(
        "--ct-window", type=float, nargs=2, metavar=("LOW", "HIGH"), default=(-1000.0, 400.0)
    )
    parser.add_argument(
        "--mr-percentiles", type=float, nargs=2, metavar=("LOW", "HIGH"), default=(0.5, 99.5)
    )
    parser.add_argument("--nifti-4d", choices=NIFTI_4D_MODES, default="middle-slice")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="(default 0.2)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="split/phantom seed (33)")
    parser.add_argument(
        "--pseudonym-salt",
        default=os.environ.get("GENAUG_PSEUDONYM_SALT", DEFAULT_SALT),
        help=f"salt of the patient pseudonyms (env GENAUG_PSEUDONYM_SALT; default {DEFAULT_SALT!r}"
        "; use a secret one for real patient data)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    parser.add_argument(
        "--skip-bad", action="store_true", help="skip any item that cannot be ingested"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--phantoms", action="store_true", help="generate the bundled phantom dataset instead"
    )


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


def _run_phantoms(args: argparse.Namespace) -> builder.Summary:
    name = args.name or phantoms.PHANTOM_NAME
    current = builder.read_manifest(args.dataset_root, name) or {}
    return phantoms.generate_phantom_dataset(
        args.dataset_root,
        args.seed,
        _given(args.size, 64),
        name=name,
        frames_per_clip=_given(args.frames_per_clip, 8),
        test_fraction=args.test_fraction,
        overwrite=args.overwrite or current.get("generator") == phantoms.GENERATOR,
        progress=not args.no_progress,
    )


def config_from(args: argparse.Namespace) -> PrepareConfig:
    """The `PrepareConfig` the flags describe."""
    return PrepareConfig(
        size=_given(args.size, DEFAULT_SIZE),
        modality=args.modality,
        sampling=SamplingConfig(
            _given(args.frames_per_clip, 15),
            args.clip_sampling_interval,
            args.required_clip_num,
            args.max_clips,
        ),
        intensity=IntensityConfig(tuple(args.ct_window), tuple(args.mr_percentiles)),
        nifti_4d=args.nifti_4d,
        test_fraction=args.test_fraction,
        seed=args.seed,
        pseudonym_salt=args.pseudonym_salt,
        overwrite=args.overwrite,
        skip_bad=args.skip_bad,
        progress=not args.no_progress,
        min_frames=args.min_frames,
        burned_in=args.burned_in,
    )


def _flags() -> dict[str, str]:
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return option_flags(parser)


def run(args: argparse.Namespace) -> int:
    """Run `genaug prepare`; returns 0, or 2 after logging a bad-input error (with flags)."""
    try:
        if args.phantoms:
            summary = _run_phantoms(args)
        else:
            if not args.source:
                raise InvalidArgument("source", "required unless `phantoms`")
            if not args.name:
                raise InvalidArgument("name", "required unless `phantoms`")
            summary = prepare_dataset(
                args.source,
                args.dataset_root,
                args.name,
                labels=args.labels,
                class_name=args.class_name,
                config=config_from(args),
            )
    except GenaugError as exc:
        logger.error("prepare failed: %s", user_message(exc, _flags()))
        return EXIT_BAD_INPUT
    print(user_message(Exception(summary.format()), _flags()))
    print(f"written under {Path(args.dataset_root).resolve()}")
    return EXIT_OK
