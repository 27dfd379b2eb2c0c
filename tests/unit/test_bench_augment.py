"""The augment bench's summary: its ratios, and the floor, the least wall a job that computes
its conditions can take."""

from __future__ import annotations

import pytest

from benchmarks.augment import fetched_floor, summarise


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


def _job(wall: float) -> dict:
    return {
        "wall_seconds": wall,
        "share_of_wall": {"sampling": 0.8, "conditions": 0.2},
        "engine": {"mean_step_seconds": 0.2, "mean_batch": 4.0, "steps": 45},
        "phases": {"generation": wall - 1.0},
        "cpu_seconds": {"sampler": 15.0, "condition_encoder": 1.0},
    }


def _round(cached_wall: float, in_process_wall: float) -> dict:
    in_process = {"seconds": in_process_wall, "cpu_seconds": 15.0, "mean_step_seconds": 0.2}
    return {"cached": _job(cached_wall), "in_process": in_process | {"mean_batch": 4, "steps": 45}}


def test_two_replicas_are_their_median_wall_against_the_one_replica_jobs():
    rounds = [_round(12.0, 10.0), _round(11.0, 10.0), _round(30.0, 10.0)]
    summary = summarise(_job(20.0), rounds, [_job(8.0), _job(10.0), _job(9.0)], clips=12)
    assert summary["ratios"]["cached_over_in_process"] == pytest.approx(1.2)  # medians 12 / 10
    assert summary["ratios"]["two_over_one_replica_throughput"] == pytest.approx(12.0 / 9.0)
    assert summary["clips_per_minute"]["two_replicas"] == pytest.approx(60 * 12 / 9.0)


def test_without_the_replica_jobs_their_figures_are_missing_not_made_up():
    summary = summarise(_job(20.0), [_round(12.0, 10.0)], [], clips=12)
    assert summary["ratios"]["two_over_one_replica_throughput"] is None
    assert summary["clips_per_minute"]["two_replicas"] is None
    assert summary["share_of_wall"]["2 replicas"] == {}
    assert summary["ratios"]["fetched_overlapped_over_in_process"] is None


def test_both_schedules_of_the_fetched_job_are_against_the_same_in_process_wall():
    rounds = [_round(12.0, 10.0), _round(11.0, 9.0), _round(13.0, 11.0)]
    summary = summarise(_job(20.0), rounds, [], clips=12, overlapped=_job(25.0))
    assert summary["ratios"]["fetched_over_in_process"] == pytest.approx(2.0)
    assert summary["ratios"]["fetched_overlapped_over_in_process"] == pytest.approx(2.5)
