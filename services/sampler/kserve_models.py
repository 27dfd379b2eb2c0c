"""The sampler's generators over KServe v2: one open-inference model per generator, named and
versioned as in the model repository, its card in the model's metadata (`ModelConfig`
parameters: class names in id order, domain, training data), and `ModelInfer` generating one
clip from tensor conditions through the same engine as `Generate` (step-level batched with it).

Tensor inputs only (a stock Triton client has no stream for progress): `class_id` INT32 [1],
`seed` INT64 [1], `steps` INT32 [1] and `guidance_scale` FP32 [1] (0: the sampler's defaults),
`image_prior` FP32 (256,64,64), `motion_field` FP32 (T-1,2,H,W); outputs `frames` FP32
(T,1,H,W) in [-1,1], `latents` FP32 (T,C,h,w) and `conditions_digest` BYTES [1].

Conditions by digest, as `Generate` has them: the reply's `conditions_digest` names the
conditions the sampler now keeps ("" when it keeps none), and a later request may send that
`conditions_digest` BYTES [1] input instead of `image_prior` and `motion_field` (4-5 MB). A
digest the sampler no longer holds is FAILED_PRECONDITION naming `conditions_digest`: send the
tensors again.
"""

from __future__ import annotations

import json
import uuid

import numpy as np

from genaug import wire
from genaug.deadline import Deadline
from genaug.errors import InvalidArgument
from genaug.v1 import sampler_pb2 as pb
from services.common.model import Model, TensorSpec
from services.sampler.generators import LoadedGenerator

PLATFORM = "genaug_sequence_ldm"
_SCALARS = {"class_id": "INT32", "seed": "INT64", "steps": "INT32", "guidance_scale": "FP32"}
_CONDITIONS = ("image_prior", "motion_field")  # sent together, or named by their digest


class GeneratorModel(Model):
    """Generator `generator` as a KServe v2 model; `servicer` runs its requests."""

    platform = PLATFORM
    inputs = (
        *(TensorSpec(name, datatype, (1,)) for name, datatype in _SCALARS.items()),
        TensorSpec("image_prior", "FP32", (256, 64, 64), optional=True),
        TensorSpec("motion_field", "FP32", (-1, 2, -1, -1), optional=True),
        TensorSpec("conditions_digest", "BYTES", (1,), optional=True),
    )

    def __init__(self, generator: LoadedGenerator, servicer, is_default: bool = False):
        super().__init__()
        self.generator, self.servicer, self.is_default = generator, servicer, is_default
        self.name, self.version = generator.name, generator.entry.version
        channels = generator.card.latent_channels or -1
        self.outputs = (
            TensorSpec("frames", "FP32", (-1, 1, -1, -1)),
            TensorSpec("latents", "FP32", (-1, channels, -1, -1)),
            TensorSpec("conditions_digest", "BYTES", (1,)),
        )

    def load(self) -> None:
        """Loaded by the sampler (its generators are warm before they are listed)."""

    def parameters(self) -> dict[str, str]:
        card = self.generator.card
        return {
            "class_names": json.dumps(list(card.class_names)),
            "modality": card.modality,
            "num_frames": str(card.num_frames),
            "height": str(card.height),
            "width": str(card.width),
            "latent_channels": str(card.latent_channels),
            "dataset_name": card.dataset_name,
            "dataset_fingerprint": card.dataset_fingerprint,
            "weights": self.generator.provenance,
            "is_default": str(self.is_default).lower(),
            "card_json": card.to_json(),
        }

    def predict(self, inputs: dict[str, np.ndarray], deadline: Deadline) -> dict[str, np.ndarray]:
        request = pb.GenerateRequest(
            request_id=uuid.uuid4().hex,
            model=self.name,
            class_id=int(inputs["class_id"][0]),
            seed=int(inputs["seed"][0]) % (1 << 64),
            steps=int(inputs["steps"][0]),
            guidance_scale=float(inputs["guidance_scale"][0]),
            decode=True,
        )
        _set_conditions(request, inputs)
        result = self.servicer.generate_result(request, deadline)
        return {
            "frames": wire.from_proto(result.frames, "frames"),
            "latents": wire.from_proto(result.latents, "latents"),
            "conditions_digest": np.array([result.conditions_digest.encode()], dtype=object),
        }


def _set_conditions(request: pb.GenerateRequest, inputs: dict[str, np.ndarray]) -> None:
    """The request's conditions from the inputs: both tensors, or the digest of conditions a
    previous reply said the sampler keeps (with the tensors too, it must be theirs)."""
    tensors = [name for name in _CONDITIONS if name in inputs]
    if "conditions_digest" in inputs:
        request.conditions_digest = _text(inputs["conditions_digest"][0])
        if not (request.conditions_digest or tensors):
            raise InvalidArgument("inputs[conditions_digest]", "is empty, and no tensors came")
    elif not tensors:
        raise InvalidArgument(
            "inputs[image_prior]",
            "missing: send image_prior and motion_field, or the conditions_digest a "
            "previous reply gave",
        )
    if tensors:
        missing = [name for name in _CONDITIONS if name not in inputs]
        if missing:
            raise InvalidArgument(f"inputs[{missing[0]}]", f"missing: sent with {tensors[0]}")
        for name in _CONDITIONS:
            wire.to_proto(np.asarray(inputs[name]), getattr(request.conditions, name))


def _text(value) -> str:
    """A BYTES element as the ASCII text a digest is."""
    try:
        return bytes(value).decode("ascii")
    except (TypeError, UnicodeDecodeError):
        raise InvalidArgument("inputs[conditions_digest]", "is not ASCII text") from None


def sync_models(models: dict[str, Model], backend, servicer) -> None:
    """Make `models` (the server's KServe v2 registry) the backend's generators, in place:
    called after loading and after each hot-load that changed them."""
    generators = backend.generators
    for name in [n for n in models if n not in generators]:
        del models[name]
    for name, generator in generators.items():
        current = models.get(name)
        is_default = name == backend.default_model
        if (
            current is None
            or current.generator is not generator
            or (current.is_default != is_default)
        ):
            model = GeneratorModel(generator, servicer, is_default)
            model.ready = True
            models[name] = model
