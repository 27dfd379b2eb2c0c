"""Where a job's time goes: stage seconds split each phase's wall time, summing to the job's."""

from __future__ import annotations

import json

import pytest

from clients.augment.spans import Spans, summary_line, timings_path, write_timings


def test_overlapping_stages_share_their_phase_wall_time_and_shares_add_up_to_one(tmp_path):
    spans = Spans()
    with spans.phase("generation"):
        # two clips at once: 6 s of summed stage time inside a phase that the test calls 3 s
        spans.add("conditions", 1.0)
        spans.add_call(5.0, {"prepare": 0.5, "queue": 0.5, "sampling": 2.5, "decode": 0.5})
    spans._phases["generation"] = 3.0  # the phase's wall time, fixed for the arithmetic
    spans._phases["filtering"] = 1.0  # a phase with no stage counts as its own name
    timings = spans.as_dict(wall_seconds=5.0, clips=2)
    shares = timings["share_of_wall"]
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["sampling"] == pytest.approx(3.0 * 2.5 / 6.0 / 5.0)
    assert shares["transport"] == pytest.approx(3.0 * 1.0 / 6.0 / 5.0)  # the call beyond 4 s
    assert shares["conditions"] == pytest.approx(3.0 * 1.5 / 6.0 / 5.0)  # prepare counts there
    assert shares["filtering"] == pytest.approx(0.2) and shares["other"] == pytest.approx(0.2)
    assert timings["clips_per_minute"] == pytest.approx(24.0)
    path = write_timings(timings_path(tmp_path, 1, 2), timings)
    assert path.name == "timings-1-of-2.json" and json.loads(path.read_text()) == timings
    assert summary_line(timings).startswith("  24.0 clips/min; share of wall time: sampling")


def test_an_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="unknown stage 'napping'"):
        Spans().add("napping", 1.0)
