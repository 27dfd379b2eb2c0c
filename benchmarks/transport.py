"""Tensor transport on loopback: chunk stream vs one unary message vs KServe v2 (tritonclient).

Each path echoes the same bytes through a real gRPC server; throughput is reported relative to
raw TCP loopback for the same bytes, measured in the same interleaved rounds.

`chunk_stream` sends and receives serialised chunks (`wire.iter_chunk_bytes`, `wire.assemble`
on the received bytes: one copy per chunk on each side); `chunk_stream_messages` is the same
stream as TensorChunk messages (`wire.iter_chunks`, parsed replies), which protobuf copies
about four times more per chunk; `chunk_stream_256KiB` and `chunk_stream_4MiB` are
`chunk_stream` with other chunk sizes. `grpc_bytes_stream` is gRPC alone: the payload, split
into the same 1 MiB pieces before the clock starts, echoed as opaque messages with no wire
format, no copies and no assembly. It is the ceiling of any chunk stream through this gRPC on
this machine, so the distance from `chunk_stream` to it is the project's own cost (a copy per
chunk each side) and the distance from it to raw TCP is gRPC's.

The raw TCP and gRPC-bytes echoes send each piece back as it arrives, so both directions run
at once. The chunk stream's echo cannot: it assembles the tensor before it answers, as any
service that computes on a whole tensor does. `raw_tcp_whole` and `grpc_bytes_whole` are
those two echoes answering once they have the whole payload (store and forward): what that
costs before gRPC, and the ceiling of a chunk stream whose server needs the whole tensor.

For a caller on the server's host, `chunk_stream_shared_memory` is the same typed stream with
the tensor both ways in shared-memory regions it registered once (`clients.rpc.shared_memory`:
a header and a window instead of data chunks), and `kserve_tritonclient_shared_memory` is
KServe v2 with tritonclient's own system shared-memory utilities. Both copy the tensor in and
the reply out on the caller's side, so they end, like the others, with an array of its own.

    python -m benchmarks.transport --sizes-mib 16 64 --repeats 11
"""

from __future__ import annotations

import argparse
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import bar_plot, interleaved, machine_facts, median, write_results
from benchmarks.echo import echo_bytes_stub, echo_chunk_bytes_stub, echo_service, echo_stubs
from benchmarks.suite import BenchSettings, Row, Section, at_least
from clients.rpc.channel import ChannelSettings, open_channel
from clients.rpc.shared_memory import SharedMemoryLane
from genaug import wire
from genaug.deadline import Deadline
from services.common.config import ServerConfig
from services.common.model import Model, TensorSpec
from services.common.server import ModelServer

MIB = 1 << 20
TARGET = 0.45  # of raw TCP, at 16 MiB and above
REPEATS = 11
OTHER_CHUNK_SIZES = {"256KiB": 256 << 10, "4MiB": 4 * MIB}


class _EchoModel(Model):
    name = "echo"
    inputs = (TensorSpec("x", "UINT8", (-1,)),)
    outputs = (TensorSpec("x", "UINT8", (-1,)),)

    def load(self) -> None:
        pass

    def predict(self, inputs, deadline: Deadline):
        return {"x": inputs["x"]}


def _raw_tcp_echo(payload: bytes, whole: bool = False) -> None:
    """Send `payload` to a loopback echo thread and read it back: each piece is sent back as
    it arrives, or (`whole`) once all of it has."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def serve():
        conn, _ = server.accept()
        with conn:
            left, pieces = len(payload), []
            while left:
                data = conn.recv(1 << 20)
                if whole:
                    pieces.append(data)
                else:
                    conn.sendall(data)
                left -= len(data)
            for data in pieces:
                conn.sendall(data)

    thread = threading.Thread(target=serve)
    thread.start()
    with socket.create_connection(server.getsockname()) as client:
        sender = threading.Thread(target=client.sendall, args=(payload,))
        sender.start()
        got = 0
        while got < len(payload):
            got += len(client.recv(1 << 20))
        sender.join()
    thread.join()
    server.close()


def _grpc_bytes_echo(bytes_stream, pieces: list[bytes]) -> None:
    """Echo `pieces` as opaque messages and take every reply (no join: nothing to build)."""
    got = sum(len(reply) for reply in bytes_stream(iter(pieces)))
    if got != sum(len(p) for p in pieces):
        raise RuntimeError(f"echoed {got} bytes of {sum(len(p) for p in pieces)}")


def _chunk_echo(chunk_bytes_stream, array: np.ndarray, chunk_bytes: int):
    return lambda: wire.assemble(chunk_bytes_stream(wire.iter_chunk_bytes("x", array, chunk_bytes)))


@dataclass
class _Stubs:
    """The echo server's callables, made once per run (`echo_*_stub`, tritonclient)."""

    unary: Callable
    stream: Callable  # TensorChunk messages both ways
    chunk_bytes: Callable  # serialised chunks both ways
    grpc_bytes: Callable
    grpc_bytes_whole: Callable
    triton: object  # tritonclient.grpc.InferenceServerClient


