"""Drive hostile requests at a live server and account for every status code it answers.

A caller's mistake must never be INTERNAL or UNKNOWN; the server must stay SERVING and its
memory must come back near where it started.
"""

from __future__ import annotations

import collections
import json
import os
import resource
import time
from pathlib import Path

import grpc
from prometheus_client import REGISTRY

from clients.rpc.health import check
from services.common.memory import resident_kib

FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
# make test runs a few dozen cases per RPC; make soak sets GENAUG_FUZZ_EXAMPLES=1000 or more.
EXAMPLES = int(os.environ.get("GENAUG_FUZZ_EXAMPLES", "40"))
RESULTS = os.environ.get("GENAUG_FUZZ_RESULTS")  # a folder: per-service JSON for make soak
# Memory is read once the servers have been idle this long: past the sampler's release of the
# free heap after work (its engine's idle_release_s, 1 s), as a pod between jobs would be.
SETTLE_S = 1.5


class Tally:
    """Status codes seen per RPC; the offending details of every forbidden one."""

    def __init__(self, service: str):
        self.service = service
        self.codes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.forbidden: list[str] = []
        self.rss_before_kib = _rss_kib()
        self.rss_start_kib = self.rss_before_kib
        self.cache_before_kib = _result_cache_kib()
        # (cases so far, RSS KiB, threads) every `curve_every` cases: a leak grows with the
        # cases, a pool that fills (threads, their stacks and heaps) levels off.
        self.curve: list[tuple[int, int, int]] = []
        self.curve_every = 0

    def warmed_up(self) -> None:
        """Take the memory baseline now: the first cases load models and fill the allocator's
        pools once, which is not a leak; growth after this point would be."""
        time.sleep(SETTLE_S)
        self.rss_before_kib = _rss_kib()
        self.cache_before_kib = _result_cache_kib()
        self.curve = [(self.cases(), self.rss_before_kib, _threads())]

    def call(self, method: str, fn, request, timeout: float = 5.0) -> grpc.StatusCode:
        try:
            response = fn(request, timeout=timeout)
            if hasattr(response, "__iter__") and not hasattr(response, "ListFields"):
                for _ in response:  # a server stream: drain it
                    pass
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
            if code in FORBIDDEN:
                self.forbidden.append(f"{method}: {code.name}: {error.details()}")
        self.codes[method][code.name] += 1
        if self.curve_every and self.cases() % self.curve_every == 0:
            self.curve.append((self.cases(), _rss_kib(), _threads()))
        return code

    def cases(self) -> int:
        return sum(sum(c.values()) for c in self.codes.values())

    def report(self, channel: grpc.Channel, health_service: str = "") -> dict:
        status = check(channel, health_service, timeout=10)
        time.sleep(SETTLE_S)
        summary = {
            "service": self.service,
            "cases": self.cases(),
            "codes": {m: dict(c) for m, c in sorted(self.codes.items())},
            "internal_or_unknown": len(self.forbidden),
            "health_after": status,
            "rss_kib_start": self.rss_start_kib,
            "rss_kib_before": self.rss_before_kib,
            "rss_kib_after": _rss_kib(),
            "threads_after": _threads(),
            "rss_curve": self.curve,
            # The sampler's retry cache holds finished results by design (bounded in bytes):
            # what it holds is not a leak, so the RSS bound is taken net of it.
            "result_cache_kib_before": self.cache_before_kib,
            "result_cache_kib_after": _result_cache_kib(),
        }
        if RESULTS:
            Path(RESULTS).mkdir(parents=True, exist_ok=True)
            (Path(RESULTS) / f"fuzz-{self.service}.json").write_text(json.dumps(summary, indent=1))
        return summary


def _result_cache_kib() -> int:
    """The sampler's result cache in this process (0 where no sampler engine runs)."""
    value = REGISTRY.get_sample_value("genaug_sampler_result_cache_bytes")
    return int(value or 0) // 1024


def _threads() -> int:
    """Threads of this process now (gRPC handlers and the OpenMP teams they start)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def _rss_kib() -> int:
    """Current resident set of this process (the servers run in it), from /proc."""
    try:
        return resident_kib()
    except (OSError, RuntimeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
