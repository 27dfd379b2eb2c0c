"""One exception type for every failed call, carrying the gRPC status code."""

from __future__ import annotations

import functools

import grpc


class GenAugError(Exception):
    """A call to a Ctrl-GenAug service failed.

    Attributes:
        code: the gRPC status code (e.g. grpc.StatusCode.INVALID_ARGUMENT).
        details: the server's message (for INVALID_ARGUMENT it starts with the field name).
        request_id: the request id the server logged the call under, when known.
    """

    def __init__(self, code: grpc.StatusCode, details: str, request_id: str | None = None):
        super().__init__(f"[{code.name}] {details}")
        self.code = code
        self.details = details
        self.request_id = request_id

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> GenAugError:
        code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
        details = error.details() if callable(getattr(error, "details", None)) else str(error)
        request_id = None
        trailing = getattr(error, "trailing_metadata", None)
        if callable(trailing):
            request_id = dict(trailing() or ()).get("x-request-id")
        return cls(code, details or "", request_id)


def translate_errors(fn):
    """Decorator: re-raise grpc.RpcError as GenAugError without the transport traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as error:
            raise GenAugError.from_rpc_error(error) from None

    return wrapper
