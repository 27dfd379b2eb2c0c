"""The filter's open-inference models: `vae_seq` and `classifier`, sharing one scorer."""

from __future__ import annotations

import numpy as np

from genaug.deadline import Deadline
from services.common.model import Model, TensorSpec
from services.filter.scorer import PoolScorer

_CLIPS = (TensorSpec("clips", "FP32", (-1, -1, 1, -1, -1)),)


class _ScorerModel(Model):
    def __init__(self, scorer: PoolScorer):
        super().__init__()
        self.scorer = scorer

    def load(self) -> None:
        self.scorer.load()

    def _warm_clips(self) -> np.ndarray:
        f = self.scorer.factor
        return np.zeros((1, 2, 1, 8 * f, 8 * f), np.float32)


class VaeSeqModel(_ScorerModel):
    """`clips` FP32 (B,T,1,H,W) in [-1,1] -> `score` FP32 (B): 100 x consecutive-frame cosine."""

    name = "vae_seq"
    inputs = _CLIPS
    outputs = (TensorSpec("score", "FP32", (-1,)),)

    def warmup(self) -> None:
        self.scorer.vae_seq_scores(self._warm_clips())

    def parameters(self) -> dict[str, str]:
        return {"weights": self.scorer.vae_weights, **self.scorer.info()}

    def predict(self, inputs, deadline: Deadline):
        clips = inputs["clips"]
        self.scorer.check_batch(clips, "inputs[clips]")
        return {"score": self.scorer.vae_seq_scores(clips, deadline)}


class ClassifierModel(_ScorerModel):
    """`clips` FP32 (B,T,1,H,W) in [-1,1] -> `logits` FP32 (B,C) of the real-data classifier."""

    name = "classifier"
    inputs = _CLIPS
    outputs = (TensorSpec("logits", "FP32", (-1, -1)),)

    def warmup(self) -> None:
        self.scorer.logits(self._warm_clips())

    def parameters(self) -> dict[str, str]:
        return {"weights": self.scorer.classifier_weights, **self.scorer.info()}

    def predict(self, inputs, deadline: Deadline):
        clips = inputs["clips"]
        self.scorer.check_batch(clips, "inputs[clips]")
        return {"logits": self.scorer.logits(clips, deadline)}
