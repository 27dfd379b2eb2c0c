"""The bundled benchmark dataset: cardiac-cine-like short-axis phantoms, made by our own code.

Each patient is an echo-like short-axis cine: a bright myocardial ring around a dark blood pool,
inside an ultrasound fan, with speckle, depth attenuation and noise. Classes differ in both
appearance and motion (ACDC-style names):

| class | cavity | wall | contraction |
|---|---|---|---|
| NOR (normal) | normal | normal | strong, uniform |
| HCM (hypertrophic) | small | thick | strong, uniform |
| DCM (dilated, minority, ~1/3) | large | thin | weak, regionally uneven |

The wall keeps its area while the cavity contracts, so it thickens in systole as a real
myocardium does. Per patient, position, size, ellipticity, heart period and phase are jittered.
Everything is drawn from `numpy.random.default_rng` seeded per patient, so the same seed gives
byte-identical files. Defaults (64x64, 8-frame clips, 91 patients, 2 clips each) give about 144
train and 38 test clips in a couple of seconds.

`PhantomStyle` holds the acquisition (gain, speckle, noise, field of view, frame rate) and the
spread of the per-patient jitter; its defaults are the bundled Phantom's. Other styles and class
ranges make other benchmarks from the same code (`services.data.phantoms_hard`).
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from genaug.errors import InvalidArgument
from services.data import builder
from services.data.geometry import check_size
from services.data.intensity import to_uint8
from services.data.privacy import pseudonym, volume_id
from services.data.sampling import SamplingConfig

logger = logging.getLogger(__name__)

PHANTOM_NAME = "Phantom"
PHANTOM_SEED = 33
GENERATOR = "cardiac-cine-phantom"
GENERATOR_VERSION = 2
PATIENTS_PER_CLASS = {"NOR": 39, "HCM": 39, "DCM": 13}
"""Default patients per class; DCM is the minority (1/3 of the others)."""

# Ranges at 64 px: end-diastolic cavity radius, wall thickness, fractional radial shortening,
# regional variation of that shortening (0 = uniform).
_CLASS_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "NOR": {"cavity": (10.0, 12.5), "wall": (3.8, 5.0), "contraction": (0.28, 0.36),
            "asymmetry": (0.0, 0.1)},
    "HCM": {"cavity": (6.0, 8.0), "wall": (7.0, 9.0), "contraction": (0.34, 0.44),
            "asymmetry": (0.0, 0.12)},
    "DCM": {"cavity": (14.5, 17.0), "wall": (2.2, 3.2), "contraction": (0.06, 0.13),
            "asymmetry": (0.25, 0.5)},
}  # fmt: skip
ClassRanges = dict[str, dict[str, tuple[float, float]]]
BUNDLED_CLASS_RANGES: ClassRanges = _CLASS_RANGES
"""The bundled classes' attribute ranges (other benchmarks derive theirs from them)."""


