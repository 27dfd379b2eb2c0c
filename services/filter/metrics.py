"""Filter metrics: how many clips each level passes, for the dashboard and the collapse alert."""

from __future__ import annotations

from prometheus_client import Counter

from services.filter import pool

# Levels in the order the filter applies them; "pool" is the final keep/reject of a clip.
LEVELS = ("semantic", "sequential", "duplicate")

VERDICTS = Counter(
    "genaug_filter_verdicts_total",
    "Clips judged per filter level (pool: the final decision), by verdict pass|reject.",
    ("level", "verdict"),
)


def record(outcome: pool.PoolResult, options: pool.PoolOptions) -> None:
    """Count each clip once at every enabled level it reached (a rejected clip stops there)."""
    enabled = {
        "semantic": options.semantic,
        "sequential": options.sequential,
        "duplicate": options.duplicates,
    }
    for verdict in outcome.verdicts:
        for level in LEVELS:
            if not enabled[level]:
                continue
            rejected = verdict.rejected_by == level
            VERDICTS.labels(level, "reject" if rejected else "pass").inc()
            if rejected:
                break
        VERDICTS.labels("pool", "pass" if verdict.keep else "reject").inc()
