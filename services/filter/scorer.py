"""Per-clip scores of the filter: classifier logits / cross-entropy and VAE latents / VAE-Seq.

Both networks load in-process: the VAE from `<model-dir>/vae/` (a `VaeCodec`), the video
classifier from `<model-dir>/classifier/` (`config.json` + `model.safetensors`). Either falls back
to a seeded initialisation when its folder holds no weights and says so in `info()`.

Every clip is computed on its own (T frames through the VAE in micro-batches, the clip through the
classifier), so the open-inference models and the typed pool RPC produce the same bytes; one lock
serialises the forwards and the caller's deadline is checked between them.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genaug.compute_lane import LANE
from genaug.deadline import Deadline
from genaug.errors import InvalidArgument
from services.filter import pool
from services.models.classifier import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    VideoClassifier,
    VideoClassifierConfig,
)
from services.models.runtime import resolve_device
from services.models.vae import SEEDED_INIT, TRAINED
from services.models.vae_codec import VaeCodec

logger = logging.getLogger(__name__)

# Clips are nominally in [-1, 1]; a little slack for decoder rounding.
_RANGE_SLACK = 1e-3


@dataclass(frozen=True)
class ClipResult:
    """Scores of one clip: logits (C,), VAE-Seq and (T, D) unit per-frame latent vectors."""

    logits: np.ndarray
    vae_seq: float
    vectors: np.ndarray


class PoolScorer:
    """The filter's two networks.

    Args:
        model_dir: Model repository (`vae/`, `classifier/`).
        vae_config, seed: The VAE configuration and seed used when `vae/` has no weights; the
            seed also initialises a classifier when `classifier/` has none.
        num_classes: Classes of that seeded classifier (a trained one brings its own).
        device: "auto", "cpu", "cuda", ...
        batch_frames: Frames per VAE forward.
    """

    def __init__(
        self,
        model_dir: Path,
        vae_config: str = "small",
        seed: int = 0,
        num_classes: int = 2,
        device: str = "auto",
        batch_frames: int = 8,
    ):
        self.model_dir = Path(model_dir)
        self.vae_config = vae_config
        self.seed = seed
        self.seed_classes = num_classes
        self.device = resolve_device(device)
        self.classifier: VideoClassifier | None = None
        self.classifier_weights = ""
        self.codec = VaeCodec(
            self.model_dir / "vae", vae_config, seed, device, max(1, batch_frames)
        )
        self._load_lock = threading.Lock()

    # -- loading --------------------------------------------------------------------------
    def load(self) -> None:
        with self._load_lock:
            if self.classifier is not None:
                return
            self.codec.load()
            self.classifier, self.classifier_weights = self._load_classifier()

    def _load_classifier(self) -> tuple[VideoClassifier, str]:
        folder = self.model_dir / "classifier"
        if (folder / CONFIG_NAME).is_file() or (folder / WEIGHTS_NAME).is_file():
            model = VideoClassifier.from_pretrained(folder, self.device)
            return model.requires_grad_(False), TRAINED
        logger.warning(
            "no classifier weights in %s: %d-class classifier from seed %d (untrained)",
            folder,
            self.seed_classes,
            self.seed,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = VideoClassifier(VideoClassifierConfig(num_classes=self.seed_classes))
        # The classifier is small and z-scores its input: it stays in float32 on every device.
        return model.to(self.device).eval().requires_grad_(False), SEEDED_INIT

    @property
    def num_classes(self) -> int:
        return int(self.classifier.config.num_classes)

    @property
    def vae_weights(self) -> str:
        return self.codec.provenance

    @property
    def factor(self) -> int:
        return self.codec.factor

    def info(self) -> dict[str, str]:
        return {
            "vae_weights": self.vae_weights,
            "vae_config": self.vae_config if self.vae_weights != TRAINED else "trained",
            "classifier_weights": self.classifier_weights,
            "num_classes": str(self.num_classes),
            "device": str(self.device),
            "vae_dtype": str(self.codec.dtype).removeprefix("torch."),
            "kmeans_k": str(pool.K),
            "kmeans_seed": str(pool.KMEANS_SEED),
        }

    # -- validation -----------------------------------------------------------------------
    def check_clip(self, clip: np.ndarray, field: str, shape_only: bool = False) -> None:
        """A clip float32 (T,1,H,W) in [-1,1], T >= 2, H and W positive multiples of 8."""
        if clip.dtype != np.float32:
            raise InvalidArgument(f"{field}.dtype", f"is {clip.dtype}, expected float32")
        if clip.ndim != 4 or clip.shape[1] != 1:
            raise InvalidArgument(f"{field}.shape", f"is {list(clip.shape)}, expected (T,1,H,W)")
        t, _, h, w = clip.shape
        if t < 2:
            raise InvalidArgument(f"{field}.shape", f"has {t} frame(s); VAE-Seq needs at least 2")
        f = self.factor
        if h == 0 or w == 0 or h % f or w % f:
            raise InvalidArgument(
                f"{field}.shape", f"H and W ({h}x{w}) must be positive multiples of {f}"
            )
        if not shape_only:
            self.check_values(clip, field)

    def check_values(self, clip: np.ndarray, field: str) -> None:
        if not np.isfinite(clip).all():
            raise InvalidArgument(field, "contains NaN or infinite values")
        low, high = float(clip.min()), float(clip.max())
        if low < -1 - _RANGE_SLACK or high > 1 + _RANGE_SLACK:
            raise InvalidArgument(
                field, f"values must lie in [-1, 1], found [{low:.4g}, {high:.4g}]"
            )

    def check_batch(self, clips: np.ndarray, field: str) -> None:
        """A batch float32 (B,T,1,H,W), B >= 1, each clip as in `check_clip`."""
        if clips.ndim != 5 or clips.shape[0] == 0:
            raise InvalidArgument(
                f"{field}.shape", f"is {list(clips.shape)}, expected (B,T,1,H,W) with B >= 1"
            )
        self.check_clip(clips[0], field, shape_only=True)
        self.check_values(clips, field)

    def check_label(self, label: int, field: str) -> None:
        if not 0 <= label < self.num_classes:
            raise InvalidArgument(
                field,
                f"is {label}; the classifier has {self.num_classes} classes "
                f"(0..{self.num_classes - 1})",
            )

    # -- compute --------------------------------------------------------------------------
    def _logits(self, clip: np.ndarray, deadline: Deadline) -> np.ndarray:
        return LANE.run_within(deadline, "classifier", self._logits_here, clip)

    def _logits_here(self, clip: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.array(clip[None])).to(self.device)
            return self.classifier(x)[0].float().cpu().numpy()

    def score_clip(self, clip: np.ndarray, deadline: Deadline | None = None) -> ClipResult:
        """Scores of one validated clip (T,1,H,W)."""
        deadline = deadline or Deadline.none()
        vectors = pool.frame_vectors(self.codec.latent_means(clip, deadline, "VAE-Seq"))
        return ClipResult(self._logits(clip, deadline), pool.vae_seq(vectors), vectors)

    def vae_seq_scores(self, clips: np.ndarray, deadline: Deadline | None = None) -> np.ndarray:
        """Clips (B,T,1,H,W) -> VAE-Seq (B,) float32."""
        deadline = deadline or Deadline.none()
        scores = [
            pool.vae_seq(pool.frame_vectors(self.codec.latent_means(c, deadline, "VAE-Seq")))
            for c in clips
        ]
        return np.asarray(scores, np.float32)

    def logits(self, clips: np.ndarray, deadline: Deadline | None = None) -> np.ndarray:
        """Clips (B,T,1,H,W) -> logits (B,C) float32."""
        deadline = deadline or Deadline.none()
        return np.stack([self._logits(c, deadline) for c in clips]).astype(np.float32)
