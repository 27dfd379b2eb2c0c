"""The sampler under the conditions an autoscaled deployment creates, over real gRPC.

Under load: health, reflection and metrics answer at once and the queue-depth gauge counts every
waiting request while 4x `workers` Generate streams run. Scale-up: an aged connection gets
GOAWAY, its in-flight stream still finishes and the next call goes over a fresh connection.
Scale-down: a sampler told to stop refuses new work, finishes what it can within the grace
period and hands back the rest (UNAVAILABLE), which the batch client retries on another replica
under the same request id.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clients import GenAugError
from clients.augment.replicas import ReplicaPool, generate_with_retries
from clients.rpc.channel import ChannelSettings, open_channel
from clients.rpc.sampler import SamplerClient
from services.common.config import ServerConfig
from services.sampler.__main__ import build_server
from services.sampler.backend import SamplerBackend
from tests.service.conftest import running
from tests.service.identity import identity_service, who
from tests.support import metric_value, scrape

WORKERS = 4
STREAMS = 4 * WORKERS
BATCH = 2
CONNECTION_AGE_S = 1.0
# Two frames of 8x8 latents: a denoising step of the seeded small model takes milliseconds.
SMALL = dict(num_frames=2, decode=False)


def _config(model_dir, **overrides) -> ServerConfig:
    values = dict(service="sampler", port=0, metrics_port=None, model_dir=model_dir)
    values.update(overrides)
    return ServerConfig(**values)


def _sampler(config: ServerConfig, name: str):
    server = build_server(config, SamplerBackend(config.model_dir), max_batch_size=BATCH)
    server.typed_services.append(identity_service(name))
    return server


@pytest.fixture(scope="module")
def sampler(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("models")  # no weights: the seeded small model
    config = _config(
        model_dir,
        metrics_port=0,
        workers=WORKERS,
        max_connection_age_s=CONNECTION_AGE_S,
        max_connection_age_grace_s=60.0,
    )
    with running(_sampler(config, "survivor")) as server:
        yield server


def _channel(server) -> grpc.Channel:
    return open_channel(f"127.0.0.1:{server.port}", ChannelSettings(retry_attempts=1))


def _wait_for(condition, timeout: float = 30.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def _queue_depth(metrics_port: int) -> float:
    text = scrape(metrics_port)
    return sum(
        metric_value(text, "genaug_sampler_queue_depth", priority=p)
        for p in ("interactive", "batch")
    )


def _step_seconds(client: SamplerClient) -> float:
    """This machine's time for one denoising step of a small request, to size the streams."""
    began = time.perf_counter()
    client.generate(0, steps=20, timeout=60, **SMALL)
    return (time.perf_counter() - began) / 20


def _steps_lasting(seconds: float, step_seconds: float) -> int:
    return min(500, max(10, math.ceil(seconds / step_seconds)))


def _timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


@contextlib.contextmanager
def _long_streams(client: SamplerClient, count: int):
    """`count` Generate streams far longer than the test; cancelled on exit. Yields end codes."""
    ended: list[grpc.StatusCode] = []

    def stream(i: int) -> None:
        try:
            client.generate(0, steps=500, request_id=f"load-{i}", timeout=120, **SMALL)
        except GenAugError as error:
            ended.append(error.code)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield ended
    finally:
        for i in range(count):
            client.cancel(f"load-{i}")
        for thread in threads:
            thread.join(30)


def test_health_reflection_metrics_answer_and_queue_depth_counts_all_under_4x_workers_streams(
    sampler,
):
    engine = sampler.runtime.engine

    def all_held():  # the running batch is full (at a step boundary), every other one waits
        snapshot = engine.snapshot()
        return snapshot["running"] == BATCH and sum(snapshot.values()) == STREAMS

    checks, others, depths, snapshots = [], [], [], []
    with _channel(sampler) as channel:
        client = SamplerClient(channel)
        health = health_pb2_grpc.HealthStub(channel).Check
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        probes = (
            lambda: list(reflect(iter([ask]), timeout=1.0)),
            lambda: client.cancel("no-such-request", timeout=1.0),  # on the workers
            lambda: depths.append(_queue_depth(sampler.metrics_port)),
        )
        with _long_streams(client, STREAMS) as ended:
            _wait_for(all_held, what=f"{STREAMS} streams inside the engine")
            for i in range(100):
                request = health_pb2.HealthCheckRequest(service="sampler")
                checks.append(_timed(lambda: health(request, timeout=1.0)))  # noqa: B023
                if i % 10 == 0:
                    others += [_timed(probe) for probe in probes]
                    snapshots.append(engine.snapshot())
                time.sleep(0.01)
    p50, p99 = (statistics.quantiles(checks, n=100)[q] for q in (49, 98))
    print(
        f"\n{STREAMS} streams, {WORKERS} workers: health p50 {p50 * 1e3:.1f} ms, p99 "
        f"{p99 * 1e3:.1f} ms, max {max(checks) * 1e3:.1f} ms; reflection/cancel/metrics max "
        f"{max(others) * 1e3:.1f} ms; queue depth {sorted(set(depths))}; {snapshots[0]}"
    )
    assert p99 < 0.1
    assert max(others) < 1.0
    # Everything not in the running batch waits in the engine's queue, and the gauge says so.
    assert depths == [STREAMS - BATCH] * len(depths)
    assert all(s["running"] == BATCH for s in snapshots)
    assert ended == [grpc.StatusCode.CANCELLED] * STREAMS