class _SharedMemoryEchoes:
    """The two shared-memory paths for one payload size, set up (made and registered) once, as
    a caller on this host would, and torn down when the size is done."""

    def __init__(self, channel, triton_client, nbytes: int):
        import tritonclient.utils.shared_memory as triton_shm

        self._shm, self._tc = triton_shm, triton_client
        self.lane = SharedMemoryLane(channel, nbytes)
        tag = secrets.token_hex(8)
        self._regions = {}
        for role in ("in", "out"):
            name = f"bench_{role}_{tag}"
            self._regions[role] = (
                name,
                triton_shm.create_shared_memory_region(name, f"/{name}", nbytes),
            )
            triton_client.register_system_shared_memory(name, f"/{name}", nbytes)

    def kserve(self, array: np.ndarray) -> Callable[[], np.ndarray]:
        import tritonclient.grpc as triton

        (in_name, in_handle), (out_name, out_handle) = self._regions["in"], self._regions["out"]

        def echo() -> np.ndarray:
            self._shm.set_shared_memory_region(in_handle, [array])
            inp = triton.InferInput("x", [array.size], "UINT8")
            inp.set_shared_memory(in_name, array.nbytes)
            out = triton.InferRequestedOutput("x")
            out.set_shared_memory(out_name, array.nbytes)
            result = self._tc.infer("echo", [inp], outputs=[out])
            shape = list(result.get_output("x").shape)
            # Copied out, as the chunk paths end with an array of the caller's own.
            return self._shm.get_contents_as_numpy(out_handle, np.uint8, shape).copy()

        return echo

    def close(self) -> None:
        self.lane.close()
        for name, handle in self._regions.values():
            self._tc.unregister_system_shared_memory(name)
            self._shm.destroy_shared_memory_region(handle)


def _variants(array: np.ndarray, stubs: _Stubs, shared: _SharedMemoryEchoes) -> dict:
    import tritonclient.grpc as triton

    payload = array.tobytes()
    step = wire.DEFAULT_CHUNK_BYTES
    pieces = [payload[i : i + step] for i in range(0, len(payload), step)]

    def kserve():
        inp = triton.InferInput("x", [array.size], "UINT8")
        inp.set_data_from_numpy(array)
        stubs.triton.infer("echo", [inp])

    return {
        "raw_tcp": lambda: _raw_tcp_echo(payload),
        # Store and forward: the echo has the whole payload before it answers, as the chunk
        # stream's echo (it assembles the tensor first) and any service computing on it do.
        "raw_tcp_whole": lambda: _raw_tcp_echo(payload, whole=True),
        "chunk_stream": _chunk_echo(stubs.chunk_bytes, array, wire.DEFAULT_CHUNK_BYTES),
        # The chunk size, profiled: smaller chunks pay gRPC's cost per message more often,
        # larger ones copy more per message; 1 MiB (the default) is measured the best here.
        **{
            f"chunk_stream_{label}": _chunk_echo(stubs.chunk_bytes, array, chunk)
            for label, chunk in OTHER_CHUNK_SIZES.items()
        },
        # The same stream, the tensor both ways in shared memory (a caller on this host).
        "chunk_stream_shared_memory": lambda: shared.lane.try_call(stubs.chunk_bytes, {"x": array}),
        "grpc_bytes_stream": lambda: _grpc_bytes_echo(stubs.grpc_bytes, pieces),
        "grpc_bytes_whole": lambda: _grpc_bytes_echo(stubs.grpc_bytes_whole, pieces),
        "chunk_stream_messages": lambda: wire.assemble(stubs.stream(wire.iter_chunks("x", array))),
        "unary_message": lambda: wire.from_proto(stubs.unary(wire.to_proto(array))),
        "kserve_tritonclient": kserve,
        "kserve_tritonclient_shared_memory": shared.kserve(array),
    }


def run(sizes_mib: list[int], repeats: int, out_dir: Path) -> dict:
    import tritonclient.grpc as triton

    config = ServerConfig(
        service="transport-bench", port=0, max_message_bytes=(max(sizes_mib) + 8) * MIB
    )
    server = ModelServer(config, [_EchoModel()], [echo_service()])
    server.start()
    results = {"machine": machine_facts(), "sizes": {}}
    try:
        settings = ChannelSettings(max_message_bytes=config.max_message_bytes, retry_attempts=1)
        with open_channel(f"127.0.0.1:{server.port}", settings) as channel:
            unary, stream = echo_stubs(channel)
            stubs = _Stubs(
                unary,
                stream,
                echo_chunk_bytes_stub(channel),
                echo_bytes_stub(channel),
                echo_bytes_stub(channel, whole=True),
                triton.InferenceServerClient(f"127.0.0.1:{server.port}"),
            )
            for size in sizes_mib:
                array = np.random.default_rng(0).integers(0, 255, size * MIB, dtype=np.uint8)
                shared = _SharedMemoryEchoes(channel, stubs.triton, array.nbytes)
                try:
                    _check_echoes(array, shared, stubs)
                    times = interleaved(_variants(array, stubs, shared), repeats)
                finally:
                    shared.close()
                base = median(times["raw_tcp"])
                results["sizes"][f"{size}MiB"] = {
                    name: {
                        "median_s": median(t),
                        "throughput_vs_raw_tcp": base / median(t),
                    }
                    for name, t in times.items()
                }
    finally:
        server.stop(grace=0)
    write_results(out_dir, "transport", results)
    bar_plot(
        out_dir,
        "transport",
        {
            size: {n: v["throughput_vs_raw_tcp"] for n, v in per.items() if n != "raw_tcp"}
            for size, per in results["sizes"].items()
        },
        "throughput relative to raw TCP loopback",
    )
    return results


