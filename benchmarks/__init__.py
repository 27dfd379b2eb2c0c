"""Reproducible benchmarks: each prints ratios measured side by side and writes JSON + a plot."""
