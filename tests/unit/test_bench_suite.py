"""The `make bench` suite's own plumbing: section choice, failure reporting, the tables."""

from __future__ import annotations

import itertools
import json

import pytest

from benchmarks.__main__ import SECTION_MODULES, main
from benchmarks.suite import Row, Section, at_least, at_most, markdown_table, text_table


def _fast(settings):
    return [
        Row("fast", "ratio", 0.5, "x", ">= 0.45", at_least(0.5, 0.45)),
        Row("fast", "latency p50", 412.0, "us", note="1 KiB"),
    ]


def _broken(settings):
    raise RuntimeError("no tritonserver")


SECTIONS = [Section("fast", "Fast", _fast), Section("broken", "Broken", _broken)]


def test_a_failing_section_is_reported_and_the_others_still_run(tmp_path, capsys):
    assert main(["--out", str(tmp_path)], SECTIONS) == 1
    report = json.loads((tmp_path / "bench.json").read_text())
    by_metric = {(r["section"], r["metric"]): r for r in report["rows"]}
    assert by_metric[("fast", "ratio")]["met"] is True
    assert "RuntimeError: no tritonserver" in by_metric[("broken", "failed")]["note"]
    assert set(report["seconds"]) == {"total", "fast", "broken"}
    table = (tmp_path / "bench.md").read_text()
    assert "| fast | ratio | 0.50x | >= 0.45 | yes |" in table
    assert "412 us" in capsys.readouterr().out


def test_only_and_skip_choose_sections_and_unknown_names_are_refused(tmp_path):
    assert main(["--out", str(tmp_path), "--skip", "broken"], SECTIONS) == 0
    assert main(["--out", str(tmp_path), "--only", "fast"], SECTIONS) == 0
    with pytest.raises(SystemExit, match="unknown section.*nope.*known: fast, broken"):
        main(["--out", str(tmp_path), "--only", "nope"], SECTIONS)


def test_tables_mark_a_missed_target_and_a_missing_value():
    rows = [
        Row("t", "stream / raw TCP", 0.31, "x", ">= 0.45", at_least(0.31, 0.45)),
        Row("t", "vs Triton", None, "x", "<= 1.0", at_most(None, 1.0), "no python3.13"),
    ]
    assert "| t | stream / raw TCP | 0.31x | >= 0.45 | **no** |" in markdown_table(rows)
    text = text_table(rows)
    assert "NO" in text and "[t] vs Triton: no python3.13" in text


def test_every_registered_section_module_defines_its_section():
    import importlib

    for name in SECTION_MODULES:
        section = importlib.import_module(name).SECTION
        assert isinstance(section, Section) and callable(section.run)


def test_interleaved_rounds_rotate_the_order_of_the_variants():
    from benchmarks.common import interleaved

    ran: list[str] = []
    times = interleaved({n: (lambda n=n: ran.append(n)) for n in "abc"}, repeats=3)
    assert ran == list("abcbcacab")
    assert {n: len(t) for n, t in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_run_clients_runs_them_at_once_and_raises_a_clients_error_after_all_ended():
    import threading

    from benchmarks.common import run_clients

    barrier, ended = threading.Barrier(3, timeout=5), []

    def client(i: int) -> None:
        barrier.wait()  # only passes if all three run at the same time
        ended.append(i)
        if i == 1:
            raise ValueError("client 1 failed")

    with pytest.raises(ValueError, match="client 1 failed"):
        run_clients(3, client)
    assert sorted(ended) == [0, 1, 2]
    assert run_clients(2, lambda i: None) >= 0


def test_batching_levels_take_every_order_low_three_rotations_held_and_one_round_else():
    from benchmarks.batching import HELD_CONCURRENCY, level_rounds

    order = ["a", "b", "c"]
    low = level_rounds(1, order)
    assert len(low) == 6 and {tuple(r) for r in low} == set(itertools.permutations(order))
    held = level_rounds(HELD_CONCURRENCY, order)
    assert held == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    for place in range(3):  # each variant once in each place
        assert sorted(r[place] for r in held) == order
    assert level_rounds(16, order) == [order]
