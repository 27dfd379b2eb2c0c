"""Models that follow the generator: each service's own model (the codec's VAE, the filter's
VAE and classifier) loaded per generator version on first use, the least recently used
unloaded beyond a bound."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from services.models.generators import GeneratorEntry, RepositoryView

T = TypeVar("T")
DEFAULT_MAX_LOADED = 4


class PerGenerator(Generic[T]):
    """`get(name, version)` -> the model `load(entry)` builds for that generator version.

    Names resolve through `view` each call, so a version exported after start is picked up
    without a restart (the old one stays loaded until it is the least recently used)."""

    def __init__(
        self,
        view: RepositoryView,
        load: Callable[[GeneratorEntry], T],
        max_loaded: int = DEFAULT_MAX_LOADED,
        preloaded: dict[tuple[str, str], T] | None = None,
    ):
        self.view, self._build, self.max_loaded = view, load, max(1, max_loaded)
        # `preloaded`: models the service loads at start anyway (its open-inference models').
        self._loaded: OrderedDict[tuple[str, str], T] = OrderedDict(preloaded or {})
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, str], threading.Lock] = {}

    def get(self, name: str = "", version: str = "") -> T:
        entry = self.view.resolve(name, version)
        with self._lock:
            model = self._loaded.get(entry.key)
            if model is not None:
                self._loaded.move_to_end(entry.key)
                return model
            loading = self._loading.setdefault(entry.key, threading.Lock())
        with loading:  # one load per version; other versions are not held up
            with self._lock:
                model = self._loaded.get(entry.key)
            if model is None:
                model = self._build(entry)
            with self._lock:
                self._loaded[entry.key] = model
                self._loaded.move_to_end(entry.key)
                while len(self._loaded) > self.max_loaded:
                    self._loaded.popitem(last=False)
                self._loading.pop(entry.key, None)
        return model

    def loaded(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._loaded)


def add_generator_arguments(parser) -> None:
    """The flags of a service whose model follows the generator (the codec, the filter)."""
    parser.add_argument(
        "--default-model",
        default="",
        help="generator for calls that name none (default: the repository's repository.json, "
        "else the only one)",
    )
    parser.add_argument(
        "--max-loaded-models",
        type=int,
        default=DEFAULT_MAX_LOADED,
        help=f"generator versions kept loaded at once (default {DEFAULT_MAX_LOADED})",
    )
