"""The augment bench's floor: the least wall a job that computes its conditions can take."""

from __future__ import annotations

import pytest

from benchmarks.augment import fetched_floor


def _rounds(*runs):
    return [{"in_process": {"seconds": wall, "cpu_seconds": cpu}} for wall, cpu in runs]


def test_conditions_cpu_on_busy_cores_adds_its_share_of_wall():
    fetched = {"cpu_seconds": {"condition_encoder": 16.0, "motion_extractor": 0.5, "sampler": 9.0}}
    floor = fetched_floor(fetched, _rounds((11.0, 22.0), (12.0, 22.0), (13.0, 22.0)), cores=2)
    # (22 + 16.5) / 2 = 19.25 s against the median in-process 12 s; the sampler's own CPU
    # is the in-process work done again, not extra.
    assert floor["ratio"] == pytest.approx(19.25 / 12.0)
    assert floor["conditions_cpu_seconds"] == 16.5


def test_idle_cores_can_hide_the_conditions():
    fetched = {"cpu_seconds": {"condition_encoder": 2.0}}
    # In-process used one of four cores: the conditions fit beside it, so the floor is 1.
    assert fetched_floor(fetched, _rounds((10.0, 10.0)), cores=4)["ratio"] == 1.0
