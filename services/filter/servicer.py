"""Typed genaug.v1.Filter API: the client-streaming FilterPool RPC.

The stream is FilterOptions first, then one PoolClip per clip. Each clip is validated and scored
as it arrives (only its small latent vectors are kept), so a large pool never sits in memory as
clips; the pool-level thresholds are decided once the stream ends. Real training clips may come
as `reference` parts (kept as small signatures): they calibrate the per-class reference band and
the optional memorisation level (`services.filter.memorisation`), which runs last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from genaug import wire
from genaug.deadline import Deadline
from genaug.errors import InvalidArgument
from genaug.v1 import filter_pb2 as pb
from genaug.v1 import filter_pb2_grpc
from services.filter import memorisation, metrics, pool, reference_band
from services.filter.scorer import PoolScorer
from services.models.per_generator import PerGenerator

# FilterOptions.BandScope -> PoolOptions.band_scope.
BAND_SCOPES = {
    pb.FilterOptions.BAND_SCOPE_POOL: "pool",
    pb.FilterOptions.BAND_SCOPE_CLASS: "class",
    pb.FilterOptions.BAND_SCOPE_REFERENCE: "reference",
}


def options_from_proto(message: pb.FilterOptions) -> pool.PoolOptions:
    """FilterOptions -> PoolOptions; 0 (unset) means the default, out-of-range is an error."""
    # Options travel as float32: round so that 0.98 compares as 0.98, not 0.98000002.
    alpha = round(float(message.alpha), 6)
    if not math.isfinite(alpha) or alpha < 0:
        raise InvalidArgument("options.alpha", f"is {alpha}; expected > 0 (0 means 1.0)")
    threshold = round(float(message.duplicate_threshold), 6)
    if not math.isfinite(threshold) or threshold < 0 or threshold > 1:
        raise InvalidArgument(
            "options.duplicate_threshold",
            f"is {threshold}; expected a cosine similarity in (0, 1] (0 means "
            f"{pool.DEFAULT_DUPLICATE_THRESHOLD})",
        )
    scope = BAND_SCOPES.get(message.sequential_band_scope)
    if scope is None:
        raise InvalidArgument(
            "options.sequential_band_scope",
            f"is {message.sequential_band_scope}; expected BAND_SCOPE_POOL (0), "
            "BAND_SCOPE_CLASS (1) or BAND_SCOPE_REFERENCE (2)",
        )
    return pool.PoolOptions(
        alpha=alpha or pool.DEFAULT_ALPHA,
        duplicate_threshold=threshold or pool.DEFAULT_DUPLICATE_THRESHOLD,
        semantic=not message.skip_semantic,
        sequential=not message.skip_sequential,
        duplicates=not message.skip_duplicates,
        band_scope=scope,
    )


@dataclass
class References:
    """The real clips sent with a pool: their signatures, and VAE-Seq when a band needs it."""

    band_quantile: float
    check_memorisation: bool
    memorisation_quantile: float
    ids: list[str] = field(default_factory=list)
    cases: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    vae_seq: list[float] = field(default_factory=list)
    signatures: list[np.ndarray] = field(default_factory=list)


def references_from_proto(message: pb.FilterOptions) -> References:
    """The reference-clip options of FilterOptions; 0 (unset) means the default."""
    band_q = round(float(message.reference_band_quantile), 6)
    if not 0 <= band_q < 0.5:
        raise InvalidArgument("options.reference_band_quantile", f"is {band_q}; expected [0, 0.5)")
    memo_q = round(float(message.memorisation_quantile), 6)
    if not 0 <= memo_q < 1:
        raise InvalidArgument("options.memorisation_quantile", f"is {memo_q}; expected [0, 1)")
    return References(
        band_q or reference_band.DEFAULT_QUANTILE,
        bool(message.check_memorisation),
        memo_q or memorisation.DEFAULT_QUANTILE,
    )


class FilterServicer(filter_pb2_grpc.FilterServicer):
    """Args: scorers: each generator's networks (its VAE and classifier), loaded on first use;
    the pool's FilterOptions name the generator (`model`, `model_version`); max_clips: largest
    pool accepted."""

    def __init__(self, scorers: PerGenerator[PoolScorer], max_clips: int = 4096):
        self.scorers = scorers
        self.max_clips = max_clips

    def FilterPool(self, request_iterator, context):
        deadline = Deadline.from_context(context)
        options: pool.PoolOptions | None = None
        refs: References | None = None
        scores: list[pool.ClipScores] = []
        signatures: list[np.ndarray] = []
        first_index: dict[str, int] = {}
        first_reference: dict[str, int] = {}
        shape: tuple[int, ...] | None = None
        scorer: PoolScorer | None = None
        for index, request in enumerate(request_iterator):
            part = request.WhichOneof("part")
            if index == 0:
                if part != "options":
                    raise InvalidArgument(
                        "requests[0].options",
                        "the first message must be FilterOptions (an empty one for defaults)",
                    )
                options = options_from_proto(request.options)
                refs = references_from_proto(request.options)
                scorer = self.scorers.get(request.options.model, request.options.model_version)
                continue
            if part == "reference":
                shape = self._add_reference(
                    scorer, request.reference, refs, options, shape, first_reference, deadline
                )
                continue
            if part != "clip":
                raise InvalidArgument(
                    f"requests[{index}]",
                    "after the options, every message must be a clip or a reference",
                )
            i = len(scores)
            if i >= self.max_clips:
                raise InvalidArgument(
                    "clips", f"the pool has more than {self.max_clips} clips; split it"
                )
            clip_msg = request.clip
            clip = self._validated_clip(scorer, clip_msg, i, shape, first_index)
            shape = clip.shape
            result = scorer.score_clip(clip, deadline)
            signatures.append(memorisation.signature(clip))
            ce = pool.cross_entropy(result.logits[None], [clip_msg.label])[0]
            scores.append(
                pool.ClipScores(
                    clip_msg.clip_id,
                    clip_msg.case_id,
                    float(ce),
                    result.vae_seq,
                    result.vectors,
                    label=int(clip_msg.label),
                )
            )
            first_index[clip_msg.clip_id] = i
        if options is None:
            raise InvalidArgument("requests", "the stream is empty: send FilterOptions, then clips")
        if not scores:
            raise InvalidArgument("clips", "the pool has no clips")
        deadline.check("pool decisions")
        return _decide(scores, signatures, options, refs)

    def _add_reference(self, scorer, message, refs, options, shape, first_reference, deadline):
        """Validates and records one reference clip (its VAE-Seq only if a band needs it);
        returns its shape (every clip and reference must share it)."""
        j = len(refs.ids)
        if j >= self.max_clips:
            raise InvalidArgument("references", f"more than {self.max_clips} reference clips")
        clip = self._validated_clip(scorer, message, j, shape, first_reference, "references")
        if options.band_scope == "reference":
            refs.vae_seq.append(scorer.score_clip(clip, deadline).vae_seq)
        refs.ids.append(message.clip_id)
        refs.cases.append(message.case_id)
        refs.labels.append(int(message.label))
        refs.signatures.append(memorisation.signature(clip))
        first_reference[message.clip_id] = j
        return clip.shape

    def _validated_clip(
        self, scorer, clip_msg, i: int, shape, first_index: dict[str, int], kind: str = "clips"
    ):
        """Checks ids, label and tensor of `<kind>[i]`; returns the clip array."""
        field = f"{kind}[{i}]"
        if not clip_msg.clip_id:
            raise InvalidArgument(f"{field}.clip_id", "is empty")
        earlier = first_index.get(clip_msg.clip_id)
        if earlier is not None:
            raise InvalidArgument(
                f"{field}.clip_id", f"{clip_msg.clip_id!r} was already used by {kind}[{earlier}]"
            )
        if not clip_msg.case_id:
            raise InvalidArgument(f"{field}.case_id", "is empty")
        scorer.check_label(clip_msg.label, f"{field}.label")
        if not wire.is_set(clip_msg.clip):
            raise InvalidArgument(f"{field}.clip", "is not set")
        clip = wire.from_proto(clip_msg.clip, f"{field}.clip")
        if shape is not None and clip.shape != shape:
            raise InvalidArgument(
                f"{field}.clip.shape",
                f"is {list(clip.shape)}; every clip of a pool must match clips[0] {list(shape)}",
            )
        scorer.check_clip(clip, f"{field}.clip")
        return clip


def _decide(scores, signatures, options: pool.PoolOptions, refs: References):
    """The pool's verdicts: the pool levels, then the memorisation level when asked for."""
    if (options.band_scope == "reference" or refs.check_memorisation) and not refs.ids:
        raise InvalidArgument(
            "references", "BAND_SCOPE_REFERENCE and check_memorisation need reference clips"
        )
    if options.band_scope == "reference":
        bands = reference_band.reference_bands(refs.vae_seq, refs.labels, refs.band_quantile)
        options = replace(options, reference_bands=tuple(bands.items()))
    outcome = pool.judge_pool(scores, options)
    nearest, threshold = None, -1.0
    if refs.ids:
        references = np.stack(refs.signatures)
        distance, index = memorisation.nearest(np.stack(signatures), references)
        nearest = (distance, [refs.ids[i] for i in index])
        if refs.check_memorisation:
            try:
                threshold = memorisation.calibrate(
                    references, refs.cases, refs.memorisation_quantile
                )
            except ValueError as error:
                raise InvalidArgument("references", str(error)) from None
            memorisation.apply_level(outcome.verdicts, *nearest, threshold)
    metrics.record(outcome, options)
    return _response(outcome, nearest, threshold)


def _response(outcome: pool.PoolResult, nearest=None, threshold: float = -1.0):
    distances, ids = nearest or ([-1.0] * len(outcome.verdicts), [""] * len(outcome.verdicts))
    return pb.FilterPoolResponse(
        verdicts=[
            pb.ClipVerdict(
                clip_id=v.clip_id,
                keep=v.keep,
                cross_entropy=v.cross_entropy,
                vae_seq=v.vae_seq,
                max_duplicate_similarity=v.max_duplicate_similarity,
                reasons=v.reasons,
                nearest_reference_distance=float(d),
                nearest_reference_id=r,
            )
            for v, d, r in zip(outcome.verdicts, distances, ids, strict=True)
        ],
        vae_seq_low=outcome.band.low,
        vae_seq_high=outcome.band.high,
        class_bands=[
            pb.ClassBand(label=label, low=b.low, high=b.high, applied=b.applied, note=b.note)
            for label, b in outcome.class_bands.items()
        ],
        memorisation_threshold=threshold,
    )
