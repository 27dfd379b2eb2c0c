"""A test-only typed service that tells which server answered and over which connection."""

from __future__ import annotations

import grpc

from services.common.server import TypedService

IDENTITY_SERVICE = "genaug.test.Identity"


def identity_service(name: str) -> TypedService:
    """`Who` answers "<name> <client address>": a new client port means a fresh connection."""

    def who(_request: bytes, context) -> bytes:
        return f"{name} {context.peer()}".encode()

    def register(_servicer, server: grpc.Server) -> None:
        handlers = {"Who": grpc.unary_unary_rpc_method_handler(who)}  # raw bytes both ways
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(IDENTITY_SERVICE, handlers),)
        )

    return TypedService(IDENTITY_SERVICE, None, register)


def who(channel: grpc.Channel, timeout: float = 5.0) -> tuple[str, str]:
    """(server name, this client's address as the server saw it)."""
    reply = channel.unary_unary(f"/{IDENTITY_SERVICE}/Who")(b"", timeout=timeout)
    name, peer = reply.decode().split(" ", 1)
    return name, peer
