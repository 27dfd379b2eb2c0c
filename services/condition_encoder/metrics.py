"""Condition encoder metrics (beyond the per-RPC ones every service exports)."""

from __future__ import annotations

from prometheus_client import Counter

TEXT_EMBEDDINGS = Counter(
    "genaug_encoder_text_embeddings_total",
    "Captions embedded, by where the embedding came from (cache or computed).",
    ("source",),
)
