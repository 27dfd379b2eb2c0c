"""Conditions kept by digest, and a request's fingerprint whichever way it sends them."""

from __future__ import annotations

import numpy as np
import pytest

from clients.rpc.sampler import conditions_message
from genaug.digests import conditions_digest, is_conditions_digest
from genaug.errors import FailedPrecondition, InvalidArgument
from genaug.v1 import sampler_pb2 as pb
from services.sampler.conditions_cache import ConditionsCache
from services.sampler.servicer import fingerprint


def conditions(seed: int, side: int = 16) -> pb.Conditions:
    rng = np.random.default_rng(seed)
    return conditions_message(image_prior=rng.random((4, side, side), dtype=np.float32))


def full(which: int = 0, **fields) -> pb.GenerateRequest:
    """A request sending conditions number `which` in full."""
    return pb.GenerateRequest(request_id="r", class_id=1, conditions=conditions(which), **fields)


def test_conditions_sent_once_are_found_by_their_digest():
    cache = ConditionsCache()
    sent = cache.resolve(full())
    assert sent.kept and is_conditions_digest(sent.digest)
    assert sent.digest == conditions_digest(conditions(0))  # what a client computes
    named = cache.resolve(pb.GenerateRequest(request_id="r2", conditions_digest=sent.digest))
    assert named.kept and named.digest == sent.digest
    assert named.conditions.SerializeToString() == conditions(0).SerializeToString()


def test_a_digest_nobody_sent_asks_for_the_conditions():
    request = pb.GenerateRequest(conditions_digest=conditions_digest(conditions(5)))
    with pytest.raises(FailedPrecondition, match="^conditions_digest: .*send the conditions"):
        ConditionsCache().resolve(request)


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (pb.GenerateRequest(conditions_digest="md5:abc"), "not sha256"),
        (full(conditions_digest=conditions_digest(conditions(1))), "not the digest"),
    ],
    ids=["malformed", "not-the-conditions-sent"],
)
def test_bad_digests_are_invalid_arguments_naming_the_field(request_, match):
    with pytest.raises(InvalidArgument, match=match) as info:
        ConditionsCache().resolve(request_)
    assert info.value.field == "conditions_digest"


def test_a_request_without_conditions_has_no_digest():
    resolved = ConditionsCache().resolve(pb.GenerateRequest(class_id=1))
    assert (resolved.digest, resolved.kept) == ("", False)


def test_the_least_recently_used_leave_within_the_byte_bound():
    one = full().conditions.ByteSize()
    cache = ConditionsCache(max_bytes=int(one * 2.5))
    digests = [cache.resolve(full(which)).digest for which in range(2)]
    cache.resolve(pb.GenerateRequest(conditions_digest=digests[0]))  # now the most recent
    cache.resolve(full(2))
    cache.resolve(pb.GenerateRequest(conditions_digest=digests[0]))
    with pytest.raises(FailedPrecondition):
        cache.resolve(pb.GenerateRequest(conditions_digest=digests[1]))
    assert cache.nbytes <= one * 2.5
    off = ConditionsCache(max_bytes=0)
    assert not off.resolve(full()).kept  # a digest the caller must not send alone


def test_the_fingerprint_is_the_same_by_digest_and_ignores_delivery():
    digest = conditions_digest(conditions(0))
    by_digest = pb.GenerateRequest(request_id="r", class_id=1, conditions_digest=digest)
    delivered = full(priority=pb.PRIORITY_BATCH, preview_every=3)
    assert fingerprint(full(), digest) == fingerprint(by_digest, digest)
    assert fingerprint(delivered, digest) == fingerprint(full(), digest)
    other = conditions_digest(conditions(1))
    assert fingerprint(full(), digest) != fingerprint(full(1), other)  # other conditions
    assert fingerprint(full(), digest) != fingerprint(full(seed=7), digest)  # another seed


def test_every_field_but_delivery_is_part_of_the_fingerprint():
    """A field added to GenerateRequest later counts too, whatever its kind."""
    from google.protobuf.descriptor import FieldDescriptor as F

    from services.sampler.servicer import _DELIVERY

    digest = conditions_digest(conditions(0))
    base = fingerprint(full(), digest)
    values = {F.CPPTYPE_BOOL: True, F.CPPTYPE_STRING: "x", F.CPPTYPE_FLOAT: 1.5}
    values |= {F.CPPTYPE_DOUBLE: 1.5, F.CPPTYPE_ENUM: 1}
    values |= {t: 3 for t in (F.CPPTYPE_INT32, F.CPPTYPE_INT64, F.CPPTYPE_UINT32, F.CPPTYPE_UINT64)}
    fields = [f for f in pb.GenerateRequest.DESCRIPTOR.fields if f.name not in _DELIVERY]
    assert fields
    for field in fields:
        changed = full()
        if field.message_type is not None or field.is_repeated:
            raise AssertionError(f"give {field.name} a value here: the fingerprint copies it")
        setattr(changed, field.name, values[field.cpp_type] + getattr(changed, field.name))
        assert fingerprint(changed, digest) != base, field.name
