"""Client of the synthetic-data filter: stream a pool of clips, get a verdict per clip."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from clients.rpc.errors import translate_errors
from genaug import wire
from genaug.v1 import filter_pb2 as pb
from genaug.v1 import filter_pb2_grpc

# `band_scope` -> FilterOptions.BandScope.
BAND_SCOPES = {
    "pool": pb.FilterOptions.BAND_SCOPE_POOL,
    "class": pb.FilterOptions.BAND_SCOPE_CLASS,
    "reference": pb.FilterOptions.BAND_SCOPE_REFERENCE,
}


@dataclass(frozen=True)
class PoolClip:
    """One synthetic clip of a pool.

    Attributes:
        clip_id: unique within the pool.
        case_id: clips generated from the same reference clip share a case.
        label: the class id the clip was generated for.
        clip: float32 (T,1,H,W) in [-1,1]; every clip of a pool has the same shape.
    """

    clip_id: str
    case_id: str
    label: int
    clip: np.ndarray


@dataclass(frozen=True)
class ClipVerdict:
    clip_id: str
    keep: bool
    cross_entropy: float
    vae_seq: float
    max_duplicate_similarity: float
    reasons: tuple[str, ...]
    # Pixel-space distance to the nearest reference clip and its id (-1.0, "" without them).
    nearest_reference_distance: float = -1.0
    nearest_reference_id: str = ""

    @property
    def rejected_by(self) -> str | None:
        """ "semantic", "sequential", "duplicate" or "memorisation" for a rejected clip (its
        first reason)."""
        if self.keep:
            return None
        first = next((r for r in self.reasons if not r.startswith("note:")), "")
        return first.split(":", 1)[0] or "unknown"


@dataclass(frozen=True)
class ClassBand:
    """The sequential band of one class (band_scope "class"); -inf/+inf when not applied."""

    label: int
    low: float
    high: float
    applied: bool
    note: str = ""


@dataclass(frozen=True)
class FilterResult:
    verdicts: list[ClipVerdict]  # in pool order
    # The pool-wide band, always reported (applied with band_scope "pool"); -inf/+inf when the
    # pool has too few distinct VAE-Seq values.
    vae_seq_low: float
    vae_seq_high: float
    # Per class label, in label order: the bands applied with band_scope "class" (else empty).
    class_bands: tuple[ClassBand, ...] = ()
    # The memorisation level's calibrated threshold (-1.0 when no references were sent).
    memorisation_threshold: float = -1.0


class FilterClient:
    def __init__(self, channel: grpc.Channel):
        self._stub = filter_pb2_grpc.FilterStub(channel)

    @translate_errors
    def filter_pool(
        self,
        clips: Iterable[PoolClip],
        alpha: float = 1.0,
        duplicate_threshold: float = 0.98,
        skip_semantic: bool = False,
        skip_sequential: bool = False,
        skip_duplicates: bool = False,
        band_scope: str = "pool",
        timeout: float | None = None,
        references: Iterable[PoolClip] = (),
        reference_band_quantile: float = 0.0,
        check_memorisation: bool = False,
        memorisation_quantile: float = 0.0,
        model: str = "",
        model_version: str = "",
    ) -> FilterResult:
        """The FilterPool RPC: verdicts for a pool; `clips` is consumed lazily (a generator keeps
        one clip in memory).

        `band_scope`: "pool" (the reference) fits the sequential VAE-Seq band on the whole pool;
        "class" fits one per class label, each clip judged against its class's band;
        "reference" takes each class's band from the `references`' own VAE-Seq quantiles.
        `references`: real training clips (case_id = patient, label = class), sent before the
        pool; they also give every verdict its nearest-reference distance and, with
        `check_memorisation`, reject near-copies (0 quantiles mean the service's defaults).
        `model` / `model_version`: the generator whose VAE and classifier score the pool (the
        one that generated it); empty: the filter's default generator, at its latest version.
        """
        if band_scope not in BAND_SCOPES:
            raise ValueError(f"band_scope must be one of {tuple(BAND_SCOPES)}, got {band_scope!r}")
        options = pb.FilterOptions(
            alpha=alpha,
            duplicate_threshold=duplicate_threshold,
            skip_semantic=skip_semantic,
            skip_sequential=skip_sequential,
            skip_duplicates=skip_duplicates,
            sequential_band_scope=BAND_SCOPES[band_scope],
            reference_band_quantile=reference_band_quantile,
            check_memorisation=check_memorisation,
            memorisation_quantile=memorisation_quantile,
            model=model,
            model_version=model_version,
        )

        def message(c: PoolClip) -> pb.PoolClip:
            part = pb.PoolClip(clip_id=c.clip_id, case_id=c.case_id, label=int(c.label))
            wire.to_proto(np.asarray(c.clip, np.float32), part.clip)
            return part

        def requests() -> Iterator[pb.FilterPoolRequest]:
            yield pb.FilterPoolRequest(options=options)
            for r in references:
                yield pb.FilterPoolRequest(reference=message(r))
            for c in clips:
                yield pb.FilterPoolRequest(clip=message(c))

        reply = self._stub.FilterPool(requests(), timeout=timeout)
        return FilterResult(
            [
                ClipVerdict(
                    v.clip_id,
                    v.keep,
                    float(v.cross_entropy),
                    float(v.vae_seq),
                    float(v.max_duplicate_similarity),
                    tuple(v.reasons),
                    float(v.nearest_reference_distance),
                    v.nearest_reference_id,
                )
                for v in reply.verdicts
            ],
            float(reply.vae_seq_low),
            float(reply.vae_seq_high),
            tuple(
                ClassBand(int(b.label), float(b.low), float(b.high), bool(b.applied), b.note)
                for b in reply.class_bands
            ),
            float(reply.memorisation_threshold),
        )
