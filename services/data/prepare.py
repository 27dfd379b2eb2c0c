"""Ingest medical sequences into the seed layout (`genaug prepare`; its CLI is `clients.prepare`).

Pipeline per source item: read (readers) -> burned-in text masked or refused (burned_in) ->
intensity to [0, 1] per modality (intensity) -> resize and pad to a square (geometry) -> uint8
-> uniform clip sampling, clip/slice writing and a patient-level split (builder). Patients and
volumes are named only by salted pseudonyms; no DICOM identifying attribute reaches outputs or
logs. Items that are ingested are named by number and pseudonym in warnings and the summary;
only items that are *not* ingested (skipped, refused) are named by their path under the source,
so that the user can find them.

Errors raised here name this module's parameters (`size`, `ct_window`, `min_frames`, ...);
the CLI shows them as its flags.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from genaug.errors import InvalidArgument, NotFound
from services.data import builder, layout
from services.data.burned_in import BURNED_IN_MODES, mask_overlay, overlay_mask
from services.data.discover import SourceItem, discover
from services.data.geometry import DEFAULT_SIZE, UPSCALE_WARNING, check_size, fit_square
from services.data.intensity import IntensityConfig, normalize, to_uint8
from services.data.privacy import DEFAULT_SALT, pseudonym, volume_id
from services.data.readers import NIFTI_4D_MODES, read_source
from services.data.safety import check_name, check_outside
from services.data.sampling import SamplingConfig
from services.data.sequence import FrameSequence

logger = logging.getLogger(__name__)

MODALITY_CHOICES = ("auto", "ct", "mr", "us")
DEFAULT_SEED = 33


@dataclass(frozen=True)
class PrepareConfig:
    """Everything `prepare_dataset` needs besides paths (defaults: the reference's MosMed).

    `min_frames`: sources with fewer frames are skipped (with a warning); shorter than a clip
    (`sampling.required_clip_num`) they are padded with black frames, also with a warning.
    `burned_in`: `mask` (default), `refuse` or `keep` (see `services.data.burned_in`).
    """

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
    min_frames: int = 2
    burned_in: str = "mask"

    def validate(self) -> PrepareConfig:
        """Check every field, raising InvalidArgument that names the parameter."""
        check_size(self.size)
        self.sampling.validate()
        self.intensity.validate()
        if self.modality not in MODALITY_CHOICES:
            raise InvalidArgument("modality", f"must be one of {MODALITY_CHOICES}")
        if self.nifti_4d not in NIFTI_4D_MODES:
            raise InvalidArgument("nifti_4d", f"must be one of {NIFTI_4D_MODES}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise InvalidArgument("test_fraction", "must be in [0, 1)")
        if not self.pseudonym_salt:
            raise InvalidArgument("pseudonym_salt", "must not be empty")
        if not isinstance(self.min_frames, int) or self.min_frames < 2:
            raise InvalidArgument("min_frames", "must be an integer >= 2")
        if self.burned_in not in BURNED_IN_MODES:
            raise InvalidArgument("burned_in", f"must be one of {BURNED_IN_MODES}")
        return self


def preprocess(
    sequence: FrameSequence, size: int, intensity: IntensityConfig | None = None
) -> np.ndarray:
    """Normalise intensities for the sequence's modality and fit to a square: uint8 (T, S, S)."""
    unit = normalize(sequence.frames, sequence.modality, sequence.value_range, intensity)
    return to_uint8(fit_square(unit, size))


class _ItemFailed(Exception):
    """One item cannot be ingested; `error` names it (skipped with `skip_bad`)."""

    def __init__(self, error: InvalidArgument | NotFound):
        super().__init__(str(error))
        self.error = error


def _named(exc: InvalidArgument | NotFound, label: str) -> InvalidArgument | NotFound:
    """The same error, its message prefixed with the item it is about."""
    if isinstance(exc, InvalidArgument):
        tail = str(exc)[len(exc.field) + 2 :]
        return InvalidArgument(exc.field, f"{label}: {tail}")
    return NotFound(f"{label}: {exc}")


def _handle_burned_in(
    sequence: FrameSequence,
    mode: str,
    label: str,
    where: str,
    notes: list[str],
    warnings: list[str],
) -> None:
    """Mask, refuse or keep what may be burned-in text (mutates `sequence.frames`); `label`
    names an ingested item, `where` (its path) a refused one."""
    if sequence.text_risk != "possible":
        return
    if mode == "keep":
        warnings.append(f"{label}: may carry burned-in text; kept as is (`burned_in` keep)")
        return
    if mode == "refuse":
        if len(sequence.frames) < 2 or overlay_mask(sequence.frames, sequence.value_range).any():
            raise _ItemFailed(
                InvalidArgument(
                    "burned_in", f"{where}: shows burned-in text; refused (`burned_in` refuse)"
                )
            )
        notes.append("no burned-in text found")
        return
    sequence.frames, count = mask_overlay(sequence.frames, sequence.value_range)
    notes.append(f"masked {count} px of burned-in text" if count else "no burned-in text found")


class _Ingest:
    """The per-item loop of `prepare_dataset`: reads, checks, reports, writes."""

    def __init__(self, cfg: PrepareConfig, root: Path, writer: builder.DatasetWriter, total: int):
        self.cfg, self.root, self.writer, self.total = cfg, root, writer, total
        self.items: list[str] = []
        self.warnings: list[str] = []
        self.skipped = 0
        self.volumes = 0

    def skip(self, message: str) -> None:
        self.skipped += 1
        self.warnings.append(f"skipped {message}")
        logger.warning("skipping %s", message)

    def item(self, number: int, item: SourceItem) -> None:
        where = f"item {number} of {self.total} ({item.rel})"  # only shown if not ingested
        try:
            try:
                sequences = read_source(
                    item.path,
                    self.root,
                    modality=item.modality or self.cfg.modality,
                    nifti_4d=self.cfg.nifti_4d,
                )
            except (InvalidArgument, NotFound) as exc:
                raise _ItemFailed(_named(exc, where)) from None
            for sequence in sequences:
                self.sequence(number, item, sequence, where)
        except _ItemFailed as failed:
            if not self.cfg.skip_bad:
                raise failed.error from None
            self.skip(str(failed.error))

    def sequence(self, number: int, item: SourceItem, sequence: FrameSequence, where: str) -> None:
        cfg = self.cfg
        key = f"dicom:{sequence.patient_key}" if sequence.patient_key else f"path:{item.rel}"
        patient = pseudonym(key, cfg.pseudonym_salt)
        volume = volume_id(patient, f"{item.rel}#{sequence.part}", cfg.pseudonym_salt)
        label = f"item {number} ({volume})"
        n_frames, height, width = sequence.frames.shape
        if n_frames < cfg.min_frames:
            self.skip(f"{where}: {n_frames} frames, fewer than `min_frames` {cfg.min_frames}")
            return
        notes = list(sequence.notes)
        warnings: list[str] = []
        _handle_burned_in(sequence, cfg.burned_in, label, where, notes, warnings)
        required = cfg.sampling.required_clip_num
        if n_frames < required:
            warnings.append(
                f"{label}: {n_frames} frames; its clip is padded with {required - n_frames} "
                f"black frames to {required} (`min_frames` {required} would skip it)"
            )
        scale = cfg.size / max(height, width)
        if scale > UPSCALE_WARNING:
            warnings.append(
                f"{label}: {max(height, width)} px source enlarged {scale:.1f}x to `size` "
                f"{cfg.size}"
            )
        extra: dict[str, object] = {"modality": sequence.modality}
        if sequence.part:
            extra["part"] = sequence.part
        if sequence.fps:
            extra["source_fps"] = round(float(sequence.fps), 3)
        n_clips = self.writer.add_sequence(
            preprocess(sequence, cfg.size, cfg.intensity),
            cls=item.cls,
            patient=patient,
            volume=volume,
            text=item.text,
            extra=extra,
        )
        self.volumes += 1
        detail = "; ".join(notes)
        self.items.append(
            f"{label}: class {item.cls}, {sequence.modality} ({sequence.modality_source}), "
            f"{n_frames} frames -> {n_clips} clip(s)" + (f"; {detail}" if detail else "")
        )
        for message in warnings:
            logger.warning(message)
        self.warnings.extend(warnings)


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
        dataset_root: output root; must not be at or inside `source`, and `source` must not be
            inside the dataset folders this run replaces.
        name: dataset name `<DS>`.
        labels: optional CSV/JSONL labels file.
        class_name: class for unlabelled items.
        config: preprocessing, sampling, split and privacy settings.

    Returns:
        The dataset summary (clips per class per split, one line per item, the warnings).

    Raises:
        InvalidArgument, NotFound: bad arguments or a bad source item (unless `skip_bad`),
            naming the item; nothing is left under `dataset_root` in that case.
    """
    cfg = (config or PrepareConfig()).validate()
    check_name(name)
    found = discover(source, labels, class_name, skip_bad=cfg.skip_bad)
    check_outside(dataset_root, "dataset_root", Path(source), "source")
    for kind in layout.KINDS:
        check_outside(found.root, "source", layout.dataset_dir(dataset_root, name, kind), "name")
    for message in found.skipped:
        logger.warning("skipping %s", message)
    if not found.items:
        raise InvalidArgument("source", "no source items found")
    with builder.DatasetWriter(
        dataset_root, name, sampling=cfg.sampling, overwrite=cfg.overwrite
    ) as writer:
        ingest = _Ingest(cfg, found.root, writer, len(found.items))
        ingest.warnings.extend(f"skipped {m}" for m in found.skipped)
        ingest.skipped += len(found.skipped)
        for number, item in enumerate(
            tqdm(found.items, desc="prepare", disable=not cfg.progress), start=1
        ):
            ingest.item(number, item)
        manifest = {
            "generator": "prepare",
            "size": cfg.size,
            "modality": cfg.modality,
            "ct_window": list(cfg.intensity.ct_window),
            "mr_percentiles": list(cfg.intensity.mr_percentiles),
            "nifti_4d": cfg.nifti_4d,
            "min_frames": cfg.min_frames,
            "burned_in": cfg.burned_in,
            "pseudonymised": True,
        }
        summary = writer.commit(
            test_fraction=cfg.test_fraction,
            seed=cfg.seed,
            manifest=manifest,
            skipped=ingest.skipped,
        )
    summary.items = ingest.items
    summary.warnings = ingest.warnings + summary.warnings
    logger.info("prepared %d sequences from %d source items", ingest.volumes, len(found.items))
    return summary
