"""Sequence latent diffusion model (Ctrl-GenAug generator) and its step-wise sampler.

Public API:
    SequenceUNet(**config): the UNet (2D when `sequence=False`), a diffusers `ModelMixin`;
        `SequenceUNet.from_preset("sd14" | "small", **overrides)`, `from_2d` inflates,
        `save_pretrained` / `from_pretrained` (`config.json` + `WEIGHTS_NAME`).
    KeyFrameAttnProcessor / MotionFieldAttnProcessor: SAM's attention processors.
    SequenceSampler(unet, ...): `prepare(request) -> state`, `step(states)`, `finish(state)`,
        `generate(requests)`.
    legacy: reading and converting the pre-diffusers checkpoint format.
"""

from .attention import (
    KeyFrameAttnProcessor,
    MotionFieldAttnProcessor,
    identity_trajectories,
    prepare_trajectories,
)
from .pipeline import (
    SCHEDULER_CONFIG,
    SOLVERS,
    SamplingRequest,
    SamplingState,
    SequenceSampler,
    make_scheduler,
)
from .presets import PRESETS, preset_config
from .unet import WEIGHTS_NAME, SequenceUNet, finetune_parameters

__all__ = [
    "PRESETS",
    "SCHEDULER_CONFIG",
    "SOLVERS",
    "WEIGHTS_NAME",
    "KeyFrameAttnProcessor",
    "MotionFieldAttnProcessor",
    "SamplingRequest",
    "SamplingState",
    "SequenceSampler",
    "SequenceUNet",
    "finetune_parameters",
    "identity_trajectories",
    "make_scheduler",
    "prepare_trajectories",
    "preset_config",
]
