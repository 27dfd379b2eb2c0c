"""The shard's progress bar: clips generated, then filtered and kept (silent without it)."""

from __future__ import annotations

from collections import OrderedDict

from tqdm import tqdm


class Progress:
    """A tqdm bar over the shard's work items; a context manager that closes it.

    Args:
        total: the shard's work items; generated: how many were generated before this run.
    """

    def __init__(self, description: str, total: int, generated: int, enabled: bool):
        self._total = total
        self._generated = generated
        self._conditions = ""  # "done/total" while the references' conditions come first
        self._bar = tqdm(
            total=total,
            initial=generated,
            desc=description,
            unit="clip",
            disable=not enabled,
            dynamic_ncols=True,
        )
        self._show()

    def clip_generated(self, item=None) -> None:
        """One more clip in the pool (called from the generation threads)."""
        self._generated += 1
        self._show(refresh=False)
        self._bar.update()

    def conditions_fetched(self, done: int, total: int) -> None:
        """`done` of the `total` references have their conditions (the conditions phase)."""
        self._conditions = f"{done}/{total}"
        self._show()

    def pool_filtered(self, kept: int) -> None:
        self._generated = self._total
        self._show(filtered=self._total, kept=kept)

    def _show(self, filtered: int = 0, kept: int = 0, refresh: bool = True) -> None:
        counts = OrderedDict(generated=self._generated, filtered=filtered, kept=kept)
        if self._conditions:
            counts["conditions"] = self._conditions
            counts.move_to_end("conditions", last=False)
        self._bar.set_postfix(counts, refresh=refresh)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()
