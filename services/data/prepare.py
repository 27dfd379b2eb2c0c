"""`genaug prepare`: ingest medical sequences (or generate the phantoms) into the seed layout.

Pipeline per source item: read (readers) -> intensity to [0, 1] per modality (intensity) ->
resize and pad to a square (geometry) -> uint8 -> uniform clip sampling, clip/slice writing and
a patient-level split (builder). Patients and volumes are named only by salted pseudonyms; no
DICOM identifying attribute or source file name reaches outputs or logs.

The CLI is a thin layer over `prepare_dataset` and `phantoms.generate_phantom_dataset`.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from genaug.errors import GenaugError, InvalidArgument, NotFound
from services.data import builder, phantoms
from services.data.discover import discover
from services.data.geometry import DEFAULT_SIZE, check_size, fit_square
from services.data.intensity import IntensityConfig, normalize, to_uint8
from services.data.privacy import DEFAULT_SALT, pseudonym, volume_id
from services.data.readers import NIFTI_4D_MODES, read_source
from services.data.safety import check_name
from services.data.sampling import SamplingConfig
from services.data.sequence import FrameSequence

logger = logging.getLogger(__name__)

MODALITY_CHOICES = ("auto", "ct", "mr", "us")
DEFAULT_SEED = 33


@dataclass(frozen=True)
class PrepareConfig:
    """Everything `prepare_dataset` needs besides paths (defaults: the reference's MosMed)."""

    size: int = DEFAULT_SIZE
    modality: str = "auto"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    intensity: IntensityConfig = field(default_factory=IntensityConfig)
    nifti_4d: str = "middle-slice"
    test_fraction: float = 0.2
    seed: int = DEFAULT_SEED
    pseudonym_salt: str = DEFAULT_SALT
    overwrite: bool = False
    skip_bad: bool = False
    progress: bool = True

    def validate(self) -> PrepareConfig:
        """Check every field, raising InvalidArgument that names the CLI flag."""
        check_size(self.size)
        self.sampling.validate()
        self.intensity.validate()
        if self.modality not in MODALITY_CHOICES:
            raise InvalidArgument("--modality", f"must be one of {MODALITY_CHOICES}")
        if self.nifti_4d not in NIFTI_4D_MODES:
            raise InvalidArgument("--nifti-4d", f"must be one of {NIFTI_4D_MODES}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise InvalidArgument("--test-fraction", "must be in [0, 1)")
        if not self.pseudonym_salt:
            raise InvalidArgument("--pseudonym-salt", "must not be empty")
        return self


def preprocess(
    sequence: FrameSequence, size: int, intensity: IntensityConfig | None = None
) -> np.ndarray:
    """Normalise intensities for the sequence's modality and fit to a square: uint8 (T, S, S)."""
    unit = normalize(sequence.frames, sequence.modality, sequence.value_range, intensity)
    return to_uint8(fit_square(unit, size))


def prepare_dataset(
    source: str | os.PathLike,
    dataset_root: str | os.PathLike,
    name: str,
    *,
    labels: str | os.PathLike | None = None,
    class_name: str | None = None,
    config: PrepareConfig | None = None,
) -> builder.Summary:
    """Ingest `source` into `<dataset_root>/<name>_{data,volume}/` (the seed layout).

    Args:
        source: a file or folder (see `discover` for labelling).
        dataset_root: output root.
        name: dataset name `<DS>`.
        labels: optional CSV/JSONL labels file.
        class_name: class for unlabelled items.
        config: preprocessing, sampling, split and privacy settings.

    Returns:
        The dataset summary (clips per class per split).

    Raises:
        InvalidArgument, NotFound: bad arguments or a bad source (unless `skip_bad`); nothing
            is left under `dataset_root` in that case.
    """
    cfg = (config or PrepareConfig()).validate()
    check_name(name)
    root, items = discover(source, labels, class_name)
    if not items:
        raise InvalidArgument("--source", "no source items found")
    skipped = 0
    volumes = 0
    with builder.DatasetWriter(
        dataset_root, name, sampling=cfg.sampling, overwrite=cfg.overwrite
    ) as writer:
        for number, item in enumerate(tqdm(items, desc="prepare", disable=not cfg.progress)):
            try:
                sequences = read_source(
                    item.path, root, modality=cfg.modality, nifti_4d=cfg.nifti_4d
                )
            except (InvalidArgument, NotFound) as exc:
                if not cfg.skip_bad:
                    raise
                skipped += 1
                logger.warning("skipping source item %d of %d: %s", number + 1, len(items), exc)
                continue
            for sequence in sequences:
                key = f"dicom:{sequence.patient_key}" if sequence.patient_key else ""
                key = key or f"path:{item.rel}"
                patient = pseudonym(key, cfg.pseudonym_salt)
                volume = volume_id(patient, f"{item.rel}#{sequence.part}", cfg.pseudonym_salt)
                extra: dict[str, object] = {"modality": sequence.modality}
                if sequence.part:
                    extra["part"] = sequence.part
                if sequence.fps:
                    extra["source_fps"] = round(float(sequence.fps), 3)
                n_clips = writer.add_sequence(
                    preprocess(sequence, cfg.size, cfg.intensity),
                    cls=item.cls,
                    patient=patient,
                    volume=volume,
                    text=item.text,
                    extra=extra,
                )
                volumes += 1
                logger.debug("%s: %d frames -> %d clips", volume, len(sequence.frames), n_clips)
        manifest = {
            "generator": "prepare",
            "size": cfg.size,
            "modality": cfg.modality,
            "ct_window": list(cfg.intensity.ct_window),
            "mr_percentiles": list(cfg.intensity.mr_percentiles),
            "nifti_4d": cfg.nifti_4d,
            "pseudonymised": True,
        }
        summary = writer.commit(
            test_fraction=cfg.test_fraction, seed=cfg.seed, manifest=manifest, skipped=skipped
        )
    logger.info("prepared %d sequences from %d source items", volumes, len(items) - skipped)
    return summary


# ---------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the `genaug prepare` flags."""
    parser.add_argument("--source", help="file or folder to ingest (folder per class allowed)")
    parser.add_argument(
        "--dataset-root", "--out", dest="dataset_root", required=True, help="output root"
    )
    parser.add_argument("--name", help="dataset name DS (default Phantom with --phantoms)")
    parser.add_argument("--modality", choices=MODALITY_CHOICES, default="auto")
    parser.add_argument("--labels", help="CSV or JSONL: source -> class (cls), optional text")
    parser.add_argument("--class-name", help="class for unlabelled sources (default unlabelled)")
    parser.add_argument("--size", type=int, help="square output side (256; phantoms 64)")
    parser.add_argument("--frames-per-clip", type=int, help="window length (15; phantoms 8)")
    parser.add_argument("--clip-sampling-interval", type=int, default=1, help="(default 1)")
    parser.add_argument(
        "--required-clip-num", type=int, default=8, help="frames per output clip (default 8)"
    )
    parser.add_argument("--max-clips", type=int, default=10, help="max clips/volume (10)")
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
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable sources")
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


def run(args: argparse.Namespace) -> int:
    """Run `genaug prepare`; returns 0, or 2 after logging a bad-input error."""
    try:
        if args.phantoms:
            summary = _run_phantoms(args)
        else:
            if not args.source:
                raise InvalidArgument("--source", "required unless --phantoms")
            if not args.name:
                raise InvalidArgument("--name", "required unless --phantoms")
            config = PrepareConfig(
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
            )
            summary = prepare_dataset(
                args.source,
                args.dataset_root,
                args.name,
                labels=args.labels,
                class_name=args.class_name,
                config=config,
            )
    except GenaugError as exc:
        logger.error("prepare failed: %s", exc)
        return 2
    print(summary.format())
    print(f"written under {Path(args.dataset_root).resolve()}")
    return 0
