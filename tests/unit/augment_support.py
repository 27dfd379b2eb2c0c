"""Fakes for the augmentation job's unit tests: a tiny dataset, a sampler and a filter."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from clients.augment.options import AugmentOptions
from clients.rpc.filter import ClipVerdict, FilterResult
from clients.rpc.sampler import GeneratedClip
from services.data import layout

NAME = "Tiny"
TRAIN = {"A": 5, "B": 3, "C": 2}
TEST = {"A": 2, "B": 1, "C": 1}


class Crash(BaseException):
    """Stands for the process dying (not an Exception: nothing catches it on the way out)."""


def tiny_dataset(root: Path) -> Path:
    """Train and test clips (8 frames of 16x16) in the seed layout; test names start `te-`."""
    folder = layout.dataset_dir(root, NAME)
    rng = np.random.default_rng(0)
    for split, counts, prefix in (("train", TRAIN, "tr"), ("test", TEST, "te")):
        records = []
        for cls, n in counts.items():
            for i in range(n):
                name = layout.clip_file_name(f"{prefix}-{cls.lower()}{i}", 0)
                layout.write_clip(folder / name, rng.integers(0, 255, (8, 16, 16), np.uint8))
                records.append({"file_name": name, "cls": cls, "text": f"{cls} clip {i}"})
        layout.write_metadata(layout.metadata_path(root, NAME, split), records)
    return Path(root)


def options(root: Path, out: Path, **overrides) -> AugmentOptions:
    values = dict(
        dataset_root=root,
        name=NAME,
        out=out,
        per_class=4,
        conditions=["text"],
        steps=2,
        concurrency=1,
        shard_index=0,
        shard_count=1,
        progress=False,
        report=False,
    )
    values.update(overrides)
    return AugmentOptions(**values)


def _rng(text: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8]))


class FakeSampler:
    """Deterministic clips from the request's class and seed; can crash after n clips."""

    def __init__(self, crash_after: int | None = None):
        self.crash_after = crash_after
        self.completed: Counter = Counter()  # request id -> clips returned

    def generate(self, class_id, conditions, *, seed, request_id, **kwargs):
        if self.crash_after is not None and sum(self.completed.values()) >= self.crash_after:
            raise Crash()
        frames = _rng(f"{class_id}/{seed}/{conditions.text}").uniform(-1, 1, (8, 1, 16, 16))
        frames = frames.astype(np.float32)
        latents = np.repeat(frames[:, :, ::8, ::8], 4, axis=1)
        self.completed[request_id] += 1
        return GeneratedClip(request_id, latents, frames, 0.01)


class FakePool:
    """Stands in for ReplicaPool with one replica."""

    def __init__(self, client):
        self.replicas = [SimpleNamespace(target="fake:1", client=client, down_until=0.0)]

    def pick(self):
        return self.replicas[0]

    def failed(self, replica, error):
        pass

    def succeeded(self, replica):
        pass


class FakeFilter:
    """Rejects clips whose frame mean is below a threshold, as "semantic" (per clip only)."""

    def __init__(self, crash: bool = False):
        self.crash = crash
        self.calls = 0

    def filter_pool(self, clips, **kwargs):
        self.calls += 1
        if self.crash:
            raise Crash()
        verdicts = []
        for c in clips:
            mean = float(np.mean(c.clip))
            keep = mean > -0.004
            reasons = () if keep else (f"semantic: mean {mean:.4f} too low",)
            verdicts.append(ClipVerdict(c.clip_id, keep, -mean, 50.0 + mean, 0.0, reasons))
        return FilterResult(verdicts, float("-inf"), float("inf"))


def data_tree(out: Path) -> dict[str, bytes]:
    """The output dataset's files (not the job state or the report), by relative path."""
    folder = layout.dataset_dir(out, NAME)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


class PoolFilter:
    """Keeps clips above the pool's median frame mean: verdicts depend on the whole pool, like
    the VAE-Seq K-means band."""

    def filter_pool(self, clips, **kwargs):
        clips = list(clips)
        means = [float(np.mean(c.clip)) for c in clips]
        cut = float(np.median(means))
        verdicts = [
            ClipVerdict(c.clip_id, m > cut, 0.0, m, 0.0, () if m > cut else ("sequential: low",))
            for c, m in zip(clips, means, strict=True)
        ]
        return FilterResult(verdicts, cut, float("inf"))
