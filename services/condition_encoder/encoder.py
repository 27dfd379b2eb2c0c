"""Frames -> image priors (N,256,64,64) and captions -> embeddings (N,L,D), batched.

One `ConditionEncoder` serves both the open-inference models and the typed RPCs, so both paths
return the same bytes. Compute is serialised by one lock (concurrent forwards only thrash a
small CPU) taken per micro-batch, so a short text request waits for at most one image batch;
the caller's deadline is checked before every batch.

Text embeddings are kept per caption (an LRU bounded in entries and bytes): augmentation jobs
send a handful of per-class captions with every request, and each embedding is a pure function
of the caption and the loaded text model, so a repeat costs a lookup instead of a forward that
would compete for the cores with the sampler's steps.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genaug.compute_lane import LANE
from genaug.deadline import Deadline
from genaug.errors import GenaugError, InvalidArgument
from services.common.result_cache import ResultCache
from services.condition_encoder import metrics
from services.models.generators import generator_dir
from services.models.medsam import (
    PRIOR_SHAPE,
    ImagePriorEncoder,
    litemedsam_checkpoint_path,
    load_image_prior_encoder,
)
from services.models.onnx_session import RUNTIMES, checked_graphs, resolve_runtime
from services.models.text import TextEncoder, load_text_encoder, minilm_model_dir

logger = logging.getLogger(__name__)

# <model-dir>/text/projection.safetensors: the trained 384 (or 768) -> D text projection.
PROJECTION_FILE = Path("text") / "projection.safetensors"
IMAGE_ENCODERS = ("litemedsam", "medsam_vit_b")
DEFAULT_TEXT_CACHE_ENTRIES = 1024
DEFAULT_TEXT_CACHE_BYTES = 32 << 20  # about 680 MiniLM captions of (32, 384) float32


@dataclass(frozen=True)
class EncoderLimits:
    """Request limits; anything beyond is INVALID_ARGUMENT naming the field.

    Attributes:
        max_frames: Frames per image-prior request (LiteMedSAM: ~1.4 s each on a small CPU).
        min_side: Smallest frame side accepted.
        max_side: Largest frame side accepted (frames are resized to 256 or 1024 anyway).
        max_texts: Captions per text request.
        max_text_bytes: UTF-8 bytes per caption (tokens past L are truncated anyway).
    """

    max_frames: int = 64
    min_side: int = 8
    max_side: int = 4096
    max_texts: int = 256
    max_text_bytes: int = 4096


class ConditionEncoder:
    """The image-prior and text encoders of the service.

    Args:
        model_dir: Model repository; a trained text projection is read from the default
            generator's `text/projection.safetensors` when present.
        image_encoder: "litemedsam" (packaged real weights) or "medsam_vit_b" (needs
            `medsam_checkpoint`).
        medsam_checkpoint: Checkpoint for the image encoder (None: the packaged LiteMedSAM).
        clip_path: Local CLIP text model folder; None uses the packaged all-MiniLM-L6-v2.
        text_dim: Width of a fresh seeded projection when no trained one is in the model
            repository; None keeps the backbone width (384 for MiniLM).
        device: "auto", "cpu", "cuda", ...
        image_batch: Frames per image forward (None: the encoder's default, 8 / 2).
        text_batch: Captions per text forward.
        text_cache_entries / text_cache_bytes: bounds of the per-caption embedding cache
            (0 entries: no cache).
        limits: Request limits.
        runtime: Image prior runtime: "auto" (onnxruntime for litemedsam on the CPU when
            installed, else torch), "torch", or "onnxruntime" (CPU only). On onnxruntime the
            loaded TinyViT is exported (cached in `onnx_cache`), checked against torch within
            1e-4, and on any failure a warning is logged and torch kept (`image_info()`).
        onnx_cache: Folder of the exported graph (None: `onnx_session.default_cache_dir()`).
    """

    def __init__(
        self,
        model_dir: Path,
        image_encoder: str = "litemedsam",
        medsam_checkpoint: Path | None = None,
        clip_path: Path | None = None,
        text_dim: int | None = None,
        device: str = "auto",
        image_batch: int | None = None,
        text_batch: int = 64,
        text_cache_entries: int = DEFAULT_TEXT_CACHE_ENTRIES,
        text_cache_bytes: int = DEFAULT_TEXT_CACHE_BYTES,
        limits: EncoderLimits | None = None,
        runtime: str = "auto",
        onnx_cache: Path | None = None,
    ):
        if image_encoder not in IMAGE_ENCODERS:
            raise ValueError(f"unknown image encoder {image_encoder!r}; choose {IMAGE_ENCODERS}")
        if image_encoder == "medsam_vit_b" and medsam_checkpoint is None:
            raise ValueError("--image-encoder medsam_vit_b needs --medsam-checkpoint PATH")
        if text_dim is not None and text_dim < 1:
            raise ValueError(f"--text-dim must be positive, got {text_dim}")
        self.model_dir = Path(model_dir)
        self.image_kind = image_encoder
        self.medsam_checkpoint = Path(medsam_checkpoint) if medsam_checkpoint else None
        self.clip_path = Path(clip_path) if clip_path else None
        self.text_dim = text_dim
        self.device = device
        self.image_batch = image_batch
        self.text_batch = max(1, text_batch)
        self._text_cache: ResultCache[np.ndarray] = ResultCache(
            lambda embedding: embedding.nbytes, text_cache_entries, text_cache_bytes
        )
        self.limits = limits or EncoderLimits()
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; choose one of {RUNTIMES}")
        if runtime == "onnxruntime" and image_encoder != "litemedsam":
            raise ValueError("--runtime onnxruntime is for --image-encoder litemedsam only")
        self.runtime = runtime
        self.runtime_note = ""  # why onnxruntime is not used, when it was asked for
        self.onnx_cache = Path(onnx_cache) if onnx_cache else None
        self.image: ImagePriorEncoder | None = None
        self.text: TextEncoder | None = None
        self.projection = "none"
        self.projection_path: Path | None = None
        self._load_lock = threading.Lock()

    # -- loading --------------------------------------------------------------------------
    def load_image(self) -> None:
        with self._load_lock:
            if self.image is None:
                image = load_image_prior_encoder(
                    self.image_kind,
                    self.medsam_checkpoint,
                    device=self.device,
                    batch_size=self.image_batch,
                )
                if self.image_kind == "litemedsam":
                    runtime = resolve_runtime(self.runtime, image.device)
                    if runtime == "onnxruntime" and image.dtype == torch.float32:
                        self._load_image_graph(image)
                self.image = image

    def _load_image_graph(self, image: ImagePriorEncoder) -> None:
        """TinyViT on onnxruntime (export cached, parity-checked), or torch with a note."""
        from services.models.onnx_export import image_prior_spec_for

        try:
            specs = [image_prior_spec_for(image)]
        except Exception as error:  # noqa: BLE001 - staying on torch is always possible
            graphs, note = {}, f"export spec: {type(error).__name__}: {error}"
            logger.warning("image prior stays on torch: %s", note)
        else:
            graphs, note = checked_graphs(specs, self.onnx_cache, what="image prior")
        image.graph = graphs.get("image_prior")
        self.runtime_note = note

    def _generator_dir(self) -> Path:
        """The default generator's folder (its text projection was trained with its LDM)."""
        try:
            return generator_dir(self.model_dir)
        except GenaugError:
            return self.model_dir

    def load_text(self) -> None:
        with self._load_lock:
            if self.text is not None:
                return
            kind = "clip" if self.clip_path is not None else "minilm"
            trained = self._generator_dir() / PROJECTION_FILE
            if trained.is_file():
                self.projection, self.projection_path = "trained", trained
            elif self.text_dim is not None:
                self.projection = "seeded-initialisation"
            self.text = load_text_encoder(
                kind,
                self.clip_path,
                projection_dim=self.text_dim,
                projection_path=self.projection_path,
                device=self.device,
            )

    def image_info(self) -> dict[str, str]:
        checkpoint = self.medsam_checkpoint or litemedsam_checkpoint_path()
        return {
            "image_encoder": self.image_kind,
            "weights": "pretrained",
            "checkpoint": str(checkpoint),
            "device": str(self.image.device),
            "dtype": str(self.image.dtype).removeprefix("torch."),
            "batch_size": str(self.image.batch_size),
            "input_size": str(self.image.preprocessing.size),
            "max_frames": str(self.limits.max_frames),
            "runtime": self.image.runtime,
            **({"runtime_fallback": self.runtime_note} if self.runtime_note else {}),
        }

    def text_info(self) -> dict[str, str]:
        text = self.text
        return {
            "text_encoder": text.kind,
            "model": str(self.clip_path or minilm_model_dir()),
            # Uniform with the other services: "seeded-initialisation" marks untrained weights.
            "weights": "pretrained" if self.projection == "none" else self.projection,
            "projection": self.projection,
            "projection_path": str(self.projection_path or ""),
            "hidden_size": str(text.hidden_size),
            "embedding_dim": str(text.output_dim),
            "max_length": str(text.max_length),
            "device": str(text.device),
            "max_texts": str(self.limits.max_texts),
        }

    # -- validation -----------------------------------------------------------------------
    def check_frames(self, frames: np.ndarray, field: str = "frames") -> None:
        lim = self.limits
        if frames.dtype not in (np.uint8, np.float32):
            raise InvalidArgument(f"{field}.dtype", f"is {frames.dtype}, expected uint8 or float32")
        if frames.ndim != 3:
            raise InvalidArgument(f"{field}.shape", f"is {list(frames.shape)}, expected (N,H,W)")
        n, h, w = frames.shape
        if n == 0:
            raise InvalidArgument(f"{field}.shape", "has no frames (N is 0)")
        if n > lim.max_frames:
            raise InvalidArgument(
                f"{field}.shape",
                f"has {n} frames, over the limit of {lim.max_frames} per request; split it",
            )
        if min(h, w) < lim.min_side or max(h, w) > lim.max_side:
            raise InvalidArgument(
                f"{field}.shape",
                f"frame size {h}x{w} is outside [{lim.min_side}, {lim.max_side}] per side",
            )
        if frames.dtype == np.float32 and not np.isfinite(frames).all():
            raise InvalidArgument(field, "contains NaN or infinite values")

    def decode_texts(self, texts: Sequence[bytes | str], field: str = "texts") -> list[str]:
        """Validates captions (count, size, UTF-8) and returns them as str."""
        lim = self.limits
        if len(texts) == 0:
            raise InvalidArgument(field, 'has no texts (send "" for the unconditional one)')
        if len(texts) > lim.max_texts:
            raise InvalidArgument(
                field, f"has {len(texts)} texts, over the limit of {lim.max_texts} per request"
            )
        out = []
        for i, item in enumerate(texts):
            raw = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            if len(raw) > lim.max_text_bytes:
                raise InvalidArgument(
                    f"{field}[{i}]",
                    f"is {len(raw)} bytes, over the limit of {lim.max_text_bytes}",
                )
            if isinstance(item, str):
                out.append(item)
                continue
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError as error:
                raise InvalidArgument(
                    f"{field}[{i}]", f"is not valid UTF-8 (byte {error.start}: {error.reason})"
                ) from None
        return out

    # -- compute --------------------------------------------------------------------------
    def encode_image_prior(
        self, frames: np.ndarray, deadline: Deadline | None = None, field: str = "frames"
    ) -> np.ndarray:
        """Frames uint8 or float32 (N,H,W), each min-max normalised -> float32 (N,256,64,64)."""
        self.check_frames(frames, field)
        deadline = deadline or Deadline.none()
        out = np.empty((frames.shape[0], *PRIOR_SHAPE), np.float32)
        step = self.image.batch_size
        for start in range(0, frames.shape[0], step):
            chunk = frames[start : start + step]
            out[start : start + step] = LANE.run_within(
                deadline, "image prior", self.image.encode, chunk
            )
        return out

    def encode_text(
        self, texts: Sequence[bytes | str], deadline: Deadline | None = None, field: str = "texts"
    ) -> np.ndarray:
        """Captions (UTF-8) -> embeddings float32 (N,L,D); "" is the unconditional caption."""
        captions = self.decode_texts(texts, field)
        deadline = deadline or Deadline.none()
        known = {c: e for c in set(captions) if (e := self._text_cache.get(c)) is not None}
        missing = [c for c in dict.fromkeys(captions) if c not in known]  # unique, in order
        for start in range(0, len(missing), self.text_batch):
            chunk = missing[start : start + self.text_batch]
            computed = LANE.run_within(deadline, "text embedding", self.text.encode, chunk)
            for caption, embedding in zip(chunk, computed, strict=True):
                embedding = np.array(embedding, np.float32)  # its own buffer, not the batch's
                embedding.flags.writeable = False  # shared by every later request
                known[caption] = embedding
                self._text_cache.put(caption, embedding)
        metrics.TEXT_EMBEDDINGS.labels("computed").inc(len(missing))
        metrics.TEXT_EMBEDDINGS.labels("cache").inc(len(captions) - len(missing))
        return np.stack([known[c] for c in captions])