@dataclass(frozen=True)
class PhantomStyle:
    """Acquisition and per-patient variation of a phantom dataset; the defaults are the bundled
    Phantom's (lengths in pixels at 64 px).

    Attributes:
        position_jitter: Heart centre jitter, uniform in +-this.
        scale_range, ellipticity_range: Per-patient heart size factor and ellipticity.
        myo_level_range: Myocardial echo level.
        period_range: Heart period in frames (a lower frame rate means fewer frames per beat).
        speckle_sigma: Speckle grain (Gaussian sigma of the complex noise).
        speckle_depth: Depth of speckle modulation of the tissue.
        speckle_frame_share: Share of the speckle drawn anew in every frame.
        noise_std: Additive noise.
        attenuation: Loss of brightness from the top to the bottom of the image.
        gain: Overall gain.
        zoom: Field of view: below 1 a wider field (the heart smaller), above 1 a narrower one.
        fan_degrees: Half-angle of the ultrasound fan.
        patient_spread: Extra per-patient variation, each drawn from its own stream so the
            defaults (all zero) leave the bundled dataset unchanged: `gain` (log-normal sigma),
            `noise` (relative, uniform +-), `speckle` (relative grain size, uniform +-).
    """

    position_jitter: float = 4.0
    scale_range: tuple[float, float] = (0.92, 1.08)
    ellipticity_range: tuple[float, float] = (0.9, 1.1)
    myo_level_range: tuple[float, float] = (0.7, 0.82)
    period_range: tuple[float, float] = (9.0, 13.0)
    speckle_sigma: float = 2.5
    speckle_depth: float = 0.4
    speckle_frame_share: float = 0.1
    noise_std: float = 0.01
    attenuation: float = 0.35
    gain: float = 1.0
    zoom: float = 1.0
    fan_degrees: float = 42.0
    patient_spread: dict[str, float] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        """The style as JSON-serialisable values (for the dataset manifest)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


DEFAULT_STYLE = PhantomStyle()


@dataclass(frozen=True)
class PhantomAttributes:
    """Generating attributes of one phantom patient (lengths in pixels at 64 px)."""

    cls: str
    patient_seed: int
    cavity_radius: float
    wall_thickness: float
    contraction: float
    asymmetry: float
    period: float
    phase: float
    n_frames: int

    def metadata(self) -> dict[str, float | int | str]:
        """Attributes as metadata keys (floats rounded to 4 decimals)."""
        values = asdict(self)
        values.pop("cls")
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}


def sample_attributes(
    cls: str,
    patient_seed: int,
    class_ranges: ClassRanges | None = None,
    style: PhantomStyle = DEFAULT_STYLE,
) -> PhantomAttributes:
    """Draw one patient's attributes for class `cls` from its own seed."""
    rng = np.random.default_rng(patient_seed)
    ranges = (class_ranges or _CLASS_RANGES)[cls]
    return PhantomAttributes(
        cls=cls,
        patient_seed=patient_seed,
        cavity_radius=float(rng.uniform(*ranges["cavity"])),
        wall_thickness=float(rng.uniform(*ranges["wall"])),
        contraction=float(rng.uniform(*ranges["contraction"])),
        asymmetry=float(rng.uniform(*ranges["asymmetry"])),
        period=float(rng.uniform(*style.period_range)),
        phase=float(rng.uniform(0.0, 2.0 * math.pi)),
        n_frames=int(rng.integers(16, 21)),
    )


def describe(attrs: PhantomAttributes) -> str:
    """A short text description derived from the generating attributes."""
    if attrs.wall_thickness >= 6.0:
        wall = "Thick myocardial wall"
    elif attrs.wall_thickness < 3.5:
        wall = "Thin myocardial wall"
    else:
        wall = "Normal myocardial wall thickness"
    strength = "strong" if attrs.contraction >= 0.25 else "weak"
    pattern = "regionally uneven" if attrs.asymmetry >= 0.2 else "uniform"
    if attrs.cavity_radius < 9.0:
        cavity = "small cavity"
    elif attrs.cavity_radius > 14.0:
        cavity = "large cavity"
    else:
        cavity = "normal-sized cavity"
    return f"{wall} with {strength} {pattern} contraction; {cavity}."


