"""The one place where domain errors become gRPC status codes.

Also counts and times every RPC, and refuses new RPCs while the server drains.
Unexpected exceptions are logged with a traceback and answered ``INTERNAL`` with an
incident id; out-of-memory becomes ``RESOURCE_EXHAUSTED`` so the client can retry
smaller, and the server keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from common.errors import Internal, InvalidArgument, ResourceExhausted, Unavailable, UnfragileError, is_out_of_memory
from services.core import metrics
from services.core.security import Authorizer

log = logging.getLogger(__name__)


class _Undecodable:
    """Stands in for a request message whose bytes did not parse as the RPC's request type."""

    def __init__(self, exc: BaseException) -> None:
        self.reason = f"{type(exc).__name__}: {str(exc)[:200]}"


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """grpc answers INTERNAL when a request does not parse; we want INVALID_ARGUMENT (caller's fault)."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:
            return _Undecodable(exc)

    return deserialize


def _check_decoded(request: Any, method: str) -> Any:
    if isinstance(request, _Undecodable):
        raise InvalidArgument(f"the {method} request is not a valid protobuf message of its type "
                              f"({request.reason}); check the client's stubs and string fields (UTF-8)")
    return request


def _checked_stream(requests: Iterator[Any], method: str) -> Iterator[Any]:
    for request in requests:
        yield _check_decoded(request, method)


class ServerState:
    """Shared flags between the server lifecycle and the interceptor.

    ``in_flight`` counts service RPCs being handled (health/reflection excluded), so a
    drain can keep the port open, answering new RPCs UNAVAILABLE from the interceptor,
    until the in-flight ones are done; only then is the gRPC server stopped.
    """

    def __init__(self) -> None:
        self.draining = threading.Event()
        self.in_flight = 0
        self._idle = threading.Condition()

    def enter(self) -> None:
        with self._idle:
            self.in_flight += 1

    def leave(self) -> None:
        with self._idle:
            self.in_flight -= 1
            if self.in_flight <= 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no service RPC is in flight, or ``timeout`` seconds passed."""
        with self._idle:
            return self._idle.wait_for(lambda: self.in_flight <= 0, timeout)


def status_code(err: UnfragileError) -> grpc.StatusCode:
    """The gRPC status a domain error names."""
    return getattr(grpc.StatusCode, err.status)  # type: ignore[no-any-return]  # the enum's members by name


def _as_domain_error(exc: BaseException) -> UnfragileError:
    if isinstance(exc, UnfragileError):
        return exc
    if is_out_of_memory(exc):
        return ResourceExhausted("the server ran out of memory for this request; retry smaller or later", 5.0)
    incident = uuid.uuid4().hex[:12]
    log.exception("unexpected error (incident %s)", incident)
    return Internal(f"internal error (incident {incident}); the server logged the details")


class _Recorder:
    """Times one RPC and records its outcome exactly once."""

    def __init__(self, service: str, method: str) -> None:
        self.service, self.method = service, method
        self.start = time.perf_counter()
        self.done = False
        metrics.GRPC_IN_FLIGHT.labels(service, method).inc()

    def finish(self, code: grpc.StatusCode, error: UnfragileError | None = None) -> None:
        if self.done:
            return
        self.done = True
        name = code.name
        metrics.GRPC_IN_FLIGHT.labels(self.service, self.method).dec()
        metrics.GRPC_REQUESTS.labels(self.service, self.method, name).inc()
        metrics.GRPC_LATENCY.labels(self.service, self.method, name).observe(time.perf_counter() - self.start)
        if error is not None:
            metrics.DOMAIN_ERRORS.labels(self.service, self.method, type(error).__name__, name).inc()


MAX_DETAILS_CHARS = 2000


def _bounded(message: str) -> str:
    """Status details travel as a trailer (16 KiB hard limit on clients): a message that
    echoes a huge input would turn into RESOURCE_EXHAUSTED 'Stream removed'. Keep the
    start (what is wrong) and the end (what to do), drop the middle."""
    if len(message) <= MAX_DETAILS_CHARS:
        return message
    half = MAX_DETAILS_CHARS // 2
    return f"{message[:half]}…[{len(message) - 2 * half} characters omitted]…{message[-half:]}"


