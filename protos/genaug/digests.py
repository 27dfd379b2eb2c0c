"""The digest a sampler keeps a request's conditions under, for client and server alike.

A Generate request may name conditions an earlier request sent by their digest instead of
sending their megabytes again (`GenerateRequest.conditions_digest`). The sampler computes the
digest of what it received and tells the caller (`GenerateResult.conditions_digest`); the
caller computes it the same way to recognise conditions it sent before. Where the two
disagree (another protobuf's serialisation), the caller never finds a match and sends the
conditions in full, which is correct, only slower.
"""

from __future__ import annotations

import hashlib
import re

_PREFIX = "sha256:"
_FORM = re.compile(r"sha256:[0-9a-f]{64}")


def conditions_digest(conditions) -> str:
    """`sha256:<hex>` of a `genaug.v1.Conditions` message's deterministic serialisation."""
    data = conditions.SerializeToString(deterministic=True)
    return _PREFIX + hashlib.sha256(data).hexdigest()


def is_conditions_digest(text: str) -> bool:
    return bool(_FORM.fullmatch(text))