def _check_echoes(array: np.ndarray, shared: _SharedMemoryEchoes, stubs: _Stubs) -> None:
    """The shared-memory paths really echo the payload (and did not fall back to chunks)."""
    via_lane = shared.lane.try_call(stubs.chunk_bytes, {"x": array})
    if via_lane is None or not np.array_equal(via_lane["x"], array):
        raise RuntimeError("the chunk stream through shared memory did not echo the payload")
    if not np.array_equal(shared.kserve(array)(), array):
        raise RuntimeError("KServe v2 through shared memory did not echo the payload")


def _section(settings: BenchSettings) -> list[Row]:
    # Rounds of 16 MiB take milliseconds, so medians of 11 cost little and swing less.
    sizes, repeats = ([1], 1) if settings.quick else ([16, 64], REPEATS)
    results = run(sizes, repeats, settings.out_dir)
    rows = []
    for size, per in results["sizes"].items():
        ceiling = per["grpc_bytes_stream"]["throughput_vs_raw_tcp"]
        whole = per["grpc_bytes_whole"]["throughput_vs_raw_tcp"]
        chunk = per["chunk_stream"]["throughput_vs_raw_tcp"]
        rows.append(
            Row(
                "transport",
                f"chunk_stream {size} / raw TCP",
                chunk,
                "x",
                f">= {TARGET}",
                at_least(chunk, TARGET),
                f"{chunk / ceiling:.2f} of gRPC's own ceiling, {chunk / whole:.2f} of its "
                "ceiling when the echo answers once it has the whole payload",
            )
        )
        rows.append(
            Row(
                "transport",
                f"grpc_bytes_stream {size} / raw TCP",
                ceiling,
                "x",
                note="gRPC alone, opaque 1 MiB messages: the ceiling of any chunk stream",
            )
        )
        rows.append(
            Row(
                "transport",
                f"grpc_bytes_whole {size} / raw TCP",
                whole,
                "x",
                note="the same, the echo answering once every message is in (store and "
                "forward, as the chunk stream's echo must: it assembles the tensor first)",
            )
        )
        rows.append(
            Row(
                "transport",
                f"raw_tcp_whole {size} / raw TCP",
                per["raw_tcp_whole"]["throughput_vs_raw_tcp"],
                "x",
                note="raw TCP, store and forward: what answering after the whole payload "
                "costs before gRPC, against the raw echo that sends each piece back at once",
            )
        )
        shared = per["chunk_stream_shared_memory"]["throughput_vs_raw_tcp"]
        rows.append(
            Row(
                "transport",
                f"chunk_stream_shared_memory {size} / raw TCP",
                shared,
                "x",
                f">= {TARGET} (same host)",
                at_least(shared, TARGET),
                "the same typed stream, the tensor both ways in shared-memory regions the "
                "caller registered (KServe v2 system shared memory): callers on the host only",
            )
        )
        ratio = per["kserve_tritonclient"]["throughput_vs_raw_tcp"]
        rows.append(Row("transport", f"kserve_tritonclient {size} / raw TCP", ratio, "x"))
        ratio = per["kserve_tritonclient_shared_memory"]["throughput_vs_raw_tcp"]
        rows.append(
            Row(
                "transport",
                f"kserve_tritonclient_shared_memory {size} / raw TCP",
                ratio,
                "x",
                note="tritonclient's own system shared-memory utilities against our server",
            )
        )
    return rows


SECTION = Section("transport", "Transport: typed chunk stream and KServe v2 vs raw TCP", _section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    results = run(args.sizes_mib, args.repeats, args.out)
    print(f"machine: {results['machine']}")
    for size, per in results["sizes"].items():
        line = ", ".join(
            f"{name} {v['throughput_vs_raw_tcp']:.2f}"
            for name, v in per.items()
            if name != "raw_tcp"
        )
        print(f"{size}: throughput vs raw TCP: {line}")
    print(f"wrote {args.out / 'transport.json'} and {args.out / 'transport.png'}")


if __name__ == "__main__":
    main()
