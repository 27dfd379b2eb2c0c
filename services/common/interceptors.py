"""Cross-cutting RPC concerns in one place: thread pools, request ids, metrics, errors, auth.

`ThreadPoolRouter` is the outermost interceptor: it only chooses the thread pool a call runs on.
`ObservabilityInterceptor` comes next: it tags the request id for logging, counts and times
every RPC, and is the ONLY place where exceptions become status codes.
`BearerTokenInterceptor` sits inside it and rejects calls without the configured token.
`LoadingGate` is innermost: the typed APIs answer UNAVAILABLE until the models are loaded.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures

import grpc

from genaug.errors import (
    GenaugError,
    InvalidArgument,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from genaug.wire import TensorFormatError, TensorTooLargeError
from services.common import metrics
from services.common.errors import status_of
from services.common.logs import request_id_var

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
RETRY_AFTER_HEADER = "retry-after-s"
# Downstream failures that keep their meaning when passed on to our caller.
_PASS_THROUGH = {
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INVALID_ARGUMENT,
}
_CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}


def _rewrap(handler: grpc.RpcMethodHandler, wrap: Callable) -> grpc.RpcMethodHandler:
    """Return `handler` with its behaviour function passed through `wrap(fn, streaming_out)`."""
    for attr, streaming_out in (
        ("unary_unary", False),
        ("unary_stream", True),
        ("stream_unary", False),
        ("stream_stream", True),
    ):
        fn = getattr(handler, attr)
        if fn is not None:
            return handler._replace(**{attr: wrap(fn, streaming_out)})
    return handler


def _status_for(exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, GenaugError):
        return status_of(exc), exc.message
    if isinstance(exc, TensorTooLargeError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, TensorFormatError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    code, details = _downstream_status(exc)
    if code in _PASS_THROUGH:
        return code, f"downstream call failed: {details}"
    logger.error("%s failed", method, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id_var.get()})"


def _downstream_status(exc: BaseException) -> tuple[grpc.StatusCode | None, str]:
    """The status of a failed call to another service: a grpc.RpcError, or the client
    library's error (`clients.rpc.GenAugError`, which carries `code` and `details` as
    attributes; this layer does not import the client library)."""
    code, details = getattr(exc, "code", None), getattr(exc, "details", "")
    if isinstance(exc, grpc.RpcError) and callable(code):
        code, details = code(), exc.details() if callable(details) else details
    return (code if isinstance(code, grpc.StatusCode) else None), str(details or "")


class ObservabilityInterceptor(grpc.ServerInterceptor):
    """Request id, Prometheus metrics and the exception -> status-code mapping."""

    def __init__(self, service: str):
        self.service = service

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        headers = dict(handler_call_details.invocation_metadata or ())
        request_id = headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex[:16]

        # Requests are parsed here, not by gRPC: its deserializer failing would end the call
        # with INTERNAL before any interceptor sees it; a caller's bad bytes are its mistake.
        parse = _RequestParser(handler.request_deserializer, handler.request_streaming)
        if handler.request_deserializer is not None:
            handler = handler._replace(request_deserializer=None)

        def wrap(fn, streaming_out: bool):
            if streaming_out:

                def stream_behaviour(raw, context):
                    request, error = parse(raw)
                    call = _Call(self.service, method, request, context, request_id)
                    try:
                        if error is not None:
                            call.fail(error)
                        yield from call.iterate(fn(request, context))
                    finally:
                        call.finish()

                return stream_behaviour

            def unary_behaviour(raw, context):
                request, error = parse(raw)
                call = _Call(self.service, method, request, context, request_id)
                try:
                    if error is not None:
                        call.fail(error)
                    return call.run(fn, request)
                finally:
                    call.finish()

            return unary_behaviour

        return _rewrap(handler, wrap)


class _RequestParser:
    """Turns raw request bytes into messages; unparseable bytes become INVALID_ARGUMENT."""

    def __init__(self, deserialize: Callable | None, streaming_in: bool):
        self.deserialize = deserialize
        self.streaming_in = streaming_in

    def __call__(self, raw) -> tuple[object, InvalidArgument | None]:
        if self.deserialize is None:
            return raw, None
        if self.streaming_in:
            return self._messages(raw), None
        try:
            return self._one(raw, "request"), None
        except InvalidArgument as error:
            return None, error

    def _one(self, raw: bytes, field: str):
        try:
            return self.deserialize(raw)
        except Exception:  # noqa: BLE001 - protobuf raises DecodeError and others
            raise InvalidArgument(field, f"{len(raw)} bytes are not a valid message") from None

    def _messages(self, raws: Iterator[bytes]) -> Iterator[object]:
        for index, raw in enumerate(raws):
            yield self._one(raw, f"request[{index}]")


class ThreadPoolRouter(grpc.ServerInterceptor):
    """Runs the calls of chosen methods on their own thread pools instead of the workers.

    The sync server runs every call on its `workers` pool, and a stream holds its thread until
    it ends: once streams hold them all, health checks (the kubelet's probes) and new calls
    wait inside gRPC, invisible to the service. grpc takes the pool of a call from its
    behaviour's `experimental_thread_pool` (the way grpc_health's own HealthServicer offers a
    pool of its own); this sets it per method.

    Args:
        routes: (method prefix, pool) pairs, e.g. ("/grpc.health.v1.Health/", pool) or a full
            method name; the first matching prefix wins, unmatched methods use the workers.
    """

    def __init__(self, routes: Sequence[tuple[str, futures.ThreadPoolExecutor]]):
        self._routes = list(routes)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        for prefix, pool in self._routes:
            if method.startswith(prefix):
                return _rewrap(handler, lambda fn, _streaming, pool=pool: _on_pool(fn, pool))
        return handler


def _on_pool(fn: Callable, pool: futures.ThreadPoolExecutor) -> Callable:
    def behaviour(*args, **kwargs):
        return fn(*args, **kwargs)

    behaviour.experimental_thread_pool = pool
    behaviour.experimental_non_blocking = getattr(fn, "experimental_non_blocking", False)
    return behaviour


class CallStartHooks(grpc.ServerInterceptor):
    """Calls a hook as a call of a chosen method starts, before gRPC reads its request.

    Interceptors run when the call's headers arrive, while the request's bytes (megabytes of
    conditions for a Generate) may still be on their way: a sampler's engine told here knows
    that requests sent together are coming before the first of them is prepared
    (`SamplerEngine.announce`). A call refused later in the chain was announced all the same,
    so what a hook records must expire on its own.

    Args:
        hooks: full method name ("/genaug.v1.Sampler/Generate") -> a callable taking nothing.
    """

    def __init__(self, hooks: dict[str, Callable[[], None]]):
        self._hooks = dict(hooks)

    def intercept_service(self, continuation, handler_call_details):
        hook = self._hooks.get(handler_call_details.method)
        if hook is not None:
            hook()
        return continuation(handler_call_details)


class _Call:
    """Book-keeping of one RPC: metrics, request id context, error translation."""

    def __init__(self, service, method, request, context, request_id):
        model = getattr(request, "model_name", "") if not isinstance(request, Iterator) else ""
        self.labels = (service, method, model)
        self.context = context
        self.method = method
        self.start = time.perf_counter()
        self.token = request_id_var.set(request_id)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
        metrics.REQUESTS.labels(*self.labels).inc()
        metrics.IN_FLIGHT.labels(*self.labels).inc()

    def run(self, fn, request):
        try:
            return fn(request, self.context)
        except BaseException as exc:  # noqa: BLE001 - every failure is mapped here
            self._abort(exc)

    def fail(self, exc: BaseException):
        """End the call with `exc`'s status before the handler runs."""
        self._abort(exc)

    def iterate(self, responses):
        try:
            yield from responses
        except GeneratorExit:
            raise
        except BaseException as exc:  # noqa: BLE001
            self._abort(exc)

    def _abort(self, exc: BaseException):
        code_fn = getattr(self.context, "code", None)
        if callable(code_fn) and code_fn() not in (None, grpc.StatusCode.OK):
            # The handler already aborted through the context: keep its status.
            self._count_failure(code_fn())
            raise exc
        code, message = _status_for(exc, self.method)
        self._count_failure(code)
        if code in _CLIENT_ERRORS:
            logger.warning("%s -> %s: %s", self.method, code.name, message)
        if isinstance(exc, ResourceExhausted) and exc.retry_after_s is not None:
            self.context.set_trailing_metadata(
                (
                    (REQUEST_ID_HEADER, request_id_var.get()),
                    (RETRY_AFTER_HEADER, f"{exc.retry_after_s:.3f}"),
                )
            )
        self.context.abort(code, message)

    def _count_failure(self, code: grpc.StatusCode):
        metrics.FAILURES.labels(*self.labels, code.name).inc()

    def finish(self):
        metrics.IN_FLIGHT.labels(*self.labels).dec()
        metrics.LATENCY.labels(*self.labels).observe(time.perf_counter() - self.start)
        request_id_var.reset(self.token)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Require `authorization: Bearer <token>`; health checks stay open for kubelet probes."""

    EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(self.EXEMPT_PREFIXES):
            return handler
        headers = dict(handler_call_details.invocation_metadata or ())
        given = headers.get("authorization", "").encode()
        if hmac.compare_digest(given, self._expected):
            return handler

        return _rejecting(
            handler, lambda: Unauthenticated("missing or invalid bearer token in 'authorization'")
        )


class LoadingGate(grpc.ServerInterceptor):
    """The typed APIs answer UNAVAILABLE until `is_loaded()`: the port is bound (and health
    answers NOT_SERVING) while models load, and a caller that does not wait for SERVING, such as
    a replica retrying onto a restarted service, must get a retryable status, not a call into a
    model that is not there yet. Health, reflection and KServe v2 (which reports readiness
    itself) stay open."""

    def __init__(self, service: str, prefixes: Sequence[str], is_loaded: Callable[[], bool]):
        self._service = service
        self._prefixes = tuple(prefixes)
        self._is_loaded = is_loaded

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or self._is_loaded() or not method.startswith(self._prefixes):
            return handler
        return _rejecting(
            handler,
            lambda: Unavailable(
                f"{self._service} is loading its models; retry once health reports SERVING"
            ),
        )


def _rejecting(handler: grpc.RpcMethodHandler, error: Callable[[], GenaugError]):
    """`handler` with its behaviour replaced by one raising `error()` (in the caller's
    interceptor chain, so the usual status mapping and metrics apply)."""

    def replace(fn, streaming_out):
        def reject(request, context):
            raise error()

        if streaming_out:

            def reject_stream(request, context):
                reject(request, context)
                yield  # pragma: no cover - makes this a generator

            return reject_stream
        return reject

    return _rewrap(handler, replace)