def test_an_aged_connection_gets_goaway_its_stream_finishes_the_next_call_reconnects(sampler):
    states: list[grpc.ChannelConnectivity] = []
    with _channel(sampler) as channel:
        client = SamplerClient(channel)
        steps = _steps_lasting(3 * CONNECTION_AGE_S, _step_seconds(client))
        _, first = who(channel)
        channel.subscribe(states.append, try_to_connect=False)
        result: dict = {}
        progressed = threading.Event()

        def generate() -> None:
            result["clip"] = client.generate(
                1, steps=steps, timeout=60, on_event=lambda e: progressed.set(), **SMALL
            )

        worker = threading.Thread(target=generate)
        worker.start()
        assert progressed.wait(30)
        # Past the maximum age the server sends GOAWAY: new calls take a new connection while
        # the stream that was running carries on over the old one.
        _wait_for(lambda: who(channel)[1] != first, timeout=10 * CONNECTION_AGE_S, what="GOAWAY")
        in_flight_across_goaway = worker.is_alive()
        worker.join(60)
        assert in_flight_across_goaway, "the stream ended before the connection aged"
        assert result["clip"].latents.shape[0] == 2  # the whole clip, after GOAWAY
        assert grpc.ChannelConnectivity.IDLE in states  # the channel saw the GOAWAY
        # And the next generation succeeds over the fresh connection.
        assert client.generate(2, steps=2, timeout=60, **SMALL).latents.shape[0] == 2


def test_a_stopping_sampler_refuses_new_work_finishes_or_hands_back_and_the_client_retries(
    sampler, tmp_path
):
    grace, drain = 1.0, 0.5
    leaving = _sampler(_config(tmp_path, grace_seconds=grace, drain_seconds=drain), "leaving")
    leaving.start()
    targets = [f"127.0.0.1:{leaving.port}", f"127.0.0.1:{sampler.port}"]
    pool = ReplicaPool(targets, ChannelSettings(), cooldown=0.1)
    # Three times what the leaving replica has before it hands back: it cannot finish there.
    steps = _steps_lasting(3 * (drain + grace), _step_seconds(pool.replicas[1].client))
    codes: list[grpc.StatusCode] = []

    def long_request(client: SamplerClient):
        try:
            return client.generate(0, steps=steps, request_id="handed-back", timeout=120, **SMALL)
        except GenAugError as error:
            codes.append(error.code)
            raise

    outcome: dict = {}
    retried = threading.Thread(
        target=lambda: outcome.update(done=generate_with_retries(pool, long_request, backoff=0.1))
    )
    try:
        retried.start()
        _wait_for(lambda: leaving.runtime.engine.snapshot()["running"] == 1, what="long job")
        with _channel(leaving) as channel:
            client = SamplerClient(channel)
            short: dict = {}
            finisher = threading.Thread(
                target=lambda: short.update(clip=client.generate(1, steps=2, timeout=60, **SMALL))
            )
            finisher.start()
            _wait_for(lambda: sum(leaving.runtime.engine.snapshot().values()) == 2, what="short")
            began = time.monotonic()
            stopper = threading.Thread(target=leaving.stop, kwargs=dict(drain=drain))
            stopper.start()  # what SIGTERM does (serve_until_signal)
            _wait_for(lambda: not leaving.is_ready(), what="drain to begin")
            with pytest.raises(GenAugError) as refused:
                client.generate(2, steps=2, timeout=10, **SMALL)
            finisher.join(30)
        stopper.join(30)
        stopped_after = time.monotonic() - began
        retried.join(120)
    finally:
        leaving.stop(grace=0)
        pool.close()
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    assert "draining" in refused.value.details
    assert short["clip"].latents.shape[0] == 2  # admitted before the stop: finished
    assert stopped_after < drain + grace + 1.0
    clip, replica, attempts = outcome["done"]
    assert codes == [grpc.StatusCode.UNAVAILABLE]  # handed back, not cancelled or failed
    assert (replica.target, attempts) == (targets[1], 2)
    assert clip.request_id == "handed-back" and clip.latents.shape[0] == 2
