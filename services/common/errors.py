"""Domain errors. Each carries the gRPC status code it maps to; one interceptor does the mapping.

Raise these from models and servicers instead of calling `context.abort`: the error interceptor
turns them into the status code, counts them in the metrics and logs client errors without a
traceback.
"""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """Base of every error that maps to a gRPC status other than INTERNAL."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """Bad input; the message starts with the offending field (`frames.shape: ...`)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class ResourceExhausted(ServiceError):
    """Queue full or request too large; `retry_after_s` is a hint sent back to the caller."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(ServiceError):
    """Not ready, draining, or a downstream hop is down; safe for the caller to retry."""

    code = grpc.StatusCode.UNAVAILABLE


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ServiceError):
    code = grpc.StatusCode.CANCELLED


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Unimplemented(ServiceError):
    code = grpc.StatusCode.UNIMPLEMENTED