def _speckle(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Fully developed speckle: magnitude of smoothed complex Gaussian noise, mean 1."""
    real = rng.standard_normal(shape).astype(np.float32)
    imag = rng.standard_normal(shape).astype(np.float32)
    if len(shape) == 2:
        real, imag = real[None], imag[None]
    out = np.empty(real.shape, np.float32)
    for i in range(real.shape[0]):
        re = cv2.GaussianBlur(real[i], (0, 0), sigma)
        im = cv2.GaussianBlur(imag[i], (0, 0), sigma)
        out[i] = np.sqrt(re * re + im * im)
    out /= out.mean()
    return out.reshape(shape)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _patient_factors(attrs: PhantomAttributes, style: PhantomStyle) -> tuple[float, float, float]:
    """(gain, noise, speckle grain) factors of `style.patient_spread`, from their own stream."""
    spread = style.patient_spread
    if not spread:
        return 1.0, 1.0, 1.0
    rng = np.random.default_rng([attrs.patient_seed, 2])
    gain = float(np.exp(rng.normal(0.0, spread.get("gain", 0.0))))
    noise = 1.0 + float(rng.uniform(-1.0, 1.0)) * spread.get("noise", 0.0)
    grain = 1.0 + float(rng.uniform(-1.0, 1.0)) * spread.get("speckle", 0.0)
    return gain, noise, grain


def render_sequence(
    attrs: PhantomAttributes, size: int = 64, style: PhantomStyle = DEFAULT_STYLE
) -> np.ndarray:
    """Render one patient's cine as float32 (T, size, size) in [0, 1]."""
    rng = np.random.default_rng([attrs.patient_seed, 1])
    gain, noise, grain = _patient_factors(attrs, style)
    k = size / 64.0
    jitter = rng.uniform(-style.position_jitter, style.position_jitter, 2) * k
    cx, cy = size * 0.5 + jitter[0], size * 0.56 + jitter[1]
    scale = rng.uniform(*style.scale_range) * k * style.zoom
    ellipticity = rng.uniform(*style.ellipticity_range)
    angle = rng.uniform(0.0, math.pi)
    weak_wall = rng.uniform(-math.pi, math.pi)
    myo_level = rng.uniform(*style.myo_level_range)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = xx - cx, yy - cy
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    rho = np.sqrt((u / ellipticity) ** 2 + (v * ellipticity) ** 2)[None]
    theta = np.arctan2(v, u)[None]

    t = np.arange(attrs.n_frames, dtype=np.float32)[:, None, None]
    systole = 0.5 * (1.0 - np.cos(2.0 * math.pi * t / attrs.period + attrs.phase))
    local = attrs.contraction * (1.0 + attrs.asymmetry * np.cos(theta - weak_wall))
    r_ed = attrs.cavity_radius * scale
    outer_ed = (attrs.cavity_radius + attrs.wall_thickness) * scale
    cavity = r_ed * (1.0 - np.clip(local, 0.0, 0.9) * systole)
    epicardium = np.sqrt(cavity**2 + outer_ed**2 - r_ed**2)  # wall area is conserved
    edge = 0.7 * k
    outside_cavity = _sigmoid((rho - cavity) / edge)
    inside_epi = _sigmoid((epicardium - rho) / edge)
    myocardium = outside_cavity * inside_epi
    pericardium = np.exp(-(((rho - epicardium - 2.5 * k) / (1.3 * k)) ** 2))

    texture = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 4 * k)
    tissue_level = 0.3 + 0.12 * texture / (np.abs(texture).max() + 1e-6)
    image = (
        (1.0 - outside_cavity) * 0.05
        + myocardium * myo_level
        + outside_cavity * (1.0 - inside_epi) * (tissue_level + 0.25 * pericardium)
    )
    # Speckle at the resolution cell of a low-frequency probe (grains of about 5 px at 64 px),
    # mostly fixed per patient with a small per-frame part, at 40% depth of modulation.
    grain_sigma = style.speckle_sigma * grain * k
    share = style.speckle_frame_share
    speckle = (1.0 - share) * _speckle(rng, (size, size), grain_sigma) + share * _speckle(
        rng, (attrs.n_frames, size, size), grain_sigma
    )
    depth = style.speckle_depth
    image = image * ((1.0 - depth) + depth * speckle) * (1.0 - style.attenuation * yy / size)
    if style.gain * gain != 1.0:
        image = image * np.float32(style.gain * gain)
    image = image + rng.normal(0.0, style.noise_std * noise, image.shape).astype(np.float32)
    # Ultrasound fan: apex above the top edge, +-fan_degrees around the vertical.
    ax, ay = size * 0.5, -0.12 * size
    fan_angle = np.abs(np.arctan2(xx - ax, yy - ay))
    fan_radius = np.hypot(xx - ax, yy - ay)
    fan = _sigmoid((math.radians(style.fan_degrees) - fan_angle) * 40.0) * _sigmoid(
        (1.2 * size - fan_radius) / k
    )
    return np.clip(image * fan, 0.0, 1.0).astype(np.float32)


def phantom_manifest(
    seed: int,
    size: int,
    patients_per_class: dict[str, int],
    frames_per_clip: int,
    variant: dict[str, object] | None = None,
) -> dict[str, object]:
    """The manifest keys that identify a phantom dataset (compared by `ensure_bundled_dataset`);
    `variant` (another benchmark's ranges and style) is recorded when given."""
    manifest: dict[str, object] = {
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "patients_per_class": dict(patients_per_class),
        "frames_per_clip": frames_per_clip,
    }
    if variant is not None:
        manifest["variant"] = variant
    return manifest


