"""`TypedService.call_started`: a hook runs as each call of its method starts, over real gRPC."""

from __future__ import annotations

import grpc

from services.common.config import ServerConfig
from services.common.server import ModelServer, TypedService
from tests.service.conftest import running

SERVICE = "genaug.test.Hooked"


def hooked_service(seen: list[str]) -> TypedService:
    def handle(name):
        def handler(request: bytes, _context) -> bytes:
            seen.append(f"{name} handled {len(request)}")
            return b""

        return handler

    def register(_servicer, server: grpc.Server) -> None:
        handlers = {m: grpc.unary_unary_rpc_method_handler(handle(m)) for m in ("Hooked", "Plain")}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))

    return TypedService(
        SERVICE, None, register, call_started={"Hooked": lambda: seen.append("Hooked started")}
    )


def test_the_hook_runs_before_each_call_of_its_method_only():
    seen: list[str] = []
    server = ModelServer(ServerConfig(service="hooked"), typed_services=[hooked_service(seen)])
    with running(server), grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for method, size in (("Hooked", 3 << 20), ("Plain", 1), ("Hooked", 5)):
            channel.unary_unary(f"/{SERVICE}/{method}")(b"x" * size, timeout=10)
    assert seen == [
        "Hooked started",
        f"Hooked handled {3 << 20}",
        "Plain handled 1",
        "Hooked started",
        "Hooked handled 5",
    ]
