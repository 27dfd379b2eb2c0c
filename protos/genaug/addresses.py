"""Whether a gRPC address names this machine.

It reads targets as clients write them (`127.0.0.1:50053`, `dns:///localhost:50053`,
`unix:/run/genaug/sampler.sock`) and peers as servers see them (`ipv4:127.0.0.1:41234`,
`ipv6:[::1]:41234`, `unix:`): the batch client schedules its conditions by it, and services
offer shared memory only to callers it says are local.
"""

from __future__ import annotations

import ipaddress

_SCHEMES = ("dns:///", "dns:", "ipv4:", "ipv6:")


def on_this_machine(address: str) -> bool:
    """Whether a gRPC target or peer names this machine: a unix socket, localhost or a
    loopback IP (IPv4-mapped IPv6 included)."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    address = next((address[len(s) :] for s in _SCHEMES if address.startswith(s)), address)
    address = address.split(",")[0]  # ipv4:a:p,b:p lists several: the first stands for all
    if address.startswith("["):
        host = address[1 : address.find("]")]
    else:
        host = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # a name: another machine, as far as we can tell
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 (Python 3.11 says no)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)
