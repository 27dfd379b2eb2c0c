"""Generation spread over sampler replicas, with retries that never compute twice.

Several explicit addresses get one channel each and a client-side round robin that skips a
replica for a cool-down after a transient failure; a single `dns:///name:port` target (a
headless Service) gets one channel with gRPC's `round_robin` policy over every address the name
resolves to (clients.rpc.channel), whose next call already goes to another address, so it is
not cooled down. A failed call is retried with backoff on the next replica with the SAME
request id: a replica that already ran it returns its result instead of computing again; one
that was draining or shut down (UNAVAILABLE) never finished it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from clients.rpc.channel import ChannelSettings, balancing_for, open_channel
from clients.rpc.errors import GenAugError
from clients.rpc.sampler import GeneratedClip, SamplerClient

logger = logging.getLogger(__name__)

# Worth another try, possibly elsewhere: the replica is down or draining (UNAVAILABLE), busy
# (RESOURCE_EXHAUSTED), the job was cancelled because an earlier caller went away (CANCELLED),
# or it was too slow this time (DEADLINE_EXCEEDED). Anything else is a problem of the request.
TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.UNKNOWN,
    }
)


@dataclass
class Replica:
    target: str
    client: SamplerClient
    channel: grpc.Channel
    balanced: bool = False  # one channel balancing over several addresses
    down_until: float = 0.0
    failures: int = 0
    completed: int = 0


class ReplicaPool:
    """Round robin over healthy replicas (thread-safe).

    Args:
        targets: "host:port" addresses, or one "dns:///name:port".
        settings: channel settings (retries are ours: the channel's own are turned off).
        cooldown: seconds a replica is skipped after a transient failure (doubles per
            consecutive failure, up to 8x).
    """

    def __init__(
        self, targets: list[str], settings: ChannelSettings | None = None, cooldown: float = 2.0
    ):
        if not targets:
            raise ValueError("at least one sampler address is needed")
        settings = ChannelSettings(**vars(settings or ChannelSettings()))
        settings.retry_attempts = 1
        self.replicas = []
        for target in targets:
            channel = open_channel(target, settings)
            balanced = balancing_for(target) is not None
            self.replicas.append(Replica(target, SamplerClient(channel), channel, balanced))
        self.cooldown = cooldown
        self._next = 0
        self._lock = threading.Lock()

    def pick(self) -> Replica:
        """The next replica that is not cooling down (else the one that recovers first)."""
        with self._lock:
            now = time.monotonic()
            n = len(self.replicas)
            for k in range(n):
                replica = self.replicas[(self._next + k) % n]
                if replica.down_until <= now:
                    self._next = (self._next + k + 1) % n
                    return replica
            return min(self.replicas, key=lambda r: r.down_until)

    def failed(self, replica: Replica, error: GenAugError) -> None:
        with self._lock:
            replica.failures += 1
            if error.code == grpc.StatusCode.UNAVAILABLE and not replica.balanced:
                factor = 2 ** min(3, replica.failures - 1)
                replica.down_until = time.monotonic() + self.cooldown * factor

    def succeeded(self, replica: Replica) -> None:
        with self._lock:
            replica.failures = 0
            replica.down_until = 0.0
            replica.completed += 1

    def close(self) -> None:
        for replica in self.replicas:
            replica.channel.close()


class JobFailed(Exception):
    """A work item could not be generated (a non-transient error, or attempts exhausted)."""


def generate_with_retries(
    pool: ReplicaPool,
    request: Callable[[SamplerClient], GeneratedClip],
    max_attempts: int = 8,
    backoff: float = 0.5,
    max_backoff: float = 20.0,
    stop: threading.Event | None = None,
) -> tuple[GeneratedClip, Replica, int]:
    """Run `request(client)` until it succeeds; returns (clip, replica, attempts)."""
    last: GenAugError | None = None
    for attempt in range(1, max_attempts + 1):
        if stop is not None and stop.is_set():
            raise JobFailed("stopped")
        replica = pool.pick()
        wait = replica.down_until - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, max_backoff))
        try:
            clip = request(replica.client)
        except GenAugError as error:
            if error.code not in TRANSIENT:
                raise JobFailed(f"{replica.target}: {error}") from None
            last = error
            pool.failed(replica, error)
            delay = min(max_backoff, backoff * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            if attempt < max_attempts:
                logger.warning(
                    "generation failed on %s (attempt %d/%d): %s; retrying in %.1fs",
                    replica.target,
                    attempt,
                    max_attempts,
                    error,
                    delay,
                )
                time.sleep(delay)
            continue
        pool.succeeded(replica)
        return clip, replica, attempt
    raise JobFailed(f"gave up after {max_attempts} attempts: {last}")