def generate_phantom_dataset(
    root: str | os.PathLike,
    seed: int = PHANTOM_SEED,
    size: int = 64,
    *,
    name: str = PHANTOM_NAME,
    patients_per_class: dict[str, int] | None = None,
    frames_per_clip: int = 8,
    test_fraction: float = 0.2,
    overwrite: bool = True,
    progress: bool = False,
    class_ranges: ClassRanges | None = None,
    style: PhantomStyle = DEFAULT_STYLE,
    variant: str | None = None,
) -> builder.Summary:
    """Generate the phantom dataset in the seed layout under `root`.

    Each patient's cine (16-20 frames) gives up to 2 clips of `frames_per_clip` consecutive
    frames (reference ACDC sampling: interval 0, max 2 clips); the split is patient-level and
    stratified. Every clip and slice line carries the generating attributes.

    Args:
        root: the dataset root.
        seed: dataset seed; the same seed gives byte-identical files.
        size: frame side in pixels (even).
        name: dataset name `<DS>`.
        patients_per_class: class -> number of patients (default `PATIENTS_PER_CLASS`).
        frames_per_clip: frames per clip (<= 16).
        test_fraction: share of each class's patients in `test`.
        overwrite: replace an existing dataset of the same name.
        progress: show a tqdm bar.
        class_ranges: per-class attribute ranges (default: the bundled ones).
        style: acquisition and per-patient variation (default: the bundled one).
        variant: name of a non-bundled benchmark; it salts the patients' pseudonyms and the
            manifest records it with its ranges and style.

    Returns:
        The dataset summary.
    """
    check_size(size)
    if not 2 <= frames_per_clip <= 16:
        raise InvalidArgument("frames_per_clip", "phantom cines have 16-20 frames: use 2-16")
    counts = dict(patients_per_class or PATIENTS_PER_CLASS)
    ranges = class_ranges or _CLASS_RANGES
    if not counts or set(counts) - set(ranges) or min(counts.values()) < 1:
        raise InvalidArgument("patients_per_class", f"use classes from {sorted(ranges)}")
    sampling = SamplingConfig(frames_per_clip, 0, frames_per_clip, 2)
    master = np.random.default_rng(seed)
    jobs = [(cls, index) for cls in counts for index in range(counts[cls])]
    patient_seeds = master.integers(0, 2**31 - 1, size=len(jobs))
    described = None
    if variant is not None:
        described = {"name": variant, "class_ranges": ranges, "style": style.describe()}
    manifest = phantom_manifest(seed, size, counts, frames_per_clip, described)
    family = GENERATOR if variant is None else f"{GENERATOR}/{variant}"
    with builder.DatasetWriter(root, name, sampling=sampling, overwrite=overwrite) as writer:
        for (cls, index), patient_seed in tqdm(
            list(zip(jobs, patient_seeds, strict=True)), desc="phantoms", disable=not progress
        ):
            attrs = sample_attributes(cls, int(patient_seed), ranges, style)
            frames = to_uint8(render_sequence(attrs, size, style))
            patient = pseudonym(f"{family}/{seed}/{cls}/{index}")
            writer.add_sequence(
                frames,
                cls=cls,
                patient=patient,
                volume=volume_id(patient, "cine"),
                text=describe(attrs),
                extra={"modality": "us", "generator": GENERATOR, "seed": seed, **attrs.metadata()},
            )
        summary = writer.commit(test_fraction=test_fraction, seed=seed, manifest=manifest)
    logger.info("phantom dataset %s generated (seed %d)", name, seed)
    return summary


def ensure_bundled_dataset(
    root: str | os.PathLike, *, name: str = PHANTOM_NAME, seed: int = PHANTOM_SEED, size: int = 64
) -> Path:
    """Generate the bundled phantom dataset under `root` unless it is already there.

    Idempotent and safe against concurrent callers (an exclusive lock on `<root>/.<name>.lock`).
    An existing dataset is kept only if its manifest matches these parameters.

    Returns:
        `root` as a Path; read it with `layout.load_dataset(root, name, split)`.
    """
    root_path = Path(root)
    root_path.mkdir(parents=True, exist_ok=True)
    expected = phantom_manifest(seed, size, PATIENTS_PER_CLASS, 8)
    with open(root_path / f".{name}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = builder.read_manifest(root_path, name) or {}
        data_dir = root_path / f"{name}_data"
        if data_dir.is_dir() and all(current.get(k) == v for k, v in expected.items()):
            logger.debug("bundled dataset %s is present", name)
            return root_path
        generate_phantom_dataset(root_path, seed, size, name=name, overwrite=True)
    return root_path
