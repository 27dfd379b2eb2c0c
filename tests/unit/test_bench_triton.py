"""The stock-Triton bench section: without its Python it reports why instead of failing,
and its rows hold the project / Triton ratio against the target."""

from __future__ import annotations

import json

import pytest

from benchmarks import triton


def test_a_missing_interpreter_is_a_reason_not_a_crash(tmp_path):
    missing = str(tmp_path / "no-such" / "python3.12")
    results = triton.run(tmp_path, quick=True, python=missing, venv=tmp_path / "venv")
    assert "does not run" in results["skipped"] and missing in results["skipped"]
    assert not (tmp_path / "venv").exists()  # nothing was installed
    written = json.loads((tmp_path / "triton.json").read_text())
    assert written["skipped"] == results["skipped"]
    rows = triton.rows(results)
    assert len(rows) == 2 * len(triton.CONCURRENCY)  # quick: one VAE shape and the prior
    assert all(r.value is None and r.met is None for r in rows)
    assert all(r.note == results["skipped"] and r.target == "<= 1.0" for r in rows)


def test_an_interpreter_of_another_version_is_refused(tmp_path):
    import sys

    with pytest.raises(triton.TritonUnavailable, match=r"numpy < 2"):
        triton.find_python(sys.executable)  # the project's 3.11


def test_rows_hold_the_ratio_and_both_figures():
    per = {
        "rounds": 3,
        "seconds_per_request": {"project": 0.3, "triton": 0.1},
        "ratio_project_over_triton": 3.0,
    }
    results = {
        "threads": 2,
        "cases": {
            "vae_encode (8, 1, 64, 64)": {
                "model": "vae_encode",
                "max_abs_diff": 2e-6,
                "concurrency": {"1": per, "4": {**per, "ratio_project_over_triton": 0.8}},
            },
            "image_prior (2, 320, 240)": {
                "model": "image_prior",
                "max_abs_diff": 0.5,
                "output_shape": {"project": [2, 256, 64, 64], "triton": [2, 256, 64, 64]},
                "concurrency": {},
            },
        },
    }
    rows = triton.rows(results)
    assert [(r.value, r.met) for r in rows] == [(3.0, False), (0.8, True), (None, None)] + [
        (None, None)
    ]
    assert "project 300 ms, Triton 100 ms" in rows[0].note and "2.0e-06" in rows[0].note
    assert "outputs differ" in rows[2].note


def test_a_round_sends_enough_requests_to_outlast_a_server_waking_up():
    assert triton.calls_per_round(0.015) == 20  # a 15 ms request: capped at MAX_CALLS
    assert triton.calls_per_round(0.1) == 3  # about ROUND_S of requests
    assert triton.calls_per_round(0.4) == 1  # one slow request is already a round
    assert triton.calls_per_round(0.0) == triton.MAX_CALLS
