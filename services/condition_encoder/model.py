"""The condition encoder's open-inference models: `image_prior` and `text_embedding`."""

from __future__ import annotations

import numpy as np

from genaug.deadline import Deadline
from services.common.model import BYTES, Model, TensorSpec
from services.condition_encoder.encoder import ConditionEncoder


class ImagePriorModel(Model):
    """`frames` UINT8 or FP32 (N,H,W) -> `prior` FP32 (N,256,64,64)."""

    name = "image_prior"
    inputs = (TensorSpec("frames", "UINT8", (-1, -1, -1), also_accepts=("FP32",)),)
    outputs = (TensorSpec("prior", "FP32", (-1, 256, 64, 64)),)

    def __init__(self, encoder: ConditionEncoder):
        super().__init__()
        self.encoder = encoder

    def load(self) -> None:
        self.encoder.load_image()

    def warmup(self) -> None:
        # One frame: the first forward pays one-off costs (allocator, kernels), ~1-3 s.
        self.encoder.encode_image_prior(np.zeros((1, 64, 64), np.uint8))

    def parameters(self) -> dict[str, str]:
        return self.encoder.image_info()

    def predict(self, inputs, deadline: Deadline):
        prior = self.encoder.encode_image_prior(inputs["frames"], deadline, "inputs[frames]")
        return {"prior": prior}


class TextEmbeddingModel(Model):
    """`text` BYTES (N) UTF-8 captions -> `embedding` FP32 (N,L,D)."""

    name = "text_embedding"
    inputs = (TensorSpec("text", BYTES, (-1,)),)
    outputs = (TensorSpec("embedding", "FP32", (-1, -1, -1)),)

    def __init__(self, encoder: ConditionEncoder):
        super().__init__()
        self.encoder = encoder

    def load(self) -> None:
        self.encoder.load_text()

    def warmup(self) -> None:
        self.encoder.encode_text(["", "warm-up caption"])

    def parameters(self) -> dict[str, str]:
        return self.encoder.text_info()

    def predict(self, inputs, deadline: Deadline):
        texts = inputs["text"].reshape(-1).tolist()
        return {"embedding": self.encoder.encode_text(texts, deadline, "inputs[text]")}
