"""Sequence latent diffusion model (Ctrl-GenAug generator) and its step-wise sampler.

Public API:
    LDMConfig.preset("sd14" | "small", **overrides): model hyperparameters.
    SequenceUNet(config): the UNet (2D when `sequence=False`); `SequenceUNet.from_2d` inflates.
    SequenceSampler(unet, ...): `prepare(request) -> state`, `step(states)`, `finish(state)`,
        `generate(requests)`.
    save_unet / load_unet: safetensors + JSON config.
"""

from .attention import identity_trajectories, prepare_trajectories
from .config import PRESETS, LDMConfig
from .pipeline import (
    SCHEDULER_CONFIG,
    SOLVERS,
    SamplingRequest,
    SamplingState,
    SequenceSampler,
    make_scheduler,
)
from .serialization import load_config, load_unet, save_unet
from .unet import SequenceUNet, finetune_parameters

__all__ = [
    "PRESETS",
    "SCHEDULER_CONFIG",
    "SOLVERS",
    "LDMConfig",
    "SamplingRequest",
    "SamplingState",
    "SequenceSampler",
    "SequenceUNet",
    "finetune_parameters",
    "identity_trajectories",
    "load_config",
    "load_unet",
    "make_scheduler",
    "prepare_trajectories",
    "save_unet",
]
