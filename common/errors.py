"""Typed domain errors: the one hierarchy every layer raises.

Domain code (``graph/`` included) raises these without importing gRPC: each class names
its status as a string, and exactly one place (``services/core/interceptor.py``) turns
that name into a ``grpc.StatusCode``. Each class fixes its status code, so a caller can never get ``INTERNAL``
for a mistake that was theirs (httpx's ``_exceptions.py`` is the model for the tree).
"""

from __future__ import annotations


class UnfragileError(Exception):
    """Base of every error a client is meant to see. ``status`` names the gRPC status code."""

    status: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """Extra trailers sent with the status (e.g. a retry hint)."""
        return ()


class InvalidArgument(UnfragileError):
    """The request itself is wrong; retrying it unchanged will fail again."""

    status = "INVALID_ARGUMENT"


class NotFound(UnfragileError):
    """A named thing (model, adapter, job, scheduler) does not exist."""

    status = "NOT_FOUND"


class AlreadyExists(UnfragileError):
    status = "ALREADY_EXISTS"


class FailedPrecondition(UnfragileError):
    """The system is not in a state that allows the request (e.g. job already finished)."""

    status = "FAILED_PRECONDITION"


class ResourceExhausted(UnfragileError):
    """Queue full or out of memory; the client may retry after ``retry_after_s``."""

    status = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("retry-after-ms", str(int(self.retry_after_s * 1000))),)


class Unavailable(UnfragileError):
    """A dependency or the server itself cannot serve right now (draining, down).

    With ``retry_after_s`` the status carries a ``retry-after-ms`` trailer, as
    ``ResourceExhausted`` does (e.g. the MatchGraph database is restarting).
    """

    status = "UNAVAILABLE"

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        if self.retry_after_s is None:
            return ()
        return (("retry-after-ms", str(int(self.retry_after_s * 1000))),)


class ModelUnavailable(Unavailable):
    """A model could not be loaded (no local copy, no network, broken folder)."""

    status = "FAILED_PRECONDITION"


class Cancelled(UnfragileError):
    """The client cancelled, or a CancelJob request stopped the work."""

    status = "CANCELLED"


class DeadlineExceeded(UnfragileError):
    status = "DEADLINE_EXCEEDED"


class Unauthenticated(UnfragileError):
    status = "UNAUTHENTICATED"


class PermissionDenied(UnfragileError):
    status = "PERMISSION_DENIED"


class Unimplemented(UnfragileError):
    status = "UNIMPLEMENTED"


class Internal(UnfragileError):
    """A bug on our side. The message must not leak secrets or payloads."""

    status = "INTERNAL"


def is_out_of_memory(exc: BaseException) -> bool:
    """Host or accelerator memory ran out (``MemoryError``, torch's ``OutOfMemoryError``, or a
    runtime error that says so), without importing torch."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())
