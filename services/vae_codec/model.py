"""The codec's open-inference models: `vae_encode` and `vae_decode`, sharing one VAE."""

from __future__ import annotations

import numpy as np

from genaug.deadline import Deadline
from services.common.model import Model, TensorSpec
from services.models.vae_codec import VaeCodec


class _CodecModel(Model):
    def __init__(self, codec: VaeCodec):
        super().__init__()
        self.codec = codec

    def load(self) -> None:
        self.codec.load()
        self._declare_latents(
            TensorSpec("latents", "FP32", (-1, self.codec.latent_channels, -1, -1))
        )

    def _declare_latents(self, spec: TensorSpec) -> None:
        """Fills in the latent channel count, known only once the VAE is loaded."""
        raise NotImplementedError

    def parameters(self) -> dict[str, str]:
        return self.codec.info()


class VaeEncodeModel(_CodecModel):
    name = "vae_encode"
    inputs = (TensorSpec("frames", "FP32", (-1, 1, -1, -1)),)
    outputs = (TensorSpec("latents", "FP32", (-1, -1, -1, -1)),)

    def _declare_latents(self, spec: TensorSpec) -> None:
        self.outputs = (spec,)

    def warmup(self) -> None:
        f = self.codec.factor
        self.codec.encode(np.zeros((1, 1, 8 * f, 8 * f), np.float32))

    def predict(self, inputs, deadline: Deadline):
        return {"latents": self.codec.encode(inputs["frames"], deadline)}


class VaeDecodeModel(_CodecModel):
    name = "vae_decode"
    inputs = (TensorSpec("latents", "FP32", (-1, -1, -1, -1)),)
    outputs = (TensorSpec("frames", "FP32", (-1, 1, -1, -1)),)

    def _declare_latents(self, spec: TensorSpec) -> None:
        self.inputs = (spec,)

    def warmup(self) -> None:
        self.codec.decode(np.zeros((1, self.codec.latent_channels, 8, 8), np.float32))

    def predict(self, inputs, deadline: Deadline):
        return {"frames": self.codec.decode(inputs["latents"], deadline)}
