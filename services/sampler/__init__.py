"""Sequence-diffusion sampler: a step-level continuous-batching engine behind a streaming API."""
