"""Sampling the sequence LDM with diffusers schedulers, one denoising step at a time.

The per-step API is what a serving engine drives: `prepare(request) -> state` (noise, scheduler
and the timestep-independent condition embeddings, computed once), `step(states)` (ONE UNet
forward per group of compatible states: every request's conditional and unconditional CFG rows
concatenated; requests may differ in seed, guidance, step count and solver), `finish(state) ->
latents`. `generate(requests)` loops these for scripts and tests.

Classifier-free guidance follows the official code: the unconditional branch gets the
empty-text embedding, an all-zero image prior and an all-zero motion field, while the class
label and the trajectories are kept. Guidance scale 1 runs the conditional branch only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .attention import identity_trajectories, prepare_trajectories
from .null_cache import NullEmbeddingCache
from .unet import SequenceUNet

# Stable Diffusion v1-4's noise schedule, used by the official code for training (DDPM) and
# sampling (DDIM, 200 steps, eta 0): 1000 steps, scaled-linear betas 0.00085..0.012, epsilon
# prediction. `steps_offset=1` shifts DDIM's "leading" timesteps to end at t=1 like SD;
# `clip_sample=False` because latents are not bounded to [-1, 1]; `set_alpha_to_one=False`
# makes DDIM's last step use alpha_bar(0) rather than 1 (SD's setting).
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    steps_offset=1,
)
SOLVERS = ("ddim", "dpmsolver++")

ProgressCallback = Callable[[int, int, torch.Tensor], None]


def make_scheduler(solver: str = "ddim") -> SchedulerMixin:
    """A fresh scheduler with the SD-1.4 schedule.

    Args:
        solver: `"ddim"` (eta configurable per request), `"dpmsolver++"` (second-order
            multistep DPM-Solver++, good in 20-25 steps) or `"ddpm"` (training noise schedule).
    """
    if solver == "ddim":
        return DDIMScheduler(**SCHEDULER_CONFIG, clip_sample=False, set_alpha_to_one=False)
    if solver in ("dpmsolver++", "dpm++"):
        return DPMSolverMultistepScheduler(
            **SCHEDULER_CONFIG, algorithm_type="dpmsolver++", solver_order=2
        )
    if solver == "ddpm":
        return DDPMScheduler(**SCHEDULER_CONFIG, clip_sample=False)
    raise ValueError(f"unknown solver {solver!r}; choose from {SOLVERS}")


@dataclass
class SamplingRequest:
    """One clip to generate. Tensors are unbatched and may live on any device.

    Attributes:
        num_frames: F (any number; the official model hard-codes 8).
        class_label: Class id; required by class-conditional models.
        seed: Seeds the initial noise (a CPU `torch.Generator`, so clips do not depend on the
            device) and, for DDIM with eta > 0, the per-step noise.
        num_inference_steps: Denoising steps (official: 200 DDIM steps).
        guidance_scale: CFG scale (official 7.5); 1 runs the conditional branch only.
        solver: `"ddim"` or `"dpmsolver++"`.
        eta: DDIM eta (0: deterministic).
        text_embedding: (L, D) text tokens; None uses the sampler's empty-text embedding.
        image_prior: (256, 64, 64) MedSAM prior of the reference clip's first frame.
        motion_field: (F-1, 2, H, W) pixel displacements, channel 0 = x, as the motion
            extractor returns them (H, W = latent size x 8).
        trajectories: (N, S, 3) int64 (t, row, col) at latent resolution, N = F*h*w.
        trajectory_mask: (N, S) bool.
        latent_size: (h, w); default from the motion field, else the config's `sample_size`.
        callback: Called as `callback(step, total, latents)` after each step (latents
            (1, C, F, h, w) float32, not to be modified).
    """

    num_frames: int = 8
    class_label: int | None = None
    seed: int = 0
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    solver: str = "ddim"
    eta: float = 0.0
    text_embedding: torch.Tensor | None = None
    image_prior: torch.Tensor | None = None
    motion_field: torch.Tensor | None = None
    trajectories: torch.Tensor | None = None
    trajectory_mask: torch.Tensor | None = None
    latent_size: tuple[int, int] | None = None
    callback: ProgressCallback | None = None


@dataclass(eq=False)
class SamplingState:
    """A request in flight: its latents, scheduler and precomputed conditioning rows.

    Conditioning tensors are stacked per CFG branch: row 0 conditional, row 1 unconditional
    (present only when `guidance_scale != 1`).
    """

    request: SamplingRequest
    scheduler: SchedulerMixin
    timesteps: torch.Tensor
    latents: torch.Tensor
    generator: torch.Generator
    class_labels: torch.Tensor | None
    text: torch.Tensor | None
    prior_tokens: torch.Tensor | None
    motion_embedding: torch.Tensor | None
    trajectories: torch.Tensor | None
    trajectory_mask: torch.Tensor | None
    step_index: int = 0

    @property
    def total_steps(self) -> int:
        return len(self.timesteps)

    @property
    def done(self) -> bool:
        return self.step_index >= self.total_steps

    @property
    def guided(self) -> bool:
        return self.request.guidance_scale != 1.0

    @property
    def rows(self) -> int:
        """UNet batch rows this state takes in a step (2 with guidance)."""
        return 2 if self.guided else 1

    @property
    def batch_key(self) -> tuple:
        """States with equal keys can share one UNet forward."""
        text = None if self.text is None else tuple(self.text.shape[1:])
        return (tuple(self.latents.shape), text)


class SequenceSampler:
    """Samples latent clips from a `SequenceUNet`.

    Args:
        unet: The model (put in eval mode here: its image-prior BatchNorm must use running
            statistics).
        empty_text_embedding: (L, D) encoding of the empty caption "", used as the
            unconditional text and as the text of requests without one (the official model
            always trains on ""). None: text-less requests skip the text cross-attention and the
            unconditional branch of texted requests gets zeros.
        device: Where to run (default: the model's device); the model is moved there.
        dtype: Model dtype (e.g. torch.bfloat16 on CUDA); latents and scheduler math stay fp32.

    The unconditional (all-zero) prior and motion embeddings are cached per shape (an LRU
    bounded in bytes, `null_cache.py`): build a new sampler after changing the model's weights.
    """

    def __init__(
        self,
        unet: SequenceUNet,
        empty_text_embedding: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        self.device = torch.device(device) if device is not None else unet.device
        self.dtype = dtype or unet.dtype
        self.unet = unet.place(self.device, self.dtype).eval()
        self.empty_text = (
            None
            if empty_text_embedding is None
            else empty_text_embedding.to(self.device, torch.float32)
        )
        self._null_cache = NullEmbeddingCache()

    # ----------------------------------------------------------------------------- prepare
    @torch.inference_mode()
    def prepare(self, request: SamplingRequest) -> SamplingState:
        """Validates a request and builds its initial state (noise, scheduler, conditions).

        Raises:
            ValueError: The request does not fit the model (shapes, class, solver, steps).
        """
        cfg = self.unet.config
        f = request.num_frames
        if f < 1 or request.num_inference_steps < 1:
            raise ValueError("num_frames and num_inference_steps must be >= 1")
        h, w = self._latent_size(request)
        guided = request.guidance_scale != 1.0

        class_labels = None
        if cfg.num_classes:
            if request.class_label is None or not 0 <= request.class_label < cfg.num_classes:
                raise ValueError(f"class_label must be in [0, {cfg.num_classes})")
            class_labels = torch.tensor([request.class_label] * (2 if guided else 1))

        text = self._text_rows(request.text_embedding, guided)
        prior = None
        if self.unet.prior_projector is not None:
            rows = [self._prior_tokens(request.image_prior)]
            if guided:
                rows.append(self._null("prior", lambda: self._prior_tokens(None)))
            prior = torch.cat(rows)
        motion = None
        if self.unet.motion_encoder is not None:
            field_ = request.motion_field
            if field_ is not None:
                if field_.dim() != 4 or field_.shape[:2] != (f - 1, cfg.motion_channels):
                    raise ValueError(
                        f"motion_field must be (F-1={f - 1}, {cfg.motion_channels}, H, W), "
                        f"got {tuple(field_.shape)}"
                    )
                field_ = field_.permute(1, 0, 2, 3).unsqueeze(0)
            rows = [self.unet.encode_motion(field_, 1, f, (h, w))]
            if guided:
                rows.append(
                    self._null(
                        ("motion", f, h, w), lambda: self.unet.encode_motion(None, 1, f, (h, w))
                    )
                )
            motion = torch.cat(rows)
        traj = mask = None
        if self.unet.mfa_enabled:
            traj, mask = self._trajectories(request, f, h, w)

        scheduler = make_scheduler(request.solver)
        scheduler.set_timesteps(request.num_inference_steps, device=self.device)
        generator = torch.Generator("cpu").manual_seed(request.seed)
        noise = torch.randn((1, cfg.in_channels, f, h, w), generator=generator)
        latents = (noise * scheduler.init_noise_sigma).to(self.device, torch.float32)
        return SamplingState(
            request=request,
            scheduler=scheduler,
            timesteps=scheduler.timesteps,
            latents=latents,
            generator=generator,
            class_labels=None if class_labels is None else class_labels.to(self.device),
            text=text,
            prior_tokens=prior,
            motion_embedding=motion,
            trajectories=traj,
            trajectory_mask=mask,
        )

    def _latent_size(self, request: SamplingRequest) -> tuple[int, int]:
        cfg = self.unet.config
        size = request.latent_size
        if request.motion_field is not None and self.unet.motion_encoder is not None:
            ds = self.unet.latent_downsample
            from_field = tuple(int(s) // ds for s in request.motion_field.shape[-2:])
            if size is not None and tuple(size) != from_field:
                raise ValueError(f"latent_size {size} does not match the motion field")
            size = from_field
        h, w = size if size is not None else (cfg.sample_size, cfg.sample_size)
        if h < 1 or w < 1:
            raise ValueError("latent size must be positive")
        return int(h), int(w)

    def _text_rows(self, text: torch.Tensor | None, guided: bool) -> torch.Tensor | None:
        empty = self.empty_text
        if text is None:
            if empty is None:
                return None
            return empty.unsqueeze(0).expand(2 if guided else 1, -1, -1)
        if text.dim() != 2:
            raise ValueError(f"text_embedding must be (L, D), got {tuple(text.shape)}")
        text = text.to(self.device, torch.float32)
        if not guided:
            return text.unsqueeze(0)
        if empty is not None and empty.shape != text.shape:
            raise ValueError(
                f"text_embedding {tuple(text.shape)} and the empty-text embedding "
                f"{tuple(empty.shape)} differ in shape"
            )
        return torch.stack([text, empty if empty is not None else torch.zeros_like(text)])

    def _prior_tokens(self, prior: torch.Tensor | None) -> torch.Tensor:
        cfg = self.unet.config
        if prior is not None:
            expected = (cfg.image_prior_channels, cfg.image_prior_size, cfg.image_prior_size)
            if tuple(prior.shape) != expected:
                raise ValueError(f"image_prior must be {expected}, got {tuple(prior.shape)}")
            prior = prior.unsqueeze(0)
        return self.unet.encode_image_prior(prior, 1)

    def _null(self, key, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Unconditional (all-zero input) embeddings, identical for every request: cached."""
        return self._null_cache.get(key, build)

    def _trajectories(self, request: SamplingRequest, f: int, h: int, w: int):
        traj, mask = request.trajectories, request.trajectory_mask
        if traj is None:
            traj, mask = identity_trajectories(f, h, w)  # MFA becomes exactly the identity
        else:
            traj = traj.long()
            prepare_trajectories(traj, mask, f, h, w)  # validates; raises ValueError
            if mask is None:
                mask = torch.ones(traj.shape[:2], dtype=torch.bool)
            slots = traj.shape[1]
            if slots > f:  # keep slot 0 and the last F-1 (the trajectory proper)
                keep = [0, *range(slots - (f - 1), slots)]
                traj, mask = traj[:, keep], mask[:, keep]
            elif slots < f:  # pad with masked slots so every request has F slots
                pad = f - slots
                traj = torch.cat([traj, traj.new_zeros(traj.shape[0], pad, 3)], dim=1)
                mask = torch.cat([mask.bool(), mask.new_zeros(mask.shape[0], pad).bool()], dim=1)
        return traj.to(self.device).unsqueeze(0), mask.to(self.device).bool().unsqueeze(0)

    # -------------------------------------------------------------------------------- step
    @torch.inference_mode()
    def step(self, states: Sequence[SamplingState]) -> list[SamplingState]:
        """Advances every unfinished state by one denoising step.

        States are grouped by `batch_key` (frame count, latent size, text shape); each group
        runs as ONE UNet forward over all its CFG rows. Finished states are passed through.

        Returns:
            The same states (updated in place), in the given order.
        """
        groups: dict[tuple, list[SamplingState]] = {}
        for state in states:
            if not state.done:
                groups.setdefault(state.batch_key, []).append(state)
        for group in groups.values():
            self._step_group(group)
        return list(states)

    def _step_group(self, group: list[SamplingState]) -> None:
        def cat(name: str) -> torch.Tensor | None:
            parts = [getattr(s, name) for s in group]
            return None if parts[0] is None else torch.cat(parts)

        def per_row(name: str) -> torch.Tensor | None:
            if getattr(group[0], name) is None:
                return None
            return torch.cat([_rows(getattr(s, name), s.rows) for s in group])

        samples, timesteps = [], []
        for s in group:
            t = s.timesteps[s.step_index]
            x = s.scheduler.scale_model_input(s.latents, t)
            samples.append(_rows(x, s.rows))
            timesteps.append(t.reshape(1).expand(s.rows))
        noise = self.unet(
            torch.cat(samples),
            torch.cat(timesteps),
            class_labels=cat("class_labels"),
            encoder_hidden_states=cat("text"),
            trajectories=per_row("trajectories"),
            trajectory_mask=per_row("trajectory_mask"),
            prior_tokens=cat("prior_tokens"),
            motion_embedding=cat("motion_embedding"),
        ).float()

        offset = 0
        for s in group:
            pred = noise[offset : offset + s.rows]
            offset += s.rows
            if s.guided:
                cond, uncond = pred[:1], pred[1:2]
                pred = uncond + s.request.guidance_scale * (cond - uncond)
            t = s.timesteps[s.step_index]
            kwargs = {"eta": s.request.eta} if isinstance(s.scheduler, DDIMScheduler) else {}
            s.latents = s.scheduler.step(
                pred, t, s.latents, generator=s.generator, **kwargs
            ).prev_sample
            s.step_index += 1
            if s.request.callback is not None:
                s.request.callback(s.step_index, s.total_steps, s.latents)

    # ------------------------------------------------------------------------------ finish
    def finish(self, state: SamplingState) -> torch.Tensor:
        """The denoised latents (C, F, h, w) float32 of a finished state, still scaled by the
        VAE's scaling factor (`latents.transpose(0, 1)` gives the (T, C, h, w) of `vae_decode`).
        """
        if not state.done:
            raise ValueError(f"state is at step {state.step_index} of {state.total_steps}")
        return state.latents[0]

    def generate(self, requests: Sequence[SamplingRequest]) -> list[torch.Tensor]:
        """Runs requests to completion, batched step by step; returns (C, F, h, w) latents each."""
        states = [self.prepare(r) for r in requests]
        while not all(s.done for s in states):
            self.step(states)
        return [self.finish(s) for s in states]


def _rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """(1, ...) -> (rows, ...) without copying."""
    return x.expand(rows, *x.shape[1:])
