"""Typed domain errors.

Domain code raises these; exactly one place (``interceptor.py``) turns them into gRPC
status codes. Each class fixes its status code, so a caller can never get
``INTERNAL`` for a mistake that was theirs (TGI's interceptor maps everything to
INTERNAL; httpx's ``_exceptions.py`` is the model for a typed hierarchy instead).
"""

from __future__ import annotations

import grpc


class UnfragileError(Exception):
    """Base of every error a client is meant to see. ``code`` is the gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """Extra trailers sent with the status (e.g. a retry hint)."""
        return ()


class InvalidArgument(UnfragileError):
    """The request itself is wrong; retrying it unchanged will fail again."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(UnfragileError):
    """A named thing (model, adapter, job, scheduler) does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(UnfragileError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(UnfragileError):
    """The system is not in a state that allows the request (e.g. job already finished)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(UnfragileError):
    """Queue full or out of memory; the client may retry after ``retry_after_s``."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("retry-after-ms", str(int(self.retry_after_s * 1000))),)


class Unavailable(UnfragileError):
    """A dependency or the server itself cannot serve right now (draining, down)."""

    code = grpc.StatusCode.UNAVAILABLE


class ModelUnavailable(Unavailable):
    """A model could not be loaded (no local copy, no network, broken folder)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Cancelled(UnfragileError):
    """The client cancelled, or a CancelJob request stopped the work."""

    code = grpc.StatusCode.CANCELLED


class DeadlineExceeded(UnfragileError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(UnfragileError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(UnfragileError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unimplemented(UnfragileError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(UnfragileError):
    """A bug on our side. The message must not leak secrets or payloads."""

    code = grpc.StatusCode.INTERNAL
