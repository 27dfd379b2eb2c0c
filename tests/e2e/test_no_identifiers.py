"""No DICOM identifier reaches any output or log; no request payload reaches a log.

Identifiers are planted in the headers (and the file names) of two of pydicom's real test
files, a 30-frame colour ultrasound cine and a 10-frame MR series; then the commands run as a
user would run them, through the command line, against the live services: `genaug prepare`,
`genaug conditions` (motion and priors from the motion extractor and the encoder), and
`genaug augment` (a clip per class, 3 steps, both sampler replicas, the filter). Every byte of
every file they wrote, of their own output and of every service's log is searched for every
identifier; the logs also for the clips' caption, which travels in the requests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from clients.local_cluster import available_services
from services.data import layout
from tests.e2e.cluster import NEEDED, ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not set(available_services()) >= NEEDED,
        reason=f"needs all five services, missing {sorted(NEEDED - set(available_services()))}",
    ),
]

HEADERS = {
    "PatientName": "QUIXOTE^ZEBEDIAH^ALONSO",
    "PatientID": "MRN-44177-QX",
    "OtherPatientIDs": "ALT-99321-QX",
    "PatientBirthDate": "19390817",
    "PatientAddress": "17 Rocinante Lane, La Mancha",
    "StudyDate": "20190422",
    "SeriesDate": "20190423",
    "AcquisitionDate": "20190424",
    "ContentDate": "20190425",
    "StudyTime": "134217.123456",
    "InstitutionName": "Saint Elsewhere Quarry Hospital",
    "InstitutionAddress": "1 Windmill Road, Toboso",
    "ReferringPhysicianName": "SANCHO^PANZA^DR",
    "PerformingPhysicianName": "DULCINEA^TOBOSO",
    "OperatorsName": "CERVANTES^MIGUEL",
    "AccessionNumber": "ACC7781234",
    "StudyID": "STUDY-5551212",
    "StudyDescription": "Cardiac echo for QUIXOTE",
    "SeriesDescription": "Cine series of ZEBEDIAH",
    "StationName": "QXSTATION01",
    "DeviceSerialNumber": "SN-QX-0042",
    "StudyInstanceUID": "1.2.826.0.1.3680043.9.7777.424242",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.9.7777.434343",
}
SOURCES = {"Echo": "examples_ybr_color.dcm", "Mri": "emri_small.dcm"}
FILE_NAME = "QUIXOTE_ZEBEDIAH_MRN-44177-QX_{}.dcm"  # identifiers in the source name too
CAPTION = "zebra-caption-7781 apical view"  # a request payload: in metadata, never in logs


def _needles() -> dict[str, list[bytes]]:
    """Each identifier in the spellings it could take on the way out."""
    needles = {}
    for key, value in HEADERS.items():
        forms = {value, *value.split("^")}
        if key == "PatientName":
            forms.add("QUIXOTE_ZEBEDIAH")  # as in the source file name
        if key.endswith("Date"):
            forms |= {
                f"{value[:4]}-{value[4:6]}-{value[6:]}",
                f"{value[6:]}.{value[4:6]}.{value[:4]}",
            }
        spellings = {v for f in forms if len(f) >= 6 for v in (f, f.lower(), f.upper())}
        needles[key] = sorted(v.encode() for v in spellings)  # shorter pieces match noise
    return needles


def _leaks(paths: list[Path]) -> list[str]:
    """Every identifier found in the names or the bytes of `paths`."""
    needles, leaks = _needles(), []
    for path in paths:
        content = path.read_bytes() if path.is_file() else b""
        for key, forms in needles.items():
            if any(f.decode() in path.name for f in forms):
                leaks.append(f"{key} in the name {path.name}")
            if any(f in content for f in forms):
                leaks.append(f"{key} in {path}")
    return leaks


def _genaug(*args: str) -> str:
    """A `genaug` command as a user runs it; returns everything it printed."""
    run = subprocess.run(
        [sys.executable, "-m", "clients.cli", "--log-level", "DEBUG", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("source")
    for cls, name in SOURCES.items():
        ds = pydicom.dcmread(get_testdata_file(name))
        for key, value in HEADERS.items():
            setattr(ds, key, value)
        (root / cls).mkdir()
        ds.save_as(root / cls / FILE_NAME.format(cls))
    return root


def test_no_identifier_in_any_output_or_log(two_sampler_cluster, source, tmp_path):
    main, b = two_sampler_cluster
    t = main.targets()
    data, out, outputs = tmp_path / "data", tmp_path / "augmented", tmp_path / "printed"
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "source,class,text\n"
        + "".join(f"{c}/{FILE_NAME.format(c)},{c},{CAPTION}\n" for c in SOURCES)
    )
    printed = _genaug(
        "prepare", "--source", str(source), "--dataset-root", str(data), "--name", "Ids",
        "--labels", str(labels), "--size", "64",
        "--max-clips", "2", "--no-progress",
    )  # fmt: skip
    printed += _genaug(
        "conditions", "--dataset-root", str(data), "--name", "Ids",
        "--motion-target", t["motion_extractor"], "--encoder-target", t["condition_encoder"],
        "--method", "optical_flow",
    )  # fmt: skip
    # The user's classes are not the bundled generator's: map them explicitly (--class-map).
    class_map = tmp_path / "class_map.json"
    class_map.write_text('{"Echo": "DCM", "Mri": "HCM"}')
    printed += _genaug(
        "augment", "--dataset-root", str(data), "--name", "Ids", "--out", str(out),
        "--class-map", str(class_map),
        "--per-class", "1", "--steps", "3", "--guidance", "3", "--concurrency", "2",
        "--sampler", t["sampler"], b.targets()["sampler"], "--encoder", t["condition_encoder"],
        "--motion", t["motion_extractor"], "--filter", t["filter"], "--no-progress",
    )  # fmt: skip
    outputs.mkdir()
    (outputs / "commands.log").write_text(printed)

    # The run did what it should, so the search below covers real outputs.
    train = layout.load_dataset(data, "Ids", "train")
    assert {i.cls for i in train} == set(SOURCES) and all(i.text == CAPTION for i in train)
    assert (data / "Ids_data_emb").is_dir() and (data / "Ids_motion_field").is_dir()
    assert (out / "report" / "index.html").is_file()
    assert layout.metadata_path(out, "Ids", "train").is_file()

    logs = {s.log_path for c in (main, b) for s in c.services.values()}
    files = [p for top in (data, out, outputs) for p in top.rglob("*")] + sorted(logs)
    assert len(files) > 20
    # The search finds an identifier in either spelling (a self-check), then none in the run.
    probe = tmp_path / "probe.bin"
    probe.write_bytes(b"\0\1" + b"2019-04-22" + b"\0mrn-44177-qx")
    assert sorted(_leaks([probe])) == [f"PatientID in {probe}", f"StudyDate in {probe}"]
    leaks = _leaks(files)
    assert not leaks, leaks

    for log in [*logs, outputs / "commands.log"]:
        text = log.read_text(errors="replace")
        assert CAPTION not in text, f"a request's caption is in {log.name}"
        assert all(len(line) < 2000 for line in text.splitlines()), f"a payload in {log.name}?"
