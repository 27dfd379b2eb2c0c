"""Class fidelity of the sequence generator: the share of generated clips that the real-data
classifier assigns to the conditioned class.

Each generated clip is guided by a real reference clip: its class, caption, image prior, motion
field and trajectories, sampled with DDIM and classifier-free guidance, decoded by the VAE.
Used by the `seq` trainer's periodic evaluation and by `benchmarks.generator_quality`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from services.models.ldm import SamplingRequest, SequenceSampler, SequenceUNet

from .data import ClipSet, ConditionSet, to_uint8


@dataclass
class Reference:
    """The conditions of one reference clip (unbatched tensors)."""

    class_label: int
    text_embedding: torch.Tensor | None
    image_prior: torch.Tensor
    motion_field: torch.Tensor  # (F-1, 2, H, W), as the sampler takes it
    trajectories: torch.Tensor
    trajectory_mask: torch.Tensor


def references(
    clips: ClipSet,
    conditions: ConditionSet,
    indices: list[int],
    text_embeddings: dict[str, torch.Tensor] | None,
) -> list[Reference]:
    refs = []
    for i in indices:
        text = None if text_embeddings is None else text_embeddings[clips.texts[i]]
        refs.append(
            Reference(
                int(clips.labels[i]),
                text,
                conditions.priors[i],
                conditions.motion[i].permute(1, 0, 2, 3),
                conditions.trajectories[i],
                conditions.trajectory_mask[i],
            )
        )
    return refs


def pick_per_class(labels: np.ndarray, per_class: int, seed: int = 0) -> list[int]:
    """Up to `per_class` indices of each class (cycling when a class has fewer clips)."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in sorted(set(labels.tolist())):
        idx = rng.permutation(np.flatnonzero(labels == c))
        picked += [int(idx[k % len(idx)]) for k in range(per_class)]
    return picked


@torch.inference_mode()
def generate(
    unet: SequenceUNet,
    vae,
    refs: list[Reference],
    empty_text: torch.Tensor | None,
    guidance: float,
    steps: int,
    seed: int = 0,
    chunk: int = 8,
    solver: str = "ddim",
) -> tuple[np.ndarray, float]:
    """Generates one clip per reference (frames: its motion-field steps + 1).

    Returns:
        uint8 clips (N, T, H, W) and the seconds per clip (sampling and decoding).
    """
    sampler = SequenceSampler(unet, empty_text_embedding=empty_text)
    start = time.perf_counter()
    out = []
    for lo in range(0, len(refs), chunk):
        requests = [
            SamplingRequest(
                num_frames=r.motion_field.shape[0] + 1,
                class_label=r.class_label,
                seed=seed + lo + k,
                num_inference_steps=steps,
                guidance_scale=guidance,
                solver=solver,
                text_embedding=r.text_embedding,
                image_prior=r.image_prior,
                motion_field=r.motion_field,
                trajectories=r.trajectories,
                trajectory_mask=r.trajectory_mask,
            )
            for k, r in enumerate(refs[lo : lo + chunk])
        ]
        for latents in sampler.generate(requests):
            z = latents.transpose(0, 1).to(vae.device) / vae.config.scaling_factor
            frames = vae.decode(z).sample  # (F, 1, H, W)
            out.append(to_uint8(frames[:, 0]))
    seconds = (time.perf_counter() - start) / max(1, len(refs))
    return np.stack(out), seconds


@torch.inference_mode()
def classify(classifier, clips_uint8: np.ndarray, batch: int = 32) -> np.ndarray:
    """Predicted class ids of uint8 clips (N, T, H, W)."""
    classifier.eval()
    preds = []
    for i in range(0, len(clips_uint8), batch):
        x = torch.as_tensor(clips_uint8[i : i + batch]).float() / 127.5 - 1.0
        preds.append(classifier(x.unsqueeze(2)).argmax(1).cpu().numpy())
    return np.concatenate(preds)


def fidelity(pred: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """Overall and per-class share of predictions equal to the conditioned labels."""
    per_class = {
        classes[c]: round(float((pred[labels == c] == c).mean()), 4)
        for c in sorted(set(labels.tolist()))
    }
    return {"class_fidelity": round(float((pred == labels).mean()), 4), "per_class": per_class}