def _abort(context: grpc.ServicerContext, rec: _Recorder, exc: BaseException) -> None:
    err = _as_domain_error(exc)
    rec.finish(status_code(err), err)
    trailers = err.trailing_metadata()
    if trailers:
        context.set_trailing_metadata(trailers)
    context.abort(status_code(err), _bounded(err.message))


class ErrorInterceptor(grpc.ServerInterceptor):
    """Maps domain errors to status codes, records metrics, refuses work while draining,
    and (when configured) authorizes the caller before the servicer runs."""

    def __init__(self, service: str, state: ServerState, authorizer: Authorizer | None = None) -> None:
        self.service = service
        self.state = state
        self.authorizer = authorizer

    def intercept_service(self, continuation: Callable[..., Any], details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method.rsplit("/", 1)[-1]
        if details.method.startswith("/grpc."):  # health and reflection: not counted
            return handler
        handler = handler._replace(request_deserializer=_lenient(handler.request_deserializer))
        if handler.unary_unary:
            return handler._replace(unary_unary=self._wrap_unary(handler.unary_unary, method))
        if handler.stream_unary:
            return handler._replace(stream_unary=self._wrap_unary(handler.stream_unary, method, True))
        if handler.unary_stream:
            return handler._replace(unary_stream=self._wrap_stream(handler.unary_stream, method))
        return handler._replace(stream_stream=self._wrap_stream(handler.stream_stream, method, True))

    def _admit(self, method: str, context: grpc.ServicerContext) -> Any:
        """Refuse while draining; authorize; returns a token to unbind the caller."""
        if self.state.draining.is_set():
            raise Unavailable("server is shutting down; retry on another replica")
        if self.authorizer is None:
            return None
        return Authorizer.bind(self.authorizer.authorize(method, context))

    @staticmethod
    def _release(bound: Any) -> None:
        if bound is not None:
            try:
                Authorizer.unbind(bound)
            except ValueError:  # generator resumed in another context: nothing to undo
                pass

    @contextmanager
    def _in_flight(self) -> Iterator[list[Any]]:
        """Counted in flight (the drain waits for it); the caller's binding, if any, is undone after."""
        bound: list[Any] = []
        self.state.enter()
        try:
            yield bound
        finally:
            for b in bound:
                self._release(b)
            self.state.leave()

    def _start(self, method: str, context: grpc.ServicerContext, request: Any, streaming_in: bool,
               bound: list[Any]) -> Any:
        """Admit and authorize the call; the request, checked for decoding errors."""
        bound.append(self._admit(method, context))
        return _checked_stream(request, method) if streaming_in else _check_decoded(request, method)

    def _wrap_unary(self, fn: Callable[..., Any], method: str, streaming_in: bool = False) -> Callable[..., Any]:
        def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
            rec = _Recorder(self.service, method)
            with self._in_flight() as bound:
                try:
                    response = fn(self._start(method, context, request, streaming_in, bound), context)
                except Exception as exc:
                    _abort(context, rec, exc)
                    return None
            rec.finish(grpc.StatusCode.OK)
            return response

        return wrapper

    def _wrap_stream(self, fn: Callable[..., Any], method: str, streaming_in: bool = False) -> Callable[..., Any]:
        def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            rec = _Recorder(self.service, method)
            with self._in_flight() as bound:
                try:
                    yield from fn(self._start(method, context, request, streaming_in, bound), context)
                except GeneratorExit:  # client went away mid-stream
                    rec.finish(grpc.StatusCode.CANCELLED)
                    raise
                except Exception as exc:
                    _abort(context, rec, exc)
                    return
            rec.finish(grpc.StatusCode.OK if context.is_active() else grpc.StatusCode.CANCELLED)

        return wrapper
