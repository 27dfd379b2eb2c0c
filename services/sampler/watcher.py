"""Hot loading: a thread that re-reads the model repository every `poll_s` seconds (Triton's
`--model-control-mode=poll`), so a newly exported generator or version is served without a
restart of the sampler or of any other service."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class RepositoryWatcher:
    def __init__(self, refresh: Callable[[], list[str]], poll_s: float):
        self.refresh, self.poll_s = refresh, poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="repository-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh()
            except Exception:  # the watcher must outlive one bad scan
                logger.exception("model repository scan failed; next try in %.0fs", self.poll_s)
