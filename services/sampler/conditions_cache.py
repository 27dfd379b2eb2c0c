"""Conditions the sampler keeps by digest, so a reference's megabytes cross the network once.

A batch augmentation job samples several clips from each reference clip, and each of its
Generate requests carried the reference's conditions again: 4.6 MB, mostly the MedSAM prior,
received, parsed and hashed per request while the denoising steps wait (`benchmarks.serving`).
The sampler keeps the conditions it received under their digest (`genaug.digests`) and tells
the caller; a later request may send the digest alone. The least recently used leave first,
within `max_bytes`.
"""

from __future__ import annotations

from dataclasses import dataclass

from genaug.digests import conditions_digest, is_conditions_digest
from genaug.errors import FailedPrecondition, InvalidArgument
from genaug.v1 import sampler_pb2 as pb
from services.common.result_cache import ResultCache
from services.sampler import metrics

DEFAULT_MAX_BYTES = 256 << 20
# Entries are bounded by bytes; this only keeps a flood of tiny conditions from growing the map.
_MAX_ENTRIES = 4096


@dataclass(frozen=True)
class Resolved:
    conditions: pb.Conditions
    digest: str  # of `conditions` ("" for a request without any)
    kept: bool  # the cache holds them under `digest`, so the caller may send it alone


class ConditionsCache:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = max_bytes
        self._kept: ResultCache[tuple[pb.Conditions, int]] = ResultCache(
            lambda entry: entry[1], _MAX_ENTRIES, max_bytes
        )
        metrics.CONDITIONS_CACHE_BYTES.set_function(lambda: self._kept.nbytes)  # at scrape time

    def resolve(self, request: pb.GenerateRequest) -> Resolved:
        """A request's conditions: those it sent (now kept), or those its digest names.

        Raises:
            InvalidArgument: a digest that is malformed, or is not that of the conditions sent.
            FailedPrecondition: a digest alone that names nothing kept: send the conditions.
        """
        named = request.conditions_digest
        if named and not is_conditions_digest(named):
            raise InvalidArgument("conditions_digest", f"{named[:80]!r} is not sha256:<64 hex>")
        if request.HasField("conditions"):
            digest = conditions_digest(request.conditions)
            if named and named != digest:
                raise InvalidArgument(
                    "conditions_digest", f"{named} is not the digest of the conditions sent"
                )
            if self.max_bytes:
                self._kept.put(digest, (request.conditions, request.conditions.ByteSize()))
            return Resolved(request.conditions, digest, digest in self._kept)
        if not named:
            return Resolved(request.conditions, "", False)
        kept = self._kept.get(named)
        if kept is None:
            metrics.CONDITIONS_CACHE.labels("miss").inc()
            raise FailedPrecondition(
                f"conditions_digest: this sampler does not hold {named}; send the conditions"
            )
        metrics.CONDITIONS_CACHE.labels("hit").inc()
        return Resolved(kept[0], named, True)

    @property
    def nbytes(self) -> int:
        return self._kept.nbytes
