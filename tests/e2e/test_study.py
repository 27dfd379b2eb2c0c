"""`genaug study` end to end at a tiny scale: real services, every phase, the report.

A tiny hard-phantom benchmark (8 patients) and a budget of a few seconds of training per model:
the numbers mean nothing, the test checks that every phase runs through the real code paths
(training stages, the sampler and filter services, worker processes), that the report has its
sections and computed metrics, that no view holds a test clip, and that a re-run resumes.
About a minute on an idle 2-core machine.
"""

from __future__ import annotations

import json
import math
import time

import pytest

from clients import cli
from clients.local_cluster import available_services
from clients.study.arms import DEFAULT_ARMS
from clients.study.synthesis import SERVICES
from services.data import layout
from services.data.phantoms_hard import HARD_NAME, generate_hard_benchmark, ood_name

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not set(SERVICES) <= set(available_services()),
        reason=f"needs the services {SERVICES}",
    ),
]
SECTIONS = (
    "## Verdict",
    "**Filter default.**",
    "## Regime `low`",
    "## Regime `full`",
    "### in-domain",
    "### out-of-domain",
    "## Filter acceptance by level",
    "## Generation quality",
    "## Memorisation audit",
    "## What every model saw",
    "## Time",
)


def test_a_tiny_study_runs_every_phase_and_writes_the_report(tmp_path):
    data, out = tmp_path / "data", tmp_path / "study"
    generate_hard_benchmark(
        data,
        patients_per_class={"NOR": 3, "HCM": 3, "DCM": 2},
        ood_patients_per_class={"NOR": 2, "HCM": 2, "DCM": 2},
    )
    argv = [
        "study",
        "--dataset-root",
        str(data),
        "--name",
        HARD_NAME,
        "--ood-name",
        ood_name(),
        "--out",
        str(out),
        "--budget-minutes",
        "0.3",
        "--seeds",
        "2",
        "--low-fraction",
        "0.5",
        "--steps",
        "2",
        "--pool-per-class",
        "2",
        "2",
        "--classifier-steps",
        "3",
        "--no-progress",
    ]
    assert cli.main(argv) == 0

    text = (out / "report" / "index.md").read_text()
    for section in SECTIONS:
        assert section in text, section
    for png in ("delta_macro_f1.png", "vae_seq.png", "memorisation.png"):
        assert (out / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "report" / "results.json").read_text())
    runs = results["results"]
    for regime in ("low", "full"):
        # Arms whose filter kept under 2 clips of a class (likely, from a seconds-old
        # generator) are skipped and said so; the others ran with both seeds.
        skipped = results["skipped_arms"][regime]
        trained = {r["arm"] for r in runs if r["regime"] == regime}
        assert trained | set(skipped) == set(DEFAULT_ARMS) and not trained & set(skipped)
        assert {"a-real", "b-conventional", "c-unfiltered"} <= trained
        assert sum(r["regime"] == regime for r in runs) == 2 * len(trained)
        for arm in skipped:
            assert f"- {regime}: {arm} was not trained: its filter kept" in text
    synthetic = [r for r in runs if r["arm"] == "c-unfiltered"]
    assert all(
        r["synthetic_clips"] == 3 * results["synthetic_per_class"][r["regime"]] for r in synthetic
    )
    for run in runs:
        for split in ("in_domain", "out_of_domain"):
            assert 0.0 <= run[split]["macro_f1"] <= 1.0 and run[split]["n"] > 0
            assert set(run[split]["recall"]) <= {"DCM", "HCM", "NOR"}
    cell = results["summary"]["low"]["in_domain"]["c-unfiltered"]["macro_f1"]
    assert len(cell["values"]) == 2 and math.isfinite(cell["vs_a-real"]["mean"])
    for regime in ("low", "full"):
        audit = results["audits"][regime]
        assert audit["pool_size"] == 6 and set(audit["acceptance"]) >= {"reference", "real-band"}
        assert 0.0 <= audit["fidelity"]["all"] <= 1.0
        assert audit["memorisation"]["pixel"]["synthetic"]["n"] == 6

    # No leakage: a regime's view holds training clips only.
    test_clips = {i.file_name for i in layout.load_dataset(data, HARD_NAME, "test")}
    train_clips = {i.file_name for i in layout.load_dataset(data, HARD_NAME, "train")}
    for regime in ("low", "full"):
        view = out / "regimes" / regime / "view"
        seen = {i.file_name for s in layout.SPLITS for i in layout.load_dataset(view, HARD_NAME, s)}
        assert seen and seen <= train_clips and not seen & test_clips

    # A re-run finds every phase done and rewrites the same report.
    began = time.perf_counter()
    assert cli.main(argv) == 0
    assert time.perf_counter() - began < 60
    again = json.loads((out / "report" / "results.json").read_text())
    assert again["summary"] == results["summary"]
