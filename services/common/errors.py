"""The one mapping from the neutral errors (`genaug.errors`) to gRPC status codes.

Models, data code and servicers raise `genaug.errors` classes; the error interceptor asks
`status_of` for the code, counts it in the metrics and logs client errors without a traceback.
"""

from __future__ import annotations

import grpc

from genaug.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    GenaugError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)

# Most specific first: InvalidArgument is also a ValueError, NotFound a LookupError.
STATUS_BY_ERROR: dict[type[GenaugError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Cancelled: grpc.StatusCode.CANCELLED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
}


def status_of(error: GenaugError) -> grpc.StatusCode:
    """The status code of a neutral error (UNKNOWN for a subclass of the bare base)."""
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return grpc.StatusCode.UNKNOWN
