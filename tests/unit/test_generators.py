"""A model repository of several generators: `<repo>/<model>/<version>/`, latest version
served, the default chosen, explicit versions, and models that follow the generator."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from genaug.errors import InvalidArgument, NotFound
from services.models.generators import (
    RepositoryView,
    default_model,
    generator_dir,
    next_version,
    scan,
)
from services.models.per_generator import PerGenerator
from services.models.repository import GeneratorCard, write_card

BUNDLED = Path(__file__).resolve().parents[2] / "deploy" / "model-repository"


def _generator(folder: Path, classes: list[str], name: str = "x") -> Path:
    """A generator folder: its card and an (empty) ldm/ folder."""
    (folder / "ldm").mkdir(parents=True)
    write_card(folder, GeneratorCard(name=name, class_names=tuple(classes)))
    return folder


def test_the_bundled_repository_serves_phantom_version_1_by_default():
    entries = scan(BUNDLED)
    assert list(entries) == ["phantom"]
    entry = entries["phantom"]
    assert entry.version == "1" and entry.path == BUNDLED / "phantom" / "1"
    assert entry.card.class_names == ("DCM", "HCM", "NOR")
    assert default_model(BUNDLED, entries) == "phantom"  # repository.json names it
    assert generator_dir(BUNDLED) == BUNDLED / "phantom" / "1"


def test_each_model_is_served_at_its_latest_version_named_by_its_folder(tmp_path):
    _generator(tmp_path / "echo" / "1", ["A", "B"], name="old-name")
    _generator(tmp_path / "echo" / "10", ["A", "B", "C"])
    _generator(tmp_path / "echo" / "2", ["A"])
    (tmp_path / "echo" / ".11.partial").mkdir()  # an export in progress is not a version
    (tmp_path / "echo" / "12").mkdir()  # nor is a folder without a generator
    _generator(tmp_path / "mri" / "3", ["N", "P"])
    (tmp_path / "notes").mkdir()
    entries = scan(tmp_path)
    assert sorted(entries) == ["echo", "mri"]
    echo = entries["echo"]
    assert (echo.version, echo.card.name, echo.card.version) == ("10", "echo", "10")
    assert echo.card.class_names == ("A", "B", "C")
    assert next_version(tmp_path, "echo") == tmp_path / "echo" / "13"
    assert next_version(tmp_path, "new") == tmp_path / "new" / "1"
    assert list(scan(tmp_path, ["mri"])) == ["mri"]
    with pytest.raises(NotFound, match=r"\['ct'\] are not in the model repository"):
        scan(tmp_path, ["ct", "mri"])


def test_a_request_naming_no_model_needs_a_default_among_several(tmp_path):
    _generator(tmp_path / "a" / "1", ["X"])
    _generator(tmp_path / "b" / "1", ["Y"])
    view = RepositoryView(tmp_path)
    with pytest.raises(InvalidArgument, match="model: is required: the repository serves a, b"):
        view.resolve()
    assert RepositoryView(tmp_path, configured_default="b").resolve().name == "b"
    (tmp_path / "repository.json").write_text(json.dumps({"default_model": "a"}))
    assert RepositoryView(tmp_path).resolve().name == "a"
    with pytest.raises(NotFound, match="default model 'c' is not served"):
        RepositoryView(tmp_path, configured_default="c").resolve()
    with pytest.raises(NotFound, match=r"model: 'zz' is not a generator here \(known: a, b\)"):
        RepositoryView(tmp_path).resolve("zz")


def test_an_explicit_version_resolves_while_a_newer_one_is_served(tmp_path):
    _generator(tmp_path / "a" / "1", ["X"])
    _generator(tmp_path / "a" / "2", ["X", "Y"])
    view = RepositoryView(tmp_path)
    assert view.resolve("a").version == "2"
    old = view.resolve("a", "1")
    assert old.path == tmp_path / "a" / "1" and old.card.class_names == ("X",)
    with pytest.raises(NotFound, match="model_version: '7' of generator a"):
        view.resolve("a", "7")


def test_a_flat_or_empty_folder_is_one_generator(tmp_path):
    flat = _generator(tmp_path / "flat", ["A", "B"], name="mine")
    (entry,) = scan(flat).values()
    assert (entry.name, entry.path) == ("mine", flat)
    empty = tmp_path / "empty"
    empty.mkdir()
    (entry,) = scan(empty).values()
    assert entry.path == empty and entry.card.class_names == ()  # seeded weights
    with pytest.raises(NotFound, match="does not exist"):
        scan(tmp_path / "missing")


def test_the_view_follows_a_new_version_after_its_ttl(tmp_path):
    _generator(tmp_path / "a" / "1", ["X"])
    view = RepositoryView(tmp_path, ttl_s=0.2)
    assert view.resolve().version == "1"
    _generator(tmp_path / "a" / "2", ["X"])
    assert view.resolve().version == "1"  # cached
    time.sleep(0.25)
    assert view.resolve().version == "2"


def test_per_generator_models_load_once_per_version_and_evict_the_oldest(tmp_path):
    for name in ("a", "b", "c"):
        _generator(tmp_path / name / "1", ["X"])
    loads: list[tuple[str, str]] = []
    gate = threading.Event()

    def load(entry):
        gate.wait(5)
        loads.append(entry.key)
        return f"model of {entry.name} v{entry.version}"

    models = PerGenerator(RepositoryView(tmp_path, ttl_s=0), load, max_loaded=2)
    threads = [threading.Thread(target=models.get, args=("a",)) for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert loads == [("a", "1")]  # four concurrent callers, one load
    assert models.get("b") == "model of b v1"
    assert models.get("a") == "model of a v1" and loads == [("a", "1"), ("b", "1")]
    models.get("c")  # evicts b, the least recently used
    assert models.loaded() == [("a", "1"), ("c", "1")]
    _generator(tmp_path / "a" / "2", ["X"])
    assert models.get("a") == "model of a v2"  # a new version, no restart


def test_a_version_whose_card_is_broken_is_skipped_for_the_one_below(tmp_path, caplog):
    _generator(tmp_path / "a" / "1", ["X"])
    broken = tmp_path / "a" / "2"
    (broken / "ldm").mkdir(parents=True)
    (broken / "card.json").write_text("{not json")
    _generator(tmp_path / "b" / "1", ["Y"])
    entries = scan(tmp_path)
    assert (entries["a"].version, entries["b"].version) == ("1", "1")  # b is not held up
    assert "skipping" in caplog.text and str(broken) in caplog.text
    caplog.clear()
    scan(tmp_path)
    assert "skipping" not in caplog.text  # logged once, not at every scan
