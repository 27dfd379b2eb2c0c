"""Test-wide settings: offline, deterministic, and gentle with a 2-core machine."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.manual_seed(0)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
