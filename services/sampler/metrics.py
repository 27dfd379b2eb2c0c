"""Sampler engine metrics; the Helm chart's autoscaler and the Grafana dashboard use these names."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

QUEUE_DEPTH = Gauge(
    "genaug_sampler_queue_depth", "Requests waiting for a batch slot.", ("priority",)
)
RUNNING = Gauge("genaug_sampler_running_batch_size", "Requests in the running batch.")
STEP_BATCH = Histogram(
    "genaug_sampler_step_batch_size",
    "Requests advanced by one denoising step (one UNet forward per compatible group).",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
)
STEP_SECONDS = Histogram(
    "genaug_sampler_step_seconds",
    "Wall time of one denoising step of the running batch.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CLIPS = Counter("genaug_sampler_clips_total", "Clips generated.", ("priority",))
REQUEST_SECONDS = Histogram(
    "genaug_sampler_request_seconds",
    "From submission to the generated latents.",
    ("priority",),
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
PREEMPTIONS = Counter(
    "genaug_sampler_preemptions_total", "Batch-priority requests paused for interactive ones."
)
REJECTED = Counter("genaug_sampler_rejected_total", "Requests refused because the queue was full.")
ENDED = Counter(
    "genaug_sampler_ended_total", "Requests that ended without a clip, by reason.", ("reason",)
)
RESULT_CACHE_BYTES = Gauge(
    "genaug_sampler_result_cache_bytes",
    "Bytes of finished results kept for request-id retries (bounded by --result-cache-mib).",
)
CONDITIONS_CACHE_BYTES = Gauge(
    "genaug_sampler_conditions_cache_bytes",
    "Bytes of received conditions kept by digest (bounded by --conditions-cache-mib).",
)
CONDITIONS_CACHE = Counter(
    "genaug_sampler_conditions_cache_total",
    "Generate requests that named their conditions by digest, by whether the sampler held them.",
    ("result",),
)
# Both series exist from the first scrape, so rate() counts the first hit and the first miss.
for _result in ("hit", "miss"):
    CONDITIONS_CACHE.labels(_result)
