"""What the end-to-end tests share: the five services with a second sampler replica, and
`genaug augment` run as the real command-line process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clients.local_cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
NEEDED = {"condition_encoder", "vae_codec", "sampler", "filter", "motion_extractor"}


@contextmanager
def two_samplers(log_dir: Path) -> Iterator[tuple[LocalCluster, LocalCluster]]:
    """The five services (A: its sampler) and sampler replica B, a second process wired to the
    same encoder, motion extractor and codec; both clusters stop on exit."""
    extra = {"filter": ["--num-classes", "3"]}
    with LocalCluster(sorted(NEEDED), log_dir=log_dir, extra_args=extra) as main:
        t = main.targets()
        wiring = [
            "--encoder-target",
            t["condition_encoder"],
            "--motion-target",
            t["motion_extractor"],
            "--codec-target",
            t["vae_codec"],
        ]
        with LocalCluster(["sampler"], log_dir=log_dir / "b", extra_args={"sampler": wiring}) as b:
            yield main, b


def augment(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """`genaug augment ARGS` as a child process; stdout and stderr together, as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "clients.cli", "augment", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
