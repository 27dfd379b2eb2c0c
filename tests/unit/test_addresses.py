"""genaug.addresses: which gRPC targets and peers name this machine."""

import pytest

from genaug.addresses import on_this_machine


@pytest.mark.parametrize(
    ("target", "local"),
    [
        ("127.0.0.1:50051", True),
        ("localhost:50051", True),
        ("LOCALHOST", True),
        ("[::1]:50051", True),
        ("127.0.0.2:50051", True),
        ("ipv4:127.0.0.1:50053,127.0.0.1:50063", True),
        ("dns:///localhost:50053", True),
        ("unix:/run/genaug/sampler.sock", True),
        ("10.0.0.5:50053", False),
        ("genaug-sampler.genaug.svc:50053", False),
        ("dns:///genaug-sampler:50053", False),
        ("[2001:db8::1]:50053", False),
    ],
)
def test_a_target_is_on_this_machine_only_at_a_loopback_or_unix_address(target, local):
    assert on_this_machine(target) is local


@pytest.mark.parametrize(
    ("peer", "local"),
    [
        ("unix:/tmp/genaug.sock", True),
        ("ipv4:127.0.0.1:5501", True),
        ("ipv4:127.8.9.1:5501", True),
        ("ipv6:[::1]:5501", True),
        ("ipv6:[::ffff:127.0.0.1]:5501", True),
        ("ipv4:10.0.0.7:5501", False),
        ("ipv4:1270.0.0.1:5501", False),
        ("ipv6:[fe80::1]:5501", False),
        ("", False),
    ],
)
def test_only_peers_on_this_host_are_local(peer, local):
    assert on_this_machine(peer) is local
