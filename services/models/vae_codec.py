"""The codec itself: a loaded VAE, micro-batched, checking the caller's deadline between batches."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import torch

from genaug.compute_lane import LANE
from genaug.deadline import Deadline
from genaug.errors import InvalidArgument
from services.models.onnx_session import checked_graphs, resolve_runtime
from services.models.runtime import resolve_device, resolve_dtype
from services.models.vae import downsample_factor, load_for_inference

logger = logging.getLogger(__name__)


class VaeCodec:
    """Encode frames to scaled latents and back; the one VAE wrapper of every service (the codec,
    the filter's VAE-Seq and the sampler's in-process decoding).

    Args:
        weights_dir: diffusers-layout VAE folder; when it holds no weights the `config_name`
            configuration starts from seed `seed` and reports "seeded-initialisation".
        device: "auto", "cpu", "cuda", ...
        batch_frames: frames per forward; the deadline is checked between forwards.
        runtime: "auto" (onnxruntime on the CPU when installed, else torch), "torch", or
            "onnxruntime" (CPU only). On onnxruntime, `load()` exports the loaded VAE's
            encode/decode graphs (cached in `onnx_cache`, default
            `onnx_session.default_cache_dir()`), checks them against torch within 1e-4, and on
            any failure logs a warning and stays on torch (`info()["runtime"]` says which).
        onnx_cache: Folder of the exported graphs (None: the default).

    Forwards run on the process's compute lane (`genaug.compute_lane`): one at a time, on the
    thread that runs all of the process's tensor work (onnxruntime calls included).
    """

    def __init__(
        self,
        weights_dir: Path,
        config_name: str = "small",
        seed: int = 0,
        device: str = "auto",
        batch_frames: int = 8,
        runtime: str = "auto",
        onnx_cache: Path | None = None,
    ):
        self.weights_dir = Path(weights_dir)
        self.config_name = config_name
        self.seed = seed
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.device)
        self.batch_frames = batch_frames
        self.requested_runtime = runtime
        self.runtime = resolve_runtime(runtime, self.device)  # "torch" after a failed load
        self.runtime_note = ""  # why onnxruntime is not used, when it was asked for
        self.onnx_cache = onnx_cache
        self.vae = None
        self.provenance = ""
        self._graphs: dict = {}
        self._load_lock = threading.Lock()

    def load(self) -> None:
        with self._load_lock:
            if self.vae is not None:
                return
            vae, self.provenance = load_for_inference(
                self.weights_dir, self.device, self.dtype, self.config_name, self.seed
            )
            if self.runtime == "onnxruntime":
                self._load_graphs(vae)
            self.vae = vae

    def _load_graphs(self, vae) -> None:
        """The encode/decode graphs of the loaded VAE on onnxruntime, or torch with a note."""
        from services.models.onnx_export import vae_specs_for

        try:
            specs = vae_specs_for(vae, self.provenance)
        except Exception as error:  # noqa: BLE001 - staying on torch is always possible
            graphs, note = {}, f"export spec: {type(error).__name__}: {error}"
            logger.warning("VAE %s stays on torch: %s", self.weights_dir, note)
        else:
            graphs, note = checked_graphs(specs, self.onnx_cache, what=f"VAE {self.weights_dir}")
        self._graphs = (
            {"encode": graphs["vae_encode"], "decode": graphs["vae_decode"]} if graphs else {}
        )
        self.runtime = "onnxruntime" if self._graphs else "torch"
        self.runtime_note = note

    @property
    def factor(self) -> int:
        return downsample_factor(self.vae)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def info(self) -> dict[str, str]:
        return {
            "weights": self.provenance,
            "config": self.config_name if self.provenance != "trained" else str(self.weights_dir),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "downsample_factor": str(self.factor),
            "latent_channels": str(self.latent_channels),
            "runtime": self.runtime,
            **({"runtime_fallback": self.runtime_note} if self.runtime_note else {}),
        }

    # -- validation -----------------------------------------------------------------------
    def check_frames(self, frames: np.ndarray, field: str = "frames") -> None:
        if frames.dtype != np.float32:
            raise InvalidArgument(f"{field}.dtype", f"is {frames.dtype}, expected float32")
        if frames.ndim != 4 or frames.shape[1] != 1:
            raise InvalidArgument(f"{field}.shape", f"is {list(frames.shape)}, expected (T,1,H,W)")
        t, _, h, w = frames.shape
        if t == 0:
            raise InvalidArgument(f"{field}.shape", "has no frames")
        if h % self.factor or w % self.factor or h == 0 or w == 0:
            raise InvalidArgument(
                f"{field}.shape", f"H and W ({h}x{w}) must be positive multiples of {self.factor}"
            )
        if not np.isfinite(frames).all():
            raise InvalidArgument(field, "contains NaN or infinite values")

    def check_latents(self, latents: np.ndarray, field: str = "latents") -> None:
        if latents.dtype != np.float32:
            raise InvalidArgument(f"{field}.dtype", f"is {latents.dtype}, expected float32")
        c = self.latent_channels
        if latents.ndim != 4 or latents.shape[1] != c:
            raise InvalidArgument(
                f"{field}.shape", f"is {list(latents.shape)}, expected (T,{c},h,w)"
            )
        if 0 in latents.shape:
            raise InvalidArgument(f"{field}.shape", f"is empty: {list(latents.shape)}")
        if not np.isfinite(latents).all():
            raise InvalidArgument(field, "contains NaN or infinite values")

    # -- compute --------------------------------------------------------------------------
    def encode(self, frames: np.ndarray, deadline: Deadline | None = None) -> np.ndarray:
        """frames float32 (T,1,H,W) in [-1,1] -> latent means times the scaling factor."""
        self.check_frames(frames)
        return self._batched(frames, self._encode_batch, deadline or Deadline.none(), "encode")

    def latent_means(
        self, frames: np.ndarray, deadline: Deadline | None = None, stage: str = "encode"
    ) -> np.ndarray:
        """frames float32 (T,1,H,W) in [-1,1] -> unscaled latent means (T,C,h,w); `stage` names
        the work in a deadline error."""
        self.check_frames(frames)
        return self._batched(frames, self._mode_batch, deadline or Deadline.none(), stage)

    def decode(self, latents: np.ndarray, deadline: Deadline | None = None) -> np.ndarray:
        """Scaled latents float32 (T,C,h,w) -> frames float32 (T,1,h*f,w*f), clamped to [-1,1]."""
        self.check_latents(latents)
        return self._batched(latents, self._decode_batch, deadline or Deadline.none(), "decode")

    # On onnxruntime each takes and returns float32 numpy (`_batched_here`), else tensors.
    def _mode_batch(self, x):
        # The distribution mean, not a sample: the codec is deterministic.
        if self._graphs:  # the encode graph outputs mean * scaling_factor (`VaeEncodeGraph`)
            return self._graphs["encode"](x) / np.float32(self.scaling_factor)
        return self.vae.encode(x).latent_dist.mode()

    def _encode_batch(self, x):
        if self._graphs:
            return self._graphs["encode"](x)
        return self.vae.encode(x).latent_dist.mode() * self.scaling_factor

    def _decode_batch(self, z):
        if self._graphs:
            return self._graphs["decode"](z)
        return self.vae.decode(z / self.scaling_factor).sample.clamp(-1, 1)

    def _batched(self, array: np.ndarray, fn, deadline: Deadline, stage: str) -> np.ndarray:
        return LANE.run_within(deadline, stage, self._batched_here, array, fn, deadline, stage)

    def _batched_here(self, array: np.ndarray, fn, deadline: Deadline, stage: str) -> np.ndarray:
        """`fn` per chunk of `batch_frames`: on tensors, or on float32 numpy on onnxruntime."""
        on_torch = not self._graphs
        outputs = []
        with torch.inference_mode():
            for start in range(0, array.shape[0], self.batch_frames):
                if start:  # `run_within` has just checked it before the first batch
                    deadline.check(stage)
                chunk = array[start : start + self.batch_frames]
                if on_torch:
                    out = fn(torch.from_numpy(np.array(chunk)).to(self.device, self.dtype))
                    outputs.append(out.float().cpu().numpy())
                else:
                    outputs.append(fn(chunk))
        return np.concatenate(outputs, axis=0)
