"""The sampler's loaded generators, and the step sampler that routes the engine's batch to them.

One engine serves every generator: its queue, limits and gauges (the autoscaler's signal) stay
one. At each step `GeneratorRouter` advances each generator's share of the batch with that
generator's UNet. A state keeps the sampler it was prepared with, so swapping in a new version
(hot loading) never changes the model under a request already in flight.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

from genaug.errors import InvalidArgument
from services.models.generators import GeneratorEntry
from services.models.ldm.pipeline import SamplingRequest, SamplingState, SequenceSampler
from services.models.ldm.unet import WEIGHTS_NAME, SequenceUNet
from services.models.repository import GeneratorCard
from services.models.vae_codec import VaeCodec

logger = logging.getLogger(__name__)


@dataclass
class LoadedGenerator:
    """A generator ready to sample: its repository entry, card (gaps filled from the UNet),
    sampler and, when decoding runs in-process, its own VAE."""

    entry: GeneratorEntry
    card: GeneratorCard
    sampler: SequenceSampler
    provenance: str  # "trained" or "seeded-initialisation"
    local_codec: VaeCodec | None = None

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def classes(self) -> list[str]:
        return list(self.card.class_names)

    def warmup(self) -> None:
        cfg = self.sampler.unet.config
        request = SamplingRequest(
            num_frames=2,
            class_label=0 if cfg.num_classes else None,
            num_inference_steps=1,
            latent_size=(cfg.sample_size, cfg.sample_size),
        )
        self.sampler.generate([request])


def load_generator(
    entry: GeneratorEntry,
    device: torch.device,
    dtype: torch.dtype,
    empty_text: torch.Tensor,
    num_classes: int = 3,
    decode_locally: bool = False,
) -> LoadedGenerator:
    """Load `entry`'s sequence LDM (a seeded small model when `ldm/` holds no weights: tests and
    smoke runs; its classes are the card's, else `num_classes`) and, with `decode_locally`, its
    VAE.

    Raises:
        InvalidArgument: the card's classes differ from the classes the UNet's ids index.
    """
    ldm_dir = entry.path / "ldm"
    if (ldm_dir / WEIGHTS_NAME).is_file():
        unet = SequenceUNet.from_pretrained(ldm_dir, torch_dtype=dtype).to(device)
        provenance = "trained"
    else:
        logger.warning("no LDM weights in %s: seeded small model (untrained)", ldm_dir)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            classes = len(entry.card.class_names) or num_classes
            unet = SequenceUNet.from_preset("small", num_classes=classes)
        provenance = "seeded-initialisation"
    card = _complete_card(entry, unet)
    sampler = SequenceSampler(unet, empty_text, device, dtype)
    codec = None
    if decode_locally:
        codec = VaeCodec(entry.path / "vae", device=str(device))
        codec.load()
    return LoadedGenerator(entry, card, sampler, provenance, codec)


def _complete_card(entry: GeneratorEntry, unet: SequenceUNet) -> GeneratorCard:
    """The entry's card with what only the UNet knows: class count, latent channels, size."""
    cfg = unet.config
    n = cfg.num_classes or 0
    classes = list(entry.card.class_names) or [str(i) for i in range(n)]
    if n and len(classes) != n:
        raise InvalidArgument(
            f"{entry.path}/card.json.class_names",
            f"names {len(classes)} classes {classes}, the model has {n}",
        )
    side = cfg.sample_size * unet.latent_downsample
    card = entry.card
    return replace(
        card,
        class_names=tuple(classes),
        latent_channels=card.latent_channels or int(cfg.in_channels),
        height=card.height or side,
        width=card.width or side,
    )


class RoutedRequest(NamedTuple):
    """What the engine prepares: a sampling request and the generator that samples it."""

    generator: LoadedGenerator
    request: SamplingRequest


class GeneratorRouter:
    """The engine's step sampler over several generators (`engine.StepSampler`)."""

    def __init__(self) -> None:
        # state -> the sampler that prepared it (weak: a retired state leaves with its job).
        self._owner: weakref.WeakKeyDictionary[SamplingState, SequenceSampler] = (
            weakref.WeakKeyDictionary()
        )

    def prepare(self, routed: RoutedRequest) -> SamplingState:
        sampler = routed.generator.sampler
        state = sampler.prepare(routed.request)
        self._owner[state] = sampler
        return state

    def step(self, states: list[SamplingState]) -> list[SamplingState]:
        groups: dict[int, tuple[SequenceSampler, list[SamplingState]]] = {}
        for state in states:
            sampler = self._owner[state]
            groups.setdefault(id(sampler), (sampler, []))[1].append(state)
        for sampler, group in groups.values():
            sampler.step(group)
        return list(states)

    def finish(self, state: SamplingState) -> torch.Tensor:
        return self._owner[state].finish(state)
