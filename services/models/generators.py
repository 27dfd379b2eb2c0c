"""The generators a model repository holds, Triton-style: `<repo>/<model>/<version>/`.

Each `<version>` folder (a positive integer) is one exported generator: `ldm/`, `vae/`,
`classifier/`, `classes.json` and its card (`card.json`, `services.models.repository`). A model
is served at its highest version (Triton's default "latest 1" policy), so exporting version
N+1 next to N is how a new version is rolled out; a version whose card cannot be read is
skipped with a logged error, and the one below it is served. The folder name is the model's
name; the card's name and version are taken from the folders.

A folder that is itself a generator (it holds `ldm/` or `card.json`), or holds no versioned
generator at all, is a repository of that one generator: the layout of older exports; an empty
folder gives seeded, untrained weights (tests and smoke runs).

The default generator (what a request naming no model gets) is the configured one, else
`<repo>/repository.json`'s `"default_model"`, else the only one.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from genaug.errors import GenaugError, InvalidArgument, NotFound
from services.models.repository import CARD_FILE, GeneratorCard, read_card, valid_name

logger = logging.getLogger(__name__)

REPOSITORY_FILE = "repository.json"


@dataclass(frozen=True)
class GeneratorEntry:
    """One generator of a repository: its name, the version served, its folder and card."""

    name: str
    version: str
    path: Path
    card: GeneratorCard

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)


def is_generator_dir(path: Path) -> bool:
    return (path / "ldm").is_dir() or (path / CARD_FILE).is_file()


def scan(repo: str | os.PathLike, names: list[str] | None = None) -> dict[str, GeneratorEntry]:
    """The generators of `repo` (those in `names` when given), each at its latest version.

    Raises:
        NotFound: the repository does not exist, or a name in `names` is not in it.
        InvalidArgument: a card is malformed (naming the file and field).
    """
    root = Path(repo)
    if not root.is_dir():
        raise NotFound(f"model repository {root} does not exist")
    found: dict[str, GeneratorEntry] = {}
    if not is_generator_dir(root):
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            entry = _latest(folder)
            if entry is not None:
                found[entry.name] = entry
    if not found:
        # One generator's folder; or an empty one, served with seeded weights (smoke runs).
        card = read_card(root)
        found = {card.name: GeneratorEntry(card.name, card.version, root, card)}
    if names:
        missing = sorted(set(names) - set(found))
        if missing:
            raise NotFound(
                f"models: {missing} are not in the model repository {root} "
                f"(it holds: {', '.join(sorted(found)) or 'none'})"
            )
        found = {name: found[name] for name in names}
    return found


def _latest(folder: Path) -> GeneratorEntry | None:
    """`folder`'s highest numbered version that holds a generator; None when there is none."""
    if folder.name.startswith(".") or not valid_name(folder.name):
        return None
    versions = [
        int(p.name)
        for p in folder.iterdir()
        if p.is_dir() and p.name.isdigit() and int(p.name) > 0 and is_generator_dir(p)
    ]
    for number in sorted(versions, reverse=True):
        version, path = str(number), folder / str(number)
        try:
            card = read_card(path)
        except (GenaugError, ValueError, OSError) as error:
            _report_once(path, error)
            continue
        card = replace(card, name=folder.name, version=version)
        return GeneratorEntry(folder.name, version, path, card)
    return None


_reported: set[tuple[str, str]] = set()


def _report_once(path: Path, error: Exception) -> None:
    """A version whose card cannot be read is skipped (the one below it is served): logged once
    per error, not at every scan of the repository."""
    key = (str(path), str(error))
    if key not in _reported:
        _reported.add(key)
        logger.error("model repository: skipping %s: %s", path, error)


def default_model(
    repo: str | os.PathLike, entries: dict[str, GeneratorEntry], configured: str = ""
) -> str:
    """The generator a request naming none gets ("" when there is no way to choose one).

    Raises:
        NotFound: the configured (or `repository.json`'s) default is not a served generator.
    """
    name = configured or _repository_default(Path(repo))
    if name:
        if name not in entries:
            raise NotFound(
                f"default model {name!r} is not served (known: {', '.join(sorted(entries))})"
            )
        return name
    return next(iter(entries)) if len(entries) == 1 else ""


def _repository_default(root: Path) -> str:
    path = root / REPOSITORY_FILE
    if not path.is_file():
        return ""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InvalidArgument(str(path), f"is not JSON: {error}") from None
    name = data.get("default_model", "") if isinstance(data, dict) else None
    if not isinstance(name, str):
        raise InvalidArgument(f"{path}.default_model", "must be a string")
    return name


def pick(entries: dict[str, GeneratorEntry], name: str, default: str) -> GeneratorEntry:
    """Generator `name` of `entries` ("" = `default`).

    Raises:
        NotFound: naming the generators there are.
        InvalidArgument: no name and no default among several generators.
    """
    name = name or default
    if not name:
        raise InvalidArgument(
            "model", f"is required: the repository serves {', '.join(sorted(entries))}"
        )
    entry = entries.get(name)
    if entry is None:
        shown = repr(name[:64]) + ("..." if len(name) > 64 else "")  # never echo 100 kB
        raise NotFound(
            f"model: {shown} is not a generator here (known: {', '.join(sorted(entries))})"
        )
    return entry


class RepositoryView:
    """A repository's generators, re-read at most every `ttl_s`: a service that resolves the
    generator per request follows a newly exported version without a restart, without reading
    every card on every request."""

    def __init__(self, repo: str | os.PathLike, configured_default: str = "", ttl_s: float = 2.0):
        self.repo, self.configured_default, self.ttl_s = Path(repo), configured_default, ttl_s
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._entries: dict[str, GeneratorEntry] = {}
        self._default = ""

    def entries(self) -> tuple[dict[str, GeneratorEntry], str]:
        """(generators by name, the default's name or "")."""
        with self._lock:
            if time.monotonic() - self._read_at >= self.ttl_s:
                entries = scan(self.repo)
                self._default = default_model(self.repo, entries, self.configured_default)
                self._entries, self._read_at = entries, time.monotonic()
            return self._entries, self._default

    def resolve(self, name: str = "", version: str = "") -> GeneratorEntry:
        """Generator `name` ("" = the default) at `version` ("" = the latest).

        Raises:
            NotFound: no such generator, or no such version of it.
        """
        entries, default = self.entries()
        entry = pick(entries, name, default)
        if not version or version == entry.version:
            return entry
        path = entry.path.parent / version
        if entry.path == self.repo or not version.isdigit() or not is_generator_dir(path):
            raise NotFound(
                f"model_version: {version[:16]!r} of generator {entry.name} is not in the "
                f"repository (served: {entry.version})"
            )
        card = replace(read_card(path), name=entry.name, version=version)
        return GeneratorEntry(entry.name, version, path, card)


def next_version(repo: str | os.PathLike, name: str) -> Path:
    """The folder a new export of `name` goes to: `<repo>/<name>/<latest + 1>`."""
    if not valid_name(name):
        raise InvalidArgument("name", f"{name!r} is not 1-64 of [A-Za-z0-9._-]")
    folder = Path(repo) / name
    taken = [int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit()]
    return folder / str(max(taken, default=0) + 1)


def generator_dir(repo: str | os.PathLike, name: str = "") -> Path:
    """The folder of generator `name` ("" = the default) at its latest version."""
    return RepositoryView(repo, ttl_s=0).resolve(name).path
