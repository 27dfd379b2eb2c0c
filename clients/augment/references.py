"""The conditions of a reference clip, from the cheapest place that has them.

In order: the dataset's precomputed files (`genaug conditions`, the `clients.conditions`
layout); this job's cache of conditions fetched earlier (`<out>/.augment/conditions/`); the
condition encoder and motion extractor when their addresses are given (the result is cached,
so a re-run sends the sampler byte-identical requests); otherwise the reference frames go to
the sampler, which fetches what is missing from the services it is wired to.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from clients.augment.manifest import state_dir
from clients.conditions import ConditionPaths, condition_paths, load_motion, save_motion
from clients.rpc.sampler import conditions_message
from genaug.v1 import sampler_pb2 as pb
from services.data import layout

CONDITION_KINDS = ("prior", "motion", "text")


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
        self.encoder, self.motion, self.timeout = encoder, motion, timeout
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
        stem = Path(source_clip).stem
        dataset = condition_paths(self.root, self.name, source_clip)
        cached = ConditionPaths(
            self.cache / f"{stem}.motion.npy",
            self.cache / f"{stem}.trajectory.npz",
            self.cache / f"{stem}.prior.npy",
        )
        frames = None
        fields: dict[str, np.ndarray] = {}
        if "prior" in self.kinds:
            prior, source = None, "sampler"
            for where, paths in (("dataset", dataset), ("cache", cached)):
                if paths.prior.is_file():
                    prior, source = np.load(paths.prior, allow_pickle=False), where
                    break
            if prior is None and self.encoder is not None:
                frames = self._frames(source_clip)
                prior = np.asarray(self.encoder.image_prior(frames[:1], timeout=self.timeout)[0])
                layout.save_npy(cached.prior, prior)
                source = "encoder"
            if prior is not None:
                fields["image_prior"] = np.asarray(prior, np.float32)
            self.sources["prior"] = source
        if "motion" in self.kinds:
            motion, source = None, "sampler"
            for where, paths in (("dataset", dataset), ("cache", cached)):
                if paths.motion_field.is_file() and paths.trajectory.is_file():
                    motion, source = load_motion(paths), where
                    break
            if motion is None and self.motion is not None:
                frames = self._frames(source_clip) if frames is None else frames
                m = self.motion.extract(frames, timeout=self.timeout)
                motion = (m.motion_field, m.trajectories, m.trajectory_mask)
                save_motion(cached, *motion)
                source = "motion-extractor"
            if motion is not None:
                fields["motion_field"], fields["trajectories"], fields["trajectory_mask"] = motion
            self.sources["motion"] = source
        wanted = {"prior": "image_prior" in fields, "motion": "motion_field" in fields}
        if any(kind in self.kinds and not have for kind, have in wanted.items()):
            fields["reference_frames"] = self._frames(source_clip) if frames is None else frames
        text = self.texts.get(source_clip, "") if "text" in self.kinds else ""
        return conditions_message(text=text, **fields)

    def _frames(self, source_clip: str) -> np.ndarray:
        folder = layout.dataset_dir(self.root, self.name)
        return layout.read_clip(source_clip, folder)  # a name inside the dataset folder
