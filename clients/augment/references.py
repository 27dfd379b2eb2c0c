"""The conditions of a reference clip, from the cheapest place that has them.

In order: the dataset's precomputed files (`genaug conditions`); this job's cache of conditions
fetched earlier (`<out>/.augment/conditions/`, the same `services.data.conditions` layout); the
condition encoder and motion extractor when their addresses are given (the result is cached,
so a re-run sends the sampler byte-identical requests); otherwise the reference frames go to
the sampler, which fetches what is missing from the services it is wired to.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from clients.augment.manifest import state_dir
from clients.rpc.conditions import GrpcConditions
from clients.rpc.sampler import conditions_message
from genaug.v1 import sampler_pb2 as pb
from services.data import layout
from services.data.conditions import CachedConditions

CONDITION_KINDS = ("prior", "motion", "text")
# Where a kind came from, as `sources` reports it: the files' labels, or the service asked.
COMPUTED_BY = {"prior": "encoder", "motion": "motion-extractor"}


class ReferenceConditions:
    """Builds the sampler's `Conditions` message for a source clip (thread-safe, memoised).

    Args:
        root, name: the dataset.
        out: the job's output folder (cache of fetched conditions).
        kinds: which of prior, motion, text to condition on.
        texts: source clip file name -> its text.
        encoder, motion: clients of the services, or None.
        timeout: per call to those services.
    """

    def __init__(
        self,
        root: Path,
        name: str,
        out: Path,
        kinds: list[str],
        texts: dict[str, str],
        encoder=None,
        motion=None,
        timeout: float = 300.0,
        memo_size: int = 16,
    ):
        self.root, self.name, self.kinds, self.texts = Path(root), name, set(kinds), texts
        self.cache = state_dir(out) / "conditions"
        self.conditions = CachedConditions(
            name,
            [("dataset", self.root), ("cache", self.cache)],
            GrpcConditions(encoder, motion, timeout=timeout),
            store=self.cache,
        )
        self.sources: dict[str, str] = {}  # "prior"/"motion" -> where the last one came from
        self._memo: OrderedDict[str, pb.Conditions] = OrderedDict()
        self._memo_size = memo_size
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def __call__(self, source_clip: str) -> pb.Conditions:
        with self._lock:
            if source_clip in self._memo:
                self._memo.move_to_end(source_clip)
                return self._memo[source_clip]
            clip_lock = self._locks.setdefault(source_clip, threading.Lock())
        with clip_lock:
            with self._lock:
                if source_clip in self._memo:
                    return self._memo[source_clip]
            message = self._build(source_clip)
            with self._lock:
                self._memo[source_clip] = message
                while len(self._memo) > self._memo_size:
                    self._memo.popitem(last=False)
        return message

    def _build(self, source_clip: str) -> pb.Conditions:
        frames = functools.cache(lambda: self._frames(source_clip))
        fields: dict[str, np.ndarray] = {}
        if "prior" in self.kinds:
            prior, where = self.conditions.prior(source_clip, frames)
            if prior is not None:
                fields["image_prior"] = np.asarray(prior, np.float32)
            self.sources["prior"] = self._source_name("prior", where)
        if "motion" in self.kinds:
            motion, where = self.conditions.motion(source_clip, frames)
            if motion is not None:
                fields["motion_field"], fields["trajectories"], fields["trajectory_mask"] = motion
            self.sources["motion"] = self._source_name("motion", where)
        wanted = {"prior": "image_prior" in fields, "motion": "motion_field" in fields}
        if any(kind in self.kinds and not have for kind, have in wanted.items()):
            fields["reference_frames"] = frames()
        text = self.texts.get(source_clip, "") if "text" in self.kinds else ""
        return conditions_message(text=text, **fields)

    @staticmethod
    def _source_name(kind: str, where: str | None) -> str:
        if where is None:
            return "sampler"  # it fetches from the services it is wired to
        return COMPUTED_BY[kind] if where == "source" else where

    def _frames(self, source_clip: str) -> np.ndarray:
        folder = layout.dataset_dir(self.root, self.name)
        return layout.read_clip(source_clip, folder)  # a name inside the dataset folder
